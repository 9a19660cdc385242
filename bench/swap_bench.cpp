// How long a hot update takes (DESIGN §6), and that a hundred of them in a
// row keep at most two versions of a module mapped, in a build that really
// dlcloses (the ASan test suite cannot check that: it never unloads).
//
//   (a) swap: a standalone in-process node serving examples/hello; from a
//       verified artifact on disk (hello 1.0.0 and 1.1.0 staged in the data
//       folder, as update_plugin leaves them) to the new version answering
//       `greet`, alternating between the two. Reported apart: the probe (the
//       child process that loads and inits the module first), the swap (the
//       rest: open beside, init, swap the table, until a call is answered by
//       the new version), and the host's own swap step alone. After each
//       update the process may map at most two hello.so files.
//   (b) a hundred updates through the node module (update_plugin messages,
//       artifact in base64, staged and verified there), as
//       UpdateTest.AHundredUpdatesMapAtMostTwoVersions does: at most two
//       hello.so files mapped at the end, and resident memory that does not
//       grow with the count (the second half adds no more than kRssSlackKb).
// Bounded in count and time. Exits non-zero when a check fails. Human-readable
// lines first; the last line is one JSON object.
#include <spdlog/spdlog.h>
#include <bosun/host/config.hpp>
#include <bosun/host/node.hpp>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "../host/src/signing.hpp"
#include "test_util.hpp"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;
using bosun::host::Message;
using bosun::host::Node;

constexpr int kWarmup = 5;
constexpr int kSwaps = 100;
constexpr int kUpdates = 100;
constexpr auto kPhaseLimit = 60s;
constexpr auto kSettle = 5s;        // for a drained version to be unmapped
constexpr long kRssSlackKb = 4096;  // growth allowed over the second half of (b)

double ms(Clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t i = static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

double round3(double x) {
  return static_cast<double>(static_cast<long long>(x * 1000 + 0.5)) / 1000;
}

// The distinct files named `file_name` this process maps.
std::set<std::string> mapped_files(const std::string& file_name) {
  std::ifstream maps("/proc/self/maps");
  std::set<std::string> out;
  for (std::string line; std::getline(maps, line);) {
    size_t slash = line.find('/');
    if (slash == std::string::npos) continue;
    fs::path p = line.substr(slash);
    if (p.filename() == file_name) out.insert(p.string());
  }
  return out;
}

size_t settled_hello_maps() {
  size_t n = mapped_files("hello.so").size();
  auto deadline = Clock::now() + kSettle;
  while (n > 2 && Clock::now() < deadline) {
    std::this_thread::sleep_for(1ms);
    n = mapped_files("hello.so").size();
  }
  return n;
}

long rss_kb() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  }
  return -1;
}

// Waits for the final reply to one submitted message.
class OneReply : public bosun::host::ReplyWaiter {
 public:
  void on_reply(const Message& r) override {
    if (!r.final_reply) return;
    std::lock_guard<std::mutex> lock(mu_);
    reply_ = r;
    done_ = true;
    cv_.notify_all();
  }
  bool wait(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return done_; });
  }
  Message reply() {
    std::lock_guard<std::mutex> lock(mu_);
    return reply_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  Message reply_;
};

// The final reply to `m`, or an error text in `error`.
Message call(Node& node, const json& m, std::string* error,
             std::chrono::milliseconds timeout = 30s) {
  auto waiter = std::make_shared<OneReply>();
  auto r = node.submit(m, waiter);
  if (r.accepted.size() != 1) {
    *error = r.to_json().dump();
    return {};
  }
  if (!waiter->wait(timeout)) {
    *error = "no reply within " + std::to_string(timeout.count()) + " ms";
    return {};
  }
  return waiter->reply();
}

std::string read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void copy_module(const fs::path& from, const fs::path& to) {
  fs::create_directories(to.parent_path());
  fs::copy_file(from, to, fs::copy_options::overwrite_existing);
  fs::permissions(to, fs::perms(0755), fs::perm_options::replace);
}

using bosun::host::base64_encode;
using bosun::host::sha256_hex;

// A standalone node in `root` serving hello 1.0.0 and the node module.
struct BenchNode {
  explicit BenchNode(const fs::path& root) {
    fs::create_directories(root / "plugins");
    fs::permissions(root / "plugins", fs::perms(0755), fs::perm_options::replace);
    copy_module(BENCH_HELLO_1_0_0, root / "plugins" / "hello.so");
    copy_module(fs::path(BENCH_PLUGIN_DIR) / "node.so", root / "plugins" / "node.so");
    json doc = {{"node", {{"name", "n1"}, {"dataDir", "data"}}},
                {"plugins", {{"dir", "plugins"}}},
                {"log", {{"level", "warn"}}}};
    node = std::make_unique<Node>(bosun::host::parse_config(doc, root));
    node->start();
    loop = std::thread([this] { node->run(); });
  }
  ~BenchNode() {
    node->stop();
    loop.join();
  }
  std::unique_ptr<Node> node;
  std::thread loop;
};

