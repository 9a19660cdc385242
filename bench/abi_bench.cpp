// What one call through the plugin ABI costs against a direct C++ call.
//
//   direct  a noinline C++ handler that calls a noinline reply function;
//   abi     the same work the way the host does it: a bosun_request filled
//           in, the handler reached through the descriptor's on_call
//           pointer, and the handler calling back through api->reply, which
//           copies the bytes into a std::string on a host-side call object;
//   host    (for scale) the whole local path of a standalone
//           bosun::host::Node: submit a `ping`, wait for its final reply.
//
// Both replies do the same work (lock, check the call is live, copy), so
// abi - direct is what the C boundary itself adds. The module below is
// compiled into the bench; its descriptor pointer is laundered so that the
// compiler cannot see through the function pointers, as it cannot when the
// module is a dlopen'ed .so.
//
// Ends with one JSON line:
// {"bench":"abi","direct_ns":..,"abi_ns":..,"added_ns":..,"host_ping_us":..}
#include <benchmark/benchmark.h>
#include <bosun/plugin.h>
#include <spdlog/spdlog.h>
#include <bosun/host/config.hpp>
#include <bosun/host/node.hpp>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

#include <unistd.h>

#include "test_util.hpp"

namespace {

// ------------------------------------------------------------ host side ---

// What the host keeps per call; modules see it as an opaque bosun_call*.
struct HostCall {
  std::mutex mu;
  bool finished = false;
  std::string reply;
};

__attribute__((noinline)) bosun_status store_reply(HostCall& call, const char* data, size_t len) {
  std::lock_guard<std::mutex> lock(call.mu);
  if (call.finished) return BOSUN_ERR_CALL_FINISHED;
  call.reply.assign(data, len);
  return BOSUN_OK;
}

bosun_status api_reply(bosun_call* call, const char* data, size_t len) {
  if (call == nullptr) return BOSUN_ERR_INVALID_ARGUMENT;
  return store_reply(*reinterpret_cast<HostCall*>(call), data, len);
}

bosun_host_api make_api() {
  bosun_host_api api{};
  api.abi_version = BOSUN_ABI_VERSION;
  api.struct_size = sizeof(bosun_host_api);
  api.reply = &api_reply;
  return api;
}
const bosun_host_api kApi = make_api();

// ---------------------------------------------------------- module side ---

struct EchoInstance {
  const bosun_host_api* api;
};

bosun_status echo_init(bosun_host*, const bosun_host_api* api, bosun_str, void** instance, char*,
                       size_t) {
  *instance = new EchoInstance{api};
  return BOSUN_OK;
}

void echo_shutdown(void* instance) {
  delete static_cast<EchoInstance*>(instance);
}

bosun_status echo(void* instance, bosun_call* call, const bosun_request* request) {
  const auto* self = static_cast<const EchoInstance*>(instance);
  return self->api->reply(call, request->data.data, request->data.len);
}

const bosun_method kMethods[] = {{sizeof(bosun_method), 0u, "echo", echo, "reply with the data"}};
const bosun_plugin kDescriptor = {BOSUN_ABI_VERSION,
                                  sizeof(bosun_plugin),
                                  "bench_echo",
                                  "1.0.0",
                                  "bench: echo the data",
                                  kMethods,
                                  1,
                                  sizeof(bosun_method),
                                  echo_init,
                                  echo_shutdown,
                                  nullptr};

// ---------------------------------------------------------- direct C++ ---

struct DirectRequest {
  std::string_view id, from_node, to_node, method, data, message_json;
  int64_t timeout_ms;
};

__attribute__((noinline)) bosun_status direct_echo(HostCall& call, const DirectRequest& request) {
  return store_reply(call, request.data.data(), request.data.size());
}

// ------------------------------------------------------------- payloads ---

// What the host has at hand for a call (the fields of its Message).
struct Fields {
  std::string id = "01J9ZK8Q4W6X8Y2B3C4D5E6F7G";
  std::string from = "central";
  std::string to = "ship1";
  std::string method = "echo";
  std::string data;
  std::string json;
  explicit Fields(size_t n) : data(n, 'x') { json = R"({"toNode":"ship1","method":"echo"})"; }
};

void BM_Direct(benchmark::State& state) {
  Fields f(static_cast<size_t>(state.range(0)));
  for (auto _ : state) {
    HostCall call;
    DirectRequest r{f.id, f.from, f.to, f.method, f.data, f.json, 10000};
    bosun_status s = direct_echo(call, r);
    benchmark::DoNotOptimize(s);
    benchmark::DoNotOptimize(call.reply.data());
  }
}

void BM_Abi(benchmark::State& state) {
  Fields f(static_cast<size_t>(state.range(0)));
  const bosun_plugin* plugin = &kDescriptor;
  benchmark::DoNotOptimize(plugin);  // the host only knows it at run time
  void* instance = nullptr;
  char reason[256];
  if (plugin->on_init(nullptr, &kApi, bosun_str{"{}", 2}, &instance, reason, sizeof reason) !=
      BOSUN_OK) {
    state.SkipWithError("on_init failed");
    return;
  }
  const bosun_on_call on_call = plugin->methods[0].on_call;
  for (auto _ : state) {
    HostCall call;
    bosun_request r{};
    r.struct_size = sizeof(bosun_request);
    r.id = {f.id.data(), f.id.size()};
    r.from_node = {f.from.data(), f.from.size()};
    r.to_node = {f.to.data(), f.to.size()};
    r.method = {f.method.data(), f.method.size()};
    r.data = {f.data.data(), f.data.size()};
    r.message_json = {f.json.data(), f.json.size()};
    r.timeout_ms = 10000;
    bosun_status s = on_call(instance, reinterpret_cast<bosun_call*>(&call), &r);
    benchmark::DoNotOptimize(s);
    benchmark::DoNotOptimize(call.reply.data());
  }
  plugin->on_shutdown(instance);
}

BENCHMARK(BM_Direct)->Arg(64)->Arg(4096)->Repetitions(5)->ReportAggregatesOnly(true);
BENCHMARK(BM_Abi)->Arg(64)->Arg(4096)->Repetitions(5)->ReportAggregatesOnly(true);

// ------------------------------------------------ full standalone node ---

class PingWaiter : public bosun::host::ReplyWaiter {
 public:
  void on_reply(const bosun::host::Message& reply) override {
    if (!reply.final_reply) return;
    std::lock_guard<std::mutex> lock(mu_);
    ++finals_;
    if (reply.data != "pong") bad_ = true;
    cv_.notify_all();
  }
  // True when the final reply number `n` came within the timeout.
  bool wait(uint64_t n) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, std::chrono::seconds(5), [&] { return finals_ >= n; }) && !bad_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  uint64_t finals_ = 0;
  bool bad_ = false;
};

