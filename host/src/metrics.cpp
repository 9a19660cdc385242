#include "metrics.hpp"

#include <prometheus/collectable.h>
#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/family.h>
#include <prometheus/histogram.h>
#include <prometheus/metric_family.h>
#include <prometheus/registry.h>

#include <array>
#include <mutex>
#include <stdexcept>
#include <unordered_map>

namespace bosun::host {

namespace {

constexpr size_t kEvents = 5;
constexpr size_t kMaxPluginRows = 200;

// Read at each scrape: gauges and counters the node keeps anyway.
class StateCollector : public prometheus::Collectable {
 public:
  explicit StateCollector(std::function<MetricsState()> state) : state_(std::move(state)) {}

  std::vector<prometheus::MetricFamily> Collect() const override {
    MetricsState s = state_();
    std::vector<prometheus::MetricFamily> out;
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
    for (const auto& p : s.plugins) {
      prometheus::ClientMetric m;
      m.label = {{"plugin", p.name}, {"state", p.state}, {"version", p.version}};
      m.gauge.value = 1;
      info.metric.push_back(std::move(m));
    }
    out.push_back(std::move(info));
    return out;
  }

 private:
  std::function<MetricsState()> state_;
};

}  // namespace

struct Metrics::Impl {
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
    if (rows.size() >= kMaxRows) {
      p = "other";
      if (folded_rows >= kMaxRows) m = "other";
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

Metrics::Metrics(const std::string& listen, std::function<MetricsState()> state)
    : impl_(std::make_unique<Impl>()) {
  Impl& d = *impl_;
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
  d.state = std::make_shared<StateCollector>(std::move(state));
  try {
    // One worker thread: a scrape now and then needs no more.
    d.exposer = std::make_unique<prometheus::Exposer>(listen, 1);
  } catch (const std::exception& e) {
    throw std::runtime_error("metrics.listen: cannot serve /metrics on " + listen + ": " +
                             e.what() + " (is the address in use or not local?)");
  }
  d.exposer->RegisterCollectable(d.registry);
  d.exposer->RegisterCollectable(d.state);
}

Metrics::~Metrics() = default;

void Metrics::count(MessageEvent event, std::string_view method, std::string_view peer) {
  impl_->row(method, peer)[static_cast<size_t>(event)]->Increment();
}

void Metrics::observe_handler(std::string_view method, double seconds) {
  Impl& d = *impl_;
  prometheus::Histogram* h = nullptr;
  {
    static thread_local std::string key;
    key.assign(method);
    std::lock_guard<std::mutex> lock(d.handlers_mu);
    auto it = d.handlers.find(key);
    if (it == d.handlers.end()) {
      if (d.handlers.size() >= kMaxRows) key = "other";
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

void Metrics::count_refused(std::string_view reason) {
  size_t i = 0;
  while (i + 1 < std::size(kRefusedReasons) && kRefusedReasons[i] != reason) ++i;
  impl_->refused[i]->Increment();  // the last one is "other"
}

void Metrics::count_update(std::string_view plugin, std::string_view status) {
  Impl& d = *impl_;
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

std::vector<int> Metrics::ports() const {
  return impl_->exposer->GetListeningPorts();
}

}  // namespace bosun::host
