#include "https.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <memory>
#include <stdexcept>

namespace bosun::vault {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;

Url parse_url(const std::string& address) {
  const std::string scheme = "https://";
  if (address.rfind(scheme, 0) != 0) {
    throw std::invalid_argument("address \"" + address + "\" must start with https://");
  }
  std::string rest = address.substr(scheme.size());
  Url url;
  size_t slash = rest.find('/');
  std::string hostport = rest.substr(0, slash);
  if (slash != std::string::npos) url.prefix = rest.substr(slash);
  while (!url.prefix.empty() && url.prefix.back() == '/') url.prefix.pop_back();
  size_t colon = hostport.rfind(':');
  if (!hostport.empty() && hostport.front() == '[') {  // [::1]:8200
    size_t close = hostport.find(']');
    if (close == std::string::npos) throw std::invalid_argument("address: unclosed [ in host");
    url.host = hostport.substr(1, close - 1);
    url.port = close + 1 < hostport.size() && hostport[close + 1] == ':'
                   ? hostport.substr(close + 2)
                   : "8200";
  } else if (colon != std::string::npos) {
    url.host = hostport.substr(0, colon);
    url.port = hostport.substr(colon + 1);
  } else {
    url.host = hostport;
    url.port = "8200";
  }
  if (url.host.empty()) throw std::invalid_argument("address \"" + address + "\" has no host");
  if (url.port.empty() || url.port.find_first_not_of("0123456789") != std::string::npos ||
      url.port.size() > 5 || std::stoi(url.port) == 0 || std::stoi(url.port) > 65535) {
    throw std::invalid_argument("address \"" + address + "\" has a bad port");
  }
  return url;
}

namespace {

class Exchange : public std::enable_shared_from_this<Exchange> {
 public:
  Exchange(asio::io_context& ioc, ssl::context& ctx, std::chrono::milliseconds timeout)
      : resolver_(ioc), stream_(ioc, ctx), timeout_(timeout) {}

  void run(const Url& url, http::request<http::string_body> req) {
    url_ = url;
    req_ = std::move(req);
    boost::system::error_code ec;
    asio::ip::make_address(url.host, ec);
    if (ec) {  // a name: SNI
      if (!SSL_set_tlsext_host_name(stream_.native_handle(), url.host.c_str())) {
        fail("TLS: cannot set the server name");
        return;
      }
    }
    stream_.set_verify_mode(ssl::verify_peer);
    stream_.set_verify_callback(ssl::host_name_verification(url.host));
    resolver_.async_resolve(
        url.host, url.port,
        [self = shared_from_this()](beast::error_code e, tcp::resolver::results_type results) {
          self->on_resolve(e, results);
        });
  }

  std::string error;
  http::response<http::string_body> res;
  bool done = false;

 private:
  void fail(const std::string& what) {
    error = what;
    done = true;
  }
  void on_resolve(beast::error_code ec, tcp::resolver::results_type results) {
    if (ec) return fail("cannot resolve " + url_.host + ": " + ec.message());
    beast::get_lowest_layer(stream_).expires_after(timeout_);
    beast::get_lowest_layer(stream_).async_connect(
        results,
        [self = shared_from_this()](beast::error_code e, tcp::endpoint) { self->on_connect(e); });
  }
  void on_connect(beast::error_code ec) {
    if (ec) return fail("cannot connect to " + url_.host + ":" + url_.port + ": " + ec.message());
    beast::get_lowest_layer(stream_).expires_after(timeout_);
    stream_.async_handshake(
        ssl::stream_base::client,
        [self = shared_from_this()](beast::error_code e) { self->on_handshake(e); });
  }
  void on_handshake(beast::error_code ec) {
    if (ec) return fail("TLS handshake with " + url_.host + ":" + url_.port + ": " + ec.message());
    beast::get_lowest_layer(stream_).expires_after(timeout_);
    http::async_write(stream_, req_, [self = shared_from_this()](beast::error_code e, size_t) {
      self->on_write(e);
    });
  }
  void on_write(beast::error_code ec) {
    if (ec) return fail("sending to " + url_.host + ":" + url_.port + ": " + ec.message());
    beast::get_lowest_layer(stream_).expires_after(timeout_);
    http::async_read(
        stream_, buffer_, res,
        [self = shared_from_this()](beast::error_code e, size_t) { self->on_read(e); });
  }
  void on_read(beast::error_code ec) {
    if (ec) return fail("reading from " + url_.host + ":" + url_.port + ": " + ec.message());
    done = true;  // one request per connection: no TLS close handshake to wait for
  }

  tcp::resolver resolver_;
  beast::ssl_stream<beast::tcp_stream> stream_;
  std::chrono::milliseconds timeout_;
  beast::flat_buffer buffer_;
  http::request<http::string_body> req_;
  Url url_;
};

}  // namespace

HttpResult https_request(const Url& url, const std::string& ca_file, const std::string& method,
                         const std::string& path, const std::string& token,
                         std::chrono::milliseconds timeout) {
  ssl::context ctx(ssl::context::tls_client);
  ctx.set_options(ssl::context::no_sslv2 | ssl::context::no_sslv3 | ssl::context::no_tlsv1 |
                  ssl::context::no_tlsv1_1);
  boost::system::error_code ec;
  if (ca_file.empty()) {
    ctx.set_default_verify_paths(ec);
  } else {
    ctx.load_verify_file(ca_file, ec);
  }
  if (ec) throw std::runtime_error("caFile \"" + ca_file + "\": " + ec.message());

  http::request<http::string_body> req;
  req.method(method == "POST" ? http::verb::post : http::verb::get);
  req.target(url.prefix + path);
  req.version(11);
  req.set(http::field::host, url.host);
  req.set(http::field::user_agent, "bosun-vault");
  req.set("X-Vault-Token", token);
  if (method == "POST") {
    req.set(http::field::content_type, "application/json");
    req.body() = "{}";
  }
  req.prepare_payload();

  asio::io_context ioc;
  auto ex = std::make_shared<Exchange>(ioc, ctx, timeout);
  ex->run(url, std::move(req));
  ioc.run_for(timeout * 4);  // each step has `timeout`; this bounds the rest
  if (!ex->error.empty()) throw std::runtime_error(ex->error);
  if (!ex->done) throw std::runtime_error("no answer from " + url.host + ":" + url.port);
  return HttpResult{static_cast<int>(ex->res.result_int()), ex->res.body()};
}

}  // namespace bosun::vault
