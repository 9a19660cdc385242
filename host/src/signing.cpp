// SHA256_Init/Update/Final (HmacSha256): deprecated in OpenSSL 3, not removed.
#define OPENSSL_SUPPRESS_DEPRECATED
#include "signing.hpp"

#include <fcntl.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace bosun::host {

namespace fs = std::filesystem;

namespace {

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct MdCtxFree {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};
using BioPtr = std::unique_ptr<BIO, BioFree>;
using MdCtxPtr = std::unique_ptr<EVP_MD_CTX, MdCtxFree>;

// OpenSSL's most recent error, and the queue emptied.
std::string openssl_error() {
  unsigned long code = ERR_peek_last_error();
  std::string text = "unknown OpenSSL error";
  if (code != 0) {
    char buf[256];
    ERR_error_string_n(code, buf, sizeof buf);
    text = buf;
  }
  ERR_clear_error();
  return text;
}

// An encrypted key is refused rather than prompting on the terminal.
int no_passphrase(char*, int, int, void*) {
  return -1;
}

}  // namespace

void Ed25519Key::Free::operator()(EVP_PKEY* k) const {
  EVP_PKEY_free(k);
}

std::string base64_encode(std::string_view bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3), '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(bytes.data()),
                          static_cast<int>(bytes.size()));
  out.resize(static_cast<size_t>(n));
  return out;
}

std::string hex_encode(std::string_view bytes) {
  static const char* hex = "0123456789abcdef";
  std::string out;
  out.reserve(2 * bytes.size());
  for (char c : bytes) {
    auto b = static_cast<unsigned char>(c);
    out.push_back(hex[b >> 4]);
    out.push_back(hex[b & 15]);
  }
  return out;
}

namespace {
std::string to_hex(const unsigned char* md, unsigned len) {
  return hex_encode(std::string_view(reinterpret_cast<const char*>(md), len));
}
}  // namespace

std::string sha256_hex(std::string_view bytes) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(bytes.data(), bytes.size(), md, &len, EVP_sha256(), nullptr);
  return to_hex(md, len);
}

// HMAC-SHA256 on OpenSSL's SHA-256 block functions: its EVP digest
// contexts allocate on every initialisation (and the one-shot HMAC() looks
// the algorithms up by name each time), which at full messaging load was
// most of what a tag cost. The SHA256_* functions are deprecated in
// OpenSSL 3 but kept there; they are the same implementation without the
// provider layer around it.
struct HmacSha256::State {
  SHA256_CTX inner, outer;  // after the key's ipad and opad blocks
};

HmacSha256::HmacSha256(std::string_view key) : state_(std::make_unique<State>()) {
  constexpr size_t kBlock = SHA256_CBLOCK;
  unsigned char k0[kBlock] = {0};
  if (key.size() > kBlock) {
    SHA256(reinterpret_cast<const unsigned char*>(key.data()), key.size(), k0);
  } else {
    std::memcpy(k0, key.data(), key.size());
  }
  unsigned char pad[kBlock];
  for (size_t i = 0; i < kBlock; ++i) pad[i] = k0[i] ^ 0x36;
  SHA256_Init(&state_->inner);
  SHA256_Update(&state_->inner, pad, kBlock);
  for (size_t i = 0; i < kBlock; ++i) pad[i] = k0[i] ^ 0x5c;
  SHA256_Init(&state_->outer);
  SHA256_Update(&state_->outer, pad, kBlock);
  OPENSSL_cleanse(k0, sizeof k0);
  OPENSSL_cleanse(pad, sizeof pad);
}

HmacSha256::~HmacSha256() {
  OPENSSL_cleanse(state_.get(), sizeof(State));
}

std::string HmacSha256::tag(std::span<const std::string_view> pieces) const {
  SHA256_CTX c = state_->inner;
  for (std::string_view p : pieces) SHA256_Update(&c, p.data(), p.size());
  unsigned char inner[SHA256_DIGEST_LENGTH];
  SHA256_Final(inner, &c);
  c = state_->outer;
  SHA256_Update(&c, inner, sizeof inner);
  std::string out(SHA256_DIGEST_LENGTH, '\0');
  SHA256_Final(reinterpret_cast<unsigned char*>(out.data()), &c);
  OPENSSL_cleanse(inner, sizeof inner);
  OPENSSL_cleanse(&c, sizeof c);
  return out;
}

std::string hmac_sha256(std::string_view key, std::string_view data) {
  return HmacSha256(key).tag({data});
}

std::string sha256_file_hex(const fs::path& file) {
  int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw SigningError("cannot read " + file.string() + ": " + std::strerror(errno));
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr);
  std::string buf(1 << 20, '\0');
  for (;;) {
    ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      ::close(fd);
      throw SigningError("cannot read " + file.string() + ": " + std::strerror(err));
    }
    if (n == 0) break;
    EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<size_t>(n));
  }
  ::close(fd);
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx.get(), md, &len);
  return to_hex(md, len);
}

std::string read_file_bytes(const fs::path& file) {
  int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw SigningError("cannot read " + file.string() + ": " + std::strerror(errno));
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      throw SigningError("cannot read " + file.string() + ": " + std::strerror(err));
    }
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

