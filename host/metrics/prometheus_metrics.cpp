// bosun's metrics module (lib/bosun/bosun-metrics.so): prometheus-cpp and its
// HTTP server, behind the C table of metrics_abi.h. The host loads it when
// metrics.listen is set (host/src/metrics.cpp).
#include <prometheus/collectable.h>
#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/family.h>
#include <prometheus/histogram.h>
#include <prometheus/metric_family.h>
#include <prometheus/registry.h>

#include <array>
#include <cstdio>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "metrics.hpp"
#include "metrics_abi.h"

namespace bosun::host {

namespace {

constexpr size_t kEvents = 5;
constexpr size_t kMaxPluginRows = 200;

// Read at each scrape: gauges and counters the node keeps anyway.
class StateCollector : public prometheus::Collectable {
 public:
  StateCollector(bosun_metrics_state_fn state, void* ctx) : state_(state), ctx_(ctx) {}

  std::vector<prometheus::MetricFamily> Collect() const override {
    std::vector<prometheus::MetricFamily> out;
    state_(ctx_, &StateCollector::collect, &out);
    return out;
  }

 private:
  static void collect(void* sink_ctx, const bosun_metrics_state_view* view) {
    auto& out = *static_cast<std::vector<prometheus::MetricFamily>*>(sink_ctx);
    const bosun_metrics_state_view& s = *view;
    auto scalar = [&](const char* name, const char* help, prometheus::MetricType type,
                      uint64_t value) {
      prometheus::MetricFamily f{name, help, type, {}};
      prometheus::ClientMetric m;
      if (type == prometheus::MetricType::Counter) {
        m.counter.value = static_cast<double>(value);
      } else {
        m.gauge.value = static_cast<double>(value);
      }
      f.metric.push_back(std::move(m));
      out.push_back(std::move(f));
    };
    scalar("bosun_inflight_calls", "Calls running on this node now", prometheus::MetricType::Gauge,
           s.inflight_calls);
    scalar("bosun_outbox_depth", "Messages sent to other nodes and not yet ACKed",
           prometheus::MetricType::Gauge, s.outbox_depth);
    scalar("bosun_reconnects_total", "Reconnections to the broker", prometheus::MetricType::Counter,
           s.reconnects);
    scalar("bosun_messages_duplicate_total",
           "Resent copies of messages already received (ACKed again, not run again)",
           prometheus::MetricType::Counter, s.duplicates);
    prometheus::MetricFamily info{"bosun_plugin_info",
                                  "One per plugin: its version and state (always 1)",
                                  prometheus::MetricType::Gauge,
                                  {}};
    for (size_t i = 0; i < s.plugin_count; ++i) {
      const bosun_metrics_plugin_row& p = s.plugins[i];
      prometheus::ClientMetric m;
      m.label = {{"plugin", p.name}, {"state", p.state}, {"version", p.version}};
      m.gauge.value = 1;
      info.metric.push_back(std::move(m));
    }
    out.push_back(std::move(info));
  }

  bosun_metrics_state_fn state_;
  void* ctx_;
};

struct PromMetrics {
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  std::shared_ptr<StateCollector> state;

  std::array<prometheus::Family<prometheus::Counter>*, kEvents> events{};
  std::mutex rows_mu;
  // "<method>\0<peer>" -> one counter per event
  std::unordered_map<std::string, std::array<prometheus::Counter*, kEvents>> rows;
  size_t folded_rows = 0;  // rows with peer "other"

  prometheus::Family<prometheus::Histogram>* handler_family = nullptr;
  std::mutex handlers_mu;
  std::unordered_map<std::string, prometheus::Histogram*> handlers;

  std::array<prometheus::Counter*, std::size(kRefusedReasons)> refused{};

  prometheus::Family<prometheus::Counter>* updates_family = nullptr;
  std::mutex updates_mu;
  std::unordered_map<std::string, prometheus::Counter*> updates;

  // Last: destroyed first, so no scrape runs while the rest goes.
  std::unique_ptr<prometheus::Exposer> exposer;

