// The node's NATS connection (DESIGN §5, §7): a thin, safe wrapper over nats.c
// configured from BrokerConfig. nats.c stays out of this header.
#pragma once

#include "bosun/host/config.hpp"

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

namespace bosun::host {

class TransportError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// "<prefix>.req.<to_node>.<method>". Throws std::invalid_argument naming the
// bad part when a part is not a single NATS token (the prefix may be dotted).
std::string request_subject(std::string_view prefix, std::string_view to_node,
                            std::string_view method);
// "<prefix>.evt.<from_node>.<event>", validated the same way.
std::string event_subject(std::string_view prefix, std::string_view from_node,
                          std::string_view event);

// The public key ("U...") of a NATS user nkey seed ("SU..."); throws
// TransportError when the seed does not decode.
std::string nkey_public_from_seed(std::string_view seed);

// Connection events. They run on nats.c's callback thread: keep them quick.
struct TransportCallbacks {
  std::function<void()> on_connected;     // first connect, also when it happened in the background
  std::function<void()> on_disconnected;  // lost the server; nats.c reconnects by itself
  std::function<void()> on_reconnected;
  std::function<void()> on_closed;            // for good: closed, or reconnect attempts exhausted
  std::function<void(std::string)> on_error;  // asynchronous errors (slow consumer, permissions)
};

struct Incoming {
  std::string subject;
  std::string reply;  // empty when the sender wants no reply
  std::string data;
  // Messages still queued on the subscription after this one: a handler may
  // hold work back while more are coming and do it for all at once.
  int pending = 0;
};

class Transport {
 public:
  // Runs on a nats.c delivery thread (one per subscription): hand the work
  // elsewhere and return. An exception it throws is logged and reported via on_error.
  using Handler = std::function<void(Incoming&&)>;
  using SubscriptionId = uint64_t;

  Transport(const BrokerConfig& config, std::string node_name, TransportCallbacks callbacks = {});
  // Closes the connection; no handler or callback runs once it has returned.
  ~Transport();
  Transport(const Transport&) = delete;
  Transport& operator=(const Transport&) = delete;

  // Connects to the configured servers, in order. Throws TransportError when
  // the options are bad (missing key file, ...) or, unless retry_on_failed,
  // when no server can be reached. With retry_on_failed it returns at once
  // and the connection comes up in the background (on_connected tells).
  void connect(bool retry_on_failed = false);

  bool connected() const;
  uint64_t reconnects() const;
  uint64_t disconnects() const;
  std::string connected_url() const;  // empty when not connected
  const std::string& node_name() const;

  // Subscriptions made before the connection is up are sent when it comes up.
  SubscriptionId subscribe(const std::string& subject, Handler handler);
  // No delivery is running or will start once this returns, except when it is
  // called from a handler (then the current delivery finishes first).
  void unsubscribe(SubscriptionId id);

  // False (and logged) when the message cannot be queued: closed, not yet
  // connected without retry, or a bad subject. During a reconnect nats.c
  // buffers it, which counts as success.
  bool publish(const std::string& subject, std::string_view data,
               const std::string& reply_subject = "");
  std::string new_inbox();
  bool flush(std::chrono::milliseconds timeout);
  // Blocking request/reply for tests and the CLI; nullopt on timeout or no responders.
  std::optional<std::string> request(const std::string& subject, std::string_view data,
                                     std::chrono::milliseconds timeout);

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace bosun::host
