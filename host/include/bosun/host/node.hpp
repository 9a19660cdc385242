// A running bosun node: its modules, its calls, its local message API.
#pragma once

#include <nlohmann/json.hpp>

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
  const Config& config() const;
  const std::string& name() const;

  // Event subscription (for `bosun watch` and tests); returns an id.
  uint64_t add_event_listener(EventListener listener);
  void remove_event_listener(uint64_t id);

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace bosun::host
