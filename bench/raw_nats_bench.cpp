// The raw nats.c baseline (DESIGN §5): two connections with SendAsap to a
// nats-server of our own on loopback, a responder echoing on one of them.
//   (a) latency: N sequential request/reply round trips, p50 and p99 in µs;
//   (b) throughput: K requests with distinct reply subjects, up to W in
//       flight, replies counted on one wildcard subscription; requests/s.
// Prints one JSON line: {"bench":"raw_nats","rps":...,"p50_us":...,"p99_us":...}
#include "nats_server.hpp"

#include <nats/nats.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

constexpr int kRoundTrips = 5000;  // N
constexpr int kWarmup = 200;
constexpr int kRequests = 100000;     // K
constexpr int kInFlight = 256;        // W: below the subscriptions' pending limits
constexpr int64_t kTimeoutMs = 5000;  // per wait; the whole run stays far below 30 s

void check(natsStatus s, const char* what) {
  if (s != NATS_OK) {
    natsStatus last = NATS_OK;
    const char* detail = nats_GetLastError(&last);
    throw std::runtime_error(std::string(what) + ": " + natsStatus_GetText(s) + " " +
                             (detail != nullptr ? detail : ""));
  }
}

natsConnection* connect(const std::string& url, const char* name) {
  natsOptions* opts = nullptr;
  check(natsOptions_Create(&opts), "options");
  check(natsOptions_SetURL(opts, url.c_str()), "url");
  check(natsOptions_SetName(opts, name), "name");
  check(natsOptions_SetSendAsap(opts, true), "send asap");
  natsConnection* nc = nullptr;
  natsStatus s = natsConnection_Connect(&nc, opts);
  natsOptions_Destroy(opts);
  check(s, "connect");
  return nc;
}

void echo(natsConnection* nc, natsSubscription*, natsMsg* msg, void*) {
  if (const char* reply = natsMsg_GetReply(msg)) {
    natsConnection_Publish(nc, reply, natsMsg_GetData(msg), natsMsg_GetDataLength(msg));
  }
  natsMsg_Destroy(msg);
}

struct Window {
  std::mutex mu;
  std::condition_variable cv;
  int outstanding = 0;
  int replies = 0;
};

void on_reply(natsConnection*, natsSubscription*, natsMsg* msg, void* closure) {
  natsMsg_Destroy(msg);
  auto* w = static_cast<Window*>(closure);
  std::lock_guard lock(w->mu);
  --w->outstanding;
  ++w->replies;
  w->cv.notify_all();
}

double percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  size_t i = static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  return v[i];
}

int run() {
  bosun::test::NatsServer server;
  natsConnection* responder = connect(server.url(), "bench-responder");
  natsConnection* requester = connect(server.url(), "bench-requester");

  natsSubscription* echo_sub = nullptr;
  check(natsConnection_Subscribe(&echo_sub, responder, "bench.echo", echo, nullptr), "subscribe");
  check(natsConnection_FlushTimeout(responder, kTimeoutMs), "flush");

  const std::string payload(64, 'x');
  const int len = static_cast<int>(payload.size());

  // (a) sequential round trips.
  std::vector<double> micros;
  micros.reserve(kRoundTrips);
  for (int i = 0; i < kWarmup + kRoundTrips; ++i) {
    natsMsg* reply = nullptr;
    auto start = Clock::now();
    check(natsConnection_Request(&reply, requester, "bench.echo", payload.data(), len, kTimeoutMs),
          "request");
    auto end = Clock::now();
    natsMsg_Destroy(reply);
    if (i >= kWarmup)
      micros.push_back(std::chrono::duration<double, std::micro>(end - start).count());
  }

  // (b) many in flight, each with its own reply subject.
  Window window;
  natsSubscription* reply_sub = nullptr;
  check(natsConnection_Subscribe(&reply_sub, requester, "bench.reply.*", on_reply, &window),
        "subscribe replies");
  check(natsConnection_FlushTimeout(requester, kTimeoutMs), "flush");
  auto start = Clock::now();
  for (int i = 0; i < kRequests; ++i) {
    {
      std::unique_lock lock(window.mu);
      if (!window.cv.wait_for(lock, std::chrono::milliseconds(kTimeoutMs),
                              [&] { return window.outstanding < kInFlight; })) {
        throw std::runtime_error("replies stopped coming");
      }
      ++window.outstanding;
    }
    std::string reply = "bench.reply." + std::to_string(i);
    check(
        natsConnection_PublishRequest(requester, "bench.echo", reply.c_str(), payload.data(), len),
        "publish");
  }
  {
    std::unique_lock lock(window.mu);
    if (!window.cv.wait_for(lock, std::chrono::milliseconds(kTimeoutMs),
                            [&] { return window.replies == kRequests; })) {
      throw std::runtime_error("missing replies: got " + std::to_string(window.replies) + " of " +
                               std::to_string(kRequests));
    }
  }
  double seconds = std::chrono::duration<double>(Clock::now() - start).count();

  natsSubscription_Unsubscribe(reply_sub);
  natsSubscription_Unsubscribe(echo_sub);
  natsConnection_Close(requester);
  natsConnection_Close(responder);
  natsSubscription_Destroy(reply_sub);
  natsSubscription_Destroy(echo_sub);
  natsConnection_Destroy(requester);
  natsConnection_Destroy(responder);

  std::printf("{\"bench\":\"raw_nats\",\"rps\":%.0f,\"p50_us\":%.1f,\"p99_us\":%.1f}\n",
              kRequests / seconds, percentile(micros, 0.50), percentile(micros, 0.99));
  return 0;
}

}  // namespace

int main() {
  try {
    int rc = run();
    nats_Close();
    return rc;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "raw_nats_bench: %s\n", e.what());
    return 1;
  }
}
