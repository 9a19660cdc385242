// Running real standalone nodes in tests: an in-process bosun::host::Node on
// a background thread, or the real `bosun run` binary as a child process,
// each in its own temp folder with exactly the modules the test chose.
#pragma once

#include <bosun/host/config.hpp>
#include <bosun/host/message.hpp>
#include <bosun/host/node.hpp>

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "test_util.hpp"

namespace bosun::test {

using namespace std::chrono_literals;

std::filesystem::path fixture_module(const std::string& name);  // BOSUN_FIXTURE_DIR/<name>.so
std::filesystem::path plugin_module(const std::string& name);   // BOSUN_PLUGIN_DIR/<name>.so

// Copies `from` to `to` with mode 0755 (a module the loader accepts).
void copy_module(const std::filesystem::path& from, const std::filesystem::path& to);

// A standalone node laid out in a fresh temp folder:
//   <root>/plugins   plugins.dir (0755); modules are copied in, so each test
//                    controls what loads
//   <root>/data      node.dataDir
// The config document is editable (doc()) until config() or write_config().
class NodeSetup {
 public:
  explicit NodeSetup(std::string name = "n1");

  const std::string& name() const { return name_; }
  const std::filesystem::path& root() const { return dir_.path(); }
  std::filesystem::path plugins_dir() const { return root() / "plugins"; }
  std::filesystem::path data_dir() const { return root() / "data"; }
  std::filesystem::path socket() const { return data_dir() / "bosun.sock"; }

  // Copies a module into plugins_dir() as `file_name` (default: its own file name).
  std::filesystem::path add_module(const std::filesystem::path& file,
                                   const std::string& file_name = "");
  std::filesystem::path add_fixture(const std::string& name) {
    return add_module(fixture_module(name));
  }
  std::filesystem::path add_plugin(const std::string& name) {
    return add_module(plugin_module(name));
  }

  nlohmann::json& doc() { return doc_; }
  nlohmann::json& extension(const std::string& plugin) { return doc_["extensions"][plugin]; }

  host::Config config() const;  // parse_config(doc(), root())
  // Writes doc() to <root>/<file_name> and returns its path.
  std::filesystem::path write_config(const std::string& file_name = "bosun.json") const;

 private:
  std::string name_;
  TempDir dir_;
  nlohmann::json doc_;
};

// A Node started on the calling thread and run on a background one.
class RunningNode {
 public:
  explicit RunningNode(host::Config config);  // throws what Node::start throws
  ~RunningNode();
  RunningNode(const RunningNode&) = delete;
  RunningNode& operator=(const RunningNode&) = delete;

  host::Node& node() { return *node_; }
  host::Node* operator->() { return node_.get(); }
  std::filesystem::path socket() const { return socket_; }
  // Stops the loop, joins the thread and destroys the Node (modules unloaded,
  // storage closed). Idempotent. A node still running after `timeout` is
  // wedged: the test fails and the node is left behind (leaked), so a host
  // deadlock fails one test instead of hanging the whole run.
  void stop(std::chrono::milliseconds timeout = 20s);

 private:
  struct Done {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
  };
  std::filesystem::path socket_;
  std::unique_ptr<host::Node> node_;
  std::shared_ptr<Done> done_ = std::make_shared<Done>();
  std::thread thread_;
};

// Collects the replies Node::submit delivers.
class CollectingWaiter : public host::ReplyWaiter {
 public:
  void on_reply(const host::Message& reply) override;
  // Waits until `count` final replies have arrived; false on timeout.
  bool wait_finals(size_t count, std::chrono::milliseconds timeout = 20s);
  std::vector<host::Message> replies() const;
  std::vector<host::Message> replies_to(const std::string& id) const;  // in arrival order

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<host::Message> replies_;
  size_t finals_ = 0;
};

// Submits `batch` to `node` and waits for the final reply of each accepted
// message. Fails the test (and returns what came) when one is late.
struct SubmitOutcome {
  host::SubmitResult result;
  std::vector<host::Message> replies;
  const host::Message* final_reply(size_t accepted_index = 0) const;  // null if none
};
SubmitOutcome submit_and_wait(host::Node& node, const nlohmann::json& batch,
                              std::chrono::milliseconds timeout = 20s);

// Sends one JSON value through NodeClient and returns every line the node
// answers until it closes the connection. Throws std::runtime_error when the
// answer has not ended within `timeout`.
std::vector<nlohmann::json> socket_request(const std::filesystem::path& socket,
                                           const nlohmann::json& request,
                                           std::chrono::milliseconds timeout = 20s);
// {"op":"send","messages":batch,"wait":true,"timeout":wait_s} through socket_request.
std::vector<nlohmann::json> socket_send_wait(const std::filesystem::path& socket,
                                             const nlohmann::json& batch, double wait_s = 15);
// The lines of `lines` whose "type" is `type`.
std::vector<nlohmann::json> lines_of_type(const std::vector<nlohmann::json>& lines,
                                          std::string_view type);

// Writes `bytes` as they are (no JSON encoding), half-closes, and returns the
// raw answer lines. Throws std::runtime_error on timeout.
std::vector<std::string> socket_raw(const std::filesystem::path& socket, const std::string& bytes,
                                    std::chrono::milliseconds timeout = 20s);

// The real binary: writes setup's config, starts `bosun run --config FILE`
// (output to <root>/bosun-run.log) and waits until its socket answers a
// status request. Throws std::runtime_error with the log when it does not.
class BosunRun {
 public:
  explicit BosunRun(const NodeSetup& setup, std::chrono::milliseconds timeout = 30s);
  Process& process() { return *process_; }
  const std::filesystem::path& config_file() const { return config_file_; }
  std::string log() const { return read_file(log_file_); }

 private:
  std::filesystem::path config_file_;
  std::filesystem::path log_file_;
  std::unique_ptr<Process> process_;
};

// Collects what is logged through spdlog's default logger while it lives.
// Create it before the node starts and destroy it after the node stopped.
class LogCapture {
 public:
  LogCapture();
  ~LogCapture();
  LogCapture(const LogCapture&) = delete;
  LogCapture& operator=(const LogCapture&) = delete;
  std::string text() const;
  bool contains(std::string_view needle) const { return text().find(needle) != std::string::npos; }

  class Sink;

 private:
  std::shared_ptr<Sink> sink_;
};

// Collects the payloads of one event a node emits, while it lives.
class EventPayloads {
 public:
  EventPayloads(host::Node& node, std::string event) : node_(node), event_(std::move(event)) {
    id_ = node.add_event_listener([this](const std::string& e, const nlohmann::json& body) {
      if (e != event_) return;
      std::lock_guard<std::mutex> lock(mu_);
      payloads_.push_back(body.value("payload", nlohmann::json::object()));
    });
  }
  ~EventPayloads() { node_.remove_event_listener(id_); }
  EventPayloads(const EventPayloads&) = delete;
  EventPayloads& operator=(const EventPayloads&) = delete;
  std::vector<nlohmann::json> payloads() {
    std::lock_guard<std::mutex> lock(mu_);
    return payloads_;
  }

 private:
  host::Node& node_;
  const std::string event_;
  uint64_t id_ = 0;
  std::mutex mu_;
  std::vector<nlohmann::json> payloads_;
};

}  // namespace bosun::test