std::string version_in(const std::string& greeting) {
  for (const char* v : {"1.0.0", "1.1.0"}) {
    if (greeting.find(std::string("(hello ") + v + ")") != std::string::npos) return v;
  }
  return "";
}

struct SwapResult {
  std::vector<double> serving, probe, step, total;
  size_t max_mapped = 0;
  std::string error;
};

SwapResult bench_swaps() {
  SwapResult out;
  bosun::test::TempDir dir;
  BenchNode bn(dir.path());
  Node& node = *bn.node;
  // Verified artifacts on disk, where update_plugin stages them.
  const fs::path staged = dir.path() / "data" / "plugins" / "hello";
  const fs::path files[2] = {staged / "1.1.0" / "hello.so", staged / "1.0.0" / "hello.so"};
  copy_module(BENCH_HELLO_1_1_0, files[0]);
  copy_module(BENCH_HELLO_1_0_0, files[1]);
  const std::string versions[2] = {"1.1.0", "1.0.0"};
  const json greet = {{"toNode", "n1"}, {"method", "greet"}};

  auto phase_end = Clock::now() + kPhaseLimit;
  for (int i = 0; i < kWarmup + kSwaps && Clock::now() < phase_end; ++i) {
    const fs::path& file = files[i % 2];
    const std::string& version = versions[i % 2];
    bosun::host::UpdateTimings timings;
    auto t0 = Clock::now();
    json r = node.update_plugin("hello", file, version, &timings);
    if (r.value("status", "") != "updated") {
      out.error = "update " + std::to_string(i) + ": " + r.dump();
      return out;
    }
    // Serving: the first call after the update answers from the new version.
    std::string error;
    Message reply = call(node, greet, &error);
    auto t1 = Clock::now();
    if (!error.empty() || version_in(reply.data) != version) {
      out.error = "after update " + std::to_string(i) + " to " + version +
                  ", greet answered: " + (error.empty() ? reply.data + reply.error : error);
      return out;
    }
    size_t mapped = settled_hello_maps();
    out.max_mapped = std::max(out.max_mapped, mapped);
    if (mapped > 2) {
      out.error = "after update " + std::to_string(i) + ", " + std::to_string(mapped) +
                  " hello.so files are still mapped after " +
                  std::to_string(std::chrono::milliseconds(kSettle).count()) + " ms";
      return out;
    }
    if (i < kWarmup) continue;
    out.total.push_back(ms(t1 - t0));
    out.probe.push_back(ms(timings.probe));
    out.serving.push_back(ms(t1 - t0 - timings.probe));
    out.step.push_back(ms(timings.swap));
  }
  if (static_cast<int>(out.total.size()) < kSwaps) {
    out.error = "only " + std::to_string(out.total.size()) + " of " + std::to_string(kSwaps) +
                " swaps within " + std::to_string(kPhaseLimit.count()) + " s";
  }
  return out;
}

struct HundredResult {
  int updates = 0;
  size_t mapped_at_end = 0;
  std::vector<std::string> mapped;
  long rss_start_kb = 0, rss_half_kb = 0, rss_end_kb = 0;
  double seconds = 0;
  std::string error;
};

