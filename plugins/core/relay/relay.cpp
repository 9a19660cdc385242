// core/relay: Steward's REQRelay (DESIGN §9), the relay node's half. A
// message naming relayViaNode reaches this node as a `relay` message from the
// origin's host, which put the original message whole into `data`:
//
//   origin ---relay---> this node ---original---> target
//   origin <---copy---- this node <---replies---- target
//
// `relay` checks the embedded message, remembers how to answer the origin,
// and sends the message on to its toNode in this node's name, with the
// replies addressed to `relay_reply` here (replyMethodArgs = [relay id]).
// `relay_reply` runs the original replyMethod on this node and forwards a
// copy of every reply (each chunk of a stream, its end included) to the
// origin as the answer to its `relay` message, where the relayReplyMethod
// handles it. So `relay` sends no reply of its own when it succeeds
// (BOSUN_METHOD_DEFERRED): its answer is those copies.
//
// The routes back live in the module's KV store with no cache in memory, so
// they survive a restart of this node and two loaded versions (during a hot
// update) see the same routes:
//   "route/<relay id>"  one relayed message: origin, target, how to answer
//   "pending"           {"<relay id>": deadline in epoch ms, 0 = none}
// A route whose target has not answered by its deadline (replyTimeout after
// the message's methodTimeout) is answered with an error and forgotten, so a
// target that never comes back leaves nothing behind.
#include <bosun/plugin.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace {

using bosun::Error;
using nlohmann::json;

constexpr char kVersion[] = "1.0.0";
constexpr double kMaxSeconds = 7 * 24 * 3600;
constexpr auto kSweepInterval = std::chrono::milliseconds(500);
constexpr size_t kQuoteMax = 120;
constexpr char kPendingKey[] = "pending";
constexpr char kRouteKey[] = "route/";

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

bool is_token(std::string_view s) {
  if (s.empty()) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
  });
}

// `s` in quotes, cut short when long.
std::string in_quotes(std::string_view s) {
  if (s.size() <= kQuoteMax) return "\"" + std::string(s) + "\"";
  return "\"" + std::string(s.substr(0, kQuoteMax)) + "\"... (" + std::to_string(s.size()) +
         " bytes)";
}

Error bad(const std::string& what) {
  return Error("relay: " + what, BOSUN_ERR_INVALID_ARGUMENT);
}

bool is_relay_method(std::string_view m) {
  return m == "relay" || m == "REQRelay" || m == "relay_reply";
}

// The string field `field` of the embedded message; "" when absent or null.
std::string text_field(const json& msg, const char* field) {
  auto it = msg.find(field);
  if (it == msg.end() || it->is_null()) return "";
  if (!it->is_string()) {
    throw bad(std::string("the embedded message's \"") + field + "\" must be a string, not " +
              it->dump());
  }
  return it->get<std::string>();
}

// Copies the fields of `from` named in `names` (from-name, to-name) into `to`.
void copy_fields(const json& from, json& to,
                 std::initializer_list<std::pair<const char*, const char*>> names) {
  for (const auto& [src, dst] : names) {
    auto it = from.find(src);
    if (it != from.end() && !it->is_null()) to[dst] = *it;
  }
}

struct Settings {
  double reply_timeout_s = 3600;
};

Settings parse_settings(std::string_view text) {
  Settings s;
  json j = text.empty() ? json::object() : json::parse(text, nullptr, false);
  if (j.is_null()) j = json::object();
  if (j.is_discarded() || !j.is_object()) {
    throw std::runtime_error("relay settings must be a JSON object, not: " + std::string(text));
  }
  for (const auto& [key, value] : j.items()) {
    if (key == "replyTimeout") {
      if (!value.is_number() || !std::isfinite(value.get<double>()) || value.get<double>() <= 0 ||
          value.get<double>() > kMaxSeconds) {
        throw std::runtime_error(
            "relay settings: \"replyTimeout\" must be a number of seconds > 0 and <= 604800, "
            "not " +
            value.dump());
      }
      s.reply_timeout_s = value.get<double>();
    } else {
      throw std::runtime_error("relay settings: unknown key \"" + key +
                               "\" (known: \"replyTimeout\")");
    }
  }
  return s;
}

// One reply (or one chunk of a streamed reply) on its way back.
struct Chunk {
  std::string data;
  std::string status = "ok";
  std::string error;
  std::string request_method;
  uint32_t seq = 0;
  bool final = true;
};

