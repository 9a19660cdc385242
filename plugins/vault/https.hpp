// A small HTTPS client for the vault module: one request per connection,
// TLS 1.2+ with the peer verified against a CA file and the host name (or IP
// address) of the URL, every step bounded by a timeout.
#pragma once

#include <chrono>
#include <string>

namespace bosun::vault {

struct Url {
  std::string host;
  std::string port;
  std::string prefix;  // path prefix without a trailing '/', often ""
};

// Parses "https://host[:port][/prefix]"; throws std::invalid_argument naming
// what is wrong.
Url parse_url(const std::string& address);

struct HttpResult {
  int status = 0;  // HTTP status; 0 when no answer came
  std::string body;
};

// Sends `method` `path` with the header X-Vault-Token. Throws
// std::runtime_error when the server cannot be reached, the TLS handshake or
// the verification fails, or the timeout runs out. The token never appears
// in an error text.
HttpResult https_request(const Url& url, const std::string& ca_file, const std::string& method,
                         const std::string& path, const std::string& token,
                         std::chrono::milliseconds timeout);

}  // namespace bosun::vault
