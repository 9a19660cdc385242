// bosun's node-to-node messaging against raw nats.c, over one nats-server of
// our own on a free loopback port (DESIGN §5):
//   (a) raw nats.c, two SendAsap connections, an echo responder on one:
//       sequential request/reply round trips (p50/p99) and requests/s with
//       kInFlight outstanding, replies taken on one inbox subscription;
//   (b) two in-process nodes, "central" and "ship1": central submits
//       {"toNode":"ship1","method":"ping"} and waits for the final reply;
//       sequential p50/p99 and requests/s with kInFlight outstanding,
//       storage.sync "interval" (the default);
//   (b') the same with security.sign off: the cost of authenticated
//       envelopes (issue 6's goal: security on at least 0.75 of unsigned
//       requests/s); by default requests, replies and ACKs carry pair-key
//       tags (security.pairKeys), and phase "signatures" measures them all
//       Ed25519-signed (pairKeys off);
//   (b'') the same with a cluster secret on both (phase "encrypted"):
//       requests and replies AES-256-GCM encrypted besides;
//       (b), (b') and (b'') run twice each, in turns; each keeps its better
//       run (the machines are shared and noisy);
//   (c) the same with storage.sync "always";
//   (d) the median fsync of the data folder's disk.
// Each throughput phase also says what it cost per round trip: this
// process's CPU (both nodes, or both raw connections, run in it) and the
// NATS messages the broker took in (its /varz, on a monitoring port of its
// own): steadier than requests/s on a shared machine.
// Every phase is bounded in count and stops after kPhaseLimit whatever
// happens. Human-readable lines first; the last line is one JSON object.
#include <nats/nats.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <bosun/host/audit.hpp>
#include <bosun/host/config.hpp>
#include <bosun/host/message.hpp>
#include <bosun/host/node.hpp>
#include <bosun/host/store.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "nats_server.hpp"

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr auto kPhaseLimit = 30s;
constexpr auto kWaitOne = 5s;  // one raw request
constexpr auto kGrace = 10s;   // for what is in flight when a phase stops
constexpr int kRawRoundTrips = 3000;
constexpr int kBosunRoundTrips = 2000;
constexpr int kWarmup = 100;
constexpr int kInFlight = 64;
constexpr int kRawRequests = 200000;
// BOSUN_BENCH_REQUESTS=N makes each bosun throughput phase N requests long
// (for profiling one; the figures are taken with the default).
const int kBosunRequests = getenv("BOSUN_BENCH_REQUESTS") != nullptr
                               ? std::max(1000, atoi(getenv("BOSUN_BENCH_REQUESTS")))
                               : 40000;
// Node::submit blocks until the message is in the outbox, as it does for
// the socket server's sessions; several submitters let writes group-commit.
constexpr int kSubmitters = 4;

double micros(Clock::duration d) {
  return std::chrono::duration<double, std::micro>(d).count();
}

struct Latency {
  std::vector<double> us;
  bool complete = true;  // false: stopped by kPhaseLimit or a lost reply
  double pct(double p) const {
    if (us.empty()) return -1;
    std::vector<double> v = us;
    std::sort(v.begin(), v.end());
    return v[static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5)];
  }
};

struct Throughput {
  uint64_t done = 0;
  uint64_t wanted = 0;
  double seconds = 0;
  double cpu_us = -1;    // this process's CPU per round trip
  double nats = -1;      // NATS messages per round trip, as the broker counted them
  double switches = -1;  // this process's context switches per round trip
  double in_flight = 0;  // outstanding on average over the phase
  double rps() const { return seconds > 0 ? static_cast<double>(done) / seconds : 0; }
};

void print_phase(const char* name, const Latency& l, const Throughput& t) {
  std::printf(
      "%-28s sequential: %zu round trips%s, p50 %.1f us, p99 %.1f us; "
      "%d in flight: %llu/%llu in %.2f s = %.0f requests/s\n",
      name, l.us.size(), l.complete ? "" : " (stopped early)", l.pct(0.5), l.pct(0.99), kInFlight,
      static_cast<unsigned long long>(t.done), static_cast<unsigned long long>(t.wanted), t.seconds,
      t.rps());
  std::fflush(stdout);
}

