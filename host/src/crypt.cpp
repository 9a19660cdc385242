#include "crypt.hpp"

#include <fcntl.h>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>

#include "signing.hpp"

namespace bosun::host {

namespace fs = std::filesystem;

namespace {

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
using BioPtr = std::unique_ptr<BIO, BioFree>;
struct CtxFree {
  void operator()(EVP_PKEY_CTX* c) const { EVP_PKEY_CTX_free(c); }
};
using CtxPtr = std::unique_ptr<EVP_PKEY_CTX, CtxFree>;
struct CipherFree {
  void operator()(EVP_CIPHER_CTX* c) const { EVP_CIPHER_CTX_free(c); }
};
using CipherPtr = std::unique_ptr<EVP_CIPHER_CTX, CipherFree>;

const unsigned char* u(std::string_view s) {
  return reinterpret_cast<const unsigned char*>(s.data());
}

std::string public_pem_of(EVP_PKEY* key) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_PUBKEY(bio.get(), key) != 1) {
    throw CryptError("cannot write an RSA public key");
  }
  char* data = nullptr;
  long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(n));
}

PkeyPtr read_public(std::string_view pem) {
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (!bio) return nullptr;
  EVP_PKEY* k = PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr);
  return k == nullptr ? nullptr : PkeyPtr(k, PkeyFree{});
}

bool oaep(EVP_PKEY_CTX* c) {
  return EVP_PKEY_CTX_set_rsa_padding(c, RSA_PKCS1_OAEP_PADDING) > 0 &&
         EVP_PKEY_CTX_set_rsa_oaep_md(c, EVP_sha256()) > 0 &&
         EVP_PKEY_CTX_set_rsa_mgf1_md(c, EVP_sha256()) > 0;
}

}  // namespace

std::string random_bytes(size_t n) {
  std::string out(n, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(out.data()), static_cast<int>(n)) != 1) {
    throw CryptError("the random generator failed");
  }
  return out;
}

// --------------------------------------------------------------- RsaKey ---

std::shared_ptr<RsaKey> RsaKey::load(const fs::path& file) {
  struct stat st {};
  if (::stat(file.c_str(), &st) != 0) throw CryptError("cannot read " + file.string());
  if ((st.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%03o", static_cast<unsigned>(st.st_mode & 0777));
    throw CryptError("the node's RSA key " + file.string() + " may be read by others (mode " +
                     mode + "): chmod 600 it");
  }
  std::string text = read_file_bytes(file);
  BioPtr bio(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())));
  EVP_PKEY* k = bio ? PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr) : nullptr;
  OPENSSL_cleanse(text.data(), text.size());
  if (k == nullptr || EVP_PKEY_get_base_id(k) != EVP_PKEY_RSA) {
    EVP_PKEY_free(k);
    throw CryptError(file.string() + " is not an RSA private key in PEM");
  }
  auto out = std::make_shared<RsaKey>();
  out->key_ = PkeyPtr(k, PkeyFree{});
  out->public_pem_ = public_pem_of(k);
  return out;
}

std::shared_ptr<RsaKey> RsaKey::create(const fs::path& file) {
  EVP_PKEY* k = EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", static_cast<size_t>(kBits));
  if (k == nullptr) throw CryptError("cannot generate an RSA key");
  PkeyPtr key(k, PkeyFree{});
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_PrivateKey(bio.get(), k, nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    throw CryptError("cannot encode the RSA key");
  }
  char* data = nullptr;
  long n = BIO_get_mem_data(bio.get(), &data);
  // Whole or not at all: a crash while writing leaves no half key behind.
  const fs::path tmp = file.string() + ".tmp";
  ::unlink(tmp.c_str());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) throw CryptError("cannot create " + tmp.string());
  bool ok = ::write(fd, data, static_cast<size_t>(n)) == n;
  ok = ::fsync(fd) == 0 && ok;
  ::close(fd);
  // link() refuses to replace a key that appeared meanwhile.
  ok = ok && ::link(tmp.c_str(), file.c_str()) == 0;
  ::unlink(tmp.c_str());
  if (!ok) throw CryptError("cannot write " + file.string());
  auto out = std::make_shared<RsaKey>();
  out->key_ = std::move(key);
  out->public_pem_ = public_pem_of(k);
  return out;
}

std::string RsaKey::decrypt(std::string_view ciphertext) const {
  CtxPtr c(EVP_PKEY_CTX_new(key_.get(), nullptr));
  size_t n = 0;
  if (!c || EVP_PKEY_decrypt_init(c.get()) <= 0 || !oaep(c.get()) ||
      EVP_PKEY_decrypt(c.get(), nullptr, &n, u(ciphertext), ciphertext.size()) <= 0) {
    throw CryptError("does not decrypt with this node's RSA key");
  }
  std::string out(n, '\0');
  if (EVP_PKEY_decrypt(c.get(), reinterpret_cast<unsigned char*>(out.data()), &n, u(ciphertext),
                       ciphertext.size()) <= 0) {
    throw CryptError("does not decrypt with this node's RSA key");
  }
  out.resize(n);
  return out;
}

std::string rsa_public_key_problem(std::string_view pem) {
  PkeyPtr k = read_public(pem);
  if (!k) return "not a PEM public key";
  if (EVP_PKEY_get_base_id(k.get()) != EVP_PKEY_RSA) return "not an RSA key";
  if (EVP_PKEY_get_bits(k.get()) < 2048) return "an RSA key of fewer than 2048 bits";
  return "";
}

