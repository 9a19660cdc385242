// vault: a Vault token for this node, handed between nodes encrypted to the
// receiver's accepted RSA key, looked up and renewed before it runs out
// (DESIGN §9).
//
//   request_token            ask the peers for a token now (when this node
//                            has none that Vault accepts)
//   request_vault_token      a peer asks for the token: this node sends it
//                            with push, encrypted to the key it ACCEPTED for
//                            that peer (never a key from the request)
//   push_vault_token node..  send this node's token to the nodes named
//                            (operator, on this node only)
//   receive_vault_token      a token from a peer: decrypt, store, use
//   vault_token              the token sealed to this node's own RSA key, only
//                            to a call from this node (the way other modules
//                            obtain it: they open it with decrypt_for_self)
//   vault_status             what the module knows, without the token
//
// Peers asked: every node whose key is accepted in this node's trust store
// (peer_keys), the central node included; each holder answers by sending
// receive_vault_token to the requester. A holder's security.allow must let
// the requesters invoke request_vault_token.
//
// At rest the token is in the module's KV, AES-256-GCM encrypted with a
// random key in <dataDir>/vault/token.key (0600) that never leaves the node.
#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bosun/plugin.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "https.hpp"

namespace {

using bosun::Error;
using nlohmann::json;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
namespace fs = std::filesystem;
namespace vault = bosun::vault;

constexpr char kVersion[] = "1.0.0";
constexpr char kKvToken[] = "token";
constexpr size_t kMaxToken = 300;  // RSA-OAEP-3072 carries at most 318 bytes

struct Settings {
  bool enabled = false;
  std::string address;
  std::string ca_file;
  double renew_at = 0.75;
  std::string token_file;
  milliseconds timeout{5000};
  milliseconds retry_min{1000};
  milliseconds retry_max{60000};
};

Settings parse_settings(std::string_view text) {
  json j = json::parse(text.empty() ? std::string_view("{}") : text, nullptr, false);
  if (!j.is_object()) throw std::invalid_argument("vault settings: must be a JSON object");
  static const std::vector<std::string> known = {"enabled",    "address",   "caFile",
                                                 "renewAt",    "tokenFile", "timeoutMs",
                                                 "retryMinMs", "retryMaxMs"};
  for (const auto& item : j.items()) {
    if (std::find(known.begin(), known.end(), item.key()) == known.end()) {
      throw std::invalid_argument("vault settings: unknown key \"" + item.key() + "\"");
    }
  }
  Settings s;
  auto str = [&](const char* key, std::string& out) {
    if (!j.contains(key)) return;
    if (!j[key].is_string())
      throw std::invalid_argument(std::string("vault settings.") + key + ": must be a string");
    out = j[key].get<std::string>();
  };
  auto ms = [&](const char* key, milliseconds& out) {
    if (!j.contains(key)) return;
    if (!j[key].is_number_integer() || j[key].get<int64_t>() <= 0) {
      throw std::invalid_argument(std::string("vault settings.") + key +
                                  ": must be a positive integer");
    }
    out = milliseconds(j[key].get<int64_t>());
  };
  if (j.contains("enabled")) {
    if (!j["enabled"].is_boolean())
      throw std::invalid_argument("vault settings.enabled: must be true or false");
    s.enabled = j["enabled"].get<bool>();
  }
  str("address", s.address);
  str("caFile", s.ca_file);
  str("tokenFile", s.token_file);
  if (j.contains("renewAt")) {
    if (!j["renewAt"].is_number() || j["renewAt"].get<double>() <= 0 ||
        j["renewAt"].get<double>() >= 1) {
      throw std::invalid_argument(
          "vault settings.renewAt: must be a number between 0 and 1 (a fraction of the TTL)");
    }
    s.renew_at = j["renewAt"].get<double>();
  }
  ms("timeoutMs", s.timeout);
  ms("retryMinMs", s.retry_min);
  ms("retryMaxMs", s.retry_max);
  if (s.retry_max < s.retry_min) s.retry_max = s.retry_min;
  return s;
}

// AES-256-GCM: nonce(12) | ciphertext | tag(16).
std::string seal(const std::string& key, const std::string& plain) {
  std::string out(12 + plain.size() + 16, '\0');
  auto* o = reinterpret_cast<unsigned char*>(out.data());
  if (RAND_bytes(o, 12) != 1) throw Error("vault: no random bytes for a nonce");
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  int len = 0;
  bool ok =
      ctx != nullptr &&
      EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), nullptr,
                         reinterpret_cast<const unsigned char*>(key.data()), o) == 1 &&
      EVP_EncryptUpdate(ctx, o + 12, &len, reinterpret_cast<const unsigned char*>(plain.data()),
                        static_cast<int>(plain.size())) == 1 &&
      EVP_EncryptFinal_ex(ctx, o + 12 + len, &len) == 1 &&
      EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, o + 12 + plain.size()) == 1;
  EVP_CIPHER_CTX_free(ctx);
  if (!ok) throw Error("vault: AES-256-GCM encryption failed");
  return out;
}

