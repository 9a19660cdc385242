// A fleet on one machine (issue 8): one nats-server of our own and 100 real
// `bosun run` ships (cli module) plus the central node the operator sends
// through, each its own process, config and data folder. Measures:
//   - one command to all 100 until every reply is in: ping, and
//     cli_command true (100 fork+exec); goal: within 1 s
//   - idle resident memory per node (VmRSS, with its anonymous and file
//     parts); goal: under 10 MiB
//   - start-up of one more node until it serves: spawn to its socket
//     answering, and spawn to the pong of a ping sent by central once it
//     does; goal: under 100 ms
//   - for comparison, the same command with Ansible ad-hoc on 100 aliases of
//     localhost: `ansible all -i INVENTORY -c local -m command -a true`
//     (default forks), skipped when ansible is not installed.
// Every process it starts is stopped on return, on an exception, and on
// SIGINT/SIGTERM/SIGHUP (SIGKILL from the handler). Human-readable lines,
// then one JSON line.
#include <spdlog/spdlog.h>

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <sstream>

#include "bench_nodes.hpp"
#include "nats_server.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

constexpr int kShips = 100;
constexpr int kRounds = 10;
constexpr int kStarts = 5;
constexpr int kMaxPids = 256;
constexpr unsigned kMaxSeconds = 600;

// Every child we started, for the signal handler.
std::atomic<pid_t> g_pids[kMaxPids];

void track(pid_t pid) {
  for (auto& p : g_pids) {
    pid_t none = 0;
    if (p.compare_exchange_strong(none, pid)) return;
  }
}

void untrack(pid_t pid) {
  for (auto& p : g_pids) {
    pid_t want = pid;
    if (p.compare_exchange_strong(want, 0)) return;
  }
}

extern "C" void on_fatal_signal(int sig) {
  static const char msg[] =
      "fleet_bench: stopped by a signal (SIGALRM: the run took too long); "
      "killing every process it started\n";
  [[maybe_unused]] ssize_t n = ::write(2, msg, sizeof msg - 1);
  for (auto& p : g_pids) {
    pid_t pid = p.load();
    if (pid > 0) ::kill(pid, SIGKILL);
  }
  ::_exit(128 + sig);
}

using bench::ms_since;

struct Samples {
  std::vector<double> v;
  int failed = 0;
  double pct(double p) const {
    if (v.empty()) return -1;
    std::vector<double> s = v;
    std::sort(s.begin(), s.end());
    return s[std::min(s.size() - 1, static_cast<size_t>(p * static_cast<double>(s.size())))];
  }
};

// Fields of /proc/<pid>/status, in KiB (Threads as a count).
struct Mem {
  long rss = -1, anon = -1, file = -1, threads = -1, pss = -1;
};
// Pss of /proc/<pid>/smaps_rollup in KiB: shared pages divided among the
// processes that map them, what the node really costs the machine.
long pss_kib(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/smaps_rollup");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("Pss:", 0) == 0) return std::stol(line.substr(4));
  }
  return -1;
}
Mem mem_of(pid_t pid) {
  return {bench::status_kib(pid, "VmRSS"), bench::status_kib(pid, "RssAnon"),
          bench::status_kib(pid, "RssFile"), bench::status_kib(pid, "Threads"), pss_kib(pid)};
}

// A node's start: spawn -> socket answers status; spawn -> pong from central.
struct Start {
  double ready_ms = -1, serve_ms = -1;
};
Start time_start(const fs::path& root, const std::vector<std::string>& servers,
                 bench::Node& central, int i) {
  std::string name = "late" + std::to_string(i);
  bench::Node n(name, root, servers, {"cli"});
  Start s;
  auto t0 = Clock::now();
  n.start();
  track(n.pid());
  try {
    n.wait_ready(10s, 1ms);
    s.ready_ms = ms_since(t0);
    auto lines = central.send(json::array({{{"toNode", name}, {"method", "ping"}}}), 10);
    for (const auto& l : lines) {
      if (l.value("type", "") == "reply" && l.value("data", "") == "pong")
        s.serve_ms = ms_since(t0);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "start of %s: %s\n", name.c_str(), e.what());
  }
  pid_t pid = n.pid();
  n.signal_stop();
  n.wait_stopped();
  untrack(pid);
  return s;
}