std::string rsa_encrypt(std::string_view public_pem, std::string_view data) {
  std::string problem = rsa_public_key_problem(public_pem);
  if (!problem.empty()) throw CryptError("the RSA key is " + problem);
  PkeyPtr k = read_public(public_pem);
  CtxPtr c(EVP_PKEY_CTX_new(k.get(), nullptr));
  size_t n = 0;
  if (!c || EVP_PKEY_encrypt_init(c.get()) <= 0 || !oaep(c.get()) ||
      EVP_PKEY_encrypt(c.get(), nullptr, &n, u(data), data.size()) <= 0) {
    throw CryptError("RSA-OAEP encryption failed (data of " + std::to_string(data.size()) +
                     " bytes: at most 318 fit a 3072-bit key)");
  }
  std::string out(n, '\0');
  if (EVP_PKEY_encrypt(c.get(), reinterpret_cast<unsigned char*>(out.data()), &n, u(data),
                       data.size()) <= 0) {
    throw CryptError("RSA-OAEP encryption failed");
  }
  out.resize(n);
  return out;
}

// ----------------------------------------------------------- ClusterKey ---

ClusterKey::ClusterKey(std::string secret) : secret_(std::move(secret)) {
  if (secret_.size() != kSecretBytes) {
    throw CryptError("a cluster secret is " + std::to_string(kSecretBytes) + " bytes, not " +
                     std::to_string(secret_.size()));
  }
  // Two HKDF-SHA256 outputs: the AES key and the secret's public name.
  unsigned char okm[40];
  size_t len = sizeof okm;
  CtxPtr c(EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, nullptr));
  static constexpr std::string_view kInfo = "bosun cluster payload key v1";
  if (!c || EVP_PKEY_derive_init(c.get()) <= 0 ||
      EVP_PKEY_CTX_set_hkdf_md(c.get(), EVP_sha256()) <= 0 ||
      EVP_PKEY_CTX_set1_hkdf_key(c.get(), u(secret_), static_cast<int>(secret_.size())) <= 0 ||
      EVP_PKEY_CTX_add1_hkdf_info(c.get(), u(kInfo), static_cast<int>(kInfo.size())) <= 0 ||
      EVP_PKEY_derive(c.get(), okm, &len) <= 0) {
    throw CryptError("HKDF failed");
  }
  std::copy(okm, okm + 32, key_.begin());
  id_ = hex_encode(std::string_view(reinterpret_cast<const char*>(okm) + 32, 8));
  OPENSSL_cleanse(okm, sizeof okm);
}

ClusterKey::~ClusterKey() {
  OPENSSL_cleanse(key_.data(), key_.size());
  OPENSSL_cleanse(secret_.data(), secret_.size());
}

std::string ClusterKey::encrypt(std::string_view aad, std::string_view plain) const {
  std::string out(kNonceBytes + plain.size() + kTagBytes, '\0');
  auto* o = reinterpret_cast<unsigned char*>(out.data());
  if (RAND_bytes(o, kNonceBytes) != 1) throw CryptError("the random generator failed");
  CipherPtr c(EVP_CIPHER_CTX_new());
  int n = 0;
  int fin = 0;
  if (!c || EVP_EncryptInit_ex(c.get(), EVP_aes_256_gcm(), nullptr, key_.data(), o) != 1 ||
      EVP_EncryptUpdate(c.get(), nullptr, &n, u(aad), static_cast<int>(aad.size())) != 1 ||
      EVP_EncryptUpdate(c.get(), o + kNonceBytes, &n, u(plain), static_cast<int>(plain.size())) !=
          1 ||
      EVP_EncryptFinal_ex(c.get(), o + kNonceBytes + n, &fin) != 1 ||
      EVP_CIPHER_CTX_ctrl(c.get(), EVP_CTRL_GCM_GET_TAG, kTagBytes,
                          o + kNonceBytes + plain.size()) != 1) {
    throw CryptError("AES-256-GCM encryption failed");
  }
  return out;
}

bool ClusterKey::decrypt(std::string_view aad, std::string_view sealed, std::string& plain) const {
  if (sealed.size() < kNonceBytes + kTagBytes) return false;
  const size_t len = sealed.size() - kNonceBytes - kTagBytes;
  plain.assign(len, '\0');
  auto* p = reinterpret_cast<unsigned char*>(plain.data());
  CipherPtr c(EVP_CIPHER_CTX_new());
  int n = 0;
  int fin = 0;
  std::array<unsigned char, kTagBytes> tag{};
  std::copy(sealed.end() - kTagBytes, sealed.end(), tag.begin());
  bool ok =
      c && EVP_DecryptInit_ex(c.get(), EVP_aes_256_gcm(), nullptr, key_.data(), u(sealed)) == 1 &&
      EVP_DecryptUpdate(c.get(), nullptr, &n, u(aad), static_cast<int>(aad.size())) == 1 &&
      EVP_DecryptUpdate(c.get(), p, &n, u(sealed) + kNonceBytes, static_cast<int>(len)) == 1 &&
      EVP_CIPHER_CTX_ctrl(c.get(), EVP_CTRL_GCM_SET_TAG, kTagBytes, tag.data()) == 1 &&
      EVP_DecryptFinal_ex(c.get(), p + n, &fin) == 1;
  if (!ok) plain.clear();
  return ok;
}

std::string payload_aad(std::string_view signer, int64_t signed_at_ms, std::string_view subject,
                        std::string_view key_id) {
  static constexpr std::string_view kDomain = "bosun-payload-v1";
  std::string ts = std::to_string(signed_at_ms);
  std::string out;
  out.reserve(kDomain.size() + signer.size() + ts.size() + subject.size() + key_id.size() + 4);
  out.append(kDomain).push_back('\0');
  out.append(signer).push_back('\0');
  out.append(ts).push_back('\0');
  out.append(subject).push_back('\0');
  out.append(key_id);
  return out;
}

}  // namespace bosun::host
