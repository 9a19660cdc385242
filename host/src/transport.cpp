#include "bosun/host/transport.hpp"

#include <nats/nats.h>
#include <openssl/evp.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <condition_variable>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <vector>

namespace bosun::host {

namespace {

// ---- subjects ------------------------------------------------------------

void check_token(std::string_view what, std::string_view kind, std::string_view value) {
  if (!is_valid_token(value)) {
    throw std::invalid_argument(std::string(what) + ": " + std::string(kind) + " \"" +
                                std::string(value) +
                                "\" is not a valid token (1-128 characters of A-Z a-z 0-9 _ -)");
  }
}

// The prefix may span several tokens ("acme.bosun"); each must be valid.
void check_prefix(std::string_view what, std::string_view prefix) {
  size_t start = 0;
  while (true) {
    size_t dot = prefix.find('.', start);
    std::string_view part = prefix.substr(start, dot == std::string_view::npos ? dot : dot - start);
    if (!is_valid_token(part)) {
      throw std::invalid_argument(std::string(what) + ": subject prefix \"" + std::string(prefix) +
                                  "\" has an invalid token \"" + std::string(part) + "\"");
    }
    if (dot == std::string_view::npos) return;
    start = dot + 1;
  }
}

std::string join_subject(std::string_view prefix, std::string_view kind, std::string_view node,
                         std::string_view name) {
  std::string s;
  s.reserve(prefix.size() + kind.size() + node.size() + name.size() + 3);
  s.append(prefix).append(".").append(kind).append(".").append(node).append(".").append(name);
  return s;
}

// ---- nkeys ---------------------------------------------------------------

constexpr uint8_t kPrefixSeed = 18 << 3;  // 'S'
constexpr uint8_t kPrefixUser = 20 << 3;  // 'U'
constexpr char kBase32[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

uint16_t crc16_xmodem(const uint8_t* data, size_t n) {
  uint16_t crc = 0;
  for (size_t i = 0; i < n; ++i) {
    crc ^= static_cast<uint16_t>(data[i]) << 8;
    for (int b = 0; b < 8; ++b) {
      crc = (crc & 0x8000) ? static_cast<uint16_t>((crc << 1) ^ 0x1021)
                           : static_cast<uint16_t>(crc << 1);
    }
  }
  return crc;
}

std::optional<std::vector<uint8_t>> base32_decode(std::string_view text) {
  std::vector<uint8_t> out;
  uint32_t buffer = 0;
  int bits = 0;
  for (char c : text) {
    const char* p = std::char_traits<char>::find(kBase32, 32, c);
    if (p == nullptr) return std::nullopt;
    buffer = (buffer << 5) | static_cast<uint32_t>(p - kBase32);
    bits += 5;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<uint8_t>(buffer >> bits));
    }
  }
  return out;
}

std::string base32_encode(const std::vector<uint8_t>& data) {
  std::string out;
  uint32_t buffer = 0;
  int bits = 0;
  for (uint8_t byte : data) {
    buffer = (buffer << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      bits -= 5;
      out.push_back(kBase32[(buffer >> bits) & 31]);
    }
  }
  if (bits > 0) out.push_back(kBase32[(buffer << (5 - bits)) & 31]);
  return out;
}

// The first word of the file that looks like a user seed ("SU...").
std::string read_seed(const std::filesystem::path& file) {
  std::ifstream in(file);
  if (!in) throw TransportError("cannot read nkey seed file " + file.string());
  std::string word;
  while (in >> word) {
    if (word.rfind("SU", 0) == 0) return word;
  }
  throw TransportError("nkey seed file " + file.string() + " holds no user seed (\"SU...\")");
}

// "<what>: <reason>", the reason being nats.c's last error on this thread
// (without its "(conn.c:123): " source location) or else the status text.
std::string nats_error(const std::string& what, natsStatus s) {
  std::string status = natsStatus_GetText(s);
  natsStatus last = NATS_OK;
  const char* detail = nats_GetLastError(&last);
  std::string reason = detail != nullptr ? detail : "";
  if (!reason.empty() && reason[0] == '(') {
    size_t end = reason.find("): ");
    if (end != std::string::npos) reason.erase(0, end + 3);
  }
  if (reason.empty() || reason == status) return what + ": " + status;
  return what + ": " + reason + " (" + status + ")";
}

// nats.c's own text for a missing file is vague ("(null)"), so check first.
void require_file(const std::filesystem::path& file, const std::string& what) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(file, ec)) {
    throw TransportError(what + " " + file.string() + ": no such file");
  }
}

}  // namespace