  std::array<prometheus::Counter*, kEvents>& row(std::string_view method, std::string_view peer) {
    static thread_local std::string key;
    key.assign(method);
    key.push_back('\0');
    key.append(peer);
    std::lock_guard<std::mutex> lock(rows_mu);
    if (auto it = rows.find(key); it != rows.end()) return it->second;
    std::string m(method), p(peer);
    if (rows.size() >= Metrics::kMaxRows) {
      p = "other";
      if (folded_rows >= Metrics::kMaxRows) m = "other";
      key = m + '\0' + p;
      if (auto it = rows.find(key); it != rows.end()) return it->second;
      ++folded_rows;
    }
    std::array<prometheus::Counter*, kEvents> counters{};
    for (size_t i = 0; i < kEvents; ++i)
      counters[i] = &events[i]->Add({{"method", m}, {"peer", p}});
    return rows.emplace(key, counters).first->second;
  }
};

// Registers every family and starts serving; throws what went wrong.
std::unique_ptr<PromMetrics> make(const std::string& listen, bosun_metrics_state_fn state,
                                  void* state_ctx) {
  auto m = std::make_unique<PromMetrics>();
  PromMetrics& d = *m;
  const char* names[kEvents][2] = {
      {"bosun_messages_sent_total", "Messages sent to another node, by method and peer"},
      {"bosun_messages_received_total", "Messages taken from the bus, by method and sending peer"},
      {"bosun_messages_acked_total", "Sent messages the receiver ACKed, by method and peer"},
      {"bosun_messages_retried_total", "Resends after an ACK timeout, by method and peer"},
      {"bosun_messages_failed_total",
       "Messages given up on (retry budget spent or refused), by method and peer"}};
  for (size_t i = 0; i < kEvents; ++i) {
    d.events[i] =
        &prometheus::BuildCounter().Name(names[i][0]).Help(names[i][1]).Register(*d.registry);
  }
  d.handler_family = &prometheus::BuildHistogram()
                          .Name("bosun_handler_duration_seconds")
                          .Help("Time in a method's handler, by method")
                          .Register(*d.registry);
  auto& refused = prometheus::BuildCounter()
                      .Name("bosun_messages_refused_total")
                      .Help("Messages from the bus refused before the inbox, by reason")
                      .Register(*d.registry);
  for (size_t i = 0; i < std::size(kRefusedReasons); ++i) {
    d.refused[i] = &refused.Add({{"reason", std::string(kRefusedReasons[i])}});
  }
  d.updates_family = &prometheus::BuildCounter()
                          .Name("bosun_plugin_updates_total")
                          .Help("Plugin updates and settings changes, by plugin and result status")
                          .Register(*d.registry);
  d.state = std::make_shared<StateCollector>(state, state_ctx);
  try {
    // One worker thread: a scrape now and then needs no more.
    d.exposer = std::make_unique<prometheus::Exposer>(listen, 1);
  } catch (const std::exception& e) {
    throw std::runtime_error("metrics.listen: cannot serve /metrics on " + listen + ": " +
                             e.what() + " (is the address in use or not local?)");
  }
  d.exposer->RegisterCollectable(d.registry);
  d.exposer->RegisterCollectable(d.state);
  return m;
}

void observe_handler(PromMetrics& d, std::string_view method, double seconds) {
  prometheus::Histogram* h = nullptr;
  {
    static thread_local std::string key;
    key.assign(method);
    std::lock_guard<std::mutex> lock(d.handlers_mu);
    auto it = d.handlers.find(key);
    if (it == d.handlers.end()) {
      if (d.handlers.size() >= Metrics::kMaxRows) key = "other";
      it = d.handlers.find(key);
    }
    if (it == d.handlers.end()) {
      static const prometheus::Histogram::BucketBoundaries bounds = {
          0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120};
      it = d.handlers.emplace(key, &d.handler_family->Add({{"method", key}}, bounds)).first;
    }
    h = it->second;
  }
  h->Observe(seconds);
}

void count_update(PromMetrics& d, std::string_view plugin, std::string_view status) {
  std::string p(plugin);
  std::string key = p + '\0' + std::string(status);
  std::lock_guard<std::mutex> lock(d.updates_mu);
  auto it = d.updates.find(key);
  if (it == d.updates.end()) {
    if (d.updates.size() >= kMaxPluginRows) {
      p = "other";
      key = p + '\0' + std::string(status);
      it = d.updates.find(key);
    }
    if (it == d.updates.end()) {
      it = d.updates
               .emplace(key,
                        &d.updates_family->Add({{"plugin", p}, {"status", std::string(status)}}))
               .first;
    }
  }
  it->second->Increment();
}

// The C table. A counter that cannot be made (out of memory) is a lost
// count, never an exception through the host.
PromMetrics& of(void* m) {
  return *static_cast<PromMetrics*>(m);
}

void* c_create(const char* listen, bosun_metrics_state_fn state, void* state_ctx, char* err,
               size_t err_len) {
  try {
    return make(listen, state, state_ctx).release();
  } catch (const std::exception& e) {
    if (err_len > 0) std::snprintf(err, err_len, "%s", e.what());
  } catch (...) {
    if (err_len > 0) std::snprintf(err, err_len, "metrics.listen: unknown error");
  }
  return nullptr;
}

void c_destroy(void* m) {
  delete static_cast<PromMetrics*>(m);
}

void c_count(void* m, int event, const char* method, size_t method_len, const char* peer,
             size_t peer_len) {
  if (event < 0 || static_cast<size_t>(event) >= kEvents) return;
  try {
    of(m).row({method, method_len}, {peer, peer_len})[static_cast<size_t>(event)]->Increment();
  } catch (...) {
  }
}

void c_observe_handler(void* m, const char* method, size_t method_len, double seconds) {
  try {
    observe_handler(of(m), {method, method_len}, seconds);
  } catch (...) {
  }
}

void c_count_refused(void* m, size_t reason) {
  auto& refused = of(m).refused;
  refused[reason < refused.size() ? reason : refused.size() - 1]->Increment();
}

void c_count_update(void* m, const char* plugin, size_t plugin_len, const char* status,
                    size_t status_len) {
  try {
    count_update(of(m), {plugin, plugin_len}, {status, status_len});
  } catch (...) {
  }
}

size_t c_ports(void* m, int* out, size_t max) {
  try {
    std::vector<int> ports = of(m).exposer->GetListeningPorts();
    for (size_t i = 0; i < ports.size() && i < max; ++i) out[i] = ports[i];
    return ports.size();
  } catch (...) {
    return 0;
  }
}

const bosun_metrics_api kApi = {
    BOSUN_METRICS_ABI_VERSION, c_create,        c_destroy,      c_count,
    c_observe_handler,         c_count_refused, c_count_update, c_ports};

}  // namespace

}  // namespace bosun::host

extern "C" __attribute__((visibility("default"))) const bosun_metrics_api* bosun_metrics_entry(
    void) {
  return &bosun::host::kApi;
}