// Up to `limit` requests outstanding; replies release their slot.
class Window {
 public:
  explicit Window(int limit) : limit_(limit) {}

  // Waits for a free slot; false when `deadline` passed first.
  bool acquire(Clock::time_point deadline) {
    std::unique_lock<std::mutex> lock(mu_);
    if (!cv_.wait_until(lock, deadline, [&] { return outstanding_ < limit_; })) return false;
    tally(Clock::now());
    ++outstanding_;
    return true;
  }
  // The Window outlives every release (the raw phase's is declared before
  // its connections; a bosun phase's is shared with its waiter), so the
  // wake-up can come after the unlock: the woken thread then does not wake
  // into a mutex still held.
  void release(bool answered) {
    bool last;
    {
      std::lock_guard<std::mutex> lock(mu_);
      const auto now = Clock::now();
      tally(now);
      --outstanding_;
      if (answered) {
        ++done_;
        last_ = now;
      }
      last = outstanding_ == 0;
    }
    // One slot is free: one submitter is enough to wake (waking all of them
    // would charge the benchmark's own herd of wake-ups to the phase);
    // drain() waits for the last.
    if (last) {
      cv_.notify_all();
    } else {
      cv_.notify_one();
    }
  }
  // Waits until nothing is outstanding; false when `deadline` passed first.
  bool drain(Clock::time_point deadline) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_until(lock, deadline, [&] { return outstanding_ == 0; });
  }
  uint64_t done() {
    std::lock_guard<std::mutex> lock(mu_);
    return done_;
  }
  Clock::time_point last() {
    std::lock_guard<std::mutex> lock(mu_);
    return last_;
  }
  // How many were outstanding on average, over time, so far: what the
  // phase really kept in flight (at most the limit).
  double mean_outstanding() {
    std::lock_guard<std::mutex> lock(mu_);
    return area_ / std::max(1e-9, micros(changed_ - first_));
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  // With mu_ held, before outstanding_ changes at `now`.
  void tally(Clock::time_point now) {
    if (first_ == Clock::time_point{}) first_ = changed_ = now;
    area_ += outstanding_ * micros(now - changed_);
    changed_ = now;
  }

  int limit_;
  int outstanding_ = 0;
  double area_ = 0;  // outstanding x microseconds
  Clock::time_point first_{}, changed_{};
  uint64_t done_ = 0;
  Clock::time_point last_{};
};

// `total` sends by `threads` threads through `window`, stopping at the phase
// limit. `send` returns false when the request could not be sent (its slot
// is then given back unanswered).
Throughput run_window(Window& window, int total, int threads, const std::function<bool()>& send) {
  const auto start = Clock::now();
  const auto deadline = start + kPhaseLimit;
  std::atomic<int> next{0};
  std::atomic<bool> failed{false};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&] {
      while (!failed && next.fetch_add(1) < total) {
        if (!window.acquire(deadline)) return;
        if (!send()) {
          window.release(false);
          failed = true;
        }
      }
    });
  }
  for (auto& th : pool) th.join();
  window.drain(deadline);
  if (failed) throw std::runtime_error("a request could not be sent");
  Throughput out;
  out.wanted = static_cast<uint64_t>(total);
  out.done = window.done();
  out.in_flight = window.mean_outstanding();
  out.seconds =
      std::chrono::duration<double>((out.done == out.wanted ? window.last() : Clock::now()) - start)
          .count();
  // Not counted: let what is still in flight finish, so that the nodes are
  // stopped quiet (stopping a node mid-traffic is not what is measured).
  window.drain(Clock::now() + kGrace);
  return out;
}

// nats-server's own count of messages in (its /varz on the monitoring
// port): what a phase cost the broker, in messages per round trip.
int g_monitor_port = 0;
long long server_in_msgs() {
  if (g_monitor_port == 0) return -1;
  const std::string text = bosun::test::http_get(g_monitor_port, "/varz");
  size_t at = text.find("\"in_msgs\":");
  if (at == std::string::npos) return -1;
  return std::atoll(text.c_str() + at + 10);
}

