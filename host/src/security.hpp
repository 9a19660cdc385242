// Node identity, signed envelopes and the trust store (DESIGN §7, issue 6).
//
// Every message between nodes (requests, replies, ACKs and NAKs, events)
// travels in an envelope signed with the sending node's Ed25519 key:
//
//   BSN1 <signer> <signedAtMs> <public key, base64> <signature, base64>\n<body>
//
// The signature covers a domain tag, the signer, the time, the NATS subject
// and the body byte for byte, so nothing of the message can change without
// breaking it, and a message cannot be moved to another subject. The
// receiver checks the signature before it parses the body, then whether it
// trusts that key for that node name (trust store), then the time against
// security.allowSkew; the inbox's record of ids already seen turns a replay
// inside that window into an ACK that runs nothing.
//
// The trust store holds one key per peer name, in Salt's states: pending (seen
// in a message, waiting for an operator), accepted, rejected. Keys pinned in
// the config are accepted and cannot be replaced; the central node's key is
// pinned on first contact; `security.autoAccept` (opt-in) accepts names that
// match; the central node hands out the keys it accepted (`key_set`).
#pragma once

#include <openssl/types.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "bosun/host/config.hpp"
#include "signing.hpp"

namespace bosun::host {

class Store;

constexpr std::string_view kEnvelopeMagic = "BSN1 ";
// The same with a body encrypted with the cluster secret (crypt.hpp):
//   BSN2 <signer> <signedAtMs> <public key> <signature> <key id>\n<nonce|ciphertext|tag>
// signed over the ciphertext and the key id besides.
constexpr std::string_view kEncryptedMagic = "BSN2 ";
// A message to one node whose key the sender accepted (security.pairKeys):
// the same header with, instead of the signature, an HMAC-SHA256 tag under
// the key the two nodes share (Identity::pair_key); BSM2 encrypted.
//   BSM1 <signer> <signedAtMs> <public key> <tag> <for>\n<body>
// <for> names the receiver's key the sender made it for (key_hint), so a
// receiver whose key the sender does not hold can say so.
constexpr std::string_view kPairMagic = "BSM1 ";
constexpr std::string_view kPairEncryptedMagic = "BSM2 ";

class ClusterKey;

struct Envelope {
  std::string signer;
  int64_t signed_at_ms = 0;
  std::string public_key;  // raw, 32 bytes
  std::string signature;   // raw, 64 bytes; 32 (the tag) when `pair`
  bool pair = false;       // BSM1/BSM2: a tag under the pair key, not a signature
  std::string for_key;     // BSM: key_hint of the receiver's key it was made for
  std::string_view body;   // points into the wire bytes
  bool encrypted = false;  // BSN2: body is nonce | ciphertext | tag
  std::string key_id;      // BSN2: which cluster secret
};

// The first 8 bytes of a raw key in hex: how a pair-key envelope names the
// receiver's key, and how a log names a key.
std::string key_hint(std::string_view public_key_raw);
// Parses the envelope's first line; on failure says what is wrong in `why`.
bool parse_envelope(std::string_view wire, Envelope& out, std::string* why);
// The bytes the signature (or the tag, `pair`) covers (`key_id` of an
// encrypted envelope).
std::string envelope_signed_bytes(std::string_view signer, int64_t signed_at_ms,
                                  std::string_view subject, std::string_view body,
                                  std::string_view key_id = {}, bool pair = false);
bool base64_decode(std::string_view text, std::string& out);

struct PkeyFree {
  void operator()(EVP_PKEY* k) const;
};
using PkeyPtr = std::shared_ptr<EVP_PKEY>;
PkeyPtr ed25519_public_key(std::string_view raw);
bool ed25519_verify(EVP_PKEY* key, std::string_view data, std::string_view signature);

// This node's keys, under <dataDir>/keys (folder 0700, files 0600), made at
// first start. The private key never leaves this object.
class Identity {
 public:
  static Identity load_or_create(const std::filesystem::path& data_dir);
  const std::string& public_key_raw() const { return public_raw_; }
  const std::string& public_key_b64() const { return public_b64_; }
  const std::string& public_key_hint() const { return public_hint_; }  // key_hint() of it
  // The whole envelope for `body` published on `subject`; with `key` the
  // body travels encrypted (BSN2). With `peer` (the raw Ed25519 key of the
  // one node it goes to) it carries a tag under the pair key instead of a
  // signature (BSM1/BSM2); a `peer` that is no valid key falls back to the
  // signature.
  std::string seal(std::string_view signer, std::string_view subject, std::string_view body,
                   int64_t now_ms, const ClusterKey* key = nullptr,
                   std::string_view peer = {}) const;
  // Whether the envelope is authentic for the key it carries: its signature
  // verifies against that key, or (`pair`) its tag against the key this node
  // shares with that key's holder — which only that holder (or this node)
  // can make. Which node the key belongs to is the trust store's question.
  bool verify(const Envelope& env, std::string_view subject) const;
  // The 32-byte key this node shares with the holder of an Ed25519 key:
  // HKDF-SHA256 of X25519 between the two keys mapped to Curve25519, bound
  // to both public keys. Empty when `peer` is not a usable key. Cached.
  std::string pair_key(std::string_view peer) const;
  // The HMAC state of that key (what tags are made with); null when there
  // is none. Cached with it.
  std::shared_ptr<const HmacSha256> pair_mac(std::string_view peer) const;

