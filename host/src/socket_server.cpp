#include "socket_server.hpp"

#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <deque>
#include <set>

#include "bosun/host/node.hpp"

namespace bosun::host {

namespace asio = boost::asio;
using stream = asio::local::stream_protocol;
using nlohmann::json;

namespace {

constexpr auto kIdleTimeout = std::chrono::seconds(30);

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(Node& node, stream::socket sock, size_t max_bytes)
      : node_(node), sock_(std::move(sock)), timer_(sock_.get_executor()), max_bytes_(max_bytes) {}
  ~Session() {
    if (listener_) node_.remove_event_listener(listener_);
  }

  void start() {
    arm_idle();
    read();
  }

  // Thread-safe: queue one JSON line for the client.
  void write_line(const json& j) {
    std::string line = j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
    asio::post(sock_.get_executor(), [self = shared_from_this(), line = std::move(line)] {
      self->queue_.push_back(std::move(line));
      if (self->queue_.size() == 1) self->write_next();
    });
  }

  // Thread-safe: close once every queued line is written.
  void finish() {
    asio::post(sock_.get_executor(), [self = shared_from_this()] {
      self->closing_ = true;
      if (self->queue_.empty()) self->shutdown();
    });
  }

  // Replies this session waits for (send with "wait").
  void on_reply(const Message& r) {
    json line = {{"type", "reply"},
                 {"inReplyTo", r.in_reply_to},
                 {"fromNode", r.from_node},
                 {"final", r.final_reply},
                 {"seq", r.seq},
                 {"status", r.status},
                 {"data", r.data},
                 {"method", r.request_method}};
    if (!r.error.empty()) line["error"] = r.error;
    write_line(line);
    if (!r.final_reply) return;
    bool done = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (submitting_) {
        // Before submit_and_wait knows what it waits for.
        early_.insert(r.in_reply_to);
        return;
      }
      outstanding_.erase(r.in_reply_to);
      done = outstanding_.empty();
    }
    if (done) {
      write_line({{"type", "done"}, {"missing", json::array()}});
      finish();
    }
  }

 private:
  class Waiter : public ReplyWaiter {
   public:
    explicit Waiter(std::weak_ptr<Session> s) : session_(std::move(s)) {}
    void on_reply(const Message& r) override {
      if (auto s = session_.lock()) s->on_reply(r);
    }

   private:
    std::weak_ptr<Session> session_;
  };

  void arm_idle() {
    timer_.expires_after(kIdleTimeout);
    timer_.async_wait([self = shared_from_this()](const boost::system::error_code& ec) {
      if (ec || self->waiting_) return;
      self->error("no complete JSON value received within 30 s");
    });
  }

  void read() {
    sock_.async_read_some(asio::buffer(buf_), [self = shared_from_this()](
                                                  const boost::system::error_code& ec, size_t n) {
      if (!ec) {
        self->input_.append(self->buf_.data(), n);
        if (self->input_.size() > self->max_bytes_) {
          self->error("input exceeds host.maxMessageBytes (" + std::to_string(self->max_bytes_) +
                      " bytes)");
          return;
        }
        if (self->try_handle(false)) return;
        self->read();
        return;
      }
      if (ec == asio::error::eof) {
        self->try_handle(true);
        return;
      }
      self->shutdown();
    });
  }

  // Handles the input once it is one complete JSON value. At EOF, anything
  // else is an error that says where the JSON broke.
  bool try_handle(bool at_eof) {
    size_t end = input_.find_last_not_of(" \t\r\n");
    if (end == std::string::npos) {
      if (at_eof) error("empty input: expected a JSON array of messages");
      return at_eof;
    }
    char last = input_[end];
    if (!at_eof && last != ']' && last != '}') return false;
    json doc;
    try {
      doc = json::parse(input_);
    } catch (const json::parse_error& e) {
      if (!at_eof) return false;  // maybe more is coming
      error(std::string("input is not valid JSON (truncated or malformed) at byte ") +
            std::to_string(e.byte) + ": " + e.what());
      return true;
    }
    timer_.cancel();
    handle(doc);
    return true;
  }