// CPU time (user + system) of this process so far, in microseconds: both
// bosun nodes run in it, so its growth over a phase is what their round
// trips cost, whatever else the shared machine is doing.
double process_cpu_us() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  auto us = [](const timeval& t) {
    return static_cast<double>(t.tv_sec) * 1e6 + static_cast<double>(t.tv_usec);
  };
  return us(u.ru_utime) + us(u.ru_stime);
}

// Context switches (voluntary + involuntary) of this process so far.
double process_switches() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_nvcsw + u.ru_nivcsw);
}

// What the broker and this process spent on a throughput phase, per round trip.
struct PhaseCost {
  long long msgs = -1;
  double cpu_us = 0;
  double switches = 0;
  void begin() {
    msgs = server_in_msgs();
    cpu_us = process_cpu_us();
    switches = process_switches();
  }
  void end(Throughput& tp) const {
    if (tp.done == 0) return;
    const double n = static_cast<double>(tp.done);
    tp.cpu_us = (process_cpu_us() - cpu_us) / n;
    tp.switches = (process_switches() - switches) / n;
    std::printf(
        "  per round trip: %.1f us of this process's CPU, %.1f context switches, %.1f in flight "
        "on average",
        tp.cpu_us, tp.switches, tp.in_flight);
    if (msgs >= 0) {
      tp.nats = static_cast<double>(server_in_msgs() - msgs) / n;
      std::printf(", %.2f NATS messages", tp.nats);
    }
    std::printf("\n");
  }
};

// ----------------------------------------------------------- raw nats.c ---

void check(natsStatus s, const char* what) {
  if (s == NATS_OK) return;
  natsStatus last = NATS_OK;
  const char* detail = nats_GetLastError(&last);
  throw std::runtime_error(std::string("nats.c ") + what + ": " + natsStatus_GetText(s) + " " +
                           (detail != nullptr ? detail : ""));
}

struct Conn {
  natsConnection* nc = nullptr;
  Conn(const std::string& url, const char* name) {
    natsOptions* opts = nullptr;
    check(natsOptions_Create(&opts), "options");
    natsStatus s = natsOptions_SetURL(opts, url.c_str());
    if (s == NATS_OK) s = natsOptions_SetName(opts, name);
    if (s == NATS_OK) s = natsOptions_SetSendAsap(opts, true);
    if (s == NATS_OK) s = natsConnection_Connect(&nc, opts);
    natsOptions_Destroy(opts);
    check(s, "connect");
  }
  ~Conn() {
    natsConnection_Close(nc);
    natsConnection_Destroy(nc);
  }
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;
};

struct Sub {
  natsSubscription* sub = nullptr;
  Sub(natsConnection* nc, const std::string& subject, natsMsgHandler cb, void* closure) {
    check(natsConnection_Subscribe(&sub, nc, subject.c_str(), cb, closure), "subscribe");
    check(natsConnection_FlushTimeout(nc, 5000), "flush");
  }
  ~Sub() {
    natsSubscription_Unsubscribe(sub);
    natsSubscription_Destroy(sub);
  }
  Sub(const Sub&) = delete;
  Sub& operator=(const Sub&) = delete;
};

void echo(natsConnection* nc, natsSubscription*, natsMsg* msg, void*) {
  if (const char* reply = natsMsg_GetReply(msg)) {
    natsConnection_Publish(nc, reply, natsMsg_GetData(msg), natsMsg_GetDataLength(msg));
  }
  natsMsg_Destroy(msg);
}

void release_slot(natsConnection*, natsSubscription*, natsMsg* msg, void* closure) {
  natsMsg_Destroy(msg);
  static_cast<Window*>(closure)->release(true);
}

