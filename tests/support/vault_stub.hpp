// A stand-in for the parts of HashiCorp Vault's HTTP API that the vault
// module uses, for its tests: token lookup-self, renew-self and revoke-self
// over TLS, with TTLs, on 127.0.0.1 at a free port. The test CA and the
// server certificate (for IP 127.0.0.1) are made with the openssl command in
// a folder of the caller's. The test itself adds, revokes and inspects
// tokens directly (the admin hooks).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace bosun::test {

class VaultStub {
 public:
  // Makes the certificates under `dir` and starts serving.
  explicit VaultStub(const std::filesystem::path& dir);
  ~VaultStub();
  VaultStub(const VaultStub&) = delete;
  VaultStub& operator=(const VaultStub&) = delete;

  std::string address() const;  // https://127.0.0.1:<port>
  uint16_t port() const { return port_; }
  std::filesystem::path ca_file() const { return ca_file_; }

  // A new token living `ttl` seconds from now (renew-self extends it by as
  // much again); returns it.
  std::string add_token(int64_t ttl_s);
  void revoke(const std::string& token);
  // While sealed, every request is answered 503, as a sealed Vault does.
  void set_sealed(bool sealed) { sealed_ = sealed; }

  struct Stats {
    int lookups = 0;
    int renewals = 0;       // renew-self answered 200, before expiry
    int late_renewals = 0;  // renew-self that came after the token had expired
    int refused = 0;        // 403s for this token
  };
  Stats stats(const std::string& token) const;
  // Every request as "METHOD path status", in order.
  std::vector<std::string> requests() const;

 private:
  struct Token {
    int64_t ttl_s = 0;
    std::chrono::steady_clock::time_point expires;
    bool revoked = false;
    Stats stats;
  };
  void serve();
  std::string handle(const std::string& method, const std::string& target, const std::string& token,
                     int& status);

  std::filesystem::path ca_file_;
  std::filesystem::path cert_file_;
  std::filesystem::path key_file_;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<bool> sealed_{false};
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::thread thread_;
  mutable std::mutex mu_;
  std::map<std::string, Token> tokens_;
  std::vector<std::string> requests_;
};

}  // namespace bosun::test
