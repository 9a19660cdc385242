// Byte codecs of the copy protocol: base64 for chunks inside JSON messages,
// streaming SHA-256 for the end-to-end check.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace filecopy {

std::string base64_encode(std::string_view bytes);
// The decoded bytes, or nullopt when `text` is not canonical base64.
std::optional<std::string> base64_decode(std::string_view text);

// SHA-256 over data fed in pieces.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void update(const void* data, size_t len);
  std::string hex();  // finishes the digest; lowercase hex

 private:
  struct Ctx;
  std::unique_ptr<Ctx> ctx_;
};

std::string sha256_hex(std::string_view bytes);
bool is_hex(std::string_view s, size_t len);

}  // namespace filecopy