void run_raw(const std::string& url, Latency& lat, Throughput& tp) {
  // Declared before the connections: a late reply may still touch it.
  Window window(kInFlight);
  Conn responder(url, "bench-responder");
  Conn requester(url, "bench-requester");
  Sub echo_sub(responder.nc, "bench.echo", echo, nullptr);
  const std::string payload(64, 'x');
  const int len = static_cast<int>(payload.size());

  const auto deadline = Clock::now() + kPhaseLimit;
  for (int i = 0; i < kWarmup + kRawRoundTrips; ++i) {
    if (Clock::now() >= deadline) {
      lat.complete = false;
      break;
    }
    natsMsg* reply = nullptr;
    auto start = Clock::now();
    check(natsConnection_Request(&reply, requester.nc, "bench.echo", payload.data(), len,
                                 std::chrono::milliseconds(kWaitOne).count()),
          "request");
    auto end = Clock::now();
    natsMsg_Destroy(reply);
    if (i >= kWarmup) lat.us.push_back(micros(end - start));
  }

  char* inbox = nullptr;
  check(natsInbox_Create(&inbox), "inbox");
  const std::string prefix = std::string(inbox) + ".";
  natsInbox_Destroy(inbox);
  Sub reply_sub(requester.nc, prefix + "*", release_slot, &window);
  // Lift the subscription's pending limits: kInFlight is far below them, but
  // a slow-consumer drop would stall the window.
  check(natsSubscription_SetPendingLimits(reply_sub.sub, -1, -1), "pending limits");
  std::atomic<uint64_t> n{0};
  PhaseCost cost;
  cost.begin();
  tp = run_window(window, kRawRequests, 1, [&] {
    std::string reply = prefix + std::to_string(n++);
    return natsConnection_PublishRequest(requester.nc, "bench.echo", reply.c_str(), payload.data(),
                                         len) == NATS_OK;
  });
  cost.end(tp);
}

// ---------------------------------------------------------- bosun nodes ---

// Counts final replies; any that is not a "pong" is an error.
class PingWaiter : public bosun::host::ReplyWaiter {
 public:
  explicit PingWaiter(std::shared_ptr<Window> window = nullptr) : window_(std::move(window)) {}

  void on_reply(const bosun::host::Message& reply) override {
    if (!reply.final_reply) return;
    bool good = reply.status == "ok" && reply.data == "pong";
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++finals_;
      if (!good && error_.empty()) {
        error_ = "reply " + reply.id + " to " + reply.in_reply_to + ": status \"" + reply.status +
                 "\", data \"" + reply.data + "\", error \"" + reply.error + "\"";
      }
    }
    cv_.notify_all();
    if (window_) window_->release(good);
  }
  bool wait_finals(uint64_t n, Clock::time_point deadline) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_until(lock, deadline, [&] { return finals_ >= n; });
  }
  std::string error() {
    std::lock_guard<std::mutex> lock(mu_);
    return error_;
  }

 private:
  std::shared_ptr<Window> window_;
  std::mutex mu_;
  std::condition_variable cv_;
  uint64_t finals_ = 0;
  std::string error_;
};

class RunningNode {
 public:
  RunningNode(const fs::path& root, const std::string& name, const std::string& url,
              const std::string& sync, bool sign, const std::string& secret = {},
              bool pair_keys = true) {
    if (!secret.empty()) {
      // As receive_cluster_secret leaves it, without the key exchange.
      fs::create_directories(root / name);
      bosun::host::Store store(root / name / "state", bosun::host::StoreOptions{});
      store.meta_put("cluster/secret", secret);
    }
    // Signed envelopes as by default, both keys accepted without an operator.
    nlohmann::json doc = {
        {"node", {{"name", name}, {"dataDir", name}}},
        {"broker", {{"servers", {url}}}},
        {"plugins", {{"dir", "plugins"}}},
        {"storage", {{"sync", sync}}},
        {"security", {{"sign", sign}, {"pairKeys", pair_keys}, {"autoAccept", {"*"}}}}};
    node_ = std::make_unique<bosun::host::Node>(bosun::host::parse_config(doc, root));
    node_->start();
    loop_ = std::thread([n = node_.get()] { n->run(); });
  }
  ~RunningNode() {
    node_->stop();
    loop_.join();
  }
  RunningNode(const RunningNode&) = delete;
  RunningNode& operator=(const RunningNode&) = delete;
  bosun::host::Node& node() { return *node_; }

 private:
  std::unique_ptr<bosun::host::Node> node_;
  std::thread loop_;
};

const nlohmann::json kPing = {{"toNode", "ship1"}, {"method", "ping"}};

bool submit_ping(bosun::host::Node& from, const std::shared_ptr<PingWaiter>& waiter) {
  auto r = from.submit(kPing, waiter);
  if (r.accepted.size() == 1) return true;
  std::fprintf(stderr, "messaging_bench: ping not accepted: %s\n", r.to_json().dump().c_str());
  return false;
}