Chunk chunk_of(const json& reply) {
  Chunk c;
  auto str = [&](const char* f) {
    auto it = reply.find(f);
    return it != reply.end() && it->is_string() ? it->get<std::string>() : std::string();
  };
  c.data = str("data");
  c.error = str("error");
  c.status = str("status");
  if (c.status.empty()) c.status = c.error.empty() ? "ok" : "error";
  c.request_method = str("requestMethod");
  if (auto it = reply.find("seq"); it != reply.end() && it->is_number_unsigned()) {
    c.seq = it->get<uint32_t>();
  }
  if (auto it = reply.find("final"); it != reply.end() && it->is_boolean()) c.final = *it;
  // A reply method is shown an error reply without data as "error: <error>";
  // pass the reply on as the target sent it, so the origin shows it the same.
  if (!c.error.empty() && c.data == "error: " + c.error) c.data.clear();
  return c;
}

class Relay : public bosun::Plugin {
 public:
  Relay(bosun::Host host, std::string_view settings)
      : Plugin(host, settings), settings_(parse_settings(settings)) {
    uint32_t abi = host.api()->abi_version;
    if (BOSUN_ABI_MINOR_OF(abi) < 2) {
      throw bosun::NotApplicable(
          "relay needs a host of ABI 1.2 or newer (deferred methods, replies sent by modules); "
          "this host speaks ABI " +
          std::to_string(BOSUN_ABI_MAJOR_OF(abi)) + "." + std::to_string(BOSUN_ABI_MINOR_OF(abi)));
    }
    self_ = std::string(host.node_name());
    start_timer(kSweepInterval, kSweepInterval, [this] { sweep(); });
  }

  void on_settings(std::string_view text) override {
    Settings s = parse_settings(text);
    std::lock_guard<std::mutex> lock(mu_);
    settings_ = s;
  }

  // Relay step 2: recreate the original message and send it to its toNode.
  void relay(bosun::Call& call) {
    if (call.is_reply()) throw bad("handles requests, not replies");
    const std::string origin(call.from_node());
    const std::string id(call.id());
    if (origin == self_) {
      throw bad("the relay message comes from " + self_ +
                " itself; relaying through the sending node loops (send the message directly)");
    }
    json wrapper = json::parse(call.message_json(), nullptr, false);
    if (!wrapper.is_object()) throw bad("the relay message is not a JSON object");
    json original = embedded_message(call.data());
    std::string target = check_embedded(original);
    std::string method = text_field(original, "method");
    if (auto why = refused(origin, target, method)) throw Error("relay: " + *why);

    // How to answer: "back" to the origin as replies to its relay message
    // (the origin's host made the relay message's reply fields the
    // relayReplyMethod's), "here" with the original replyMethod.
    json back = json::object();
    copy_fields(wrapper, back,
                {{"replyMethod", "method"},
                 {"replyMethodArgs", "methodArgs"},
                 {"replyMethodTimeout", "methodTimeout"},
                 {"replyACKTimeout", "ACKTimeout"},
                 {"replyRetries", "retries"},
                 {"directory", "directory"},
                 {"fileName", "fileName"}});
    if (back.value("method", "").empty()) back["method"] = "none";
    json here = json::object();
    copy_fields(original, here,
                {{"replyMethod", "method"},
                 {"replyMethodArgs", "methodArgs"},
                 {"replyMethodTimeout", "methodTimeout"},
                 {"directory", "directory"},
                 {"fileName", "fileName"}});
    int64_t deadline = 0;
    double timeout_s = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      timeout_s = settings_.reply_timeout_s;
    }
    auto mt = original.find("methodTimeout");
    bool unlimited = mt != original.end() && mt->is_number() && mt->get<double>() == -1;
    if (!unlimited) {
      if (mt != original.end() && mt->is_number() && mt->get<double>() > 0) {
        timeout_s += mt->get<double>();
      }
      deadline = now_ms() + static_cast<int64_t>(std::llround(timeout_s * 1000));
    }
    json route = {{"origin", origin}, {"target", target}, {"method", method},     {"back", back},
                  {"here", here},     {"nextSeq", 0},     {"timeoutS", timeout_s}};

    // The relayed message: the original, sent in this node's name, its
    // replies coming to relay_reply here.
    json out = original;
    for (const char* f :
         {"id", "fromNode", "sentAt", "relayViaNode", "relayReplyMethod", "isReply", "inReplyTo",
          "requestMethod", "final", "seq", "status", "error", "replyMethodTimeout"}) {
      out.erase(f);
    }
    out["replyMethod"] = "relay_reply";
    out["replyMethodArgs"] = json::array({id});