std::string request_subject(std::string_view prefix, std::string_view to_node,
                            std::string_view method) {
  check_prefix("request subject", prefix);
  check_token("request subject", "node name", to_node);
  check_token("request subject", "method", method);
  return join_subject(prefix, "req", to_node, method);
}

std::string event_subject(std::string_view prefix, std::string_view from_node,
                          std::string_view event) {
  check_prefix("event subject", prefix);
  check_token("event subject", "node name", from_node);
  check_token("event subject", "event", event);
  return join_subject(prefix, "evt", from_node, event);
}

std::string nkey_public_from_seed(std::string_view seed) {
  auto raw = base32_decode(seed);
  // 2 prefix bytes + 32 bytes of Ed25519 seed + 2 bytes CRC.
  if (!raw || raw->size() != 36) throw TransportError("nkey seed is not a valid seed encoding");
  uint16_t crc = static_cast<uint16_t>((*raw)[34] | ((*raw)[35] << 8));
  if (crc16_xmodem(raw->data(), 34) != crc) throw TransportError("nkey seed has a bad checksum");
  uint8_t b0 = (*raw)[0];
  uint8_t b1 = (*raw)[1];
  if ((b0 & 0xF8) != kPrefixSeed) throw TransportError("nkey seed does not start with 'S'");
  uint8_t kind = static_cast<uint8_t>(((b0 & 7) << 5) | ((b1 & 0xF8) >> 3));
  if (kind != kPrefixUser) throw TransportError("nkey seed is not a user seed (\"SU...\")");

  EVP_PKEY* key = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, nullptr, raw->data() + 2, 32);
  std::vector<uint8_t> pub(1 + 32 + 2);
  size_t len = 32;
  bool ok = key != nullptr && EVP_PKEY_get_raw_public_key(key, pub.data() + 1, &len) == 1;
  EVP_PKEY_free(key);
  OPENSSL_cleanse(raw->data(), raw->size());
  if (!ok || len != 32) throw TransportError("nkey seed: cannot derive the Ed25519 public key");
  pub[0] = kPrefixUser;
  uint16_t pcrc = crc16_xmodem(pub.data(), 33);
  pub[33] = static_cast<uint8_t>(pcrc & 0xFF);
  pub[34] = static_cast<uint8_t>(pcrc >> 8);
  return base32_encode(pub);
}

// ---- Transport -------------------------------------------------------------

namespace {

// Set while a subscription handler runs, so unsubscribe() from inside one
// does not wait for itself.
thread_local bool t_in_delivery = false;
// Handled messages held back for one natsMsg_Destroy pass (on_message):
// at most this many, this many bytes, or this long (checked as the next
// message arrives: an idle subscription keeps what it holds until then,
// at most kMaxHeldBytes plus one message).
constexpr size_t kMaxHeldMessages = 64;
constexpr size_t kMaxHeldBytes = 1 << 20;
constexpr auto kMaxHeldTime = std::chrono::milliseconds(50);

}  // namespace

struct Transport::Impl {
  struct Sub {
    Impl* impl = nullptr;
    Handler handler;
    natsSubscription* sub = nullptr;
    bool complete = false;  // nats.c will not call the handler again
    // Messages handled and not yet destroyed; only its delivery thread
    // touches them (on_sub_complete runs there too, after the last one).
    std::vector<natsMsg*> done;
    size_t done_bytes = 0;
    std::chrono::steady_clock::time_point oldest;
    void destroy_done() {
      for (natsMsg* m : done) natsMsg_Destroy(m);
      done.clear();
      done_bytes = 0;
    }
    ~Sub() { destroy_done(); }
  };

  BrokerConfig config;
  std::string node;
  TransportCallbacks callbacks;
  std::string servers_text;  // for error messages

  std::atomic<natsConnection*> nc{nullptr};
  std::atomic<uint64_t> reconnects{0};
  std::atomic<uint64_t> disconnects{0};
  std::atomic<bool> closing{false};