void run_bosun(const fs::path& root, const std::string& url, const std::string& sync, Latency& lat,
               Throughput& tp, bool sign = true, bool encrypt = false, bool pair_keys = true,
               int round = 1) {
  fs::path dir = root / (sync + (sign ? "" : "-unsigned") + (encrypt ? "-encrypted" : "") +
                         (pair_keys ? "" : "-signatures") + "-" + std::to_string(round));
  fs::create_directories(dir / "plugins");
  ::chmod(dir.c_str(), 0755);
  ::chmod((dir / "plugins").c_str(), 0755);
  const std::string secret = encrypt ? std::string(32, '\x5a') : std::string();
  RunningNode ship1(dir, "ship1", url, sync, sign, secret, pair_keys);
  RunningNode central(dir, "central", url, sync, sign, secret, pair_keys);

  // A node makes its RSA key (for the crypt module's key exchange) in the
  // background at its first start, once in its life: seconds of CPU that
  // would land in the measurement of a node just made. Wait for both.
  if (sign) {
    const auto until = Clock::now() + 60s;
    auto has_rsa = [](bosun::host::Node& n) { return !n.keys("list").value("rsa", "").empty(); };
    while ((!has_rsa(central.node()) || !has_rsa(ship1.node())) && Clock::now() < until) {
      std::this_thread::sleep_for(20ms);
    }
  }
  // The first ping also waits for both nodes to reach the broker.
  auto seq = std::make_shared<PingWaiter>();
  uint64_t sent = 0;
  if (!submit_ping(central.node(), seq)) throw std::runtime_error("warm-up ping not accepted");
  if (!seq->wait_finals(++sent, Clock::now() + kPhaseLimit)) {
    throw std::runtime_error("no answer to the first ping from central to ship1 within 30 s");
  }

  Latency submit;
  const auto deadline = Clock::now() + kPhaseLimit;
  for (int i = 0; i < kWarmup + kBosunRoundTrips; ++i) {
    auto start = Clock::now();
    if (start >= deadline) {
      lat.complete = false;
      break;
    }
    if (!submit_ping(central.node(), seq)) throw std::runtime_error("ping not accepted");
    auto submitted = Clock::now();
    if (!seq->wait_finals(++sent, deadline)) {
      lat.complete = false;
      break;
    }
    if (i >= kWarmup) {
      lat.us.push_back(micros(Clock::now() - start));
      submit.us.push_back(micros(submitted - start));
    }
  }
  std::printf("  central's Node::submit() alone (until the outbox has it): p50 %.1f us\n",
              submit.pct(0.5));
  seq->wait_finals(sent, Clock::now() + kGrace);
  if (!seq->error().empty()) throw std::runtime_error(seq->error());

  auto window = std::make_shared<Window>(kInFlight);
  auto many = std::make_shared<PingWaiter>(window);
  PhaseCost cost;
  cost.begin();
  tp = run_window(*window, kBosunRequests, kSubmitters,
                  [&] { return submit_ping(central.node(), many); });
  cost.end(tp);
  if (!many->error().empty()) throw std::runtime_error(many->error());
  std::printf("  counters central %s\n  counters ship1   %s\n",
              central.node().counters().dump().c_str(), ship1.node().counters().dump().c_str());
}

