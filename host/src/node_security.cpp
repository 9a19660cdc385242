// The node's side of DESIGN §7: sealing what it publishes, opening what it
// takes from the bus, authorizing requests (security.allow), and the key
// set the central node hands out.
#include <spdlog/spdlog.h>

#include <cmath>

#include "bosun/host/transport.hpp"
#include "node_impl.hpp"
#include "security.hpp"
#include "signing.hpp"

namespace bosun::host {

namespace {

bool is_crypt_method(const std::string& method) {
  return method == "push_public_key" || method == "update_public_key" ||
         method == "delete_public_key" || method == "request_public_keys" ||
         method == "push_cluster_secret" || method == "request_cluster_secret" ||
         method == "receive_cluster_secret";
}

// Whether security.allow lets `peer` (or every peer, "*") invoke `method`.
bool allows(const SecurityConfig& security, const std::string& peer, const std::string& method) {
  for (const std::string& who : {peer, std::string("*")}) {
    auto it = security.allow.find(who);
    if (it == security.allow.end()) continue;
    for (const auto& meth : it->second) {
      if (meth == "*" || meth == method) return true;
    }
  }
  return false;
}

// The node a request's subject "<prefix>.req.<node>.<method>" goes to;
// empty when the subject is no request's.
std::string_view request_addressee(std::string_view subject, std::string_view prefix) {
  if (subject.size() <= prefix.size() + 5 || subject.substr(0, prefix.size()) != prefix ||
      subject.substr(prefix.size(), 5) != ".req.") {
    return {};
  }
  std::string_view rest = subject.substr(prefix.size() + 5);
  return rest.substr(0, rest.find('.'));
}

}  // namespace

// Any other reply method runs only if the peer may invoke it as a request.
bool answer_only(const std::string& method) {
  return method == "none" || method == "to_file" || method == "to_file_append" ||
         method == "to_console" || method == "error_log" || method == "relay_reply";
}

std::string Node::Impl::pair_peer(std::string_view subject) const {
  if (!identity || !trust || !current_config()->security.pair_keys) return {};
  // Requests and replies go to bosun.req.<node>.<method>, ACKs to the
  // sender's _INBOX.<node>. ...; events have many readers: signed.
  std::string_view to;
  if (subject.substr(0, 7) == "_INBOX.") {
    std::string_view rest = subject.substr(7);
    to = rest.substr(0, rest.find('.'));
  } else {
    to = request_addressee(subject, config.broker.subject_prefix);
  }
  if (to.empty()) return {};
  if (to == config.node.name) return identity->public_key_raw();
  return trust->accepted_raw(std::string(to));
}

std::string Node::Impl::seal(std::string_view subject, std::string_view body,
                             bool signature) const {
  if (!identity) return std::string(body);
  return identity->seal(config.node.name, subject, body, now_ms(), nullptr,
                        signature ? std::string() : pair_peer(subject));
}

bool Node::Impl::open_envelope(const Incoming& in, bool record, bool own_ok, std::string& signer,
                               std::string_view& body, std::string* why, std::string* plain) {
  if (!identity) {
    signer.clear();
    body = in.data;
    return true;
  }
  auto refuse = [&](const std::string& reason, std::string text) {
    count_refused(reason);
    *why = std::move(text);
    return false;
  };
  Envelope env;
  std::string problem;
  if (!parse_envelope(in.data, env, &problem)) return refuse("bad_envelope", problem);
  const int64_t now = now_ms();
  const char* what = env.pair ? "the tag" : "the signature";
  if (env.signer == config.node.name && env.public_key == identity->public_key_raw()) {
    if (!identity->verify(env, in.subject)) {
      return refuse("bad_signature",
                    std::string(what) + " does not verify (claims to be " + env.signer + ")");
    }
    if (!own_ok) {
      return refuse("impersonation",
                    "a message of this node's own came back on the bus: a replay, not run");
    }
    signer = env.signer;
    body = env.body;
    return true;
  }
  // Verify before believing anything the message says, the key included:
  // only a message that verifies against the key it carries may make that
  // key pending. A tag verifies only for the node it was made for: the
  // holder of the carried key and this node are the only two that share its
  // pair key.
  if (env.pair && env.for_key != identity->public_key_hint()) {
    return refuse("bad_signature",
                  "a tag made for another key of " + config.node.name + " (" + env.for_key +
                      "; this node's is " + identity->public_key_hint() + "): " + env.signer +
                      " holds another key for " + config.node.name +
                      " than this node's (its security.keys, or this node's key made anew)");
  }
  if (!identity->verify(env, in.subject)) {
    return refuse("bad_signature",
                  std::string(what) + " does not verify against the key it carries (claims to be " +
                      env.signer + "): changed on the way, or forged" +
                      (env.pair ? ", or made for another node" : ""));
  }
  TrustVerdict v = trust->check(env.signer, env.public_key, record, now);
  // A pending key's announcement still brings its RSA key (for once it is accepted).
  if (v.ok || v.reason == "pending_key" || v.reason == "unknown_key") note_announced_rsa(in, env);
  if (!v.ok) return refuse(v.reason, v.text);
  if (v.added) {
    spdlog::info("accepted the key of {} ({})", env.signer,
                 env.signer == config.node.central ? "the central node, on first contact"
                                                   : "security.autoAccept");
    distribute_keys();
    offer_cluster_secret(env.signer);
  }
  const double skew_ms = current_config()->security.allow_skew_s * 1000.0;
  if (std::fabs(static_cast<double>(now - env.signed_at_ms)) > skew_ms) {
    return refuse("stale", "signed by " + env.signer + " " +
                               std::to_string((now - env.signed_at_ms) / 1000) +
                               " s from this node's clock, beyond security.allowSkew (" +
                               std::to_string(static_cast<int64_t>(skew_ms / 1000)) +
                               " s): a replay, or a clock to fix");
  }
  signer = env.signer;
  body = env.body;
  return open_payload(in, env, plain, body, why);
}

bool Node::Impl::authorized(const Message& m, std::string* why) const {
  const std::string& me = config.node.name;
  const std::string& central = config.node.central;
  if (m.is_reply && answer_only(m.method)) return true;
  if (!m.is_reply) {
    // Heartbeats, key announcements and error reports always reach central;
    // only central hands out keys.
    if (me == central &&
        (m.method == "hello" || m.method == "error_log" || m.method == "announce_key")) {
      return true;
    }
    // The crypt module's messages from central; any accepted peer may ask
    // central for the keys or the secret (which goes only to accepted nodes).
    if (is_crypt_method(m.method) && m.from_node == central) return true;
    if (me == central &&
        (m.method == "request_cluster_secret" || m.method == "request_public_keys")) {
      return true;
    }
    if (m.method == "key_set" || m.method == "announce_key") {
      if (m.method == "key_set" && m.from_node == central) return true;
      *why = m.method + " is accepted only " +
             std::string(m.method == "key_set" ? "from the central node " + central
                                               : "by the central node");
      return false;
    }
  }
  if (allows(current_config()->security, m.from_node, m.method)) return true;
  *why = std::string(m.is_reply ? "a reply that runs " : "") + m.from_node + " may not invoke " +
         m.method + " on " + me + " (security.allow)";
  return false;
}

uint32_t Node::Impl::method_flags(const std::string& method) const {
  std::lock_guard<std::mutex> lock(plugins_mu);
  auto it = table->find(method);
  return it == table->end() ? 0 : it->second.flags;
}

bool Node::Impl::is_quick(const std::string& method, bool* pure) const {
  std::lock_guard<std::mutex> lock(plugins_mu);
  auto it = table->find(method);
  if (pure != nullptr) *pure = it != table->end() && it->second.pure;
  return it != table->end() && it->second.quick;
}

nlohmann::json Node::Impl::cause_of(const Incoming& in, const Message& m) const {
  // Only a signature can vouch to a third node; a pair-key tag convinces
  // only its two ends.
  if (m.is_reply || !identity || in.data.size() < 5) return nullptr;
  std::string_view magic = std::string_view(in.data).substr(0, 5);
  if (magic != kEnvelopeMagic && magic != kEncryptedMagic) return nullptr;
  if (!(method_flags(m.method) & BOSUN_METHOD_CARRIES)) return nullptr;
  return {{"subject", in.subject}, {"envelope", base64_encode(in.data)}};
}

bool Node::Impl::authorized_by_cause(Message& m, std::string* why) {
  auto it = m.extra.find("cause");
  if (it == m.extra.end() || !identity) return false;
  const std::string& me = config.node.name;
  auto refuse = [&](const std::string& what) {
    *why += "; the request it carries does not vouch for it: " + what;
    return false;
  };
  const nlohmann::json& cause = *it;
  if (!cause.is_object() || !cause.contains("subject") || !cause["subject"].is_string() ||
      !cause.contains("envelope") || !cause["envelope"].is_string()) {
    return refuse("\"cause\" must be an object with the strings \"subject\" and \"envelope\"");
  }
  Incoming in;
  in.subject = cause["subject"].get<std::string>();
  if (!base64_decode(cause["envelope"].get<std::string>(), in.data)) {
    return refuse("its \"envelope\" is not base64");
  }
  // Sent to the node that now acts for it, or to this node (which had
  // another node act for it: copy_file_to's source).
  const std::string to(request_addressee(in.subject, config.broker.subject_prefix));
  if (to.empty()) return refuse("its subject is not a request's");
  if (to != m.from_node && to != me) {
    return refuse("it was sent to " + to + ", not to " + m.from_node + " or " + me);
  }
  Envelope env;
  std::string problem;
  if (!parse_envelope(in.data, env, &problem)) return refuse(problem);
  if (env.pair) {
    return refuse("it carries a pair-key tag, which only its two ends can check (its sender " +
                  env.signer +
                  " signs such requests only when it has the module whose method "
                  "carries them)");
  }
  if (!identity->verify(env, in.subject)) {
    return refuse("its signature does not verify (claims to be " + env.signer + ")");
  }
  const int64_t now = now_ms();
  TrustVerdict v = trust->check(env.signer, env.public_key, false, now);
  if (!v.ok) return refuse(v.text);
  std::string plain, why_not;
  std::string_view body = env.body;
  if (!open_payload(in, env, &plain, body, &why_not)) {
    return refuse(why_not);
  }
  Message c;
  try {
    c = parse_message(nlohmann::json::parse(body), "the carried request");
  } catch (const std::exception& e) {
    return refuse(e.what());
  }
  if (c.is_reply || c.from_node != env.signer || c.to_node != to ||
      in.subject != config.broker.subject_prefix + ".req." + c.to_node + "." + c.method) {
    return refuse(
        "its message does not match its envelope (a reply, or another sender, "
        "receiver or method than its signature covers)");
  }
  // Good for as long as its call may run.
  auto cfg = current_config();
  double limit_s = effective_timeout_s(*cfg, c);
  if (limit_s <= 0) limit_s = 24 * 3600;
  const double skew_ms = cfg->security.allow_skew_s * 1000.0;
  const double age_ms = static_cast<double>(now - env.signed_at_ms);
  if (age_ms > limit_s * 1000 + skew_ms || -age_ms > skew_ms) {
    return refuse("signed " + std::to_string(static_cast<int64_t>(age_ms / 1000)) +
                  " s ago, outside its methodTimeout and security.allowSkew");
  }
  // It vouches only for the module that handles it: a file copy's request
  // lets its chunks in, not a command.
  MethodEntry of_cause, of_this;
  if (!find_method(c.method, &of_cause, nullptr) || !of_cause.module) {
    return refuse(c.method + " is no module's method on " + me);
  }
  if (!find_method(m.method, &of_this, nullptr) || !of_this.module ||
      of_this.module->name() != of_cause.module->name()) {
    return refuse(m.method + " is not a method of " + of_cause.module->name() + ", which handles " +
                  c.method + " here");
  }
  if (!allows(cfg->security, c.from_node, m.method)) {
    return refuse("its sender " + c.from_node + " may not invoke " + m.method + " on " + me +
                  " either");
  }
  spdlog::debug("{} from {}: authorized as {}, whose request {} ({}) it carries", m.method,
                m.from_node, c.from_node, c.id, c.method);
  m.cause = cause;
  return true;
}

void Node::Impl::announce_key() {
  if (!identity || config.broker.standalone() || config.node.name == config.node.central) return;
  // At start, and again once the RSA key is there (at a first start it is
  // made in the background, at low priority: enrolment does not wait for it).
  std::string rsa_pem = rsa_public_pem();
  // The key travels in the envelope; the central node records it as
  // pending (or knows it). A short budget: the node announces again at its
  // next start, and its heartbeats carry the key too.
  Message m;
  m.id = new_message_id();
  m.from_node = config.node.name;
  m.to_node = config.node.central;
  m.method = "announce_key";
  nlohmann::json keys = {{"ed25519", identity->public_key_b64()}};
  if (!rsa_pem.empty()) keys["rsa"] = rsa_pem;
  m.data = keys.dump();
  m.sent_at_ms = now_ms();
  m.retries = 2;
  m.reply_method = "none";
  asio::post(*pool, [this, m = std::move(m)]() mutable { route(std::move(m)); });
}

void Node::Impl::distribute_keys() {
  if (!trust || config.broker.standalone() || config.node.name != config.node.central) return;
  if (key_set_due.exchange(true)) return;  // one is already on its way
  // Acceptances close together (a fleet enrolled at once) share one round.
  asio::post(io, [this] {
    if (!key_set_timer) key_set_timer = std::make_unique<asio::steady_timer>(io);
    key_set_timer->expires_after(std::chrono::milliseconds(200));
    key_set_timer->async_wait([this](const boost::system::error_code& ec) {
      if (ec) return;
      key_set_due = false;
      nlohmann::json set = trust->accepted_set(rsa_public_pem());
      std::string data = set.dump();
      for (const auto& item : set.items()) {
        if (item.key() == config.node.name) continue;
        Message m;
        m.id = new_message_id();
        m.from_node = config.node.name;
        m.to_node = item.key();
        m.method = "key_set";
        m.data = data;
        m.sent_at_ms = now_ms();
        m.reply_method = "none";
        asio::post(*pool, [this, m = std::move(m)]() mutable { route(std::move(m)); });
      }
      spdlog::info("handing the {} accepted key(s) to every accepted node", set.size());
    });
  });
}

nlohmann::json Node::Impl::keys_op(const std::string& action, const std::string& node) {
  if (!trust) return {{"error", "the node has no trust store (not started)"}};
  auto list = [&] {
    nlohmann::json out = nlohmann::json::array();
    for (const auto& k : trust->list()) out.push_back(k.to_json());
    auto secret = current_cluster_key();
    return nlohmann::json{
        {"node", config.node.name},
        {"publicKey", identity ? identity->public_key_b64() : ""},
        {"rsa", rsa_public_pem()},
        {"clusterSecret", {{"set", secret != nullptr}, {"keyId", secret ? secret->id() : ""}}},
        {"keys", out}};
  };
  if (action == "list") return list();
  if (action != "accept" && action != "reject") {
    return {{"error", "unknown keys action \"" + action + "\" (expected list, accept or reject)"}};
  }
  if (!is_valid_token(node)) return {{"error", "\"" + node + "\" is not a node name"}};
  std::string err = action == "accept" ? trust->accept(node) : trust->reject(node);
  if (!err.empty()) return {{"error", err}};
  spdlog::info("key of {} {} by the operator", node, action == "accept" ? "accepted" : "rejected");
  emit_event("key_" + action + "ed", {{"node", node}});
  distribute_keys();
  if (action == "accept") offer_cluster_secret(node);
  return list();
}

nlohmann::json Node::keys(const std::string& action, const std::string& node) {
  return impl_->keys_op(action, node);
}

}  // namespace bosun::host
