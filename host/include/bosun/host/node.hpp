// A running bosun node: its modules, its calls, its local message API.
#pragma once

#include <nlohmann/json.hpp>

#include <chrono>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "bosun/host/config.hpp"
#include "bosun/host/message.hpp"

namespace bosun::host {

enum class PluginState { active, updating, rolling_back, failed, disabled, inactive };
const char* to_string(PluginState s);

struct PluginInfo {
  std::string name;
  std::string version;
  std::string path;
  std::string description;
  PluginState state = PluginState::failed;
  std::string reason;  // why it is failed / inactive / disabled
  std::vector<std::string> methods;
  nlohmann::json to_json() const;
};

// Receives the replies to messages it submitted (a `bosun send --wait`).
// Called on host threads, in each stream's order.
class ReplyWaiter {
 public:
  virtual ~ReplyWaiter() = default;
  virtual void on_reply(const Message& reply) = 0;
};

struct SubmitResult {
  struct Accepted {
    size_t index;
    std::string id;
    std::string to_node;
    std::string method;
  };
  struct Rejected {
    size_t index;
    std::string error;
  };
  std::vector<Accepted> accepted;
  std::vector<Rejected> errors;
  nlohmann::json to_json() const;
};

// Where the time of one hot update went (Node::update_plugin).
struct UpdateTimings {
  std::chrono::nanoseconds probe{0};  // the child process that loads and inits it first
  std::chrono::nanoseconds swap{0};   // open beside the running version, init, swap the table
};

// Receives events (name, full event JSON) as the node emits them.
using EventListener = std::function<void(const std::string& event, const nlohmann::json& body)>;

class Node {
 public:
  explicit Node(Config config);
  ~Node();
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  // Opens storage, loads modules, listens on the socket. Throws on what
  // makes the node unable to start (bad data folder, socket in use).
  void start();
  // Runs the event loop on the calling thread until stop().
  void run();
  // Asks the node to stop (thread-safe, signal-safe via asio).
  void stop();

  // Takes a JSON array (or one object) of messages; `from_node` empty means
  // this node. Bad messages are reported by index; the rest go on.
  SubmitResult submit(const nlohmann::json& batch, std::shared_ptr<ReplyWaiter> waiter = nullptr,
                      const std::string& from_node = "");

  // Runs `work` on the worker pool (for callers that must not block).
  void post(std::function<void()> work);

  std::vector<PluginInfo> plugins() const;
  // Delivery counters: sent, acked, retried, failed, received, dropped, ...
  nlohmann::json counters() const;
  nlohmann::json running_calls() const;
  // A snapshot of the running config (its live fields change on reload).
  Config config() const;
  const std::string& name() const;

  // Re-reads the config file the node was started from and applies what can
  // change while running (DESIGN §6, §8): extensions switched off are
  // drained and unloaded, switched on are loaded, changed settings reach
  // the module's on_settings, and defaults, host.drainTimeout and
  // plugins.probation apply to new work. A config with an error is refused
  // as a whole; other changes are listed as needing a restart. Returns the
  // outcome, also published as event "config_reloaded":
  //   {"node", "file", "status": "reloaded"|"unchanged"|"partial"|"failed"|"refused",
  //    "error" (refused), "loaded", "unloaded", "settingsUpdated", "applied",
  //    "failed", "needsRestart", "durationMs"}
  // Thread-safe; waits for unloaded modules to drain (host.drainTimeout).
  nlohmann::json reload();

  // The trust store (`bosun keys`): action "list", "accept" or "reject"
  // (with a node name). Returns {"keys": [...]} or {"error": "..."}.
  nlohmann::json keys(const std::string& action, const std::string& node = {});

  // Hot-updates plugin `name` from a module file already on disk and
  // verified (update_plugin's staging does that): probe, load beside, swap,
  // drain. Returns the UpdateResult; `timings`, when given, gets the phases.
  nlohmann::json update_plugin(const std::string& name, const std::filesystem::path& module,
                               const std::string& expect_version = "",
                               UpdateTimings* timings = nullptr);

  // Event subscription (for `bosun watch` and tests); returns an id.
  uint64_t add_event_listener(EventListener listener);
  void remove_event_listener(uint64_t id);

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace bosun::host
