#include <spdlog/spdlog.h>

#include "bosun/host/message.hpp"
#include "bosun/host/store.hpp"
#include "crypt.hpp"
#include "security.hpp"

namespace bosun::host {

namespace {

constexpr std::string_view kKeyPrefix = "peerkey/";

bool matches(const std::string& pattern, const std::string& name) {
  if (pattern == "*") return true;
  if (!pattern.empty() && pattern.back() == '*') {
    return name.compare(0, pattern.size() - 1, pattern, 0, pattern.size() - 1) == 0;
  }
  return pattern == name;
}

}  // namespace

// ----------------------------------------------------------- TrustStore ---

std::string_view key_state_name(KeyState s) {
  switch (s) {
    case KeyState::pending: return "pending";
    case KeyState::accepted: return "accepted";
    case KeyState::rejected: return "rejected";
  }
  return "?";
}

nlohmann::json PeerKey::to_json() const {
  return {{"node", node},
          {"publicKey", public_key_b64},
          {"rsa", rsa_pem},
          {"state", key_state_name(state)},
          {"source", source},
          {"firstSeen", first_seen_ms},
          {"lastSeen", last_seen_ms}};
}

namespace {
KeyState state_from(const std::string& s) {
  if (s == "accepted") return KeyState::accepted;
  if (s == "rejected") return KeyState::rejected;
  return KeyState::pending;
}
}  // namespace

TrustStore::TrustStore(Store& store, std::string self, std::string self_public_b64,
                       std::string central)
    : store_(store),
      self_(std::move(self)),
      self_public_b64_(std::move(self_public_b64)),
      central_(std::move(central)) {
  store_.for_each(Db::meta, kKeyPrefix, [&](std::string_view key, std::string_view value) {
    nlohmann::json j = nlohmann::json::parse(value, nullptr, false);
    if (!j.is_object()) return true;
    PeerKey k;
    k.node = std::string(key.substr(kKeyPrefix.size()));
    k.public_key_b64 = j.value("publicKey", "");
    k.rsa_pem = j.value("rsa", "");
    k.state = state_from(j.value("state", ""));
    k.source = j.value("source", "");
    k.first_seen_ms = j.value("firstSeen", int64_t{0});
    Entry e = make_entry(std::move(k));
    if (!e.key) return true;  // a damaged entry: as if unknown
    if (e.info.state == KeyState::pending) ++pending_;
    keys_[e.info.node] = std::move(e);
    return true;
  });
}

TrustStore::Entry TrustStore::make_entry(PeerKey info) const {
  Entry e;
  std::string raw;
  if (base64_decode(info.public_key_b64, raw) && raw.size() == 32) {
    e.key = ed25519_public_key(raw);
    e.raw = std::move(raw);
  }
  e.info = std::move(info);
  return e;
}

void TrustStore::save(const PeerKey& k) {
  nlohmann::json j = {{"publicKey", k.public_key_b64},
                      {"rsa", k.rsa_pem},
                      {"state", key_state_name(k.state)},
                      {"source", k.source},
                      {"firstSeen", k.first_seen_ms}};
  // Under mu_: a blocking write could lead a commit and run completions
  // that seal messages, which take mu_ (pair keys): a deadlock.
  persist(std::string(kKeyPrefix) + k.node, j.dump());
}

void TrustStore::persist(std::string key, std::optional<std::string> value) {
  std::string what = "trust store: cannot save " + key;
  store_.write_later(
      [key = std::move(key), value = std::move(value)](WriteTxn& t) {
        if (value) {
          t.put(Db::meta, key, *value);
        } else {
          t.del(Db::meta, key);
        }
      },
      log_write_failure(std::move(what)));
}

void TrustStore::configure(const SecurityConfig& cfg) {
  std::lock_guard<std::mutex> lock(mu_);
  pinned_ = cfg.keys;
  auto_accept_ = cfg.auto_accept;
  for (const auto& [node, b64] : pinned_) {
    auto it = keys_.find(node);
    if (it != keys_.end() && it->second.info.public_key_b64 == b64 &&
        it->second.info.state == KeyState::accepted && it->second.info.source == "config") {
      continue;
    }
    if (it != keys_.end() && it->second.info.state == KeyState::pending) --pending_;
    PeerKey k;
    k.node = node;
    k.public_key_b64 = b64;
    k.state = KeyState::accepted;
    k.source = "config";
    k.first_seen_ms = it != keys_.end() ? it->second.info.first_seen_ms : 0;
    save(k);
    keys_[node] = make_entry(std::move(k));
  }
}

bool TrustStore::auto_accepted(const std::string& node) const {
  for (const auto& p : auto_accept_) {
    if (matches(p, node)) return true;
  }
  return false;
}

TrustVerdict TrustStore::check(const std::string& signer, const std::string& public_key_raw,
                               bool record, int64_t now_ms) {
  TrustVerdict v;
  auto refuse = [&](std::string reason, std::string text) {
    v.ok = false;
    v.reason = std::move(reason);
    v.text = std::move(text);
    return v;
  };
  if (signer == self_) {
    return refuse("impersonation", "a message on the bus claims to come from this node (" + self_ +
                                       ") but was not sent by it");
  }
  std::lock_guard<std::mutex> lock(mu_);
  auto it = keys_.find(signer);
  if (it != keys_.end()) {
    Entry& e = it->second;
    if (e.raw == public_key_raw) {
      e.info.last_seen_ms = now_ms;
      switch (e.info.state) {
        case KeyState::accepted:
          v.ok = true;
          v.key = e.key;
          return v;
        case KeyState::pending:
          return refuse("pending_key", "the key of " + signer +
                                           " is pending: an operator accepts it with `bosun "
                                           "keys accept " +
                                           signer + "` on " + self_);
        case KeyState::rejected:
          return refuse("rejected_key", "the key of " + signer + " was rejected on " + self_);
      }
    }
    if (e.info.state == KeyState::accepted) {
      return refuse("impersonation", "a message claims to come from " + signer +
                                         " but is signed with another key than the one " + self_ +
                                         " accepted for it (" + e.info.source + ")");
    }
    if (e.info.state == KeyState::pending) {
      return refuse("conflicting_key", "a second key for " + signer +
                                           " while another is pending on " + self_ +
                                           "; reject the pending one first if the node's key "
                                           "really changed");
    }
    // Rejected before with another key: this one waits for the operator.
  }
  // The central node is pinned on first contact, whatever the message (its
  // ACK of this node's announcement may well be the first).
  bool central_first = signer == central_ && pinned_.count(central_) == 0 && it == keys_.end();
  if (!record && !central_first) {
    return refuse("unknown_key", "the key of " + signer + " is not known on " + self_);
  }
  PeerKey k;
  k.node = signer;
  k.public_key_b64 = base64_encode(public_key_raw);
  k.first_seen_ms = now_ms;
  k.last_seen_ms = now_ms;
  if (central_first) {
    k.state = KeyState::accepted;
    k.source = "first contact";
  } else if (auto_accepted(signer)) {
    k.state = KeyState::accepted;
    k.source = "autoAccept";
  } else {
    if (pending_ >= kMaxPending) {
      return refuse("unknown_key", "the key of " + signer + " is unknown on " + self_ + " and " +
                                       std::to_string(kMaxPending) +
                                       " keys already wait for an operator; not recorded");
    }
    k.state = KeyState::pending;
    k.source = "seen";
  }
  save(k);
  if (it != keys_.end()) keys_.erase(it);
  Entry e = make_entry(k);
  if (k.state == KeyState::pending) {
    ++pending_;
    keys_[signer] = std::move(e);
    return refuse("unknown_key", "the key of " + signer + " is new on " + self_ +
                                     "; recorded as pending: accept it with `bosun keys accept " +
                                     signer + "`");
  }
  v.ok = true;
  v.added = true;
  v.key = e.key;
  keys_[signer] = std::move(e);
  return v;
}

std::vector<PeerKey> TrustStore::list() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<PeerKey> out;
  for (const auto& [n, e] : keys_) out.push_back(e.info);
  return out;
}

