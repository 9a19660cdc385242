// Signed envelopes and the node's identity (security.hpp): what the
// libFuzzer target (tests/fuzz) builds on its own, without the store.
#include "security.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <sys/stat.h>

#include <array>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <map>
#include <span>
#include <system_error>

#include "bosun/host/message.hpp"
#include "crypt.hpp"

namespace bosun::host {

namespace fs = std::filesystem;

namespace {

constexpr std::string_view kDomain = "bosun-envelope-v1";
constexpr std::string_view kDomainEncrypted = "bosun-envelope-v2";
constexpr std::string_view kDomainPair = "bosun-envelope-pair-v1";
constexpr std::string_view kDomainPairEncrypted = "bosun-envelope-pair-v2";
constexpr std::string_view kPairInfo = "bosun pair key v1";
// Pair keys remembered; past this the cache starts again (made-up keys in a
// flood of forged messages cost one X25519 each, as a signature check would).
constexpr size_t kMaxPairKeys = 4096;
constexpr size_t kMaxHeader = 512;

struct MdCtxFree {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};

bool is_key_hint(std::string_view text) {
  bool hex = text.size() == 16;
  for (char c : text) hex = hex && ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'));
  return hex;
}

std::string_view next_field(std::string_view& line) {
  size_t sp = line.find(' ');
  std::string_view f = line.substr(0, sp);
  line = sp == std::string_view::npos ? std::string_view{} : line.substr(sp + 1);
  return f;
}

}  // namespace

void PkeyFree::operator()(EVP_PKEY* k) const {
  EVP_PKEY_free(k);
}

bool base64_decode(std::string_view text, std::string& out) {
  if (text.empty() || text.size() % 4 != 0) return false;
  for (char c : text) {
    bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '+' || c == '/' || c == '=';
    if (!ok) return false;
  }
  out.assign(3 * text.size() / 4, '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(text.data()),
                          static_cast<int>(text.size()));
  if (n < 0) return false;
  size_t pad = 0;
  if (text.back() == '=') ++pad;
  if (text.size() >= 2 && text[text.size() - 2] == '=') ++pad;
  out.resize(static_cast<size_t>(n) - pad);
  return true;
}

std::string key_hint(std::string_view public_key_raw) {
  return hex_encode(public_key_raw.substr(0, 8));
}

bool parse_envelope(std::string_view wire, Envelope& out, std::string* why) {
  auto fail = [&](std::string text) {
    if (why) *why = std::move(text);
    return false;
  };
  const std::string_view magic = wire.substr(0, kEnvelopeMagic.size());
  const bool encrypted = magic == kEncryptedMagic || magic == kPairEncryptedMagic;
  const bool pair = magic == kPairMagic || magic == kPairEncryptedMagic;
  if (!encrypted && !pair && magic != kEnvelopeMagic) {
    return fail(
        "not a signed envelope (no \"BSN1\" header): unsigned, or from a node whose "
        "security.sign is off");
  }
  size_t nl = wire.find('\n');
  if (nl == std::string_view::npos || nl > kMaxHeader) {
    return fail("envelope header has no end within " + std::to_string(kMaxHeader) + " bytes");
  }
  std::string_view line = wire.substr(kEnvelopeMagic.size(), nl - kEnvelopeMagic.size());
  std::string_view signer = next_field(line);
  std::string_view ts = next_field(line);
  std::string_view pub = next_field(line);
  std::string_view sig = next_field(line);
  std::string_view for_key = pair ? next_field(line) : std::string_view{};
  std::string_view key_id = encrypted ? next_field(line) : std::string_view{};
  if (!line.empty()) {
    // Whole literals: GCC 12 -O2 misreads a concatenation as an overread.
    if (pair) {
      return fail(encrypted ? "envelope header has more than 6 fields"
                            : "envelope header has more than 5 fields");
    }
    return fail(encrypted ? "envelope header has more than 5 fields"
                          : "envelope header has more than 4 fields");
  }
  if (pair && !is_key_hint(for_key)) {
    return fail("pair-key envelope does not name the key it was made for (16 hex digits)");
  }
  if (encrypted && !is_key_hint(key_id)) {
    return fail("encrypted envelope has no key id of 16 hex digits");
  }
  if (signer.empty() || !is_valid_token(std::string(signer))) {
    return fail("envelope signer is not a valid node name");
  }
  int64_t t = 0;
  auto [p, ec] = std::from_chars(ts.data(), ts.data() + ts.size(), t);
  if (ts.empty() || ec != std::errc() || p != ts.data() + ts.size() || t < 0) {
    return fail("envelope time is not a number of milliseconds");
  }
  if (!base64_decode(pub, out.public_key) || out.public_key.size() != 32) {
    return fail("envelope public key is not a base64 Ed25519 key");
  }
  if (pair) {
    if (!base64_decode(sig, out.signature) || out.signature.size() != 32) {
      return fail("envelope tag is not a base64 HMAC-SHA256 tag");
    }
  } else if (!base64_decode(sig, out.signature) || out.signature.size() != 64) {
    return fail("envelope signature is not a base64 Ed25519 signature");
  }
  out.pair = pair;
  out.for_key = std::string(for_key);
  out.signer = std::string(signer);
  out.signed_at_ms = t;
  out.body = wire.substr(nl + 1);
  out.encrypted = encrypted;
  out.key_id = std::string(key_id);
  return true;
}

namespace {

// What a signature or pair-key tag covers, as its pieces in order: domain,
// signer, time, subject, key id (encrypted only), each ended by a NUL, then
// the body. envelope_signed_bytes joins them; a tag hashes them one by one
// (a file copy's chunk is a quarter of a megabyte: not copied first).
class SignedPieces {
 public:
  SignedPieces(std::string_view signer, int64_t signed_at_ms, std::string_view subject,
               std::string_view body, std::string_view key_id, bool pair) {
    const std::string_view nul("\0", 1);
    auto r = std::to_chars(ts_, ts_ + sizeof ts_, signed_at_ms);
    if (pair) {
      add(key_id.empty() ? kDomainPair : kDomainPairEncrypted);
    } else {
      add(key_id.empty() ? kDomain : kDomainEncrypted);
    }
    add(nul);
    add(signer);
    add(nul);
    add(std::string_view(ts_, static_cast<size_t>(r.ptr - ts_)));
    add(nul);
    add(subject);
    add(nul);
    if (!key_id.empty()) {
      add(key_id);
      add(nul);
    }
    add(body);
  }
  // Its pieces point into it (the time's text): not copied.
  SignedPieces(const SignedPieces&) = delete;
  SignedPieces& operator=(const SignedPieces&) = delete;
  std::span<const std::string_view> pieces() const { return {pieces_.data(), n_}; }