// Where a bosun round trip's time goes, part by part, each timed alone on
// this machine (`messaging_bench parts`).
void run_parts(const fs::path& root) {
  using bosun::host::Store;
  auto per_op = [](int n, const std::function<void(int)>& op) {
    auto start = Clock::now();
    for (int i = 0; i < n; ++i) op(i);
    return micros(Clock::now() - start) / n;
  };
  auto store_write = [&](bosun::host::SyncMode mode, const char* dir, int n) {
    bosun::host::StoreOptions o;
    o.sync = mode;
    Store store(root / dir, o);
    return per_op(n, [&](int i) {
      store.write([i](bosun::host::WriteTxn& t) {
        t.put(bosun::host::Db::inbox, "k" + std::to_string(i), std::string(300, 'x'));
      });
    });
  };
  std::printf("parts (each the mean of a sequential loop):\n");
  std::printf("  Store::write, one small put, sync interval: %8.1f us\n",
              store_write(bosun::host::SyncMode::interval, "parts-interval", 2000));
  std::printf("  Store::write, one small put, sync always:   %8.1f us\n",
              store_write(bosun::host::SyncMode::always, "parts-always", 100));

  bosun::host::Message m = bosun::host::parse_message(kPing, "ping");
  m.id = bosun::host::new_message_id();
  m.from_node = "central";
  m.sent_at_ms = bosun::host::now_ms();
  std::string bytes = bosun::host::to_json(m).dump();
  std::printf("  a ping on the wire: %zu bytes: %s\n", bytes.size(), bytes.c_str());
  std::printf("  to_json(Message).dump():                    %8.1f us\n",
              per_op(20000, [&](int) { bytes = bosun::host::to_json(m).dump(); }));
  std::printf("  json::parse + parse_message:                %8.1f us\n", per_op(20000, [&](int) {
                m = bosun::host::parse_message(nlohmann::json::parse(bytes), "m");
              }));
  std::printf("  new_message_id():                           %8.1f us\n",
              per_op(20000, [&](int) { m.id = bosun::host::new_message_id(); }));
  {
    bosun::host::AuditLog audit(root / "parts-audit.log");
    nlohmann::json j = bosun::host::to_json(m);
    std::printf("  AuditLog::append:                           %8.1f us\n",
                per_op(20000, [&](int) { audit.append("received", j); }));
  }
  // One hand-off between threads, as from a nats.c thread to the store's
  // writer and on to a worker: a condition-variable ping-pong.
  std::mutex mu;
  std::condition_variable cv;
  int turn = 0;
  const int hops = 20000;
  std::thread other([&] {
    for (int i = 0; i < hops / 2; ++i) {
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return turn % 2 == 1; });
      ++turn;
      cv.notify_all();
    }
  });
  double hop = per_op(hops / 2,
                      [&](int) {
                        std::unique_lock<std::mutex> lock(mu);
                        ++turn;
                        cv.notify_all();
                        cv.wait(lock, [&] { return turn % 2 == 0; });
                      }) /
               2;
  other.join();
  std::printf("  one thread hand-off (condition variable):   %8.1f us\n", hop);
}

double ratio(double a, double b) {
  return b > 0 ? a / b : -1;
}