struct StandaloneNode {
  bosun::test::TempDir dir;
  std::unique_ptr<bosun::host::Node> node;
  std::thread loop;

  StandaloneNode() {
    std::filesystem::create_directories(dir / "plugins");
    nlohmann::json doc = {{"node", {{"name", "bench"}, {"dataDir", "data"}}},
                          {"plugins", {{"dir", "plugins"}}}};
    node = std::make_unique<bosun::host::Node>(bosun::host::parse_config(doc, dir.path()));
    node->start();
    loop = std::thread([n = node.get()] { n->run(); });
  }
  ~StandaloneNode() {
    node->stop();
    loop.join();
    node.reset();
  }
};

StandaloneNode* g_node = nullptr;

void BM_HostPing(benchmark::State& state) {
  auto waiter = std::make_shared<PingWaiter>();
  const nlohmann::json ping = {{"toNode", "bench"}, {"method", "ping"}};
  uint64_t sent = 0;
  for (auto _ : state) {
    auto r = g_node->node->submit(ping, waiter);
    if (r.accepted.size() != 1 || !waiter->wait(++sent)) {
      state.SkipWithError("ping not accepted or not answered with pong within 5 s");
      return;
    }
  }
}

BENCHMARK(BM_HostPing)
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime()
    ->MinTime(0.5)
    ->Repetitions(3)
    ->ReportAggregatesOnly(true);

// Remembers the median of each benchmark, in nanoseconds, as it prints:
// CPU time for the in-thread calls (on a shared machine their wall time
// mostly measures preemption), wall time for the node's round trip.
class Recorder : public benchmark::ConsoleReporter {
 public:
  Recorder() : ConsoleReporter(isatty(STDOUT_FILENO) ? OO_ColorTabular : OO_Tabular) {}
  std::map<std::string, double> median_ns;
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const auto& run : runs) {
      if (run.aggregate_name != "median" || run.error_occurred) continue;
      const auto& n = run.run_name;
      bool wall = n.time_type == "real_time";
      double t = wall ? run.GetAdjustedRealTime() : run.GetAdjustedCPUTime();
      median_ns[n.function_name + (n.args.empty() ? "" : "/" + n.args)] =
          t * 1e9 / benchmark::GetTimeUnitMultiplier(run.time_unit);
    }
    ConsoleReporter::ReportRuns(runs);
  }
};

double value_or(const std::map<std::string, double>& m, const std::string& key, double fallback) {
  auto it = m.find(key);
  return it == m.end() ? fallback : it->second;
}

}  // namespace

int main(int argc, char** argv) {
  spdlog::set_level(spdlog::level::warn);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  Recorder recorder;
  try {
    StandaloneNode node;
    g_node = &node;
    benchmark::RunSpecifiedBenchmarks(&recorder);
    g_node = nullptr;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "abi_bench: %s\n", e.what());
    return 1;
  }
  benchmark::Shutdown();
  const auto& m = recorder.median_ns;
  double direct = value_or(m, "BM_Direct/64", -1);
  double abi = value_or(m, "BM_Abi/64", -1);
  double host = value_or(m, "BM_HostPing", -1);
  if (direct < 0 || abi < 0) {
    std::fprintf(stderr, "abi_bench: BM_Direct/64 or BM_Abi/64 did not run\n");
    return 1;
  }
  std::printf(
      "{\"bench\":\"abi\",\"direct_ns\":%.1f,\"abi_ns\":%.1f,\"added_ns\":%.1f,"
      "\"host_ping_us\":%.1f}\n",
      direct, abi, abi - direct, host < 0 ? -1.0 : host / 1000);
  return 0;
}