Ed25519Key Ed25519Key::load(const fs::path& pem_file) {
  std::string text = read_file_bytes(pem_file);
  BioPtr bio(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())));
  if (!bio) throw SigningError("cannot read " + pem_file.string() + ": " + openssl_error());
  EVP_PKEY* raw = PEM_read_bio_PrivateKey(bio.get(), nullptr, no_passphrase, nullptr);
  if (raw == nullptr) {
    throw SigningError(pem_file.string() +
                       " is not an unencrypted PEM private key (expected the PKCS#8 PEM that "
                       "`bosun sign-plugin --new-key` or `openssl genpkey -algorithm ed25519` "
                       "writes): " +
                       openssl_error());
  }
  Ed25519Key key(raw);
  if (EVP_PKEY_get_id(raw) != EVP_PKEY_ED25519) {
    const char* type = EVP_PKEY_get0_type_name(raw);
    throw SigningError(pem_file.string() + " holds " + (type ? std::string(type) : "a") +
                       " private key, not an Ed25519 one");
  }
  return key;
}

Ed25519Key Ed25519Key::generate() {
  EVP_PKEY* raw = EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519");
  if (raw == nullptr) throw SigningError("cannot generate an Ed25519 key: " + openssl_error());
  return Ed25519Key(raw);
}

void Ed25519Key::write_private_pem(const fs::path& pem_file) const {
  BioPtr mem(BIO_new(BIO_s_mem()));
  if (!mem ||
      PEM_write_bio_PrivateKey(mem.get(), key_.get(), nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    throw SigningError("cannot encode the private key: " + openssl_error());
  }
  char* data = nullptr;
  long len = BIO_get_mem_data(mem.get(), &data);
  int fd = ::open(pem_file.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    int err = errno;
    if (err == EEXIST) {
      throw SigningError(pem_file.string() + " exists: not replacing a key (choose another file)");
    }
    throw SigningError("cannot create " + pem_file.string() + ": " + std::strerror(err));
  }
  bool ok = ::fchmod(fd, 0600) == 0;
  for (long off = 0; ok && off < len;) {
    ssize_t n = ::write(fd, data + off, static_cast<size_t>(len - off));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) ok = false;
    if (n > 0) off += n;
  }
  int err = errno;
  if (::close(fd) != 0 && ok) {
    ok = false;
    err = errno;
  }
  if (!ok) {
    ::unlink(pem_file.c_str());
    throw SigningError("cannot write " + pem_file.string() + ": " + std::strerror(err));
  }
}

std::string Ed25519Key::sign(std::string_view bytes) const {
  MdCtxPtr ctx(EVP_MD_CTX_new());
  std::string sig(64, '\0');
  size_t len = sig.size();
  if (!ctx || EVP_DigestSignInit(ctx.get(), nullptr, nullptr, nullptr, key_.get()) != 1 ||
      EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &len,
                     reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size()) != 1) {
    throw SigningError("cannot sign: " + openssl_error());
  }
  sig.resize(len);
  return sig;
}

std::string Ed25519Key::public_key_raw() const {
  std::string raw(32, '\0');
  size_t len = raw.size();
  if (EVP_PKEY_get_raw_public_key(key_.get(), reinterpret_cast<unsigned char*>(raw.data()), &len) !=
      1) {
    throw SigningError("cannot read the public key: " + openssl_error());
  }
  raw.resize(len);
  return raw;
}

std::shared_ptr<EVP_PKEY> Ed25519Key::x25519_private() const {
  unsigned char seed[32];
  size_t len = sizeof seed;
  unsigned char h[64];
  unsigned int hlen = 0;
  EVP_PKEY* x = nullptr;
  if (EVP_PKEY_get_raw_private_key(key_.get(), seed, &len) == 1 && len == sizeof seed &&
      EVP_Digest(seed, sizeof seed, h, &hlen, EVP_sha512(), nullptr) == 1) {
    // X25519 clamps the scalar itself (RFC 7748 decodeScalar25519).
    x = EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, nullptr, h, 32);
  }
  OPENSSL_cleanse(seed, sizeof seed);
  OPENSSL_cleanse(h, sizeof h);
  if (x == nullptr) throw SigningError("cannot map the node key to X25519: " + openssl_error());
  return std::shared_ptr<EVP_PKEY>(x, EVP_PKEY_free);
}

std::string x25519_public_from_ed25519(std::string_view ed) {
  if (ed.size() != 32) return {};
  unsigned char y_le[32];
  std::memcpy(y_le, ed.data(), 32);
  y_le[31] &= 0x7f;  // the sign of x, which u does not depend on
  struct BnFree {
    void operator()(BIGNUM* b) const { BN_free(b); }
  };
  using Bn = std::unique_ptr<BIGNUM, BnFree>;
  std::unique_ptr<BN_CTX, void (*)(BN_CTX*)> ctx(BN_CTX_new(), BN_CTX_free);
  Bn p(BN_new()), y(BN_lebin2bn(y_le, 32, nullptr)), num(BN_new()), den(BN_new()), u(BN_new());
  if (!ctx || !p || !y || !num || !den || !u) return {};
  // p = 2^255 - 19
  if (BN_set_bit(p.get(), 255) != 1 || BN_sub_word(p.get(), 19) != 1) return {};
  if (BN_cmp(y.get(), p.get()) >= 0) return {};  // not canonical
  if (BN_mod_add(num.get(), y.get(), BN_value_one(), p.get(), ctx.get()) != 1 ||
      BN_mod_sub(den.get(), BN_value_one(), y.get(), p.get(), ctx.get()) != 1) {
    return {};
  }
  if (BN_is_zero(den.get())) return {};  // y = 1: the identity
  if (BN_mod_inverse(den.get(), den.get(), p.get(), ctx.get()) == nullptr ||
      BN_mod_mul(u.get(), num.get(), den.get(), p.get(), ctx.get()) != 1) {
    ERR_clear_error();
    return {};
  }
  std::string out(32, '\0');
  if (BN_bn2lebinpad(u.get(), reinterpret_cast<unsigned char*>(out.data()), 32) != 32) return {};
  return out;
}

}  // namespace bosun::host