HundredResult bench_hundred_updates() {
  HundredResult out;
  bosun::test::TempDir dir;
  BenchNode bn(dir.path());
  Node& node = *bn.node;
  const std::string bytes[2] = {read_bytes(BENCH_HELLO_1_1_0), read_bytes(BENCH_HELLO_1_0_0)};
  const std::string versions[2] = {"1.1.0", "1.0.0"};
  json messages[2];
  for (int k = 0; k < 2; ++k) {
    messages[k] = {{"toNode", "n1"},
                   {"method", "update_plugin"},
                   {"methodArgs", {"hello", versions[k], sha256_hex(bytes[k])}},
                   {"data", base64_encode(bytes[k])},
                   {"methodTimeout", 60}};
  }
  auto t0 = Clock::now();
  out.rss_start_kb = rss_kb();
  for (int i = 0; i < kUpdates && Clock::now() < t0 + kPhaseLimit; ++i) {
    std::string error;
    Message r = call(node, messages[i % 2], &error);
    json res = json::parse(r.data, nullptr, false);
    if (!error.empty() || !res.is_object() || res.value("status", "") != "updated") {
      out.error = "update " + std::to_string(i) + ": " + (error.empty() ? r.data + r.error : error);
      return out;
    }
    ++out.updates;
    if (out.updates == kUpdates / 2) out.rss_half_kb = rss_kb();
  }
  out.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  out.mapped_at_end = settled_hello_maps();
  for (const auto& m : mapped_files("hello.so")) out.mapped.push_back(m);
  out.rss_end_kb = rss_kb();
  std::string error;
  Message r = call(node, {{"toNode", "n1"}, {"method", "greet"}}, &error);
  if (out.updates == kUpdates && version_in(r.data) != "1.0.0") {
    out.error = "after " + std::to_string(kUpdates) + " updates greet answered: " + r.data +
                r.error + error;
  }
  if (out.updates < kUpdates && out.error.empty()) {
    out.error = "only " + std::to_string(out.updates) + " updates within the time limit";
  }
  return out;
}

}  // namespace

int main() {
  spdlog::set_level(spdlog::level::warn);
  bool ok = true;

  SwapResult s = bench_swaps();
  if (!s.error.empty()) {
    std::fprintf(stderr, "swap: %s\n", s.error.c_str());
    ok = false;
  }
  std::printf("swap (%zu swaps of examples/hello 1.0.0 <-> 1.1.0, from a verified file on disk)\n",
              s.total.size());
  std::printf("  probe (child process: load, init, shutdown)   p50 %8.3f ms  p99 %8.3f ms\n",
              percentile(s.probe, 0.5), percentile(s.probe, 0.99));
  std::printf("  swap to serving (probe excluded)             p50 %8.3f ms  p99 %8.3f ms\n",
              percentile(s.serving, 0.5), percentile(s.serving, 0.99));
  std::printf("    of which the host's swap step              p50 %8.3f ms  p99 %8.3f ms\n",
              percentile(s.step, 0.5), percentile(s.step, 0.99));
  std::printf("  total (probe included)                       p50 %8.3f ms  p99 %8.3f ms\n",
              percentile(s.total, 0.5), percentile(s.total, 0.99));
  std::printf("  hello.so files mapped after an update, at most: %zu\n", s.max_mapped);

  HundredResult h = bench_hundred_updates();
  if (!h.error.empty()) {
    std::fprintf(stderr, "hundred updates: %s\n", h.error.c_str());
    ok = false;
  }
  long second_half = h.rss_end_kb - h.rss_half_kb;
  std::printf(
      "%d updates through update_plugin in %.1f s: %zu hello.so file(s) mapped at the end\n",
      h.updates, h.seconds, h.mapped_at_end);
  for (const auto& m : h.mapped) std::printf("  %s\n", m.c_str());
  std::printf(
      "  RSS %ld kB at the start, %ld kB after %d, %ld kB after %d (%+ld kB over the second "
      "half)\n",
      h.rss_start_kb, h.rss_half_kb, kUpdates / 2, h.rss_end_kb, h.updates, second_half);
  if (h.mapped_at_end > 2) {
    std::fprintf(stderr, "FAILED: %zu versions of hello.so mapped after %d updates (at most 2)\n",
                 h.mapped_at_end, h.updates);
    ok = false;
  }
  if (h.updates == kUpdates && second_half > kRssSlackKb) {
    std::fprintf(stderr, "FAILED: RSS grew by %ld kB over the second %d updates (allowed %ld)\n",
                 second_half, kUpdates / 2, kRssSlackKb);
    ok = false;
  }

  json result = {{"bench", "swap"},
                 {"swaps", s.total.size()},
                 {"swap_p50_ms", round3(percentile(s.serving, 0.5))},
                 {"swap_p99_ms", round3(percentile(s.serving, 0.99))},
                 {"probe_p50_ms", round3(percentile(s.probe, 0.5))},
                 {"probe_p99_ms", round3(percentile(s.probe, 0.99))},
                 {"swap_step_p50_ms", round3(percentile(s.step, 0.5))},
                 {"total_p50_ms", round3(percentile(s.total, 0.5))},
                 {"total_p99_ms", round3(percentile(s.total, 0.99))},
                 {"max_mapped_versions", std::max(s.max_mapped, h.mapped_at_end)},
                 {"updates", h.updates},
                 {"rss_growth_second_half_kb", second_half},
                 {"ok", ok}};
  std::printf("%s\n", result.dump().c_str());
  return ok ? 0 : 1;
}
