// Key exchange and encrypted payloads (DESIGN §7, issue 6).
//
// Each node has an RSA key for key exchange (<dataDir>/keys/node.rsa.pem,
// 0600), made in the background at first start so that start-up stays fast.
// The cluster secret (32 random bytes) travels RSA-OAEP-SHA256 encrypted to a
// node's RSA key, only to nodes this one accepted. With a cluster secret set,
// the body of every request and reply envelope is AES-256-GCM encrypted with
// a key derived from the secret (HKDF-SHA256), under a random 96-bit nonce
// per message (RAND_bytes); the envelope's header (signer, time, subject,
// key id) is the authenticated data, and the signature covers the
// ciphertext. Random nonces keep the chance of a repeat below 2^-32 for
// 2^32 messages under one secret: rotate it long before that.
#pragma once

#include <array>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>

#include "security.hpp"

namespace bosun::host {

struct CryptError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::string random_bytes(size_t n);  // throws CryptError

class RsaKey {
 public:
  static constexpr int kBits = 3072;
  // The key in `file`; throws CryptError naming the file (unreadable,
  // readable by others, not RSA).
  static std::shared_ptr<RsaKey> load(const std::filesystem::path& file);
  // A new key written to `file` (mode 0600, never replacing one).
  static std::shared_ptr<RsaKey> create(const std::filesystem::path& file);

  const std::string& public_pem() const { return public_pem_; }
  // RSA-OAEP-SHA256; throws CryptError when it does not decrypt.
  std::string decrypt(std::string_view ciphertext) const;

 private:
  PkeyPtr key_;
  std::string public_pem_;
};

// RSA-OAEP-SHA256 of `data` to the RSA public key `public_pem`; throws
// CryptError when the key is not an RSA public key of at least 2048 bits.
std::string rsa_encrypt(std::string_view public_pem, std::string_view data);
// "" when `pem` is an RSA public key of at least 2048 bits, else why not.
std::string rsa_public_key_problem(std::string_view pem);

class ClusterKey {
 public:
  static constexpr size_t kSecretBytes = 32;
  static constexpr size_t kNonceBytes = 12;
  static constexpr size_t kTagBytes = 16;
  explicit ClusterKey(std::string secret);
  ~ClusterKey();
  ClusterKey(const ClusterKey&) = delete;
  ClusterKey& operator=(const ClusterKey&) = delete;

  // 16 hex characters naming the secret (derived from it; says nothing of it).
  const std::string& id() const { return id_; }
  const std::string& secret() const { return secret_; }
  // nonce || ciphertext || tag.
  std::string encrypt(std::string_view aad, std::string_view plain) const;
  bool decrypt(std::string_view aad, std::string_view sealed, std::string& plain) const;

 private:
  std::string secret_;
  std::array<unsigned char, 32> key_{};
  std::string id_;
};

// The authenticated data of an encrypted envelope's body.
std::string payload_aad(std::string_view signer, int64_t signed_at_ms, std::string_view subject,
                        std::string_view key_id);

}  // namespace bosun::host