  std::mutex mu;
  std::condition_variable cv;
  bool closed = false;  // nats.c's closed callback has run
  std::map<SubscriptionId, std::unique_ptr<Sub>> subs;
  SubscriptionId next_id = 1;

  natsConnection* conn() const { return nc.load(std::memory_order_acquire); }

  void report_error(const std::string& text) {
    spdlog::error("nats: {}", text);
    if (callbacks.on_error) callbacks.on_error(text);
  }

  std::string connected_url(natsConnection* c) const {
    char buf[256] = {0};
    if (c == nullptr || natsConnection_GetConnectedUrl(c, buf, sizeof buf) != NATS_OK) return "";
    return buf;
  }

  // ---- nats.c callbacks (closure = Impl*) ----

  static void on_connected(natsConnection* c, void* closure) {
    auto* self = static_cast<Impl*>(closure);
    spdlog::info("nats: connected to {} as bosun:{}", self->connected_url(c), self->node);
    if (self->callbacks.on_connected) self->callbacks.on_connected();
  }

  static void on_disconnected(natsConnection*, void* closure) {
    auto* self = static_cast<Impl*>(closure);
    if (self->closing.load()) return;  // our own close, not a lost server
    self->disconnects.fetch_add(1);
    spdlog::warn("nats: disconnected from the broker; reconnecting");
    if (self->callbacks.on_disconnected) self->callbacks.on_disconnected();
  }

  static void on_reconnected(natsConnection* c, void* closure) {
    auto* self = static_cast<Impl*>(closure);
    uint64_t n = self->reconnects.fetch_add(1) + 1;
    spdlog::info("nats: reconnected to {} (reconnect #{})", self->connected_url(c), n);
    if (self->callbacks.on_reconnected) self->callbacks.on_reconnected();
  }

  static void on_closed(natsConnection*, void* closure) {
    auto* self = static_cast<Impl*>(closure);
    spdlog::info("nats: connection closed");
    if (self->callbacks.on_closed) self->callbacks.on_closed();
    std::lock_guard lock(self->mu);
    self->closed = true;
    self->cv.notify_all();
  }

  static void on_async_error(natsConnection*, natsSubscription* sub, natsStatus err,
                             void* closure) {
    auto* self = static_cast<Impl*>(closure);
    std::string text = natsStatus_GetText(err);
    if (sub != nullptr) {
      if (const char* subject = natsSubscription_GetSubject(sub)) {
        text += std::string(" (subscription ") + subject + ")";
      }
    }
    self->report_error(text);
  }

  static void on_message(natsConnection*, natsSubscription* nsub, natsMsg* msg, void* closure) {
    auto* sub = static_cast<Sub*>(closure);
    Incoming in;
    int pending_msgs = 0;
    if (nsub != nullptr && natsSubscription_GetPending(nsub, &pending_msgs, nullptr) == NATS_OK) {
      in.pending = pending_msgs;
    }
    in.subject = natsMsg_GetSubject(msg);
    if (const char* reply = natsMsg_GetReply(msg)) in.reply = reply;
    if (const char* data = natsMsg_GetData(msg)) {
      in.data.assign(data, static_cast<size_t>(natsMsg_GetDataLength(msg)));
    }
    // nats.c frees a message on its own garbage-collector thread, which
    // natsMsg_Destroy wakes whenever its list was empty: at full load that
    // was one wake-up (two context switches) for almost every message.
    // Handled messages are destroyed together instead, a few dozen at a
    // time, or once they hold much memory or the oldest has waited long.
    const size_t bytes = in.subject.size() + in.reply.size() + in.data.size();
    const auto now = std::chrono::steady_clock::now();
    if (sub->done.empty()) sub->oldest = now;
    sub->done.push_back(msg);
    sub->done_bytes += bytes;
    const bool reap = sub->done.size() >= kMaxHeldMessages || sub->done_bytes >= kMaxHeldBytes ||
                      now - sub->oldest >= kMaxHeldTime;
    t_in_delivery = true;
    try {
      sub->handler(std::move(in));
    } catch (const std::exception& e) {
      sub->impl->report_error(std::string("handler threw: ") + e.what());
    } catch (...) {
      sub->impl->report_error("handler threw a non-standard exception");
    }
    t_in_delivery = false;
    if (reap) sub->destroy_done();
  }

