// Publisher signatures for update_plugin (issue 5): the operator's side.
// An Ed25519 private key in a PKCS#8 PEM file (as `openssl genpkey
// -algorithm ed25519` writes it) signs a module file's bytes; the node module
// verifies the signature against plugins.publisherKeys (base64 raw 32-byte
// public keys). Every error is a SigningError whose text names the file.
#pragma once

#include <openssl/types.h>

#include <filesystem>
#include <initializer_list>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>

namespace bosun::host {

struct SigningError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::string base64_encode(std::string_view bytes);
// Lower-case hex, two digits a byte.
std::string hex_encode(std::string_view bytes);
std::string sha256_hex(std::string_view bytes);
// HMAC-SHA256 (RFC 2104) of `data` under `key`: the raw 32-byte tag, or ""
// when OpenSSL fails.
std::string hmac_sha256(std::string_view key, std::string_view data);

// One HMAC-SHA256 key with SHA-256's state after its two pads already
// computed, so that a tag costs two hash finishes and no allocation: what a
// pair key (security.pairKeys) tags every message with. The tag is of the
// concatenation of `pieces`.
class HmacSha256 {
 public:
  explicit HmacSha256(std::string_view key);
  ~HmacSha256();
  HmacSha256(const HmacSha256&) = delete;
  HmacSha256& operator=(const HmacSha256&) = delete;
  // The raw 32-byte tag.
  std::string tag(std::span<const std::string_view> pieces) const;
  std::string tag(std::initializer_list<std::string_view> pieces) const {
    return tag(std::span<const std::string_view>(pieces.begin(), pieces.size()));
  }

 private:
  struct State;
  std::unique_ptr<State> state_;
};
// The same of a file, read in 1 MiB blocks; throws SigningError naming it.
std::string sha256_file_hex(const std::filesystem::path& file);

// The whole file; throws SigningError "cannot read <file>: <reason>".
std::string read_file_bytes(const std::filesystem::path& file);

// The Montgomery u-coordinate (X25519 public key) of an Ed25519 public key
// (RFC 7748 section 4.1: u = (1 + y) / (1 - y) mod 2^255 - 19); empty when
// the bytes are not a canonical encoding of a point other than the identity.
std::string x25519_public_from_ed25519(std::string_view ed25519_public_raw);

class Ed25519Key {
 public:
  // Reads a PEM private key; refuses anything that is not Ed25519.
  static Ed25519Key load(const std::filesystem::path& pem_file);
  static Ed25519Key generate();

  // Writes the private key as PKCS#8 PEM to a new file with mode 0600;
  // refuses to replace an existing file.
  void write_private_pem(const std::filesystem::path& pem_file) const;

  std::string sign(std::string_view bytes) const;  // the raw 64-byte signature
  std::string public_key_raw() const;              // the raw 32-byte public key
  // The same key on Curve25519, for X25519 (RFC 7748): the clamped first
  // half of SHA-512 of the seed, as libsodium's
  // crypto_sign_ed25519_sk_to_curve25519 maps it. Its public key is
  // x25519_public_from_ed25519(public_key_raw()).
  std::shared_ptr<EVP_PKEY> x25519_private() const;

 private:
  struct Free {
    void operator()(EVP_PKEY* k) const;
  };
  explicit Ed25519Key(EVP_PKEY* key) : key_(key) {}
  std::unique_ptr<EVP_PKEY, Free> key_;
};

}  // namespace bosun::host