 private:
  explicit Identity(Ed25519Key key);
  std::shared_ptr<Ed25519Key> key_;
  std::shared_ptr<EVP_PKEY> x25519_;
  std::string public_raw_, public_b64_, public_hint_;
  struct PairCache;
  std::shared_ptr<PairCache> pairs_;
};

enum class KeyState { pending, accepted, rejected };
std::string_view key_state_name(KeyState s);

struct PeerKey {
  std::string node;
  std::string public_key_b64;
  std::string rsa_pem;  // its RSA public key for key exchange, once it announced one
  KeyState state = KeyState::pending;
  std::string source;  // config, operator, first contact, autoAccept, central, seen
  int64_t first_seen_ms = 0;
  int64_t last_seen_ms = 0;  // in memory only
  nlohmann::json to_json() const;
};

struct TrustVerdict {
  bool ok = false;
  std::string reason;  // a short code for counting: unknown_key, pending_key, ...
  std::string text;    // for the log: what was wrong, and what to do about it
  PkeyPtr key;         // the key to verify with when ok
  bool added = false;  // ok, and accepted just now (first contact, autoAccept)
};

class TrustStore {
 public:
  // At most this many pending keys are remembered: a flood of made-up names
  // cannot fill the disk.
  static constexpr size_t kMaxPending = 1000;

  TrustStore(Store& store, std::string self, std::string self_public_b64, std::string central);
  void configure(const SecurityConfig& cfg);

  // Whether a message signed by `signer` with `public_key_raw` may be
  // believed. An unknown key is recorded as pending when `record` is set.
  TrustVerdict check(const std::string& signer, const std::string& public_key_raw, bool record,
                     int64_t now_ms);

  std::vector<PeerKey> list() const;
  // Operator decisions; return "" or why not.
  std::string accept(const std::string& node, const std::string& source = "operator");
  std::string reject(const std::string& node);
  // Forgets a peer's key (not one pinned in the config); "" or why not.
  std::string remove(const std::string& node);
  // The RSA key `node` announced in a message signed with `ed25519_raw`,
  // which must be the (pending or accepted) key this store holds for it;
  // "" or why not.
  std::string set_rsa(const std::string& node, const std::string& ed25519_raw,
                      const std::string& rsa_pem);
  // The raw Ed25519 key of an accepted node; "" otherwise.
  std::string accepted_raw(const std::string& node) const;
  // The RSA key of an accepted node; "" with `why` set otherwise.
  std::string accepted_rsa(const std::string& node, std::string* why) const;
  // The accepted keys, as the central node hands them out:
  // {node: {"ed25519": key, "rsa": PEM or ""}}.
  nlohmann::json accepted_set(const std::string& self_rsa_pem) const;
  // A key set from the central node. A key the operator or the config
  // accepted is never replaced. Returns how many keys changed.
  int apply_key_set(const nlohmann::json& keys, std::vector<std::string>* ignored);

 private:
  struct Entry {
    PeerKey info;
    PkeyPtr key;
    std::string raw;  // the Ed25519 key, 32 bytes
  };
  void save(const PeerKey& k);
  // Writes (or with no value deletes) a key of the store's meta table on the
  // store's background writer, in order.
  void persist(std::string key, std::optional<std::string> value);
  bool auto_accepted(const std::string& node) const;
  Entry make_entry(PeerKey info) const;

  Store& store_;
  const std::string self_, self_public_b64_, central_;
  mutable std::mutex mu_;
  std::map<std::string, Entry> keys_;
  std::map<std::string, std::string> pinned_;  // config: node -> key (base64)
  std::vector<std::string> auto_accept_;
  size_t pending_ = 0;
};

}  // namespace bosun::host