  static void on_sub_complete(void* closure) {
    auto* sub = static_cast<Sub*>(closure);
    sub->destroy_done();
    std::lock_guard lock(sub->impl->mu);
    sub->complete = true;
    sub->impl->cv.notify_all();
  }

  // ---- options ----

  void check(natsStatus s, const std::string& what) {
    if (s != NATS_OK) throw TransportError(nats_error(what, s));
  }

  natsOptions* make_options(bool retry_on_failed) {
    natsOptions* opts = nullptr;
    check(natsOptions_Create(&opts), "creating NATS options");
    try {
      fill_options(opts, retry_on_failed);
    } catch (...) {
      natsOptions_Destroy(opts);
      throw;
    }
    return opts;
  }

  void fill_options(natsOptions* opts, bool retry_on_failed) {
    std::vector<const char*> urls;
    for (const auto& s : config.servers) urls.push_back(s.c_str());
    check(natsOptions_SetServers(opts, urls.data(), static_cast<int>(urls.size())),
          "broker.servers [" + servers_text + "]");
    check(natsOptions_SetNoRandomize(opts, true), "broker.servers");
    check(natsOptions_SetName(opts, ("bosun:" + node).c_str()), "connection name");
    // Without it every publish waits for nats.c's flusher: ~1 ms instead of ~90 µs a round trip.
    check(natsOptions_SetSendAsap(opts, true), "send asap");
    // Inboxes under _INBOX.<node>., so NATS permissions can give each node
    // its own ACKs only (docs/operating.md, "NATS permissions").
    check(natsOptions_SetCustomInboxPrefix(opts, ("_INBOX." + node).c_str()), "inbox prefix");

    if (!config.user.empty() || !config.password.empty()) {
      check(natsOptions_SetUserInfo(opts, config.user.c_str(), config.password.c_str()),
            "broker.user/password");
    }
    if (!config.token.empty()) check(natsOptions_SetToken(opts, config.token.c_str()), "token");
    if (!config.credentials_file.empty()) {
      const std::string creds = config.credentials_file.string();
      const std::string seed = config.nkey_seed_file.string();
      require_file(config.credentials_file, "broker.credentialsFile");
      if (!seed.empty()) require_file(config.nkey_seed_file, "broker.nkeySeedFile");
      check(natsOptions_SetUserCredentialsFromFiles(opts, creds.c_str(),
                                                    seed.empty() ? nullptr : seed.c_str()),
            "broker.credentialsFile " + creds);
    } else if (!config.nkey_seed_file.empty()) {
      const std::string file = config.nkey_seed_file.string();
      std::string pub;
      try {
        pub = nkey_public_from_seed(read_seed(config.nkey_seed_file));
      } catch (const TransportError& e) {
        std::string what = e.what();
        if (what.find(file) == std::string::npos) what = "nkey seed file " + file + ": " + what;
        throw TransportError(what);
      }
      check(natsOptions_SetNKeyFromSeed(opts, pub.c_str(), file.c_str()), "nkey seed file " + file);
    }

    if (config.tls.enabled()) {
      check(natsOptions_SetSecure(opts, true), "tls");
      if (!config.tls.ca_file.empty()) {
        require_file(config.tls.ca_file, "tls ca file");
        check(natsOptions_LoadCATrustedCertificates(opts, config.tls.ca_file.c_str()),
              "tls ca file " + config.tls.ca_file.string());
      }
      if (!config.tls.cert_file.empty()) {
        require_file(config.tls.cert_file, "tls cert file");
        require_file(config.tls.key_file, "tls key file");
        check(
            natsOptions_LoadCertificatesChain(opts, config.tls.cert_file.c_str(),
                                              config.tls.key_file.c_str()),
            "tls cert " + config.tls.cert_file.string() + " / key " + config.tls.key_file.string());
      }
    }

    check(natsOptions_SetTimeout(opts, config.connect_timeout_ms), "connect timeout");
    check(natsOptions_SetReconnectWait(opts, config.reconnect_wait_ms), "reconnect wait");
    check(natsOptions_SetReconnectJitter(opts, config.reconnect_jitter_ms,
                                         config.reconnect_jitter_tls_ms),
          "reconnect jitter");
    check(natsOptions_SetMaxReconnect(opts, config.max_reconnects), "max reconnects");
    check(natsOptions_SetAllowReconnect(opts, true), "allow reconnect");
    check(natsOptions_SetRetryOnFailedConnect(
              opts, retry_on_failed, retry_on_failed ? &Impl::on_connected : nullptr, this),
          "retry on failed connect");

    check(natsOptions_SetDisconnectedCB(opts, &Impl::on_disconnected, this), "callbacks");
    check(natsOptions_SetReconnectedCB(opts, &Impl::on_reconnected, this), "callbacks");
    check(natsOptions_SetClosedCB(opts, &Impl::on_closed, this), "callbacks");
    check(natsOptions_SetErrorHandler(opts, &Impl::on_async_error, this), "callbacks");
  }