std::optional<std::string> open_sealed(const std::string& key, const std::string& box) {
  if (box.size() < 28) return std::nullopt;
  const auto* b = reinterpret_cast<const unsigned char*>(box.data());
  std::string plain(box.size() - 28, '\0');
  auto* p = reinterpret_cast<unsigned char*>(plain.data());
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  int len = 0;
  bool ok = ctx != nullptr &&
            EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), nullptr,
                               reinterpret_cast<const unsigned char*>(key.data()), b) == 1 &&
            EVP_DecryptUpdate(ctx, p, &len, b + 12, static_cast<int>(plain.size())) == 1 &&
            EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, 16,
                                const_cast<unsigned char*>(b + box.size() - 16)) == 1 &&
            EVP_DecryptFinal_ex(ctx, p + len, &len) == 1;
  EVP_CIPHER_CTX_free(ctx);
  if (!ok) return std::nullopt;
  return plain;
}

// The at-rest key: 32 random bytes in a 0600 file, made at first use.
std::string load_or_make_key(const fs::path& dir) {
  fs::create_directories(dir);
  ::chmod(dir.c_str(), 0700);
  fs::path file = dir / "token.key";
  int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    std::string key(32, '\0');
    if (RAND_bytes(reinterpret_cast<unsigned char*>(key.data()), 32) != 1) {
      throw std::runtime_error("vault: no random bytes for the at-rest key");
    }
    fs::path tmp = dir / "token.key.tmp";
    fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || ::write(fd, key.data(), key.size()) != 32 || ::fsync(fd) != 0) {
      if (fd >= 0) ::close(fd);
      throw std::runtime_error("vault: cannot write " + tmp.string());
    }
    ::close(fd);
    fs::rename(tmp, file);
    return key;
  }
  std::string key(33, '\0');
  ssize_t n = ::read(fd, key.data(), key.size());
  ::close(fd);
  if (n != 32) throw std::runtime_error("vault: " + file.string() + " is not a 32-byte key");
  key.resize(32);
  return key;
}