 private:
  void add(std::string_view p) { pieces_[n_++] = p; }
  char ts_[24];
  std::array<std::string_view, 11> pieces_;
  size_t n_ = 0;
};

}  // namespace

std::string envelope_signed_bytes(std::string_view signer, int64_t signed_at_ms,
                                  std::string_view subject, std::string_view body,
                                  std::string_view key_id, bool pair) {
  SignedPieces signed_pieces(signer, signed_at_ms, subject, body, key_id, pair);
  size_t size = 0;
  for (std::string_view p : signed_pieces.pieces()) size += p.size();
  std::string out;
  out.reserve(size);
  for (std::string_view p : signed_pieces.pieces()) out.append(p);
  return out;
}

PkeyPtr ed25519_public_key(std::string_view raw) {
  EVP_PKEY* k = EVP_PKEY_new_raw_public_key(
      EVP_PKEY_ED25519, nullptr, reinterpret_cast<const unsigned char*>(raw.data()), raw.size());
  if (k == nullptr) return nullptr;
  return PkeyPtr(k, PkeyFree{});
}

bool ed25519_verify(EVP_PKEY* key, std::string_view data, std::string_view signature) {
  if (key == nullptr || signature.size() != 64) return false;
  std::unique_ptr<EVP_MD_CTX, MdCtxFree> ctx(EVP_MD_CTX_new());
  if (!ctx || EVP_DigestVerifyInit(ctx.get(), nullptr, nullptr, nullptr, key) != 1) return false;
  return EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(signature.data()),
                          signature.size(), reinterpret_cast<const unsigned char*>(data.data()),
                          data.size()) == 1;
}