  // Waits (bounded) for nats.c's callbacks to be done with this object.
  void wait_closed() {
    std::unique_lock lock(mu);
    if (!cv.wait_for(lock, std::chrono::seconds(10), [&] { return closed; })) {
      spdlog::error("nats: closed callback did not arrive in 10 s");
    }
    for (auto& [id, sub] : subs) {
      if (!cv.wait_for(lock, std::chrono::seconds(10), [&] { return sub->complete; })) {
        spdlog::error("nats: subscription {} did not complete in 10 s", id);
      }
    }
  }
};

Transport::Transport(const BrokerConfig& config, std::string node_name,
                     TransportCallbacks callbacks)
    : impl_(std::make_unique<Impl>()) {
  impl_->config = config;
  impl_->node = std::move(node_name);
  impl_->callbacks = std::move(callbacks);
  for (const auto& s : config.servers) {
    if (!impl_->servers_text.empty()) impl_->servers_text += ", ";
    impl_->servers_text += s;
  }
}

Transport::~Transport() {
  natsConnection* c = impl_->conn();
  if (c == nullptr) return;
  impl_->closing.store(true);
  natsConnection_Close(c);
  impl_->wait_closed();
  for (auto& [id, sub] : impl_->subs) natsSubscription_Destroy(sub->sub);
  natsConnection_Destroy(c);
}

void Transport::connect(bool retry_on_failed) {
  if (impl_->conn() != nullptr) throw TransportError("connect: already connected");
  if (impl_->config.servers.empty()) {
    throw TransportError("connect: no broker servers configured (standalone node)");
  }
  natsOptions* opts = impl_->make_options(retry_on_failed);
  natsConnection* c = nullptr;
  natsStatus s = natsConnection_Connect(&c, opts);
  natsOptions_Destroy(opts);
  if (s == NATS_OK) {
    impl_->nc.store(c, std::memory_order_release);
    Impl::on_connected(c, impl_.get());
    return;
  }
  if (s == NATS_NOT_YET_CONNECTED && c != nullptr) {
    impl_->nc.store(c, std::memory_order_release);
    spdlog::warn("nats: no server reachable yet at {}; connecting in the background",
                 impl_->servers_text);
    return;
  }
  std::string text = nats_error("cannot connect to NATS at " + impl_->servers_text, s);
  if (c != nullptr) natsConnection_Destroy(c);
  throw TransportError(text);
}

bool Transport::connected() const {
  natsConnection* c = impl_->conn();
  return c != nullptr && natsConnection_Status(c) == NATS_CONN_STATUS_CONNECTED;
}

uint64_t Transport::reconnects() const {
  return impl_->reconnects.load();
}
uint64_t Transport::disconnects() const {
  return impl_->disconnects.load();
}
std::string Transport::connected_url() const {
  return impl_->connected_url(impl_->conn());
}
const std::string& Transport::node_name() const {
  return impl_->node;
}