int run(std::vector<std::string> phases) {
  if (phases.empty()) {
    phases = {"raw", "interval", "unsigned", "signatures", "encrypted", "always", "fsync"};
  }
  auto want = [&](const char* p) {
    return std::find(phases.begin(), phases.end(), p) != phases.end();
  };
  g_monitor_port = bosun::test::free_port();
  bosun::test::NatsServer server("http: \"127.0.0.1:" + std::to_string(g_monitor_port) + "\"");
  bosun::test::TempDir root;
  std::printf("nats-server %s, data under %s\n", server.url().c_str(), root.path().c_str());

  Latency raw_lat, bosun_lat, sync_lat, unsigned_lat, enc_lat, sig_lat;
  Throughput raw_tp, bosun_tp, sync_tp, unsigned_tp, enc_tp, sig_tp;
  double fsync_us = -1;
  if (want("raw")) {
    run_raw(server.url(), raw_lat, raw_tp);
    print_phase("raw nats.c", raw_lat, raw_tp);
  }
  // The default (security on), security.sign off (what authenticating
  // costs) and encrypted: each run twice, in turns, keeping each one's
  // better run, so that neither the order nor a busy moment of this shared
  // machine decides the ratios between them.
  struct Variant {
    const char* phase;
    const char* title;
    bool sign, encrypt;
    Latency* lat;
    Throughput* tp;
  };
  const Variant variants[] = {
      {"interval", "bosun (sync interval)", true, false, &bosun_lat, &bosun_tp},
      {"unsigned", "bosun (sync interval, security.sign off)", false, false, &unsigned_lat,
       &unsigned_tp},
      {"encrypted", "bosun (sync interval, cluster secret: encrypted)", true, true, &enc_lat,
       &enc_tp},
  };
  for (int round = 1; round <= 2; ++round) {
    for (const auto& v : variants) {
      if (!want(v.phase)) continue;
      Latency lat;
      Throughput tp;
      run_bosun(root.path(), server.url(), "interval", lat, tp, v.sign, v.encrypt, true, round);
      std::string title = std::string(v.title) + " #" + std::to_string(round);
      print_phase(title.c_str(), lat, tp);
      if (round == 1 || tp.rps() > v.tp->rps()) {
        *v.lat = std::move(lat);
        *v.tp = tp;
      }
    }
  }
  if (want("signatures")) {
    // Every message Ed25519-signed (security.pairKeys off).
    run_bosun(root.path(), server.url(), "interval", sig_lat, sig_tp, true, false, false);
    print_phase("bosun (sync interval, pairKeys off: every message signed)", sig_lat, sig_tp);
  }
  if (want("always")) {
    run_bosun(root.path(), server.url(), "always", sync_lat, sync_tp);
    print_phase("bosun (sync always)", sync_lat, sync_tp);
  }
  if (want("fsync")) {
    fsync_us = bosun::host::measure_fsync_p50_us(root.path(), 50);
    std::printf("fsync p50 of %s: %.1f us\n", root.path().c_str(), fsync_us);
  }
  if (want("parts")) run_parts(root.path());
  std::fflush(stdout);

  std::printf(
      "{\"bench\": \"messaging\", \"raw_rps\": %.0f, \"bosun_rps\": %.0f, \"raw_p50_us\": %.1f, "
      "\"bosun_p50_us\": %.1f, \"raw_p99_us\": %.1f, \"bosun_p99_us\": %.1f, "
      "\"bosun_sync_rps\": %.0f, \"bosun_sync_p50_us\": %.1f, \"fsync_p50_us\": %.1f, "
      "\"rps_ratio\": %.3f, \"p50_ratio\": %.2f, \"unsigned_rps\": %.0f, "
      "\"unsigned_p50_us\": %.1f, \"security_rps_ratio\": %.3f, \"encrypted_rps\": %.0f, "
      "\"encrypted_p50_us\": %.1f, \"encrypted_rps_ratio\": %.3f, \"signatures_rps\": %.0f, "
      "\"signatures_p50_us\": %.1f, \"signatures_rps_ratio\": %.3f, \"raw_cpu_us\": %.1f, "
      "\"bosun_cpu_us\": %.1f, \"bosun_nats_msgs\": %.2f, \"raw_switches\": %.1f, "
      "\"bosun_switches\": %.1f}\n",
      raw_tp.rps(), bosun_tp.rps(), raw_lat.pct(0.5), bosun_lat.pct(0.5), raw_lat.pct(0.99),
      bosun_lat.pct(0.99), sync_tp.rps(), sync_lat.pct(0.5), fsync_us,
      ratio(bosun_tp.rps(), raw_tp.rps()), ratio(bosun_lat.pct(0.5), raw_lat.pct(0.5)),
      unsigned_tp.rps(), unsigned_lat.pct(0.5), ratio(bosun_tp.rps(), unsigned_tp.rps()),
      enc_tp.rps(), enc_lat.pct(0.5), ratio(enc_tp.rps(), unsigned_tp.rps()), sig_tp.rps(),
      sig_lat.pct(0.5), ratio(sig_tp.rps(), unsigned_tp.rps()), raw_tp.cpu_us, bosun_tp.cpu_us,
      bosun_tp.nats, raw_tp.switches, bosun_tp.switches);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  spdlog::set_level(spdlog::level::warn);
  std::vector<std::string> phases(argv + 1, argv + argc);
  for (const auto& p : phases) {
    if (p != "raw" && p != "interval" && p != "unsigned" && p != "signatures" && p != "encrypted" &&
        p != "always" && p != "fsync" && p != "parts") {
      std::fprintf(
          stderr,
          "messaging_bench: unknown phase \"%s\"; phases: raw interval unsigned signatures "
          "encrypted always fsync parts (default: all but parts)\n",
          p.c_str());
      return 2;
    }
  }
  int rc = 1;
  try {
    rc = run(phases);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "messaging_bench: %s\n", e.what());
  }
  nats_Close();
  return rc;
}