std::string TrustStore::accept(const std::string& node, const std::string& source) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = keys_.find(node);
  if (it == keys_.end()) {
    return "no key of " + node + " is known on " + self_ +
           " (a node's key appears here once it has sent a message)";
  }
  Entry& e = it->second;
  if (e.info.state == KeyState::accepted) return "";
  if (e.info.state == KeyState::pending) --pending_;
  e.info.state = KeyState::accepted;
  e.info.source = source;
  save(e.info);
  return "";
}

std::string TrustStore::reject(const std::string& node) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = keys_.find(node);
  if (it == keys_.end()) return "no key of " + node + " is known on " + self_;
  Entry& e = it->second;
  if (pinned_.count(node)) {
    return "the key of " + node + " is pinned in the config (security.keys); remove it there";
  }
  if (e.info.state == KeyState::pending) --pending_;
  e.info.state = KeyState::rejected;
  e.info.source = "operator";
  save(e.info);
  return "";
}

std::string TrustStore::remove(const std::string& node) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = keys_.find(node);
  if (it == keys_.end()) return "no key of " + node + " is known on " + self_;
  if (pinned_.count(node)) {
    return "the key of " + node + " is pinned in the config (security.keys); remove it there";
  }
  if (it->second.info.state == KeyState::pending) --pending_;
  keys_.erase(it);
  persist(std::string(kKeyPrefix) + node, std::nullopt);
  return "";
}