// ------------------------------------------------------------- Identity ---

struct Identity::PairCache {
  struct Entry {
    std::string key;                        // the pair key
    std::shared_ptr<const HmacSha256> mac;  // its HMAC state
  };
  std::mutex mu;
  std::map<std::string, Entry, std::less<>> keys;  // peer's Ed25519 key -> pair key
  ~PairCache() {
    for (auto& [peer, e] : keys) OPENSSL_cleanse(e.key.data(), e.key.size());
  }
};

namespace {

// The tag of an envelope under a pair key: HMAC-SHA256 of exactly
// envelope_signed_bytes(..., pair = true), hashed piece by piece.
std::string pair_tag(const HmacSha256& mac, std::string_view signer, int64_t signed_at_ms,
                     std::string_view subject, std::string_view body, std::string_view key_id) {
  return mac.tag(SignedPieces(signer, signed_at_ms, subject, body, key_id, true).pieces());
}

}  // namespace

Identity::Identity(Ed25519Key key)
    : key_(std::make_shared<Ed25519Key>(std::move(key))),
      x25519_(key_->x25519_private()),
      pairs_(std::make_shared<PairCache>()) {
  public_raw_ = key_->public_key_raw();
  public_b64_ = base64_encode(public_raw_);
  public_hint_ = key_hint(public_raw_);
}

std::string Identity::pair_key(std::string_view peer) const {
  auto mac = pair_mac(peer);
  if (!mac) return {};
  std::lock_guard<std::mutex> lock(pairs_->mu);
  auto it = pairs_->keys.find(peer);
  return it == pairs_->keys.end() ? std::string() : it->second.key;
}

std::shared_ptr<const HmacSha256> Identity::pair_mac(std::string_view peer) const {
  {
    std::lock_guard<std::mutex> lock(pairs_->mu);
    auto it = pairs_->keys.find(peer);
    if (it != pairs_->keys.end()) return it->second.mac;
  }
  std::string peer_x = x25519_public_from_ed25519(peer);
  if (peer_x.empty()) return {};
  EVP_PKEY* raw = EVP_PKEY_new_raw_public_key(
      EVP_PKEY_X25519, nullptr, reinterpret_cast<const unsigned char*>(peer_x.data()), 32);
  if (raw == nullptr) return {};
  PkeyPtr peer_key(raw, PkeyFree{});
  unsigned char shared[32];
  size_t len = sizeof shared;
  std::unique_ptr<EVP_PKEY_CTX, void (*)(EVP_PKEY_CTX*)> dh(
      EVP_PKEY_CTX_new(x25519_.get(), nullptr), EVP_PKEY_CTX_free);
  bool ok = dh && EVP_PKEY_derive_init(dh.get()) == 1 &&
            EVP_PKEY_derive_set_peer(dh.get(), peer_key.get()) == 1 &&
            EVP_PKEY_derive(dh.get(), shared, &len) == 1 && len == sizeof shared;
  // A small-order point gives all zeros (RFC 7748 section 6.1): no key.
  unsigned char any = 0;
  for (unsigned char b : shared) any |= b;
  ok = ok && any != 0;
  // Bound to both public keys, in a fixed order, so both ends derive it.
  std::string info(kPairInfo);
  const std::string peer_s(peer);
  info += std::min(public_raw_, peer_s);
  info += std::max(public_raw_, peer_s);
  unsigned char okm[32];
  size_t okm_len = sizeof okm;
  std::unique_ptr<EVP_PKEY_CTX, void (*)(EVP_PKEY_CTX*)> kdf(
      EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, nullptr), EVP_PKEY_CTX_free);
  ok = ok && kdf && EVP_PKEY_derive_init(kdf.get()) > 0 &&
       EVP_PKEY_CTX_set_hkdf_md(kdf.get(), EVP_sha256()) > 0 &&
       EVP_PKEY_CTX_set1_hkdf_key(kdf.get(), shared, sizeof shared) > 0 &&
       EVP_PKEY_CTX_add1_hkdf_info(kdf.get(), reinterpret_cast<const unsigned char*>(info.data()),
                                   static_cast<int>(info.size())) > 0 &&
       EVP_PKEY_derive(kdf.get(), okm, &okm_len) > 0 && okm_len == sizeof okm;
  OPENSSL_cleanse(shared, sizeof shared);
  if (!ok) {
    OPENSSL_cleanse(okm, sizeof okm);
    return {};
  }
  std::string key(reinterpret_cast<const char*>(okm), sizeof okm);
  OPENSSL_cleanse(okm, sizeof okm);
  auto mac = std::make_shared<const HmacSha256>(key);
  std::lock_guard<std::mutex> lock(pairs_->mu);
  if (pairs_->keys.size() >= kMaxPairKeys) {
    for (auto& [p, e] : pairs_->keys) OPENSSL_cleanse(e.key.data(), e.key.size());
    pairs_->keys.clear();
  }
  pairs_->keys.emplace(peer_s, PairCache::Entry{std::move(key), mac});
  return mac;
}