Transport::SubscriptionId Transport::subscribe(const std::string& subject, Handler handler) {
  natsConnection* c = impl_->conn();
  if (c == nullptr) throw TransportError("subscribe " + subject + ": not connected");
  auto sub = std::make_unique<Impl::Sub>();
  sub->impl = impl_.get();
  sub->handler = std::move(handler);
  natsSubscription* ns = nullptr;
  natsStatus s = natsConnection_Subscribe(&ns, c, subject.c_str(), &Impl::on_message, sub.get());
  if (s != NATS_OK) {
    throw TransportError("subscribe " + subject + ": " + natsStatus_GetText(s));
  }
  sub->sub = ns;
  s = natsSubscription_SetOnCompleteCB(ns, &Impl::on_sub_complete, sub.get());
  if (s != NATS_OK) {
    // Cannot know when deliveries end, so keep the handler alive until the destructor.
    spdlog::warn("nats: subscription {}: no completion callback: {}", subject,
                 natsStatus_GetText(s));
    sub->complete = true;
  }
  std::lock_guard lock(impl_->mu);
  SubscriptionId id = impl_->next_id++;
  impl_->subs.emplace(id, std::move(sub));
  return id;
}

void Transport::unsubscribe(SubscriptionId id) {
  natsSubscription* ns = nullptr;
  {
    std::lock_guard lock(impl_->mu);
    auto it = impl_->subs.find(id);
    if (it == impl_->subs.end()) return;
    ns = it->second->sub;
  }
  natsStatus s = natsSubscription_Unsubscribe(ns);
  if (s != NATS_OK && s != NATS_INVALID_SUBSCRIPTION && s != NATS_CONNECTION_CLOSED) {
    spdlog::warn("nats: unsubscribe: {}", natsStatus_GetText(s));
  }
  // From inside a handler the current delivery cannot finish while we wait:
  // leave the record for the destructor.
  if (t_in_delivery) return;
  std::unique_lock lock(impl_->mu);
  auto done = [&] {
    auto it = impl_->subs.find(id);
    return it == impl_->subs.end() || it->second->complete;
  };
  if (!impl_->cv.wait_for(lock, std::chrono::seconds(10), done)) {
    spdlog::error("nats: unsubscribe: deliveries did not stop in 10 s");
    return;
  }
  auto it = impl_->subs.find(id);
  if (it == impl_->subs.end()) return;
  natsSubscription_Destroy(it->second->sub);
  impl_->subs.erase(it);
}

bool Transport::publish(const std::string& subject, std::string_view data,
                        const std::string& reply_subject) {
  natsConnection* c = impl_->conn();
  if (c == nullptr) {
    spdlog::warn("nats: publish {}: not connected", subject);
    return false;
  }
  natsStatus s =
      reply_subject.empty()
          ? natsConnection_Publish(c, subject.c_str(), data.data(), static_cast<int>(data.size()))
          : natsConnection_PublishRequest(c, subject.c_str(), reply_subject.c_str(), data.data(),
                                          static_cast<int>(data.size()));
  if (s != NATS_OK) {
    spdlog::warn("nats: publish {}: {}", subject, natsStatus_GetText(s));
    return false;
  }
  return true;
}

std::string Transport::new_inbox() {
  natsInbox* inbox = nullptr;
  if (natsInbox_Create(&inbox) != NATS_OK) throw TransportError("new_inbox: out of memory");
  std::string out = inbox;  // "_INBOX.<unique>"
  natsInbox_Destroy(inbox);
  // Under this node's own prefix, as the connection's other inboxes are.
  return "_INBOX." + impl_->node + out.substr(out.find('.'));
}

bool Transport::flush(std::chrono::milliseconds timeout) {
  natsConnection* c = impl_->conn();
  return c != nullptr && natsConnection_FlushTimeout(c, timeout.count()) == NATS_OK;
}

std::optional<std::string> Transport::request(const std::string& subject, std::string_view data,
                                              std::chrono::milliseconds timeout) {
  natsConnection* c = impl_->conn();
  if (c == nullptr) return std::nullopt;
  natsMsg* reply = nullptr;
  natsStatus s = natsConnection_Request(&reply, c, subject.c_str(), data.data(),
                                        static_cast<int>(data.size()), timeout.count());
  if (s != NATS_OK) {
    spdlog::debug("nats: request {}: {}", subject, natsStatus_GetText(s));
    return std::nullopt;
  }
  std::string out;
  if (const char* d = natsMsg_GetData(reply)) {
    out.assign(d, static_cast<size_t>(natsMsg_GetDataLength(reply)));
  }
  natsMsg_Destroy(reply);
  return out;
}

}  // namespace bosun::host