// `data` RSA-OAEP-SHA256 (MGF1-SHA256) encrypted to the PEM public key, as
// base64: what the host's decrypt_for_self opens when the key is this node's.
std::string rsa_seal_b64(const std::string& public_pem, const std::string& data) {
  BIO* bio = BIO_new_mem_buf(public_pem.data(), static_cast<int>(public_pem.size()));
  EVP_PKEY* key = bio != nullptr ? PEM_read_bio_PUBKEY(bio, nullptr, nullptr, nullptr) : nullptr;
  BIO_free(bio);
  if (key == nullptr) throw Error("vault: this node's RSA public key does not parse");
  EVP_PKEY_CTX* c = EVP_PKEY_CTX_new(key, nullptr);
  size_t n = 0;
  std::string out;
  bool ok = c != nullptr && EVP_PKEY_encrypt_init(c) > 0 &&
            EVP_PKEY_CTX_set_rsa_padding(c, RSA_PKCS1_OAEP_PADDING) > 0 &&
            EVP_PKEY_CTX_set_rsa_oaep_md(c, EVP_sha256()) > 0 &&
            EVP_PKEY_CTX_set_rsa_mgf1_md(c, EVP_sha256()) > 0 &&
            EVP_PKEY_encrypt(c, nullptr, &n, reinterpret_cast<const unsigned char*>(data.data()),
                             data.size()) > 0;
  if (ok) {
    out.resize(n);
    ok = EVP_PKEY_encrypt(c, reinterpret_cast<unsigned char*>(out.data()), &n,
                          reinterpret_cast<const unsigned char*>(data.data()), data.size()) > 0;
    out.resize(n);
  }
  EVP_PKEY_CTX_free(c);
  EVP_PKEY_free(key);
  if (!ok) throw Error("vault: RSA-OAEP encryption to this node's key failed");
  std::string b64(4 * ((out.size() + 2) / 3) + 1, '\0');
  int len = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(b64.data()),
                            reinterpret_cast<const unsigned char*>(out.data()),
                            static_cast<int>(out.size()));
  b64.resize(static_cast<size_t>(len));
  return b64;
}

bool plausible_token(const std::string& t) {
  if (t.empty() || t.size() > kMaxToken) return false;
  return std::all_of(t.begin(), t.end(), [](char c) { return c > 0x20 && c < 0x7f; });
}

class Vault : public bosun::Plugin {
 public:
  Vault(bosun::Host host, std::string_view settings) : Plugin(host, settings) {
    settings_ = parse_settings(settings);
    if (!settings_.enabled) {
      throw bosun::NotApplicable("vault is disabled (settings.enabled is false)");
    }
    if (settings_.address.empty()) throw std::invalid_argument("vault settings.address: missing");
    try {
      url_ = vault::parse_url(settings_.address);
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(std::string("vault settings.") + e.what());
    }
    if (!settings_.ca_file.empty() && !fs::exists(settings_.ca_file)) {
      throw std::invalid_argument("vault settings.caFile: no such file " + settings_.ca_file);
    }
    try {
      host.peer_keys();
    } catch (const Error& e) {
      throw bosun::NotApplicable(std::string("no keys on this node: ") + e.what());
    }
    key_ = load_or_make_key(fs::path(std::string(host.data_dir())) / "vault");
    self_ = std::string(host.node_name());

    if (auto stored = host.kv_get(kKvToken)) {
      auto plain = open_sealed(key_, *stored);
      if (plain && plausible_token(*plain)) {
        token_ = *plain;
        host.info("a stored Vault token found; checking it with lookup-self");
      } else {
        host.warn("the stored Vault token does not decrypt with this node's at-rest key; dropped");
        host.kv_delete(kKvToken);
      }
    }
    if (token_.empty()) load_token_file({});
    vault_backoff_ = settings_.retry_min;
    request_backoff_ = settings_.retry_min;
    start_timer(milliseconds(50), milliseconds(200), [this] { tick(); });
  }

