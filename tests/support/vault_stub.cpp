#include "vault_stub.hpp"

#include <openssl/rand.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>

namespace bosun::test {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

struct VaultStub::Impl {
  asio::io_context ioc;
  ssl::context ctx{ssl::context::tls_server};
  tcp::acceptor acceptor{ioc};
};

namespace {

void run(const std::string& cmd) {
  if (std::system((cmd + " >/dev/null 2>&1").c_str()) != 0) {
    throw std::runtime_error("vault stub: failed: " + cmd);
  }
}

}  // namespace

VaultStub::VaultStub(const std::filesystem::path& dir) : impl_(std::make_unique<Impl>()) {
  std::filesystem::create_directories(dir);
  ca_file_ = dir / "ca.pem";
  cert_file_ = dir / "server.pem";
  key_file_ = dir / "server.key";
  const std::string d = dir.string();
  const std::string ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
  run("openssl req -x509 " + ec + " -keyout " + d + "/ca.key -out " + d +
      "/ca.pem -days 2 -subj /CN=bosun-test-ca");
  run("openssl req " + ec + " -keyout " + d + "/server.key -out " + d +
      "/server.csr -subj /CN=127.0.0.1");
  {
    std::ofstream ext(dir / "ext.cnf");
    ext << "subjectAltName=IP:127.0.0.1\n";
  }
  run("openssl x509 -req -in " + d + "/server.csr -CA " + d + "/ca.pem -CAkey " + d +
      "/ca.key -CAcreateserial -out " + d + "/server.pem -days 2 -extfile " + d + "/ext.cnf");

  impl_->ctx.use_certificate_chain_file(cert_file_.string());
  impl_->ctx.use_private_key_file(key_file_.string(), ssl::context::pem);
  tcp::endpoint ep(asio::ip::make_address("127.0.0.1"), 0);
  impl_->acceptor.open(ep.protocol());
  impl_->acceptor.set_option(tcp::acceptor::reuse_address(true));
  impl_->acceptor.bind(ep);
  impl_->acceptor.listen();
  port_ = impl_->acceptor.local_endpoint().port();
  thread_ = std::thread([this] { serve(); });
}

VaultStub::~VaultStub() {
  stop_ = true;
  try {  // wake the blocking accept
    asio::io_context ioc;
    tcp::socket s(ioc);
    s.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port_));
  } catch (...) {
  }
  if (thread_.joinable()) thread_.join();
}

std::string VaultStub::address() const {
  return "https://127.0.0.1:" + std::to_string(port_);
}

std::string VaultStub::add_token(int64_t ttl_s) {
  unsigned char raw[16];
  RAND_bytes(raw, sizeof raw);
  std::string t = "hvs.";
  static const char* digits = "0123456789abcdef";
  for (unsigned char c : raw) {
    t.push_back(digits[c >> 4]);
    t.push_back(digits[c & 15]);
  }
  std::lock_guard<std::mutex> lock(mu_);
  Token& tok = tokens_[t];
  tok.ttl_s = ttl_s;
  tok.expires = Clock::now() + std::chrono::seconds(ttl_s);
  return t;
}

void VaultStub::revoke(const std::string& token) {
  std::lock_guard<std::mutex> lock(mu_);
  tokens_[token].revoked = true;
}

VaultStub::Stats VaultStub::stats(const std::string& token) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = tokens_.find(token);
  return it == tokens_.end() ? Stats{} : it->second.stats;
}

std::vector<std::string> VaultStub::requests() const {
  std::lock_guard<std::mutex> lock(mu_);
  return requests_;
}

std::string VaultStub::handle(const std::string& method, const std::string& target,
                              const std::string& token, int& status) {
  std::lock_guard<std::mutex> lock(mu_);
  auto denied = [&] {
    status = 403;
    return std::string(R"({"errors":["permission denied"]})");
  };
  if (sealed_) {
    status = 503;
    return std::string(R"({"errors":["Vault is sealed"]})");
  }
  auto it = tokens_.find(token);
  auto now = Clock::now();
  if (it == tokens_.end()) return denied();
  Token& t = it->second;
  bool expired = now >= t.expires;
  if (t.revoked || expired) {
    if (expired && target == "/v1/auth/token/renew-self") t.stats.late_renewals++;
    t.stats.refused++;
    return denied();
  }
  auto left = std::chrono::duration_cast<std::chrono::seconds>(t.expires - now).count();
  if (method == "GET" && target == "/v1/auth/token/lookup-self") {
    t.stats.lookups++;
    status = 200;
    return json{{"data", {{"ttl", left}, {"renewable", true}, {"policies", {"default"}}}}}.dump();
  }
  if (method == "POST" && target == "/v1/auth/token/renew-self") {
    t.stats.renewals++;
    t.expires = now + std::chrono::seconds(t.ttl_s);
    status = 200;
    return json{{"auth", {{"lease_duration", t.ttl_s}, {"renewable", true}}}}.dump();
  }
  if (method == "POST" && target == "/v1/auth/token/revoke-self") {
    t.revoked = true;
    status = 204;
    return "";
  }
  status = 404;
  return R"({"errors":["no handler for route"]})";
}

void VaultStub::serve() {
  while (!stop_) {
    tcp::socket sock(impl_->ioc);
    boost::system::error_code ec;
    impl_->acceptor.accept(sock, ec);
    if (stop_) break;
    if (ec) continue;
    try {
      // Bounded: a client that stalls cannot hold the stub for long.
      struct timeval tv {
        5, 0
      };
      ::setsockopt(sock.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
      beast::ssl_stream<tcp::socket> stream(std::move(sock), impl_->ctx);
      stream.handshake(ssl::stream_base::server);
      beast::flat_buffer buf;
      http::request<http::string_body> req;
      http::read(stream, buf, req);
      std::string token(req["X-Vault-Token"]);
      int status = 500;
      std::string body =
          handle(std::string(req.method_string()), std::string(req.target()), token, status);
      {
        std::lock_guard<std::mutex> lock(mu_);
        requests_.push_back(std::string(req.method_string()) + " " + std::string(req.target()) +
                            " " + std::to_string(status));
      }
      http::response<http::string_body> res{static_cast<http::status>(status), req.version()};
      res.set(http::field::content_type, "application/json");
      res.body() = body;
      res.keep_alive(false);
      res.prepare_payload();
      http::write(stream, res);
      stream.shutdown(ec);
    } catch (const std::exception&) {
      // a failed handshake (an untrusting client) or a cut connection
    }
  }
}

}  // namespace bosun::test