  void handle(const json& doc) {
    if (doc.is_object() && doc.contains("op")) {
      handle_op(doc);
      return;
    }
    // Submitting may wait for the outbox commit: keep it off the event loop.
    node_.post([self = shared_from_this(), doc] {
      auto r = self->node_.submit(doc);
      json out = r.to_json();
      out["type"] = "result";
      self->write_line(out);
      self->finish();
    });
  }

  void handle_op(const json& doc) {
    const json& op = doc["op"];
    if (!op.is_string()) return error("\"op\" must be a string");
    std::string o = op.get<std::string>();
    if (o == "send") {
      auto it = doc.find("messages");
      if (it == doc.end()) return error("op send: field \"messages\" is missing");
      bool wait = doc.value("wait", false);
      double timeout = doc.contains("timeout") && doc["timeout"].is_number()
                           ? doc["timeout"].get<double>()
                           : 60.0;
      std::shared_ptr<Waiter> waiter;
      if (wait) {
        waiting_ = true;
        waiter = std::make_shared<Waiter>(weak_from_this());
      }
      timer_.cancel();
      node_.post([self = shared_from_this(), messages = *it, waiter, wait, timeout] {
        self->submit_and_wait(messages, waiter, wait, timeout);
      });
      return;
    }
    if (o == "plugins") {
      json list = json::array();
      for (const auto& p : node_.plugins()) list.push_back(p.to_json());
      write_line({{"type", "plugins"}, {"node", node_.name()}, {"plugins", list}});
      return finish();
    }
    if (o == "calls") {
      write_line({{"type", "calls"}, {"node", node_.name()}, {"calls", node_.running_calls()}});
      return finish();
    }
    if (o == "status") {
      write_line({{"type", "status"},
                  {"node", node_.name()},
                  {"version", BOSUN_VERSION},
                  {"standalone", node_.config().broker.standalone()},
                  {"counters", node_.counters()}});
      return finish();
    }
    if (o == "watch") {
      std::set<std::string> filter;
      if (auto it = doc.find("events"); it != doc.end() && it->is_array()) {
        for (const auto& e : *it) {
          if (e.is_string()) filter.insert(e.get<std::string>());
        }
      }
      waiting_ = true;
      timer_.cancel();
      std::weak_ptr<Session> weak = weak_from_this();
      listener_ = node_.add_event_listener([weak, filter](const std::string& ev, const json& body) {
        if (!filter.empty() && !filter.count(ev)) return;
        if (auto s = weak.lock()) s->write_line({{"type", "event"}, {"body", body}});
      });
      write_line({{"type", "watching"}, {"node", node_.name()}});
      // Keep reading so we notice the client hanging up.
      watch_read();
      return;
    }
    if (o == "reload") {
      // Reloading may wait for modules to drain: keep it off the event loop.
      waiting_ = true;
      timer_.cancel();
      node_.post([self = shared_from_this()] {
        json result = self->node_.reload();
        self->write_line({{"type", "reload"}, {"result", result}});
        self->finish();
      });
      return;
    }
    if (o == "keys") {
      std::string action = doc.value("action", "list");
      std::string node = doc.contains("node") && doc["node"].is_string()
                             ? doc["node"].get<std::string>()
                             : std::string();
      json result = node_.keys(action, node);
      result["type"] = "keys";
      write_line(result);
      return finish();
    }
    error("unknown op \"" + o +
          "\" (expected send, plugins, calls, status, watch, reload or keys)");
  }

