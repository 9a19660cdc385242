// The host's side of metrics: loads the metrics module (prometheus-cpp and
// its HTTP server, host/metrics/) the first time a Metrics is made, and calls
// it through the C table of metrics_abi.h. A node without metrics.listen never
// maps it.
#include "metrics.hpp"

#include <dlfcn.h>

#include <algorithm>
#include <array>
#include <filesystem>
#include <mutex>
#include <stdexcept>

#include "metrics_abi.h"

namespace bosun::host {

namespace {

namespace fs = std::filesystem;

// Where the module is: BOSUN_METRICS_MODULE when set (tests, odd layouts),
// else lib/bosun/bosun-metrics.so beside the executable's bin folder, as
// `cmake --install` lays it out and as the build tree has it.
fs::path module_path() {
  if (const char* env = std::getenv("BOSUN_METRICS_MODULE"); env && *env) return env;
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  fs::path bin = ec ? fs::path(".") : exe.parent_path();
  return bin.parent_path() / "lib" / "bosun" / "bosun-metrics.so";
}

// Loaded once and kept for the life of the process (a scrape thread of a
// Metrics being destroyed must never run in an unmapped module).
const bosun_metrics_api& api() {
  static std::once_flag once;
  static const bosun_metrics_api* table = nullptr;
  static std::string error;
  std::call_once(once, [] {
    fs::path path = module_path();
    void* h = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      const char* why = ::dlerror();
      error = "metrics.listen is set but the metrics module cannot be loaded from " +
              path.string() + ": " + (why ? why : "unknown error") +
              " (it is installed as lib/bosun/bosun-metrics.so beside bin/bosun)";
      return;
    }
    auto entry = reinterpret_cast<bosun_metrics_entry_fn>(::dlsym(h, BOSUN_METRICS_ENTRY));
    const bosun_metrics_api* t = entry ? entry() : nullptr;
    if (!t || t->abi_version != BOSUN_METRICS_ABI_VERSION) {
      error = "the metrics module " + path.string() +
              " is not the one this bosun was built with (no " BOSUN_METRICS_ENTRY
              " or another ABI version); install both from the same build";
      ::dlclose(h);
      return;
    }
    table = t;
  });
  if (!table) throw std::runtime_error(error);
  return *table;
}

}  // namespace

struct Metrics::Impl {
  const bosun_metrics_api* api = nullptr;
  void* m = nullptr;
  std::function<MetricsState()> state;

  // The module asks for the node's state at each scrape, on its thread.
  static void state_fn(void* ctx, bosun_metrics_state_sink sink, void* sink_ctx) {
    auto& self = *static_cast<Impl*>(ctx);
    MetricsState s = self.state();
    std::vector<bosun_metrics_plugin_row> rows;
    rows.reserve(s.plugins.size());
    for (const auto& p : s.plugins)
      rows.push_back({p.name.c_str(), p.version.c_str(), p.state.c_str()});
    bosun_metrics_state_view view{s.inflight_calls, s.outbox_depth, s.reconnects,
                                  s.duplicates,     rows.data(),    rows.size()};
    sink(sink_ctx, &view);
  }
};

Metrics::Metrics(const std::string& listen, std::function<MetricsState()> state)
    : impl_(std::make_unique<Impl>()) {
  impl_->api = &api();
  impl_->state = std::move(state);
  std::array<char, 512> err{};
  impl_->m =
      impl_->api->create(listen.c_str(), &Impl::state_fn, impl_.get(), err.data(), err.size());
  if (!impl_->m) throw std::runtime_error(err.data());
}

Metrics::~Metrics() {
  if (impl_ && impl_->m) impl_->api->destroy(impl_->m);
}

void Metrics::count(MessageEvent event, std::string_view method, std::string_view peer) {
  impl_->api->count(impl_->m, static_cast<int>(event), method.data(), method.size(), peer.data(),
                    peer.size());
}

void Metrics::observe_handler(std::string_view method, double seconds) {
  impl_->api->observe_handler(impl_->m, method.data(), method.size(), seconds);
}

void Metrics::count_refused(std::string_view reason) {
  size_t i = 0;
  while (i + 1 < std::size(kRefusedReasons) && kRefusedReasons[i] != reason) ++i;
  impl_->api->count_refused(impl_->m, i);  // the last one is "other"
}

void Metrics::count_update(std::string_view plugin, std::string_view status) {
  impl_->api->count_update(impl_->m, plugin.data(), plugin.size(), status.data(), status.size());
}

std::vector<int> Metrics::ports() const {
  std::array<int, 16> buf{};
  size_t n = impl_->api->ports(impl_->m, buf.data(), buf.size());
  return {buf.begin(), buf.begin() + static_cast<long>(std::min(n, buf.size()))};
}

}  // namespace bosun::host
