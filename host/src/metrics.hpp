// Prometheus metrics on metrics.listen (DESIGN §10): every name prefixed
// bosun_. Private to the host; Node::Impl holds one only when metrics.listen
// is set, so a node without metrics pays a null check per event.
//
// Counters by (method, peer) are created once per label set and cached:
// an event costs one map lookup under a mutex and an atomic add. The label
// sets are bounded: past kMaxRows the peer folds into "other", and past
// twice that the method too.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace bosun::host {

// What the node reports at each scrape (read then, not counted per event).
struct MetricsState {
  uint64_t inflight_calls = 0;
  uint64_t outbox_depth = 0;
  uint64_t reconnects = 0;
  uint64_t duplicates = 0;
  struct Plugin {
    std::string name, version, state;
  };
  std::vector<Plugin> plugins;
};

enum class MessageEvent { sent, received, acked, retried, failed };

class Metrics {
 public:
  static constexpr size_t kMaxRows = 1000;

  // Serves GET /metrics on `listen` ("host:port") from now on. Throws
  // std::runtime_error naming metrics.listen when it cannot listen there.
  Metrics(const std::string& listen, std::function<MetricsState()> state);
  ~Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  void count(MessageEvent event, std::string_view method, std::string_view peer);
  void observe_handler(std::string_view method, double seconds);
  // One of kRefusedReasons; anything else counts as "other".
  void count_refused(std::string_view reason);
  void count_update(std::string_view plugin, std::string_view status);

  // The TCP ports it listens on (the real one when listen asked for port 0).
  std::vector<int> ports() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// The reasons a message from the bus is refused (bosun_messages_refused_total).
inline constexpr std::string_view kRefusedReasons[] = {
    "too_large",        "bad_json",        "bad_message",    "wrong_node",  "bad_id",
    "subject_mismatch", "bad_envelope",    "bad_signature",  "unknown_key", "pending_key",
    "rejected_key",     "conflicting_key", "impersonation",  "stale",       "not_allowed",
    "bad_ciphertext",   "not_encrypted",   "unknown_secret", "other"};

}  // namespace bosun::host
