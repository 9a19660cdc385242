// The node's side of key exchange and encrypted payloads (crypt.hpp): its
// RSA key, the cluster secret, what travels encrypted, and the host API of
// ABI 1.3 that the crypt module builds on.
#include <openssl/crypto.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>

#include "bosun/host/transport.hpp"
#include "node_impl.hpp"

namespace bosun::host {

namespace fs = std::filesystem;

namespace {

constexpr std::string_view kSecretKey = "cluster/secret";

// Messages that deliver keys or the secret itself travel in clear (signed):
// a node that has no secret yet, or an old one, must still be able to get it.
bool travels_in_clear(std::string_view subject) {
  std::string_view method = subject.substr(subject.rfind('.') + 1);
  return method == "announce_key" || method == "key_set" || method == "request_public_keys" ||
         method == "update_public_key" || method == "request_cluster_secret" ||
         method == "receive_cluster_secret";
}

}  // namespace

void Node::Impl::start_crypt() {
  if (!identity) return;
  if (auto secret = store->meta_get(kSecretKey)) {
    try {
      std::lock_guard<std::mutex> lock(crypt_mu);
      cluster_key = std::make_shared<const ClusterKey>(std::move(*secret));
      spdlog::info("cluster secret {} set: requests and replies travel encrypted",
                   cluster_key->id());
    } catch (const CryptError& e) {
      spdlog::error(
          "the stored cluster secret is damaged ({}); payloads travel in clear until "
          "central pushes one again",
          e.what());
    }
  }
  const fs::path file = config.node.data_dir / "keys" / "node.rsa.pem";
  if (fs::exists(file)) {
    auto key = RsaKey::load(file);  // throws naming the file: a start-up error
    std::lock_guard<std::mutex> lock(crypt_mu);
    rsa = std::move(key);
    return;
  }
  // Made on a thread of its own (not a worker's: a node may have only one),
  // so the node serves meanwhile; it announces its keys once it is there.
  rsa_maker = std::thread([this, file] {
    // At the lowest nice level (19): a fleet started at once, or a busy
    // host, serves first, and the key still gets made on a machine that is
    // never idle (SCHED_IDLE would starve it). Best effort: a sandbox may
    // refuse the change.
    const bool lowered = setpriority(PRIO_PROCESS, static_cast<id_t>(gettid()), 19) == 0;
    try {
      auto started = std::chrono::steady_clock::now();
      auto key = RsaKey::create(file);
      {
        std::lock_guard<std::mutex> lock(crypt_mu);
        rsa = std::move(key);
      }
      spdlog::info("made the node's RSA-{} key {} in {} ms{}", RsaKey::kBits, file.string(),
                   std::chrono::duration_cast<std::chrono::milliseconds>(
                       std::chrono::steady_clock::now() - started)
                       .count(),
                   lowered ? " (at nice 19)" : "");
      if (!stopping) announce_key();
    } catch (const std::exception& e) {
      spdlog::error("cannot make the node's RSA key: {}", e.what());
    }
  });
}

std::shared_ptr<RsaKey> Node::Impl::rsa_key() const {
  std::lock_guard<std::mutex> lock(crypt_mu);
  return rsa;
}

std::string Node::Impl::rsa_public_pem() const {
  auto k = rsa_key();
  return k ? k->public_pem() : std::string();
}

std::shared_ptr<const ClusterKey> Node::Impl::current_cluster_key() const {
  std::lock_guard<std::mutex> lock(crypt_mu);
  return cluster_key;
}

std::string Node::Impl::install_cluster_secret(std::string secret, const std::string& from) {
  if (!identity) return "security.sign is off on " + config.node.name + ": no cluster secret";
  std::shared_ptr<const ClusterKey> key;
  try {
    key = std::make_shared<const ClusterKey>(secret);
  } catch (const CryptError& e) {
    return e.what();
  }
  store->meta_put(kSecretKey, secret);
  OPENSSL_cleanse(secret.data(), secret.size());
  {
    std::lock_guard<std::mutex> lock(crypt_mu);
    if (cluster_key && cluster_key->id() == key->id()) return "";
    // The previous one still opens what was sealed before the change.
    previous_cluster_key = cluster_key;
    cluster_key = key;
  }
  spdlog::info("cluster secret {} set (from {}): requests and replies travel encrypted", key->id(),
               from);
  return "";
}

std::string Node::Impl::seal_request(std::string_view subject, std::string_view body,
                                     bool sign) const {
  if (!identity) return std::string(body);
  // The messages that deliver keys travel in clear, and signed: whoever
  // receives one can check it whatever key the sender holds for it.
  const bool enrolment = travels_in_clear(subject);
  std::shared_ptr<const ClusterKey> key = current_cluster_key();
  if (key && enrolment) key.reset();
  return identity->seal(config.node.name, subject, body, now_ms(), key.get(),
                        enrolment || sign ? std::string() : pair_peer(subject));
}

bool Node::Impl::open_payload(const Incoming& in, const Envelope& env, std::string* plain,
                              std::string_view& body, std::string* why) {
  auto refuse = [&](const std::string& reason, std::string text) {
    count_refused(reason);
    *why = std::move(text);
    return false;
  };
  if (!env.encrypted) {
    if (plain == nullptr || travels_in_clear(in.subject) || !current_cluster_key()) return true;
    return refuse("not_encrypted", "a request or reply from " + env.signer +
                                       " in clear while this node has a cluster secret: "
                                       "the sender lacks it (push_cluster_secret on central)");
  }
  if (plain == nullptr) {
    return refuse("bad_envelope", "an encrypted envelope where only a plain one is taken");
  }
  std::shared_ptr<const ClusterKey> key;
  {
    std::lock_guard<std::mutex> lock(crypt_mu);
    if (cluster_key && cluster_key->id() == env.key_id) key = cluster_key;
    if (previous_cluster_key && previous_cluster_key->id() == env.key_id) {
      key = previous_cluster_key;
    }
  }
  if (!key) {
    return refuse("unknown_secret", "encrypted by " + env.signer + " with cluster secret " +
                                        env.key_id +
                                        ", which this node does not hold "
                                        "(request_cluster_secret from the central node)");
  }
  if (!key->decrypt(payload_aad(env.signer, env.signed_at_ms, in.subject, env.key_id), env.body,
                    *plain)) {
    return refuse("bad_ciphertext", "the ciphertext from " + env.signer +
                                        " does not decrypt with cluster secret " + env.key_id +
                                        ": changed on the way, or forged");
  }
  body = *plain;
  return true;
}

void Node::Impl::note_announced_rsa(const Incoming& in, const Envelope& env) {
  if (!trust || in.subject.size() < 13 ||
      in.subject.compare(in.subject.size() - 13, 13, ".announce_key") != 0) {
    return;
  }
  // The message verified against the key it carries; the store takes the
  // RSA key only if that is the key it holds for the signer.
  nlohmann::json body = nlohmann::json::parse(env.body, nullptr, false);
  if (!body.is_object()) return;
  nlohmann::json data = nlohmann::json::parse(body.value("data", ""), nullptr, false);
  if (!data.is_object() || !data.contains("rsa") || !data["rsa"].is_string()) return;
  std::string why;
  const bool had_rsa = !trust->accepted_rsa(env.signer, &why).empty();
  std::string err = trust->set_rsa(env.signer, env.public_key, data["rsa"].get<std::string>());
  if (!err.empty()) spdlog::warn("announce_key of {}: {}", env.signer, err);
  // An accepted node's first RSA key: what the cluster secret needed.
  if (err.empty() && !had_rsa && !trust->accepted_rsa(env.signer, &why).empty()) {
    offer_cluster_secret(env.signer);
  }
}

void Node::Impl::offer_cluster_secret(const std::string& node) {
  // An operator accepts a node once, on the central node: one accepted after
  // the cluster secret was made gets it then, without asking for it.
  if (!identity || config.node.name != config.node.central || node == config.node.name ||
      !current_cluster_key()) {
    return;
  }
  MethodEntry entry;
  std::string error;
  if (!find_method("push_cluster_secret", &entry, &error)) return;  // crypt module off
  Message m;
  m.id = new_message_id();
  m.from_node = config.node.name;
  m.to_node = config.node.name;
  m.method = "push_cluster_secret";
  m.method_args = {node};
  m.sent_at_ms = now_ms();
  m.reply_method = "none";
  spdlog::info("handing the cluster secret to {}, accepted after it was made", node);
  asio::post(*pool, [this, m = std::move(m)]() mutable { route(std::move(m)); });
}

// ------------------------------------------------------- host API 1.3 ---

namespace {

Node::Impl* impl_of(bosun_host* h) {
  return h == nullptr || h->module == nullptr ? nullptr : h->module->node;
}

bosun_status fail(bosun_on_value on_value, void* ud, bosun_status st, const std::string& why) {
  if (on_value != nullptr) on_value(ud, why.data(), why.size());
  return st;
}

bosun_status deliver(bosun_on_value on_value, void* ud, const std::string& value) {
  on_value(ud, value.data(), value.size());
  return BOSUN_OK;
}

std::string sv(const char* p, size_t n) {
  return p == nullptr ? std::string() : std::string(p, n);
}

}  // namespace

bosun_status api_peer_keys(bosun_host* host, bosun_on_value on_value, void* user_data) {
  Node::Impl* n = impl_of(host);
  if (n == nullptr || on_value == nullptr) return BOSUN_ERR_INVALID_ARGUMENT;
  if (!n->trust) return fail(on_value, user_data, BOSUN_ERR_UNSUPPORTED, "security.sign is off");
  nlohmann::json keys = nlohmann::json::array();
  for (const auto& k : n->trust->list()) keys.push_back(k.to_json());
  auto key = n->current_cluster_key();
  nlohmann::json out = {
      {"node", n->config.node.name},
      {"central", n->config.node.central},
      {"ed25519", n->identity->public_key_b64()},
      {"rsa", n->rsa_public_pem()},
      {"clusterSecret", {{"set", key != nullptr}, {"keyId", key ? key->id() : ""}}},
      {"keys", keys}};
  return deliver(on_value, user_data, out.dump());
}

bosun_status api_encrypt_to_node(bosun_host* host, const char* node, size_t node_len,
                                 const char* data, size_t len, bosun_on_value on_value,
                                 void* user_data) {
  Node::Impl* n = impl_of(host);
  if (n == nullptr || on_value == nullptr || (data == nullptr && len > 0)) {
    return BOSUN_ERR_INVALID_ARGUMENT;
  }
  if (!n->trust) return fail(on_value, user_data, BOSUN_ERR_UNSUPPORTED, "security.sign is off");
  std::string why;
  std::string pem = n->trust->accepted_rsa(sv(node, node_len), &why);
  if (pem.empty()) return fail(on_value, user_data, BOSUN_ERR_NOT_FOUND, why);
  try {
    return deliver(on_value, user_data, base64_encode(rsa_encrypt(pem, sv(data, len))));
  } catch (const CryptError& e) {
    return fail(on_value, user_data, BOSUN_ERR_INVALID_ARGUMENT, e.what());
  }
}

bosun_status api_decrypt_for_self(bosun_host* host, const char* data, size_t len,
                                  bosun_on_value on_value, void* user_data) {
  Node::Impl* n = impl_of(host);
  if (n == nullptr || on_value == nullptr) return BOSUN_ERR_INVALID_ARGUMENT;
  auto key = n->rsa_key();
  if (!key) {
    return fail(on_value, user_data, BOSUN_ERR_NOT_FOUND,
                "this node's RSA key is not there yet (being made at first start)");
  }
  std::string raw;
  if (!base64_decode(sv(data, len), raw)) {
    return fail(on_value, user_data, BOSUN_ERR_INVALID_ARGUMENT, "the data is not base64");
  }
  try {
    std::string plain = key->decrypt(raw);
    on_value(user_data, plain.data(), plain.size());
    OPENSSL_cleanse(plain.data(), plain.size());
    return BOSUN_OK;
  } catch (const CryptError& e) {
    return fail(on_value, user_data, BOSUN_ERR_INVALID_ARGUMENT,
                std::string("the data ") + e.what());
  }
}

bosun_status api_cluster_secret_set(bosun_host* host, const char* secret, size_t len) {
  Node::Impl* n = impl_of(host);
  if (n == nullptr || (secret == nullptr && len > 0)) return BOSUN_ERR_INVALID_ARGUMENT;
  try {
    std::string s = secret == nullptr ? random_bytes(ClusterKey::kSecretBytes) : sv(secret, len);
    std::string err = n->install_cluster_secret(std::move(s), host->module->name());
    if (!err.empty()) {
      spdlog::error("[{}] cluster_secret_set: {}", host->module->name(), err);
      return BOSUN_ERR_INVALID_ARGUMENT;
    }
    return BOSUN_OK;
  } catch (const std::exception& e) {
    spdlog::error("[{}] cluster_secret_set: {}", host->module->name(), e.what());
    return BOSUN_ERR_STORAGE;
  }
}

bosun_status api_cluster_secret_seal_for(bosun_host* host, const char* node, size_t node_len,
                                         bosun_on_value on_value, void* user_data) {
  Node::Impl* n = impl_of(host);
  if (n == nullptr || on_value == nullptr) return BOSUN_ERR_INVALID_ARGUMENT;
  if (!n->trust) return fail(on_value, user_data, BOSUN_ERR_UNSUPPORTED, "security.sign is off");
  auto key = n->current_cluster_key();
  if (!key) {
    return fail(on_value, user_data, BOSUN_ERR_NOT_FOUND,
                n->config.node.name + " has no cluster secret");
  }
  std::string why;
  std::string pem = n->trust->accepted_rsa(sv(node, node_len), &why);
  if (pem.empty()) return fail(on_value, user_data, BOSUN_ERR_NOT_FOUND, why);
  try {
    return deliver(on_value, user_data, base64_encode(rsa_encrypt(pem, key->secret())));
  } catch (const CryptError& e) {
    return fail(on_value, user_data, BOSUN_ERR_INVALID_ARGUMENT, e.what());
  }
}

bosun_status api_cluster_secret_receive(bosun_call* call, const char* data, size_t len,
                                        bosun_on_value on_value, void* user_data) {
  if (call == nullptr || call->node == nullptr || on_value == nullptr) {
    return BOSUN_ERR_INVALID_ARGUMENT;
  }
  Node::Impl* n = call->node;
  const std::string& from = call->msg.from_node;
  if (from != n->config.node.central || from == n->config.node.name) {
    return fail(on_value, user_data, BOSUN_ERR_INVALID_ARGUMENT,
                "a cluster secret is taken only from the central node " + n->config.node.central +
                    ", not from " + from);
  }
  auto key = n->rsa_key();
  if (!key)
    return fail(on_value, user_data, BOSUN_ERR_NOT_FOUND, "this node's RSA key is not there yet");
  std::string raw;
  if (!base64_decode(sv(data, len), raw)) {
    return fail(on_value, user_data, BOSUN_ERR_INVALID_ARGUMENT, "the secret is not base64");
  }
  std::string secret;
  try {
    secret = key->decrypt(raw);
  } catch (const CryptError& e) {
    return fail(on_value, user_data, BOSUN_ERR_INVALID_ARGUMENT,
                std::string("the secret ") + e.what());
  }
  std::string err = n->install_cluster_secret(std::move(secret), from);
  if (!err.empty()) return fail(on_value, user_data, BOSUN_ERR_INVALID_ARGUMENT, err);
  return deliver(on_value, user_data, n->current_cluster_key()->id());
}

bosun_status api_key_control(bosun_call* call, const char* request_json, size_t len,
                             bosun_on_value on_value, void* user_data) {
  if (call == nullptr || call->node == nullptr || on_value == nullptr) {
    return BOSUN_ERR_INVALID_ARGUMENT;
  }
  Node::Impl* n = call->node;
  if (!n->trust) return fail(on_value, user_data, BOSUN_ERR_UNSUPPORTED, "security.sign is off");
  nlohmann::json r = nlohmann::json::parse(sv(request_json, len), nullptr, false);
  std::string op =
      r.is_object() && r.contains("op") && r["op"].is_string() ? r["op"].get<std::string>() : "";
  const std::string& from = call->msg.from_node;
  const std::string& me = n->config.node.name;
  const std::string& central = n->config.node.central;
  if (op == "accepted_set") {
    return deliver(on_value, user_data, n->trust->accepted_set(n->rsa_public_pem()).dump());
  }
  if (op == "apply") {
    if (from != central || from == me) {
      return fail(on_value, user_data, BOSUN_ERR_INVALID_ARGUMENT,
                  "keys are taken only from the central node " + central + ", not from " + from);
    }
    if (!r.contains("keys") || !r["keys"].is_object()) {
      return fail(on_value, user_data, BOSUN_ERR_INVALID_ARGUMENT,
                  "\"keys\" must be an object {node: {\"ed25519\", \"rsa\"}}");
    }
    std::vector<std::string> ignored;
    int changed = n->trust->apply_key_set(r["keys"], &ignored);
    for (const auto& i : ignored) spdlog::warn("keys from {}: ignored {}", from, i);
    return deliver(on_value, user_data,
                   nlohmann::json{{"changed", changed}, {"ignored", ignored}}.dump());
  }
  if (op == "delete") {
    if (from != me && from != central) {
      return fail(on_value, user_data, BOSUN_ERR_INVALID_ARGUMENT,
                  "keys are deleted only by an operator of " + me + " or by " + central +
                      ", not by " + from);
    }
    std::string node =
        r.contains("node") && r["node"].is_string() ? r["node"].get<std::string>() : "";
    if (!is_valid_token(node)) {
      return fail(on_value, user_data, BOSUN_ERR_INVALID_ARGUMENT, "\"node\" is not a node name");
    }
    std::string err = n->trust->remove(node);
    if (!err.empty()) return fail(on_value, user_data, BOSUN_ERR_NOT_FOUND, err);
    spdlog::info("key of {} deleted (asked by {})", node, from);
    n->distribute_keys();
    return deliver(on_value, user_data, "deleted");
  }
  return fail(on_value, user_data, BOSUN_ERR_INVALID_ARGUMENT,
              "unknown key_control op \"" + op + "\" (expected accepted_set, apply or delete)");
}

}  // namespace bosun::host
