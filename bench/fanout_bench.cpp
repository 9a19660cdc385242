// Fan-out: one message to 50 nodes on this machine, the time until every
// node's reply is in. The nodes are 50 real `bosun run` processes (plus the
// central node the operator sends through), each with its own NATS
// connection, LMDB and worker pool, all on one nats-server of our own; the
// ships load only the cli module. Rounds:
//   ping                       {"toNodes": [50 ships], "method": "ping"}
//   cli_command true           {"toNodes": [50 ships], "method": "cli_command",
//                               "methodArgs": ["true"]}  (50 fork+exec)
// each timed from the send on central's socket to the "done" line (every
// final reply in). One untimed round of each first. Human-readable lines,
// then one JSON line.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdio>

#include "bench_nodes.hpp"
#include "nats_server.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;
using namespace std::chrono_literals;

constexpr int kNodes = 50;
constexpr int kRounds = 20;

using bench::ms_since;

struct Rounds {
  std::vector<double> ms;
  int failed = 0;
  double pct(double p) const {
    if (ms.empty()) return -1;
    std::vector<double> s = ms;
    std::sort(s.begin(), s.end());
    return s[std::min(s.size() - 1, static_cast<size_t>(p * static_cast<double>(s.size())))];
  }
};

int run() {
  bosun::test::NatsServer server;
  bosun::test::TempDir root;
  std::vector<std::string> servers = {server.url()};
  std::vector<std::unique_ptr<bench::Node>> nodes;
  nodes.push_back(
      std::make_unique<bench::Node>("central", root.path(), servers, std::vector<std::string>{}));
  json ships = json::array();
  for (int i = 1; i <= kNodes; ++i) {
    char name[16];
    std::snprintf(name, sizeof name, "ship%02d", i);
    ships.push_back(name);
    nodes.push_back(
        std::make_unique<bench::Node>(name, root.path(), servers, std::vector<std::string>{"cli"}));
  }
  auto t0 = Clock::now();
  for (auto& n : nodes) n->start();
  for (auto& n : nodes) n->wait_ready(60s);
  double startup_ms = ms_since(t0);
  std::printf("%d nodes + central up in %.0f ms (nats-server %s, under %s)\n", kNodes, startup_ms,
              server.url().c_str(), root.path().c_str());
  long rss_kib = 0;
  for (auto& n : nodes) rss_kib += std::max(0L, bench::status_kib(n->pid(), "VmRSS"));
  std::printf("resident memory of all %zu processes: %.0f MiB\n", nodes.size(),
              static_cast<double>(rss_kib) / 1024);

  bench::Node& central = *nodes[0];
  json ping = {{"toNodes", ships}, {"method", "ping"}};
  json cli = {{"toNodes", ships}, {"method", "cli_command"}, {"methodArgs", {"true"}}};
  int bad = 0;
  bench::fan_out(central, ping, kNodes, &bad);  // warm-up: subscriptions, connections, page cache
  bench::fan_out(central, cli, kNodes, &bad);
  Rounds ping_r, cli_r;
  for (int i = 0; i < kRounds; ++i) {
    double p = bench::fan_out(central, ping, kNodes, &ping_r.failed);
    if (p >= 0) ping_r.ms.push_back(p);
    double c = bench::fan_out(central, cli, kNodes, &cli_r.failed);
    if (c >= 0) cli_r.ms.push_back(c);
  }
  std::printf(
      "ping to %d nodes, all replies in: p50 %.1f ms, min %.1f, max %.1f (%d rounds, %d "
      "failed)\n",
      kNodes, ping_r.pct(0.5), ping_r.pct(0), ping_r.pct(1), kRounds, ping_r.failed);
  std::printf(
      "cli_command true to %d nodes, all replies in: p50 %.1f ms, min %.1f, max %.1f (%d "
      "rounds, %d failed)\n",
      kNodes, cli_r.pct(0.5), cli_r.pct(0), cli_r.pct(1), kRounds, cli_r.failed);
  bench::stop_all(nodes);
  std::fflush(stdout);
  std::printf(
      "{\"bench\": \"fanout\", \"nodes\": %d, \"processes\": \"bosun run\", \"rounds\": %d, "
      "\"cli_true_p50_ms\": %.1f, \"cli_true_min_ms\": %.1f, \"cli_true_max_ms\": %.1f, "
      "\"ping_p50_ms\": %.1f, \"ping_max_ms\": %.1f, \"failed_rounds\": %d, \"startup_ms\": %.0f, "
      "\"all_rss_mib\": %.0f}\n",
      kNodes, kRounds, cli_r.pct(0.5), cli_r.pct(0), cli_r.pct(1), ping_r.pct(0.5), ping_r.pct(1),
      ping_r.failed + cli_r.failed, startup_ms, static_cast<double>(rss_kib) / 1024);
  return ping_r.failed + cli_r.failed + bad == 0 ? 0 : 1;
}

}  // namespace

int main() {
  spdlog::set_level(spdlog::level::warn);
  try {
    return run();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fanout_bench: %s\n", e.what());
    return 1;
  }
}