bool Identity::verify(const Envelope& env, std::string_view subject) const {
  if (!env.pair) {
    PkeyPtr key = ed25519_public_key(env.public_key);
    return ed25519_verify(
        key.get(),
        envelope_signed_bytes(env.signer, env.signed_at_ms, subject, env.body, env.key_id, false),
        env.signature);
  }
  auto mac = pair_mac(env.public_key);
  if (!mac || env.signature.size() != 32) return false;
  std::string tag = pair_tag(*mac, env.signer, env.signed_at_ms, subject, env.body, env.key_id);
  return tag.size() == 32 && CRYPTO_memcmp(tag.data(), env.signature.data(), 32) == 0;
}

Identity Identity::load_or_create(const fs::path& data_dir) {
  fs::path dir = data_dir / "keys";
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw SigningError("cannot create " + dir.string() + ": " + ec.message());
  ::chmod(dir.c_str(), 0700);
  fs::path file = dir / "node.ed25519.pem";
  if (fs::exists(file)) {
    struct stat st {};
    if (::stat(file.c_str(), &st) == 0 && (st.st_mode & 077) != 0) {
      char mode[8];
      std::snprintf(mode, sizeof mode, "%03o", static_cast<unsigned>(st.st_mode & 0777));
      throw SigningError("the node key " + file.string() + " may be read by others (mode " + mode +
                         "): chmod 600 it");
    }
    return Identity(Ed25519Key::load(file));
  }
  Ed25519Key key = Ed25519Key::generate();
  key.write_private_pem(file);  // mode 0600, never replaces
  return Identity(Ed25519Key::load(file));
}

std::string Identity::seal(std::string_view signer, std::string_view subject, std::string_view body,
                           int64_t now_ms, const ClusterKey* key, std::string_view peer) const {
  std::string sealed;
  std::string_view key_id;
  if (key != nullptr) {
    key_id = key->id();
    sealed = key->encrypt(payload_aad(signer, now_ms, subject, key_id), body);
    body = sealed;
  }
  auto mac = peer.empty() ? nullptr : pair_mac(peer);
  const bool pair = mac != nullptr;
  std::string sig;
  if (pair) {
    sig = pair_tag(*mac, signer, now_ms, subject, body, key_id);
  } else {
    sig = key_->sign(envelope_signed_bytes(signer, now_ms, subject, body, key_id));
  }
  std::string out;
  std::string sig_b64 = base64_encode(sig);
  std::string ts = std::to_string(now_ms);
  out.reserve(kEncryptedMagic.size() + signer.size() + ts.size() + public_b64_.size() +
              sig_b64.size() + key_id.size() + body.size() + 6);
  out.append(pair ? (key ? kPairEncryptedMagic : kPairMagic)
                  : (key ? kEncryptedMagic : kEnvelopeMagic))
      .append(signer)
      .append(" ")
      .append(ts);
  out.append(" ").append(public_b64_).append(" ").append(sig_b64);
  if (pair) out.append(" ").append(key_hint(peer));
  if (key) out.append(" ").append(key_id);
  out.append("\n").append(body);
  return out;
}

}  // namespace bosun::host
