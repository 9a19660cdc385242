// core/sinks: reply methods (Steward's REQToFile, REQToFileAppend,
// REQToConsole, REQNone, REQErrorLog). They run on the node that receives a
// reply and put its data somewhere under this node's data folder.
#include <bosun/plugin.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

namespace {

using bosun::Error;

std::string in_quotes(std::string_view s) {
  return "\"" + std::string(s) + "\"";
}

Error io_error(std::string_view method, std::string_view what, const std::string& path) {
  return Error(std::string(method) + ": cannot " + std::string(what) + " " + in_quotes(path) +
                   ": " + std::strerror(errno),
               BOSUN_ERR_IO);
}

// Refuses anything that could climb out of the data folder.
void check_no_dotdot(std::string_view method, std::string_view field, std::string_view value) {
  if (value.find('\0') != std::string_view::npos) {
    throw Error(std::string(method) + ": " + in_quotes(field) + " must not contain a NUL byte",
                BOSUN_ERR_INVALID_ARGUMENT);
  }
  size_t start = 0;
  while (start <= value.size()) {
    size_t end = value.find('/', start);
    if (end == std::string_view::npos) end = value.size();
    if (value.substr(start, end - start) == "..") {
      throw Error(std::string(method) + ": " + in_quotes(field) +
                      " must not contain \"..\": " + in_quotes(value),
                  BOSUN_ERR_INVALID_ARGUMENT);
    }
    start = end + 1;
  }
}

// A string field of the message, or nullopt when it is absent or null.
std::optional<std::string> string_field(std::string_view method, const nlohmann::json& msg,
                                        const char* field) {
  auto it = msg.find(field);
  if (it == msg.end() || it->is_null()) return std::nullopt;
  if (!it->is_string()) {
    throw Error(
        std::string(method) + ": " + in_quotes(field) + " must be a string, not " + it->dump(),
        BOSUN_ERR_INVALID_ARGUMENT);
  }
  return it->get<std::string>();
}

// Creates each missing folder of `path` (absolute) with mode 0755.
void make_dirs(std::string_view method, const std::string& path) {
  for (size_t pos = 1; pos <= path.size(); ++pos) {
    if (pos != path.size() && path[pos] != '/') continue;
    std::string prefix = path.substr(0, pos);
    if (mkdir(prefix.c_str(), 0755) == 0) continue;
    if (errno != EEXIST) throw io_error(method, "create folder", prefix);
    struct stat st {};
    if (::stat(prefix.c_str(), &st) != 0) throw io_error(method, "create folder", prefix);
    if (!S_ISDIR(st.st_mode)) {
      throw Error(std::string(method) + ": " + in_quotes(prefix) + " exists and is not a folder",
                  BOSUN_ERR_IO);
    }
  }
}

void write_all(std::string_view method, int fd, std::string_view data, const std::string& path) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      throw io_error(method, "write", path);
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
}