    // Remembered before it is sent: the reply may come back at once.
    remember(id, route, deadline);
    try {
      host().send(json::array({out}).dump());
    } catch (const std::exception& e) {
      forget(id);
      throw Error("relay: node " + self_ + " could not send " + method + " on to " + target + " (" +
                  e.what() + "; " + self_ + "'s log says why)");
    }
    host().debug("relayed " + method + " from " + origin + " to " + target + " (relay " + id + ")");
  }

  // Relay steps 5 and 6: a reply from the target, handled here by the
  // original replyMethod and forwarded to the origin.
  void relay_reply(bosun::Call& call) {
    if (!call.is_reply()) {
      throw bad("relay_reply handles the replies to messages this node relayed, not requests");
    }
    if (call.arg_count() != 1) {
      throw bad("relay_reply expects methodArgs [\"<relay id>\"], got " +
                std::to_string(call.arg_count()) + " arguments");
    }
    const std::string id(call.arg(0));
    json reply = json::parse(call.message_json(), nullptr, false);
    if (!reply.is_object()) throw bad("relay_reply: the reply is not a JSON object");
    Chunk c = chunk_of(reply);

    std::lock_guard<std::mutex> lock(mu_);
    std::optional<json> route = load_route(id);
    if (!route) {
      host().warn("reply from " + std::string(call.from_node()) + " to relayed message " + id +
                  " dropped: no route back (answered already, or expired after replyTimeout)");
      return;
    }
    // Only the node the message was relayed to answers it.
    if (std::string target = route->value("target", ""); call.from_node() != target) {
      host().warn("reply from " + std::string(call.from_node()) + " to relayed message " + id +
                  " dropped: that message went to " + target);
      return;
    }
    if (c.request_method.empty()) c.request_method = route->value("method", "");
    // Forwarded first: if that fails, the route stays for the sweep to answer.
    answer(id, *route, c);
    if (c.final) {
      forget_locked(id);
    } else {
      (*route)["nextSeq"] = c.seq + 1;
      host().kv_put(kRouteKey + id, route->dump());
    }
  }

 private:
  json embedded_message(std::string_view data) const {
    if (data.empty()) {
      throw bad(
          "the relay message has no \"data\"; it must carry the message to relay, as a JSON "
          "object");
    }
    json j = json::parse(data, nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
      throw bad("\"data\" does not hold a message to relay (expected a JSON object, got " +
                in_quotes(data) + ")");
    }
    return j;
  }

  // Checks the embedded message; returns its toNode.
  std::string check_embedded(const json& msg) const {
    if (auto it = msg.find("isReply"); it != msg.end() && it->is_boolean() && it->get<bool>()) {
      throw bad("the embedded message is a reply; only requests are relayed");
    }
    if (auto it = msg.find("toNodes");
        it != msg.end() && !it->is_null() && !(it->is_array() && it->empty())) {
      throw bad(
          "the embedded message names \"toNodes\"; a relay message carries one \"toNode\" (the "
          "origin's host sends one relay message per node)");
    }
    std::string target = text_field(msg, "toNode");
    if (target.empty()) {
      throw bad("the embedded message has no \"toNode\": nothing says where to relay it");
    }
    if (!is_token(target)) {
      throw bad("the embedded message's \"toNode\" " + in_quotes(target) +
                " is not a valid node name (use letters, digits, '_' and '-' only)");
    }
    std::string method = text_field(msg, "method");
    if (method.empty()) throw bad("the embedded message has no \"method\"");
    if (is_relay_method(method)) {
      throw bad("relay chain: the embedded message is itself a " + in_quotes(method) +
                " message; a message is relayed through one node only");
    }
    std::string via = text_field(msg, "relayViaNode");
    if (!via.empty() && via != self_) {
      throw bad("relay chain: the embedded message asks to be relayed again, via " +
                in_quotes(via) + ", but it is being relayed by " + self_ +
                "; a message is relayed through one node only");
    }
    std::string reply_method = text_field(msg, "replyMethod");
    if (is_relay_method(reply_method)) {
      throw bad("the embedded message's \"replyMethod\" " + in_quotes(reply_method) +
                " is one of the relay's own methods");
    }
    return target;
  }

  // Who may relay what: the seam for security.allow (issue 6). The relay
  // node sends in its own name (DESIGN §7), so its own allow decides whether
  // `origin` may reach `method` on `target` through it; that check belongs
  // here, before anything is remembered or sent. Until then, whoever may
  // call `relay` on this node may relay anything.
  std::optional<std::string> refused(const std::string& /*origin*/, const std::string& /*target*/,
                                     const std::string& /*method*/) const {
    return std::nullopt;
  }

  // Sends one reply chunk on its two ways: to the original replyMethod here
  // and, as the answer to the relay message, to the origin.
  void answer(const std::string& id, const json& route, const Chunk& c) {
    json common = {{"isReply", true}, {"inReplyTo", id},  {"requestMethod", c.request_method},
                   {"seq", c.seq},    {"final", c.final}, {"status", c.status}};
    if (!c.data.empty()) common["data"] = c.data;
    if (!c.error.empty()) common["error"] = c.error;

    const json& here = route.at("here");
    std::string here_method = here.value("method", "");
    if (!here_method.empty() && here_method != "none") {
      json m = common;
      m.update(here);
      m["toNode"] = self_;
      try {
        host().send(m.dump());
      } catch (const std::exception& e) {
        host().error("relay " + id + ": cannot run replyMethod " + here_method +
                     " here: " + e.what());
      }
    }
    json back = common;
    back.update(route.at("back"));
    back["toNode"] = route.at("origin");
    host().send(back.dump());
  }

  // Answers every route past its deadline with an error, and forgets it.
  void sweep() {
    std::lock_guard<std::mutex> lock(mu_);
    json pending = load_pending();
    int64_t now = now_ms();
    std::vector<std::string> expired;
    for (const auto& [id, deadline] : pending.items()) {
      if (!deadline.is_number_integer()) {
        expired.push_back(id);
        continue;
      }
      int64_t d = deadline.get<int64_t>();
      if (d > 0 && d <= now) expired.push_back(id);
    }
    for (const auto& id : expired) {
      std::optional<json> route = load_route(id);
      forget_locked(id);
      if (!route) continue;
      std::string target = route->value("target", "?");
      std::ostringstream secs;
      secs << route->value("timeoutS", 0.0);
      Chunk c;
      c.status = "error";
      c.error = "relay via " + self_ + ": no reply from " + target + " to " +
                route->value("method", "?") + " within " + secs.str() + " s; " + target +
                " may be down past its retry budget (" + self_ + "'s log says more)";
      c.request_method = route->value("method", "");
      c.seq = route->value("nextSeq", 0u);
      c.final = true;
      host().warn("relay " + id + ": " + c.error);
      try {
        answer(id, *route, c);
      } catch (const std::exception& e) {
        host().error("relay " + id + ": cannot answer " + route->value("origin", "?") + ": " +
                     e.what());
      }
    }
  }

  // ---- the routes in KV; callers hold mu_ (except remember / forget)

  json load_pending() const {
    auto v = host().kv_get(kPendingKey);
    if (!v) return json::object();
    json j = json::parse(*v, nullptr, false);
    if (!j.is_object()) {
      host().error("the pending relays in KV do not decode; starting afresh");
      return json::object();
    }
    return j;
  }

  std::optional<json> load_route(const std::string& id) const {
    auto v = host().kv_get(kRouteKey + id);
    if (!v) return std::nullopt;
    json j = json::parse(*v, nullptr, false);
    if (!j.is_object() || !j.contains("origin") || !j.contains("back") || !j.contains("here")) {
      host().error("relay " + id + ": its route in KV does not decode");
      return std::nullopt;
    }
    return j;
  }

  void remember(const std::string& id, const json& route, int64_t deadline) {
    std::lock_guard<std::mutex> lock(mu_);
    host().kv_put(kRouteKey + id, route.dump());
    json pending = load_pending();
    pending[id] = deadline;
    host().kv_put(kPendingKey, pending.dump());
  }

  void forget(const std::string& id) {
    std::lock_guard<std::mutex> lock(mu_);
    forget_locked(id);
  }

  void forget_locked(const std::string& id) {
    host().kv_delete(kRouteKey + id);
    json pending = load_pending();
    if (pending.erase(id) > 0) host().kv_put(kPendingKey, pending.dump());
  }

  std::mutex mu_;  // the routes' read-modify-writes, and settings_
  Settings settings_;
  std::string self_;
};

}  // namespace

BOSUN_PLUGIN(Relay, "relay", kVersion, "Relay messages through this node (Steward's REQRelay)",
             BOSUN_METHOD_EX(Relay, relay, "relay", BOSUN_METHOD_DEFERRED,
                             "send the message in \"data\" on to its toNode; replies go back to "
                             "the sender"),
             BOSUN_METHOD_EX(Relay, relay_reply, "relay_reply",
                             BOSUN_METHOD_REPLY | BOSUN_METHOD_END_MARKERS,
                             "reply method of relayed messages: runs the original replyMethod "
                             "here and forwards the reply to where the message came from"))