// Ansible ad-hoc over 100 aliases of localhost; the wall time in ms, or -1.
double ansible_round(const fs::path& root, const std::vector<std::string>& names, int* changed,
                     std::string* version) {
  std::string out;
  if (bosun::test::run_command({"ansible", "--version"}, &out) != 0) return -1;
  *version = out.substr(0, out.find('\n'));
  fs::path inv = root / "ansible-inventory.ini";
  {
    std::ofstream f(inv);
    f << "[fleet]\n";
    for (const auto& n : names) f << n << " ansible_host=127.0.0.1\n";
    f << "[fleet:vars]\nansible_python_interpreter=/usr/bin/python3\n";
  }
  fs::create_directories(root / "ansible-home");
  setenv("ANSIBLE_HOME", (root / "ansible-home").c_str(), 1);
  setenv("ANSIBLE_LOCAL_TEMP", (root / "ansible-home" / "tmp").c_str(), 1);
  setenv("ANSIBLE_NOCOLOR", "1", 1);
  setenv("ANSIBLE_HOST_KEY_CHECKING", "False", 1);
  // timeout(1) signals its whole process group: ansible's forks go too.
  auto t = Clock::now();
  int rc = bosun::test::run_command({"timeout", "-k", "5", "240", "ansible", "all", "-i",
                                     inv.string(), "-c", "local", "-m", "command", "-a", "true"},
                                    &out, true, "", 250s);
  double ms = ms_since(t);
  *changed = 0;
  std::istringstream in(out);
  for (std::string line; std::getline(in, line);) {
    if (line.find(" | CHANGED | rc=0") != std::string::npos) ++*changed;
  }
  if (rc != 0 || *changed != static_cast<int>(names.size())) {
    std::fprintf(stderr, "ansible: exit %d, %d of %zu hosts changed; output ends: %s\n", rc,
                 *changed, names.size(),
                 out.substr(out.size() > 600 ? out.size() - 600 : 0).c_str());
    return -1;
  }
  return ms;
}

