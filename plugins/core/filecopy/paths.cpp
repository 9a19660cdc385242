#include "paths.hpp"

#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <unistd.h>
#include <bosun/plugin.hpp>

#include <cerrno>
#include <cstring>
#include <filesystem>

namespace filecopy {

namespace fs = std::filesystem;
using bosun::Error;

std::string in_quotes(std::string_view s) {
  return "\"" + std::string(s) + "\"";
}

namespace {

Error invalid(std::string_view who, const std::string& text) {
  return Error(std::string(who) + ": " + text, BOSUN_ERR_INVALID_ARGUMENT);
}

// `path` is `root` or below it (both lexically normal, absolute).
bool within(const std::string& path, const std::string& root) {
  if (root == "/") return true;
  return path == root || (path.size() > root.size() && path.compare(0, root.size(), root) == 0 &&
                          path[root.size()] == '/');
}

std::string normal(const std::string& p) {
  std::string s = fs::path(p).lexically_normal().string();
  while (s.size() > 1 && s.back() == '/') s.pop_back();
  return s;
}

std::string real(const std::string& p) {
  char buf[PATH_MAX];
  if (::realpath(p.c_str(), buf) == nullptr) return {};
  return buf;
}

std::string list(const std::vector<std::string>& folders) {
  std::string out;
  for (const auto& f : folders) out += (out.empty() ? "" : ", ") + in_quotes(f);
  return out;
}

}  // namespace

std::string absolute_from(std::string_view path, const std::string& data_dir) {
  if (!path.empty() && path[0] == '/') return std::string(path);
  return data_dir + "/" + std::string(path);
}

Destination resolve_destination(std::string_view who, std::string_view given,
                                const std::string& data_dir,
                                const std::vector<std::string>& allowed, bool create) {
  if (given.empty()) throw invalid(who, "the destination path is empty");
  if (given.find('\0') != std::string_view::npos) {
    throw invalid(who, "the destination path contains a NUL byte");
  }
  for (size_t start = 0; start <= given.size();) {
    size_t end = given.find('/', start);
    if (end == std::string_view::npos) end = given.size();
    if (given.substr(start, end - start) == "..") {
      throw invalid(who, "the destination path " + in_quotes(given) + " must not contain \"..\"");
    }
    start = end + 1;
  }
  if (given.back() == '/' || given == "." || given.ends_with("/.")) {
    throw invalid(who, "the destination " + in_quotes(given) +
                           " is a folder; give the path of the file to write");
  }
  std::string path = normal(absolute_from(given, data_dir));
  std::string root;
  for (const auto& a : allowed) {
    std::string r = normal(a);
    if (within(path, r) && path != r && r.size() >= root.size()) root = r;
  }
  if (root.empty()) {
    throw invalid(who, "the destination " + in_quotes(path) + " is outside the allowed folders (" +
                           list(allowed) + "; the filecopy module's setting \"allowedDirs\")");
  }
  std::string real_root = real(root);
  if (real_root.empty() && errno == ENOENT) {
    // A configured folder that does not exist yet is made at the first copy.
    if (!create) return Destination{path, fs::path(path).parent_path().string()};
    std::error_code ec;
    fs::create_directories(root, ec);
    real_root = real(root);
  }
  if (real_root.empty()) {
    throw Error(std::string(who) + ": the allowed folder " + in_quotes(root) +
                    " cannot be used: " + std::strerror(errno),
                BOSUN_ERR_IO);
  }
  std::string folder = fs::path(path).parent_path().string();
  std::string name = fs::path(path).filename().string();
  // The deepest folder that exists must stay inside once links are resolved;
  // what is missing below it is created there (so it cannot be a link).
  std::string existing = folder;
  std::vector<std::string> missing;
  struct stat st {};
  while (::lstat(existing.c_str(), &st) != 0) {
    if (errno != ENOENT || existing == root) {
      throw Error(std::string(who) + ": cannot use the destination folder " + in_quotes(existing) +
                      ": " + std::strerror(errno),
                  BOSUN_ERR_IO);
    }
    missing.push_back(existing);
    existing = fs::path(existing).parent_path().string();
  }
  std::string real_existing = real(existing);
  if (real_existing.empty() || !within(real_existing, real_root)) {
    throw invalid(who, "the destination " + in_quotes(path) +
                           " leaves the allowed folders through a symbolic link (" +
                           in_quotes(existing) + " is " + in_quotes(real_existing) + ")");
  }
  struct stat est {};
  if (::stat(existing.c_str(), &est) == 0 && !S_ISDIR(est.st_mode)) {
    throw invalid(who, "the destination folder " + in_quotes(existing) + " is not a folder");
  }
  if (create) {
    for (auto it = missing.rbegin(); it != missing.rend(); ++it) {
      if (::mkdir(it->c_str(), 0755) != 0 && errno != EEXIST) {
        throw Error(std::string(who) + ": cannot create the folder " + in_quotes(*it) + ": " +
                        std::strerror(errno),
                    BOSUN_ERR_IO);
      }
    }
    std::string real_folder = real(folder);
    if (real_folder.empty() || !within(real_folder, real_root)) {
      throw invalid(who, "the destination " + in_quotes(path) +
                             " leaves the allowed folders through a symbolic link");
    }
    folder = real_folder;
  } else if (missing.empty()) {
    folder = real_existing;
  }
  std::string resolved = (folder == "/" ? "" : folder) + "/" + name;
  if (::lstat(resolved.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
    throw invalid(who, "the destination " + in_quotes(resolved) +
                           " is a folder; give the path of the file to write");
  }
  return Destination{resolved, folder};
}

Source open_source(std::string_view who, std::string_view given, const std::string& data_dir) {
  if (given.empty()) throw invalid(who, "the source path is empty");
  if (given.find('\0') != std::string_view::npos) {
    throw invalid(who, "the source path contains a NUL byte");
  }
  Source s;
  s.path = normal(absolute_from(given, data_dir));
  if (::stat(s.path.c_str(), &s.st) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) {
      throw Error(std::string(who) + ": the source file " + in_quotes(s.path) + " does not exist",
                  BOSUN_ERR_NOT_FOUND);
    }
    throw Error(std::string(who) + ": the source file " + in_quotes(s.path) +
                    " cannot be read: " + std::strerror(errno),
                BOSUN_ERR_IO);
  }
  if (S_ISDIR(s.st.st_mode)) {
    throw invalid(who, "the source " + in_quotes(s.path) + " is a folder, not a file");
  }
  if (!S_ISREG(s.st.st_mode)) {
    throw invalid(who, "the source " + in_quotes(s.path) +
                           " is not a regular file (a FIFO, socket or device)");
  }
  s.fd = ::open(s.path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (s.fd < 0) {
    throw Error(std::string(who) + ": the source file " + in_quotes(s.path) +
                    " cannot be read: " + std::strerror(errno),
                BOSUN_ERR_IO);
  }
  if (::fstat(s.fd, &s.st) != 0 || !S_ISREG(s.st.st_mode)) {
    ::close(s.fd);
    throw invalid(who, "the source " + in_quotes(s.path) + " changed while it was opened");
  }
  return s;
}

}  // namespace filecopy
