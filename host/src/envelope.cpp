// Signed envelopes and the node's identity (security.hpp): what the
// libFuzzer target (tests/fuzz) builds on its own, without the store.
#include "security.hpp"

#include <openssl/evp.h>
#include <sys/stat.h>

#include <charconv>
#include <cstdio>
#include <system_error>

#include "bosun/host/message.hpp"
#include "crypt.hpp"

namespace bosun::host {

namespace fs = std::filesystem;

namespace {

constexpr std::string_view kDomain = "bosun-envelope-v1";
constexpr std::string_view kDomainEncrypted = "bosun-envelope-v2";
constexpr size_t kMaxHeader = 512;

struct MdCtxFree {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};

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

bool parse_envelope(std::string_view wire, Envelope& out, std::string* why) {
  auto fail = [&](std::string text) {
    if (why) *why = std::move(text);
    return false;
  };
  const bool encrypted = wire.substr(0, kEncryptedMagic.size()) == kEncryptedMagic;
  if (!encrypted && wire.substr(0, kEnvelopeMagic.size()) != kEnvelopeMagic) {
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
  std::string_view key_id = encrypted ? next_field(line) : std::string_view{};
  if (!line.empty()) {
    // Two whole literals: GCC 12 -O2 misreads the concatenation as an overread.
    return fail(encrypted ? "envelope header has more than 5 fields"
                          : "envelope header has more than 4 fields");
  }
  if (encrypted) {
    bool hex = key_id.size() == 16;
    for (char c : key_id) hex = hex && ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'));
    if (!hex) return fail("encrypted envelope has no key id of 16 hex digits");
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
  if (!base64_decode(sig, out.signature) || out.signature.size() != 64) {
    return fail("envelope signature is not a base64 Ed25519 signature");
  }
  out.signer = std::string(signer);
  out.signed_at_ms = t;
  out.body = wire.substr(nl + 1);
  out.encrypted = encrypted;
  out.key_id = std::string(key_id);
  return true;
}

std::string envelope_signed_bytes(std::string_view signer, int64_t signed_at_ms,
                                  std::string_view subject, std::string_view body,
                                  std::string_view key_id) {
  std::string ts = std::to_string(signed_at_ms);
  std::string out;
  out.reserve(kDomainEncrypted.size() + signer.size() + ts.size() + subject.size() + key_id.size() +
              body.size() + 5);
  out.append(key_id.empty() ? kDomain : kDomainEncrypted).push_back('\0');
  out.append(signer).push_back('\0');
  out.append(ts).push_back('\0');
  out.append(subject).push_back('\0');
  if (!key_id.empty()) out.append(key_id).push_back('\0');
  out.append(body);
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

Identity::Identity(Ed25519Key key) : key_(std::make_shared<Ed25519Key>(std::move(key))) {
  public_raw_ = key_->public_key_raw();
  public_b64_ = base64_encode(public_raw_);
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
                           int64_t now_ms, const ClusterKey* key) const {
  std::string sealed;
  std::string_view key_id;
  if (key != nullptr) {
    key_id = key->id();
    sealed = key->encrypt(payload_aad(signer, now_ms, subject, key_id), body);
    body = sealed;
  }
  std::string sig = key_->sign(envelope_signed_bytes(signer, now_ms, subject, body, key_id));
  std::string out;
  std::string sig_b64 = base64_encode(sig);
  std::string ts = std::to_string(now_ms);
  out.reserve(kEncryptedMagic.size() + signer.size() + ts.size() + public_b64_.size() +
              sig_b64.size() + key_id.size() + body.size() + 6);
  out.append(key ? kEncryptedMagic : kEnvelopeMagic).append(signer).append(" ").append(ts);
  out.append(" ").append(public_b64_).append(" ").append(sig_b64);
  if (key) out.append(" ").append(key_id);
  out.append("\n").append(body);
  return out;
}

}  // namespace bosun::host