class FileDescriptor {
 public:
  explicit FileDescriptor(int fd) : fd_(fd) {}
  ~FileDescriptor() {
    if (fd_ >= 0) ::close(fd_);
  }
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

std::string utc_now_iso8601() {
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

class Sinks : public bosun::Plugin {
 public:
  Sinks(bosun::Host host, std::string_view settings) : Plugin(host, settings) {
    data_dir_ = std::string(host.data_dir());
    if (data_dir_.empty()) throw std::runtime_error("sinks: the node has no data folder");
    while (data_dir_.size() > 1 && data_dir_.back() == '/') data_dir_.pop_back();
  }

  void to_file(bosun::Call& call) {
    std::string path = target_path(call, "to_file");
    std::string dir = path.substr(0, path.rfind('/'));
    std::string tmp = dir + "/.sinks-XXXXXX";
    // The reader sees the old content or the new, never half of it.
    FileDescriptor fd(mkostemp(tmp.data(), O_CLOEXEC));
    if (fd.get() < 0) throw io_error("to_file", "create a temporary file in", dir);
    try {
      if (fchmod(fd.get(), 0644) != 0) throw io_error("to_file", "chmod", tmp);
      write_all("to_file", fd.get(), call.data(), tmp);
      if (::close(fd.release()) != 0) throw io_error("to_file", "write", tmp);
      if (std::rename(tmp.c_str(), path.c_str()) != 0) throw io_error("to_file", "replace", path);
    } catch (...) {
      ::unlink(tmp.c_str());
      throw;
    }
  }

  void to_file_append(bosun::Call& call) {
    std::string path = target_path(call, "to_file_append");
    append_line("to_file_append", path, call.data());
  }

  void to_console(bosun::Call& call) {
    std::string_view data = call.data();
    std::lock_guard<std::mutex> lock(mutex_);
    if (!data.empty()) std::fwrite(data.data(), 1, data.size(), stdout);
    if (data.empty() || data.back() != '\n') std::fputc('\n', stdout);
    std::fflush(stdout);
  }

  void none(bosun::Call&) {}

  void error_log(bosun::Call& call) {
    // One entry per line, whatever the data holds.
    std::string line = utc_now_iso8601() + " " + std::string(call.from_node()) + " ";
    for (char c : call.data()) {
      if (c == '\n') {
        line += "\\n";
      } else if (c != '\r') {
        line += c;
      }
    }
    make_dirs("error_log", data_dir_);
    append_line("error_log", data_dir_ + "/errors.log", line);
  }

 private:
  // <dataDir>/<directory>/<fileName>, its folders created.
  std::string target_path(const bosun::Call& call, std::string_view method) {
    nlohmann::json msg = nlohmann::json::parse(call.message_json(), nullptr, false);
    if (msg.is_discarded() || !msg.is_object()) {
      throw Error(std::string(method) + ": the message is not a JSON object",
                  BOSUN_ERR_INVALID_ARGUMENT);
    }
    std::string directory = string_field(method, msg, "directory").value_or("");
    std::optional<std::string> file_name = string_field(method, msg, "fileName");
    if (!file_name) {
      throw Error(std::string(method) + ": the message has no \"fileName\"",
                  BOSUN_ERR_INVALID_ARGUMENT);
    }
    check_no_dotdot(method, "directory", directory);
    check_no_dotdot(method, "fileName", *file_name);
    if (file_name->empty() || *file_name == ".") {
      throw Error(std::string(method) + ": \"fileName\" must name a file: " + in_quotes(*file_name),
                  BOSUN_ERR_INVALID_ARGUMENT);
    }
    if (file_name->find('/') != std::string::npos) {
      throw Error(
          std::string(method) + ": \"fileName\" must not contain \"/\": " + in_quotes(*file_name),
          BOSUN_ERR_INVALID_ARGUMENT);
    }
    // As in Steward, an absolute directory counts from the data folder too.
    size_t skip = directory.find_first_not_of('/');
    directory = skip == std::string::npos ? "" : directory.substr(skip);
    while (!directory.empty() && directory.back() == '/') directory.pop_back();

    std::string dir = directory.empty() ? data_dir_ : data_dir_ + "/" + directory;
    make_dirs(method, dir);
    return dir + "/" + *file_name;
  }

  void append_line(std::string_view method, const std::string& path, std::string_view data) {
    std::string text(data);
    if (text.empty() || text.back() != '\n') text += '\n';
    std::lock_guard<std::mutex> lock(mutex_);
    FileDescriptor fd(::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644));
    if (fd.get() < 0) throw io_error(method, "open", path);
    write_all(method, fd.get(), text, path);
  }

  std::string data_dir_;
  std::mutex mutex_;  // appends and console writes never interleave
};

}  // namespace

BOSUN_PLUGIN(Sinks, "sinks", "1.0.0", "Reply methods: write a reply's data to a file or stdout",
             BOSUN_METHOD_EX(Sinks, to_file, "to_file", BOSUN_METHOD_REPLY,
                             "write the reply's data to <dataDir>/<directory>/<fileName>"),
             BOSUN_METHOD_EX(Sinks, to_file_append, "to_file_append", BOSUN_METHOD_REPLY,
                             "append the reply's data to <dataDir>/<directory>/<fileName>"),
             BOSUN_METHOD_EX(Sinks, to_console, "to_console", BOSUN_METHOD_REPLY,
                             "print the reply's data on the node's stdout"),
             BOSUN_METHOD_EX(Sinks, none, "none", BOSUN_METHOD_REPLY, "drop the reply"),
             BOSUN_METHOD_EX(Sinks, error_log, "error_log", BOSUN_METHOD_REPLY,
                             "append the reply to <dataDir>/errors.log"))
