#include "node_harness.hpp"

#include <gtest/gtest.h>
#include <poll.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <bosun/host/client.hpp>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace bosun::test {

namespace fs = std::filesystem;
using nlohmann::json;

fs::path fixture_module(const std::string& name) {
  return fs::path(BOSUN_FIXTURE_DIR) / (name + ".so");
}

fs::path plugin_module(const std::string& name) {
  return fs::path(BOSUN_PLUGIN_DIR) / (name + ".so");
}

void copy_module(const fs::path& from, const fs::path& to) {
  if (!fs::exists(from))
    throw std::runtime_error("no module at " + from.string() + " (not built?)");
  fs::copy_file(from, to, fs::copy_options::overwrite_existing);
  fs::permissions(to, fs::perms(0755), fs::perm_options::replace);
}

// ------------------------------------------------------------ NodeSetup ---

NodeSetup::NodeSetup(std::string name) : name_(std::move(name)) {
  fs::create_directories(plugins_dir());
  fs::permissions(plugins_dir(), fs::perms(0755), fs::perm_options::replace);
  doc_ = {{"node", {{"name", name_}, {"dataDir", "data"}}},
          {"plugins", {{"dir", "plugins"}}},
          // A handler that ignores cancellation must not hold a test for 10 s.
          {"host", {{"drainTimeout", 2000}}},
          {"extensions", json::object()}};
}

fs::path NodeSetup::add_module(const fs::path& file, const std::string& file_name) {
  fs::path to = plugins_dir() / (file_name.empty() ? file.filename().string() : file_name);
  copy_module(file, to);
  return to;
}

host::Config NodeSetup::config() const {
  return host::parse_config(doc_, root());
}

fs::path NodeSetup::write_config(const std::string& file_name) const {
  fs::path file = root() / file_name;
  write_file(file, doc_.dump(2));
  return file;
}

// ---------------------------------------------------------- RunningNode ---

RunningNode::RunningNode(host::Config config)
    : socket_(config.socket_path()), node_(std::make_unique<host::Node>(std::move(config))) {
  node_->start();
  thread_ = std::thread([n = node_.get(), done = done_] {
    n->run();
    std::lock_guard<std::mutex> lock(done->mu);
    done->done = true;
    done->cv.notify_all();
  });
}

RunningNode::~RunningNode() {
  stop();
}

void RunningNode::stop(std::chrono::milliseconds timeout) {
  if (!node_) return;
  node_->stop();
  bool stopped;
  {
    std::unique_lock<std::mutex> lock(done_->mu);
    stopped = done_->cv.wait_for(lock, timeout, [&] { return done_->done; });
  }
  if (!stopped) {
    ADD_FAILURE() << "node did not stop within " << timeout.count()
                  << " ms (a deadlock in the host?); leaving it behind";
    thread_.detach();
    (void)node_.release();
    return;
  }
  thread_.join();
  node_.reset();
}

// ----------------------------------------------------- CollectingWaiter ---

void CollectingWaiter::on_reply(const host::Message& reply) {
  std::lock_guard<std::mutex> lock(mu_);
  replies_.push_back(reply);
  if (reply.final_reply) ++finals_;
  cv_.notify_all();
}

bool CollectingWaiter::wait_finals(size_t count, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, timeout, [&] { return finals_ >= count; });
}

std::vector<host::Message> CollectingWaiter::replies() const {
  std::lock_guard<std::mutex> lock(mu_);
  return replies_;
}

std::vector<host::Message> CollectingWaiter::replies_to(const std::string& id) const {
  std::vector<host::Message> out;
  for (const auto& r : replies()) {
    if (r.in_reply_to == id) out.push_back(r);
  }
  return out;
}

const host::Message* SubmitOutcome::final_reply(size_t accepted_index) const {
  if (accepted_index >= result.accepted.size()) return nullptr;
  const std::string& id = result.accepted[accepted_index].id;
  for (const auto& r : replies) {
    if (r.in_reply_to == id && r.final_reply) return &r;
  }
  return nullptr;
}

SubmitOutcome submit_and_wait(host::Node& node, const json& batch,
                              std::chrono::milliseconds timeout) {
  auto waiter = std::make_shared<CollectingWaiter>();
  SubmitOutcome out;
  out.result = node.submit(batch, waiter);
  if (!waiter->wait_finals(out.result.accepted.size(), timeout)) {
    ADD_FAILURE() << "not every accepted message got its final reply within " << timeout.count()
                  << " ms: " << out.result.to_json().dump();
  }
  out.replies = waiter->replies();
  return out;
}

// --------------------------------------------------------------- socket ---

namespace {

// What a request thread hands back; shared so that a thread left behind
// after a timeout never touches freed memory.
struct RequestState {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<json> lines;
  bool done = false;
  std::string error;
};

}  // namespace