  // Ask the peers now, when this node has no token Vault accepted.
  void request_token(bosun::Call& c) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!token_.empty() && verified_) {
        c.reply(json{{"node", self_}, {"hasToken", true}, {"asked", json::array()}}.dump());
        return;
      }
      if (!token_.empty()) {
        c.reply(
            json{{"node", self_}, {"hasToken", true}, {"verified", false}, {"asked", json::array()}}
                .dump());
        return;
      }
      request_backoff_ = settings_.retry_min;
    }
    c.reply(json{{"node", self_}, {"hasToken", false}, {"asked", ask_peers()}}.dump());
  }

  // A peer asks: the token goes to it encrypted to the key accepted here.
  void request_vault_token(bosun::Call& c) {
    std::string to(c.from_node());
    if (to == self_) throw Error("request_vault_token: this node does not ask itself");
    push_to(to);
    c.reply("a Vault token sent to " + to + ", encrypted to its accepted key");
  }

  // Operator: send this node's token to the nodes named.
  void push_vault_token(bosun::Call& c) {
    local_only(c);
    if (c.arg_count() == 0)
      throw Error("push_vault_token: name the nodes in methodArgs", BOSUN_ERR_INVALID_ARGUMENT);
    json sent = json::array();
    json refused = json::array();
    for (auto a : c.args()) {
      try {
        push_to(std::string(a));
        sent.push_back(a);
      } catch (const Error& e) {
        refused.push_back({{"node", a}, {"why", e.what()}});
      }
    }
    c.reply(json{{"sentTo", sent}, {"refused", refused}}.dump());
  }

  // A token from a peer, encrypted to this node's RSA key.
  void receive_vault_token(bosun::Call& c) {
    std::string from(c.from_node());
    std::string token;
    try {
      token = host().decrypt_for_self(c.data());
    } catch (const Error& e) {
      host().warn("a Vault token from " + from + " does not decrypt: " + e.what());
      throw Error("receive_vault_token: the data does not decrypt with the RSA key of " + self_);
    }
    if (!plausible_token(token)) {
      host().warn("what " + from + " sent as a Vault token is not one; dropped");
      throw Error("receive_vault_token: the data is not a Vault token");
    }
    std::lock_guard<std::mutex> lock(mu_);
    received_++;
    if (!token_.empty() && verified_) {
      c.reply("kept the token this node already holds");
      return;
    }
    token_ = std::move(token);
    verified_ = false;
    next_vault_ = Clock::now();
    vault_backoff_ = settings_.retry_min;
    store_locked();
    host().info("a Vault token received from " + from + "; checking it with lookup-self");
    c.reply("a Vault token received on " + self_);
  }

  // The token for modules on this node only, sealed to this node's own RSA
  // key (the host's, from peer_keys): the caller opens it with
  // decrypt_for_self, and the reply (which the host keeps in its audit log,
  // like every message) carries ciphertext only.
  void vault_token(bosun::Call& c) {
    local_only(c);
    std::string token;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (token_.empty() || !verified_) {
        throw Error("no Vault token that Vault accepted on " + self_ + " yet", BOSUN_ERR_NOT_FOUND);
      }
      token = token_;
    }
    json keys = json::parse(host().peer_keys(), nullptr, false);
    std::string pem = keys.is_object() ? keys.value("rsa", "") : "";
    if (pem.empty())
      throw Error("the RSA key of " + self_ + " is not there yet", BOSUN_ERR_NOT_FOUND);
    c.reply(rsa_seal_b64(pem, token));
  }

  void vault_status(bosun::Call& c) {
    std::lock_guard<std::mutex> lock(mu_);
    c.reply(json{{"node", self_},
                 {"hasToken", !token_.empty()},
                 {"verified", verified_},
                 {"ttl", ttl_s_},
                 {"lookups", lookups_},
                 {"renewals", renewals_},
                 {"requestsSent", requests_sent_},
                 {"tokensSent", tokens_sent_},
                 {"received", received_},
                 {"refused", refused_},
                 {"vaultErrors", vault_errors_},
                 {"lastError", last_error_}}
                .dump());
  }

 private:
  void local_only(const bosun::Call& c) const {
    if (c.from_node() != self_) {
      throw Error(std::string(c.method()) + " is served only to calls from " + self_ +
                      ", not from " + std::string(c.from_node()),
                  BOSUN_ERR_INVALID_ARGUMENT);
    }
  }

  void push_to(const std::string& to) {
    std::string token;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (token_.empty() || !verified_)
        throw Error("no valid Vault token on " + self_ + " to give");
      token = token_;
    }
    std::string sealed;
    try {
      sealed =
          host().encrypt_to_node(to, token);  // the key accepted here; never one from the request
    } catch (const Error& e) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        refused_++;
      }
      host().warn("refused a Vault token to " + to + ": " + e.what());
      throw Error("refused: no Vault token for " + to + " (" + e.what() + ")");
    }
    host().send(json{
        {"toNode", to},
        {"method", "receive_vault_token"},
        {"data", sealed},
        {"replyMethod",
         "none"}}.dump());
    std::lock_guard<std::mutex> lock(mu_);
    tokens_sent_++;
    host().info("a Vault token sent to " + to + ", encrypted to its accepted RSA key");
  }

  // The accepted peers asked for a token; returns their names.
  json ask_peers() {
    json asked = json::array();
    json keys = json::parse(host().peer_keys(), nullptr, false);
    if (keys.is_object()) {
      for (const auto& k : keys.value("keys", json::array())) {
        std::string n = k.value("node", "");
        if (n.empty() || n == self_ || k.value("state", "") != "accepted") continue;
        try {
          host().send(
              json{{"toNode", n}, {"method", "request_vault_token"}, {"replyMethod", "none"}}
                  .dump());
          asked.push_back(n);
        } catch (const Error& e) {
          host().warn("cannot ask " + n + " for a Vault token: " + e.what());
        }
      }
    }
    std::lock_guard<std::mutex> lock(mu_);
    requests_sent_++;
    next_request_ = Clock::now() + request_backoff_;
    if (asked.empty()) {
      host().warn("no accepted peer to ask for a Vault token; asking again in " +
                  std::to_string(request_backoff_.count()) + " ms");
    } else {
      host().info("asked " + asked.dump() + " for a Vault token");
    }
    request_backoff_ = std::min(request_backoff_ * 2, settings_.retry_max);
    return asked;
  }

  // Takes the token in settings.tokenFile unless it is `not_this` (the one
  // just dropped); true when it did.
  bool load_token_file(const std::string& not_this) {
    if (settings_.token_file.empty()) return false;
    std::ifstream in(settings_.token_file);
    std::string t;
    std::getline(in, t);
    while (!t.empty() && (t.back() == '\r' || t.back() == ' ')) t.pop_back();
    if (t.empty()) {
      host().warn("vault settings.tokenFile " + settings_.token_file + ": cannot read a token");
      return false;
    }
    if (!plausible_token(t)) {
      host().warn("vault settings.tokenFile " + settings_.token_file + ": not a token");
      return false;
    }
    if (t == not_this) return false;
    token_ = t;
    verified_ = false;
    next_vault_ = Clock::now();
    store_locked();
    host().info("a Vault token read from " + settings_.token_file +
                "; checking it with lookup-self");
    return true;
  }

  void store_locked() {
    try {
      host().kv_put(kKvToken, seal(key_, token_));
    } catch (const Error& e) {
      host().error(std::string("cannot store the Vault token: ") + e.what());
    }
  }

  void drop_locked(const std::string& why) {
    std::string dropped = std::move(token_);
    token_.clear();
    verified_ = false;
    ttl_s_ = 0;
    host().kv_delete(kKvToken);
    if (load_token_file(dropped)) {
      host().warn("the Vault token is no longer valid (" + why + "); took the one in tokenFile");
      return;
    }
    host().warn("the Vault token is no longer valid (" + why + "); asking the peers for a new one");
    next_request_ = Clock::now();
    request_backoff_ = settings_.retry_min;
  }

  void tick() {
    if (busy_.exchange(true)) return;
    struct Clear {
      std::atomic<bool>& b;
      ~Clear() { b = false; }
    } clear{busy_};
    std::string token;
    bool renew = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto now = Clock::now();
      if (token_.empty()) {
        if (now < next_request_) return;
      } else {
        if (now < next_vault_) return;
        token = token_;
        renew = verified_;
      }
    }
    if (token.empty()) {
      ask_peers();
      return;
    }
    const char* op = renew ? "renew-self" : "lookup-self";
    vault::HttpResult r;
    try {
      r = vault::https_request(url_, settings_.ca_file, renew ? "POST" : "GET",
                               renew ? "/v1/auth/token/renew-self" : "/v1/auth/token/lookup-self",
                               token, settings_.timeout);
    } catch (const std::exception& e) {
      vault_failed(std::string("Vault at ") + settings_.address + " unreachable for " + op + ": " +
                   e.what());
      return;
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (token_ != token) return;  // replaced meanwhile
    if (r.status == 403 || r.status == 401 || r.status == 400) {
      vault_errors_++;
      last_error_ = std::string(op) + ": Vault answered " + std::to_string(r.status);
      drop_locked(last_error_);
      return;
    }
    if (r.status != 200) {
      failed_locked(std::string("Vault at ") + settings_.address + " answered " +
                    std::to_string(r.status) + " to " + op);
      return;
    }
    json body = json::parse(r.body, nullptr, false);
    int64_t ttl = -1;
    if (body.is_object()) {
      if (renew && body.contains("auth") && body["auth"].is_object()) {
        ttl = body["auth"].value("lease_duration", int64_t{-1});
      } else if (!renew && body.contains("data") && body["data"].is_object()) {
        ttl = body["data"].value("ttl", int64_t{-1});
      }
    }
    if (ttl < 0) {
      vault_errors_++;
      last_error_ = std::string(op) + ": Vault's answer has no TTL";
      host().error(last_error_);
      next_vault_ = Clock::now() + vault_backoff_;
      vault_backoff_ = std::min(vault_backoff_ * 2, settings_.retry_max);
      return;
    }
    verified_ = true;
    ttl_s_ = ttl;
    expires_ = Clock::now() + std::chrono::seconds(ttl);
    vault_backoff_ = settings_.retry_min;
    if (renew) {
      renewals_++;
    } else {
      lookups_++;
    }
    // A TTL of 0 never expires: look it up again now and then.
    auto wait = ttl == 0 ? settings_.retry_max
                         : milliseconds(static_cast<int64_t>(static_cast<double>(ttl) * 1000.0 *
                                                             settings_.renew_at));
    next_vault_ = Clock::now() + wait;
    host().info(std::string(op) + " ok: the Vault token has " + std::to_string(ttl) +
                " s to live; renewing in " + std::to_string(wait.count()) + " ms");
  }

  void vault_failed(const std::string& what) {
    std::lock_guard<std::mutex> lock(mu_);
    failed_locked(what);
  }
  void failed_locked(const std::string& what) {
    vault_errors_++;
    last_error_ = what;
    if (verified_ && ttl_s_ > 0 && Clock::now() >= expires_) {
      host().error(what);
      drop_locked("renewal failed until its TTL ran out");
      return;
    }
    host().error(what + "; retrying in " + std::to_string(vault_backoff_.count()) + " ms");
    next_vault_ = Clock::now() + vault_backoff_;
    vault_backoff_ = std::min(vault_backoff_ * 2, settings_.retry_max);
  }

  Settings settings_;
  vault::Url url_;
  std::string key_;
  std::string self_;
  std::atomic<bool> busy_{false};

  std::mutex mu_;
  std::string token_;
  bool verified_ = false;
  int64_t ttl_s_ = 0;
  Clock::time_point next_vault_{};
  Clock::time_point expires_{};
  Clock::time_point next_request_{};
  milliseconds vault_backoff_{1000};
  milliseconds request_backoff_{1000};
  uint64_t lookups_ = 0, renewals_ = 0, requests_sent_ = 0, tokens_sent_ = 0, received_ = 0,
           refused_ = 0, vault_errors_ = 0;
  std::string last_error_;
};

}  // namespace

BOSUN_PLUGIN(Vault, "vault", kVersion, "Vault token lifecycle: hand-off between nodes, renewal",
             BOSUN_METHOD(Vault, request_token, "ask the accepted peers for a Vault token now"),
             BOSUN_METHOD(Vault, request_vault_token,
                          "a peer asks: send it the token encrypted to its accepted RSA key"),
             BOSUN_METHOD(Vault, push_vault_token,
                          "this node only: send the token to the nodes in methodArgs"),
             BOSUN_METHOD(Vault, receive_vault_token,
                          "take a token a peer sent, encrypted to this node"),
             BOSUN_METHOD(Vault, vault_token,
                          "this node only: the token, sealed to this node's RSA key"),
             BOSUN_METHOD(Vault, vault_status, "the module's state, without the token"))