  // On a worker thread. Final replies that arrive before submit returns are
  // noted in early_ and not waited for.
  void submit_and_wait(const json& messages, const std::shared_ptr<Waiter>& waiter, bool wait,
                       double timeout) {
    // Not under mu_: submitting writes to the store, and a store write may
    // run other writes' completions on this thread, which deliver replies
    // here (on_reply takes mu_): holding it deadlocked a fan-out to 100.
    {
      std::lock_guard<std::mutex> lock(mu_);
      submitting_ = true;
    }
    auto r = node_.submit(messages, waiter);
    json out = r.to_json();
    out["type"] = "result";
    write_line(out);
    bool done = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      submitting_ = false;
      for (const auto& a : r.accepted) {
        if (early_.erase(a.id)) continue;
        outstanding_.insert(a.id);
        targets_[a.id] = a.to_node;
      }
      early_.clear();
      done = outstanding_.empty();
    }
    if (!wait || r.accepted.empty() || done) {
      if (wait) write_line({{"type", "done"}, {"missing", json::array()}});
      finish();
      return;
    }
    asio::post(sock_.get_executor(),
               [self = shared_from_this(), timeout] { self->arm_reply_timeout(timeout); });
  }

  void arm_reply_timeout(double timeout) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (outstanding_.empty()) return;  // every reply came in already
    }
    timer_.expires_after(std::chrono::milliseconds(static_cast<int64_t>(timeout * 1000)));
    timer_.async_wait([self = shared_from_this()](const boost::system::error_code& ec) {
      if (ec) return;
      json missing = json::array();
      {
        std::lock_guard<std::mutex> lock(self->mu_);
        for (const auto& id : self->outstanding_) {
          missing.push_back({{"id", id}, {"toNode", self->targets_[id]}});
        }
        self->outstanding_.clear();
      }
      self->write_line({{"type", "done"}, {"missing", missing}, {"timedOut", true}});
      self->finish();
    });
  }

  void watch_read() {
    sock_.async_read_some(asio::buffer(buf_),
                          [self = shared_from_this()](const boost::system::error_code& ec, size_t) {
                            if (ec) {
                              self->shutdown();
                              return;
                            }
                            self->watch_read();
                          });
  }

  void error(const std::string& text) {
    write_line({{"type", "error"}, {"error", text}});
    finish();
  }

  void write_next() {
    asio::async_write(sock_, asio::buffer(queue_.front()),
                      [self = shared_from_this()](const boost::system::error_code& ec, size_t) {
                        if (ec) {
                          self->queue_.clear();
                          self->shutdown();
                          return;
                        }
                        self->queue_.pop_front();
                        if (!self->queue_.empty()) {
                          self->write_next();
                        } else if (self->closing_) {
                          self->shutdown();
                        }
                      });
  }

  void shutdown() {
    boost::system::error_code ec;
    timer_.cancel();
    sock_.shutdown(stream::socket::shutdown_both, ec);
    sock_.close(ec);
    if (listener_) {
      node_.remove_event_listener(listener_);
      listener_ = 0;
    }
  }

  Node& node_;
  stream::socket sock_;
  asio::steady_timer timer_;
  size_t max_bytes_;
  std::array<char, 65536> buf_{};
  std::string input_;
  std::deque<std::string> queue_;
  bool closing_ = false;
  bool waiting_ = false;
  uint64_t listener_ = 0;
  std::mutex mu_;
  std::set<std::string> outstanding_;
  bool submitting_ = false;
  std::set<std::string> early_;  // final replies that came during submit
  std::map<std::string, std::string> targets_;
};

}  // namespace

SocketServer::SocketServer(Node& node, asio::io_context& io, const std::filesystem::path& path)
    : node_(node), path_(path), acceptor_(io) {
  if (path.string().size() >= sizeof(sockaddr_un::sun_path)) {
    throw std::runtime_error("socket path " + path.string() + " is longer than " +
                             std::to_string(sizeof(sockaddr_un::sun_path) - 1) +
                             " bytes: choose a shorter node.dataDir");
  }
  std::error_code fec;
  if (std::filesystem::exists(path, fec)) {
    stream::socket probe(io);
    boost::system::error_code ec;
    probe.connect(stream::endpoint(path.string()), ec);
    if (!ec) {
      throw std::runtime_error("another bosun node is already serving " + path.string());
    }
    std::filesystem::remove(path, fec);  // stale, from a node that died
  }
  acceptor_.open(stream());
  acceptor_.bind(stream::endpoint(path.string()));
  ::chmod(path.c_str(), 0600);
  acceptor_.listen();
  accept();
}

SocketServer::~SocketServer() {
  close();
}

void SocketServer::close() {
  if (!acceptor_.is_open()) return;
  boost::system::error_code ec;
  acceptor_.close(ec);
  std::error_code fec;
  std::filesystem::remove(path_, fec);
}

void SocketServer::accept() {
  acceptor_.async_accept([this](const boost::system::error_code& ec, stream::socket sock) {
    if (ec) return;  // closed
    auto max = static_cast<size_t>(node_.config().host.max_message_bytes);
    std::make_shared<Session>(node_, std::move(sock), max)->start();
    accept();
  });
}

}  // namespace bosun::host