std::vector<json> socket_request(const fs::path& socket, const json& request,
                                 std::chrono::milliseconds timeout) {
  auto state = std::make_shared<RequestState>();
  std::thread([state, socket, request] {
    std::string error;
    try {
      host::NodeClient client(socket);
      client.request(request, [&](const json& line) {
        std::lock_guard<std::mutex> lock(state->mu);
        state->lines.push_back(line);
        return true;
      });
    } catch (const std::exception& e) {
      error = e.what();
    }
    std::lock_guard<std::mutex> lock(state->mu);
    state->error = error;
    state->done = true;
    state->cv.notify_all();
  }).detach();
  std::unique_lock<std::mutex> lock(state->mu);
  if (!state->cv.wait_for(lock, timeout, [&] { return state->done; })) {
    json so_far = state->lines;
    throw std::runtime_error("the node's answer to " + request.dump() + " did not end within " +
                             std::to_string(timeout.count()) +
                             " ms; lines so far: " + so_far.dump());
  }
  if (!state->error.empty()) throw std::runtime_error(state->error);
  return state->lines;
}

std::vector<json> socket_send_wait(const fs::path& socket, const json& batch, double wait_s) {
  json request = {{"op", "send"}, {"messages", batch}, {"wait", true}, {"timeout", wait_s}};
  auto bound = std::chrono::milliseconds(static_cast<int64_t>(wait_s * 1000) + 10000);
  return socket_request(socket, request, bound);
}

std::vector<json> lines_of_type(const std::vector<json>& lines, std::string_view type) {
  std::vector<json> out;
  for (const auto& l : lines) {
    if (l.is_object() && l.value("type", "") == type) out.push_back(l);
  }
  return out;
}

std::vector<std::string> socket_raw(const fs::path& socket, const std::string& bytes,
                                    std::chrono::milliseconds timeout) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, socket.c_str(), sizeof addr.sun_path - 1);
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw std::runtime_error(std::string("socket: ") + std::strerror(errno));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    throw std::runtime_error("connect " + socket.string() + ": " + std::strerror(errno));
  }
  size_t off = 0;
  while (off < bytes.size()) {
    ssize_t n = ::send(fd, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw std::runtime_error(std::string("write: ") + std::strerror(errno));
    off += static_cast<size_t>(n);
  }
  ::shutdown(fd, SHUT_WR);  // the node sees EOF: the input is complete
  std::string text;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      throw std::runtime_error("the node did not close the connection within " +
                               std::to_string(timeout.count()) + " ms; got: " + text);
    }
    pollfd pfd{fd, POLLIN, 0};
    if (::poll(&pfd, 1, static_cast<int>(left.count())) <= 0) continue;
    char buf[4096];
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    text.append(buf, static_cast<size_t>(n));
  }
  std::vector<std::string> lines;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    if (end > start) lines.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  return lines;
}

// ------------------------------------------------------------- BosunRun ---

BosunRun::BosunRun(const NodeSetup& setup, std::chrono::milliseconds timeout)
    : config_file_(setup.write_config()), log_file_(setup.root() / "bosun-run.log") {
  process_ = std::make_unique<Process>(
      std::vector<std::string>{BOSUN_BIN, "run", "--config", config_file_.string()}, log_file_);
  fs::path socket = setup.socket();
  bool up = wait_until(
      [&] {
        if (!process_->running()) return true;  // reported below
        if (!fs::exists(socket)) return false;
        try {
          auto lines = socket_request(socket, {{"op", "status"}}, 2s);
          return !lines.empty() && lines[0].value("type", "") == "status";
        } catch (const std::exception&) {
          return false;
        }
      },
      timeout, 50ms);
  if (!up || !process_->running()) {
    throw std::runtime_error("`bosun run --config " + config_file_.string() +
                             "` did not come up within " + std::to_string(timeout.count()) +
                             " ms; its log:\n" + log());
  }
}

// ----------------------------------------------------------- LogCapture ---

class LogCapture::Sink : public spdlog::sinks::base_sink<std::mutex> {
 public:
  std::string text() {
    std::lock_guard<std::mutex> lock(mutex_);
    return text_;
  }

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    text_.append(msg.payload.data(), msg.payload.size());
    text_.push_back('\n');
  }
  void flush_() override {}

 private:
  std::string text_;
};

LogCapture::LogCapture() : sink_(std::make_shared<Sink>()) {
  spdlog::default_logger()->sinks().push_back(sink_);
}

LogCapture::~LogCapture() {
  auto& sinks = spdlog::default_logger()->sinks();
  sinks.erase(std::remove(sinks.begin(), sinks.end(), sink_), sinks.end());
}

std::string LogCapture::text() const {
  return sink_->text();
}

}  // namespace bosun::test