std::string TrustStore::set_rsa(const std::string& node, const std::string& ed25519_raw,
                                const std::string& rsa_pem) {
  std::string problem = rsa_public_key_problem(rsa_pem);
  if (!problem.empty()) return "the RSA key " + node + " announced is " + problem;
  const std::string b64 = base64_encode(ed25519_raw);
  std::lock_guard<std::mutex> lock(mu_);
  auto it = keys_.find(node);
  if (it == keys_.end() || it->second.info.public_key_b64 != b64 ||
      it->second.info.state == KeyState::rejected) {
    return "the RSA key of " + node + " is not signed with a key " + self_ + " holds for it";
  }
  if (it->second.info.rsa_pem == rsa_pem) return "";
  it->second.info.rsa_pem = rsa_pem;
  save(it->second.info);
  return "";
}

std::string TrustStore::accepted_raw(const std::string& node) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = keys_.find(node);
  if (it == keys_.end() || it->second.info.state != KeyState::accepted) return {};
  return it->second.raw;
}

std::string TrustStore::accepted_rsa(const std::string& node, std::string* why) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = keys_.find(node);
  if (it == keys_.end()) {
    *why = "no key of " + node + " is known on " + self_;
    return "";
  }
  const PeerKey& k = it->second.info;
  if (k.state != KeyState::accepted) {
    *why = "the key of " + node + " is " + std::string(key_state_name(k.state)) + " on " + self_ +
           ", not accepted";
    return "";
  }
  if (k.rsa_pem.empty()) {
    *why = node + " has not announced an RSA key to " + self_ + " yet";
    return "";
  }
  return k.rsa_pem;
}

nlohmann::json TrustStore::accepted_set(const std::string& self_rsa_pem) const {
  std::lock_guard<std::mutex> lock(mu_);
  nlohmann::json out = nlohmann::json::object();
  out[self_] = {{"ed25519", self_public_b64_}, {"rsa", self_rsa_pem}};
  for (const auto& [n, e] : keys_) {
    if (e.info.state == KeyState::accepted) {
      out[n] = {{"ed25519", e.info.public_key_b64}, {"rsa", e.info.rsa_pem}};
    }
  }
  return out;
}

int TrustStore::apply_key_set(const nlohmann::json& keys, std::vector<std::string>* ignored) {
  if (!keys.is_object()) return 0;
  int changed = 0;
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& item : keys.items()) {
    const std::string& node = item.key();
    const auto& v = item.value();
    if (node == self_ || !v.is_object() || !is_valid_token(node)) continue;
    std::string b64 =
        v.contains("ed25519") && v["ed25519"].is_string() ? v["ed25519"].get<std::string>() : "";
    std::string rsa = v.contains("rsa") && v["rsa"].is_string() ? v["rsa"].get<std::string>() : "";
    std::string raw;
    if (!base64_decode(b64, raw) || raw.size() != 32) {
      if (ignored) ignored->push_back(node + ": not an Ed25519 key");
      continue;
    }
    if (!rsa.empty() && !rsa_public_key_problem(rsa).empty()) {
      if (ignored) ignored->push_back(node + ": the RSA key is " + rsa_public_key_problem(rsa));
      rsa.clear();
    }
    auto it = keys_.find(node);
    if (it != keys_.end()) {
      PeerKey& have = it->second.info;
      if (have.public_key_b64 == b64 && have.state == KeyState::accepted) {
        // The same signing key: its RSA key is the central node's word
        // unless this node already holds one for a key it decided on.
        bool own = have.source != "central";
        if (!rsa.empty() && rsa != have.rsa_pem && (!own || have.rsa_pem.empty())) {
          have.rsa_pem = rsa;
          save(have);
          ++changed;
        }
        continue;
      }
      bool operator_decided =
          have.source == "config" || have.source == "operator" || have.source == "first contact";
      if (operator_decided && have.state != KeyState::pending) {
        if (ignored)
          ignored->push_back(node + ": " + self_ + " keeps the key it " +
                             (have.state == KeyState::accepted ? "accepted" : "rejected") + " (" +
                             have.source + ")");
        continue;
      }
      if (have.state == KeyState::pending) --pending_;
    }
    PeerKey k;
    k.node = node;
    k.public_key_b64 = b64;
    k.rsa_pem = rsa;
    k.state = KeyState::accepted;
    k.source = "central";
    save(k);
    keys_[node] = make_entry(std::move(k));
    ++changed;
  }
  // Keys only the central node vouched for go when it stops vouching.
  for (auto& [node, e] : keys_) {
    if (e.info.source != "central" || e.info.state != KeyState::accepted) continue;
    if (keys.contains(node)) continue;
    e.info.state = KeyState::rejected;
    save(e.info);
    ++changed;
  }
  return changed;
}

}  // namespace bosun::host