int run() {
  bosun::test::NatsServer server;
  track(server.pid());
  bosun::test::TempDir root;
  std::vector<std::string> servers = {server.url()};
  std::vector<std::unique_ptr<bench::Node>> nodes;
  // Stops every node however run() ends.
  struct StopAll {
    std::vector<std::unique_ptr<bench::Node>>& nodes;
    ~StopAll() {
      bench::stop_all(nodes);
      for (auto& n : nodes) untrack(n->pid());
    }
  } stop_all{nodes};

  nodes.push_back(
      std::make_unique<bench::Node>("central", root.path(), servers, std::vector<std::string>{}));
  json ships = json::array();
  std::vector<std::string> names;
  for (int i = 1; i <= kShips; ++i) {
    char name[16];
    std::snprintf(name, sizeof name, "ship%03d", i);
    ships.push_back(name);
    names.push_back(name);
    nodes.push_back(
        std::make_unique<bench::Node>(name, root.path(), servers, std::vector<std::string>{"cli"}));
  }
  auto t0 = Clock::now();
  for (auto& n : nodes) {
    n->start();
    track(n->pid());
  }
  for (auto& n : nodes) n->wait_ready(60s);
  double all_up_ms = ms_since(t0);
  std::printf("%d ships + central up in %.0f ms (nats-server %s, under %s)\n", kShips, all_up_ms,
              server.url().c_str(), root.path().c_str());

  // Each node makes its RSA key (key exchange) at its first start, in the
  // background at idle priority: a one-off of the first start, not what an
  // idle or a serving node costs. Measure once all are made.
  auto keys_t0 = Clock::now();
  auto all_keys = [&] {
    for (auto& n : nodes) {
      if (!fs::exists(n->data_dir() / "keys" / "node.rsa.pem")) return false;
    }
    return true;
  };
  while (!all_keys() && Clock::now() - keys_t0 < 300s) std::this_thread::sleep_for(100ms);
  std::printf("RSA keys made by all %zu nodes %.0f ms later (%s)\n", nodes.size(),
              ms_since(keys_t0), all_keys() ? "all there" : "NOT all there after 300 s");

  bench::Node& central = *nodes[0];
  json ping = {{"toNodes", ships}, {"method", "ping"}};
  json cli = {{"toNodes", ships}, {"method", "cli_command"}, {"methodArgs", {"true"}}};
  int bad = 0;
  std::printf("warm-up rounds\n");
  bench::fan_out(central, ping, kShips, &bad);  // warm-up: subscriptions, connections, page cache
  bench::fan_out(central, cli, kShips, &bad);

  // Idle: after the warm-up, nothing running for a while.
  std::this_thread::sleep_for(2s);
  Samples rss, anon, file, pss;
  long threads = 0;
  for (size_t i = 1; i < nodes.size(); ++i) {
    Mem m = mem_of(nodes[i]->pid());
    if (m.rss < 0) continue;
    rss.v.push_back(static_cast<double>(m.rss));
    anon.v.push_back(static_cast<double>(m.anon));
    file.v.push_back(static_cast<double>(m.file));
    pss.v.push_back(static_cast<double>(m.pss));
    threads = std::max(threads, m.threads);
  }
  std::printf(
      "idle VmRSS per ship: median %.0f KiB, max %.0f (RssAnon median %.0f, RssFile median "
      "%.0f; %ld threads)\n",
      rss.pct(0.5), rss.pct(1), anon.pct(0.5), file.pct(0.5), threads);
  std::printf("idle Pss per ship (shared pages divided among the %zu processes): median %.0f KiB\n",
              nodes.size(), pss.pct(0.5));

  // The floor of that figure: the shared libraries a node needs (nats.c,
  // OpenSSL 3, the C++ runtime), connected and OpenSSL started, and nothing
  // of bosun's (floor_probe.cpp), measured the same way.
  long floor_rss = -1;
  {
    fs::path log = root.path() / "floor_probe.log";
    bosun::test::Process probe({FLOOR_PROBE, server.url()}, log);
    track(probe.pid());
    bosun::test::wait_until([&] {
      return !probe.running() || bosun::test::read_file(log).find("ready") != std::string::npos;
    });
    std::this_thread::sleep_for(2s);
    if (probe.running()) floor_rss = bench::status_kib(probe.pid(), "VmRSS");
    untrack(probe.pid());
  }
  std::printf(
      "floor: a process with only the shared libraries a node needs (nats.c connected, "
      "OpenSSL 3 started, libstdc++): VmRSS %ld KiB; a ship's own share above it: %.0f KiB\n",
      floor_rss, floor_rss > 0 ? rss.pct(0.5) - static_cast<double>(floor_rss) : -1.0);

  std::printf("%d rounds of each\n", kRounds);
  Samples ping_r, cli_r;
  for (int i = 0; i < kRounds; ++i) {
    double p = bench::fan_out(central, ping, kShips, &ping_r.failed);
    if (p >= 0) ping_r.v.push_back(p);
    double c = bench::fan_out(central, cli, kShips, &cli_r.failed);
    if (c >= 0) cli_r.v.push_back(c);
  }
  std::printf("ping to %d ships, all replies in: p50 %.1f ms, max %.1f (%d rounds, %d failed)\n",
              kShips, ping_r.pct(0.5), ping_r.pct(1), kRounds, ping_r.failed);
  std::printf(
      "cli_command true to %d ships, all replies in: p50 %.1f ms, max %.1f (%d rounds, %d "
      "failed)\n",
      kShips, cli_r.pct(0.5), cli_r.pct(1), kRounds, cli_r.failed);

  Samples ready, serve;
  for (int i = 0; i < kStarts; ++i) {
    Start s = time_start(root.path(), servers, central, i);
    if (s.ready_ms >= 0) ready.v.push_back(s.ready_ms);
    if (s.serve_ms >= 0) {
      serve.v.push_back(s.serve_ms);
    } else {
      ++serve.failed;
    }
  }
  std::printf(
      "start of one more node (with %d running): socket answers p50 %.1f ms; serves a ping "
      "from central p50 %.1f ms, max %.1f (%d starts, %d failed)\n",
      kShips + 1, ready.pct(0.5), serve.pct(0.5), serve.pct(1), kStarts, serve.failed);

  // Ansible with the fleet still up, as the same machine's load.
  int changed = 0;
  std::string ansible_version;
  double ansible_ms = ansible_round(root.path(), names, &changed, &ansible_version);
  if (ansible_ms >= 0) {
    std::printf(
        "ansible ad-hoc `command true` to %d aliases of localhost (-c local, %s): %.0f ms\n",
        kShips, ansible_version.c_str(), ansible_ms);
  } else if (ansible_version.empty()) {
    std::printf(
        "ansible: not installed (scripts/install-deps.sh installs ansible-core); skipped\n");
  } else {
    ++bad;
  }

  std::fflush(stdout);
  std::printf(
      "{\"bench\": \"fleet\", \"nodes\": %d, \"rounds\": %d, \"ping_p50_ms\": %.1f, "
      "\"ping_max_ms\": %.1f, \"cli_true_p50_ms\": %.1f, \"cli_true_max_ms\": %.1f, "
      "\"failed_rounds\": %d, \"idle_rss_median_kib\": %.0f, \"idle_rss_max_kib\": %.0f, "
      "\"idle_rss_anon_median_kib\": %.0f, \"idle_rss_file_median_kib\": %.0f, "
      "\"idle_pss_median_kib\": %.0f, \"floor_rss_kib\": %ld, \"threads\": %ld, "
      "\"start_ready_p50_ms\": %.1f, \"start_serve_p50_ms\": %.1f, \"start_serve_max_ms\": %.1f, "
      "\"all_up_ms\": %.0f, \"ansible_ms\": %.0f, \"ansible_to_bosun_cli\": %.1f}\n",
      kShips, kRounds, ping_r.pct(0.5), ping_r.pct(1), cli_r.pct(0.5), cli_r.pct(1),
      ping_r.failed + cli_r.failed, rss.pct(0.5), rss.pct(1), anon.pct(0.5), file.pct(0.5),
      pss.pct(0.5), floor_rss, threads, ready.pct(0.5), serve.pct(0.5), serve.pct(1), all_up_ms,
      ansible_ms, ansible_ms > 0 && cli_r.pct(0.5) > 0 ? ansible_ms / cli_r.pct(0.5) : -1.0);
  return ping_r.failed + cli_r.failed + serve.failed + bad == 0 ? 0 : 1;
}

}  // namespace

int main() {
  spdlog::set_level(spdlog::level::warn);
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // each line as it comes, also into a pipe
  struct sigaction sa {};
  sa.sa_handler = on_fatal_signal;
  sigemptyset(&sa.sa_mask);
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGALRM}) ::sigaction(sig, &sa, nullptr);
  // Bounded as a whole: a node that wedges ends the run (and every process).
  ::alarm(kMaxSeconds);
  try {
    return run();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fleet_bench: %s\n", e.what());
    return 1;
  }
}
