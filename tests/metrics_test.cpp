// Prometheus metrics on metrics.listen (DESIGN §10): real `bosun run` nodes
// over a real nats-server, scraped with a plain HTTP GET /metrics.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <bosun/host/message.hpp>
#include <bosun/host/transport.hpp>

#include <fstream>
#include <set>
#include <sstream>

#include "cluster_harness.hpp"
#include "node_harness.hpp"

namespace bosun::test {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// GET /metrics from 127.0.0.1:port; the body, or "" when nothing answered.
std::string scrape(int port) {
  return http_get(port, "/metrics");
}

// The value of the sample `series` (name and labels as exposed, e.g.
// `bosun_x_total{method="ping",peer="a"}`), or -1 when it is not there.
double sample(const std::string& text, const std::string& series) {
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.size() > series.size() && line.compare(0, series.size(), series) == 0 &&
        line[series.size()] == ' ') {
      return std::stod(line.substr(series.size() + 1));
    }
  }
  return -1;
}

// Waits until the sample reaches `want`; returns the last value seen.
double wait_sample(int port, const std::string& series, double want) {
  double v = -1;
  wait_until(
      [&] {
        v = sample(scrape(port), series);
        return v == want;
      },
      10s, 50ms);
  return v;
}

// The TCP ports process `pid` listens on (its socket fds matched against
// /proc/net/tcp and tcp6 entries in state LISTEN).
std::set<int> listening_ports(pid_t pid) {
  std::set<std::string> inodes;
  fs::path fd_dir = fs::path("/proc") / std::to_string(pid) / "fd";
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(fd_dir, ec)) {
    std::error_code ec2;
    std::string target = fs::read_symlink(e.path(), ec2).string();
    if (!ec2 && target.rfind("socket:[", 0) == 0) {
      inodes.insert(target.substr(8, target.size() - 9));
    }
  }
  std::set<int> ports;
  for (const char* table : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    std::ifstream in(table);
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) {
      std::istringstream f(line);
      std::string sl, local, remote, state, queues, timer, retr, uid, timeout, inode;
      f >> sl >> local >> remote >> state >> queues >> timer >> retr >> uid >> timeout >> inode;
      if (state != "0A" || !inodes.count(inode)) continue;
      ports.insert(std::stoi(local.substr(local.rfind(':') + 1), nullptr, 16));
    }
  }
  return ports;
}

host::Transport raw_connection(const std::vector<std::string>& servers) {
  host::BrokerConfig c;
  c.servers = servers;
  c.connect_timeout_ms = 2000;
  return host::Transport(c, "intruder");
}

json ping(const std::string& to) {
  return {{"toNode", to}, {"method", "ping"}};
}

TEST(Metrics, CountsMessagesByMethodAndPeerHandlersPluginsAndRefusals) {
  ClusterHarness h;
  ClusterNode& central = h.add_node("central");
  ClusterNode& ship1 = h.add_node("ship1");
  const int central_port = free_port();
  central.config()["metrics"]["listen"] = "127.0.0.1:" + std::to_string(central_port);
  const int ship_port = free_port();
  ship1.config()["metrics"]["listen"] = "127.0.0.1:" + std::to_string(ship_port);
  central.start();
  ship1.start();

  constexpr int kPings = 3;
  for (int i = 0; i < kPings; ++i) {
    auto finals = final_replies(central.send(json::array({ping("ship1")})));
    ASSERT_EQ(finals.size(), 1u);
    ASSERT_EQ(finals[0]["data"], "pong");
  }

  // The sender: requests out and ACKed, replies in.
  EXPECT_EQ(wait_sample(central_port, R"(bosun_messages_acked_total{method="ping",peer="ship1"})",
                        kPings),
            kPings);
  std::string c = scrape(central_port);
  ASSERT_FALSE(c.empty()) << "no answer on 127.0.0.1:" << central_port;
  EXPECT_EQ(sample(c, R"(bosun_messages_sent_total{method="ping",peer="ship1"})"), kPings) << c;
  EXPECT_EQ(sample(c, R"(bosun_messages_received_total{method="none",peer="ship1"})"), kPings) << c;
  EXPECT_EQ(sample(c, R"(bosun_messages_failed_total{method="ping",peer="ship1"})"), 0) << c;
  EXPECT_EQ(sample(c, "bosun_outbox_depth"), 0) << c;

  // The receiver: requests in, handled, replies out (a ping's reply asks
  // for no ACK: a lost one means a resent ping, answered with it again).
  EXPECT_EQ(
      wait_sample(ship_port, R"(bosun_messages_sent_total{method="none",peer="central"})", kPings),
      kPings);
  std::string s = scrape(ship_port);
  EXPECT_LE(sample(s, R"(bosun_messages_acked_total{method="none",peer="central"})"), 0) << s;
  // Every copy taken from the bus counts: a ping central resent after an ACK
  // timeout (a loaded machine) is received twice.
  const double retried =
      sample(scrape(central_port), R"(bosun_messages_retried_total{method="ping",peer="ship1"})");
  const double resent = retried > 0 ? retried : 0;  // -1: no series, none resent
  EXPECT_EQ(sample(s, R"(bosun_messages_received_total{method="ping",peer="central"})"),
            kPings + resent)
      << s;
  EXPECT_EQ(sample(s, R"(bosun_messages_sent_total{method="none",peer="central"})"), kPings) << s;
  EXPECT_EQ(sample(s, R"(bosun_handler_duration_seconds_count{method="ping"})"), kPings) << s;
  EXPECT_EQ(sample(s, R"(bosun_handler_duration_seconds_bucket{method="ping",le="+Inf"})"), kPings)
      << s;
  EXPECT_EQ(sample(s, "bosun_inflight_calls"), 0) << s;
  EXPECT_EQ(sample(s, "bosun_reconnects_total"), 0) << s;

  // Every loaded plugin, with its version and state.
  std::string version;
  auto lines = socket_request(ship1.socket(), {{"op", "plugins"}});
  for (const auto& line : lines_of_type(lines, "plugins")) {
    for (const auto& p : line["plugins"]) {
      if (p.value("name", "") == "sinks") version = p.value("version", "");
    }
  }
  ASSERT_FALSE(version.empty()) << json(lines).dump();
  EXPECT_EQ(
      sample(s, R"(bosun_plugin_info{plugin="sinks",state="active",version=")" + version + R"("})"),
      1)
      << s;

  // Garbage on ship1's request subject: refused, by reason.
  host::Transport bus = raw_connection(h.servers());
  bus.connect(false);
  // Signed as central signs, so that each reaches the check it is about.
  const std::string subject = "bosun.req.ship1.ping";
  for (int i = 0; i < 2; ++i) {
    auto answer = bus.request(subject, sealed_by(central, subject, "\x01 not json {"), 5s);
    ASSERT_TRUE(answer.has_value());
    EXPECT_EQ(envelope_body(*answer).rfind("NAK ", 0), 0u) << *answer;
  }
  host::Message other;
  other.id = host::new_message_id();
  other.from_node = "central";
  other.to_node = "ship2";
  other.method = "ping";
  auto answer = bus.request(subject, sealed_by(central, subject, host::to_json(other).dump()), 5s);
  ASSERT_TRUE(answer.has_value());
  answer = bus.request(subject, "unsigned", 5s);
  ASSERT_TRUE(answer.has_value());
  s = scrape(ship_port);
  EXPECT_EQ(sample(s, R"(bosun_messages_refused_total{reason="bad_json"})"), 2) << s;
  EXPECT_EQ(sample(s, R"(bosun_messages_refused_total{reason="wrong_node"})"), 1) << s;
  EXPECT_EQ(sample(s, R"(bosun_messages_refused_total{reason="bad_envelope"})"), 1) << s;
  EXPECT_EQ(sample(s, R"(bosun_messages_refused_total{reason="not_allowed"})"), 0) << s;
  // Refused messages are no method's traffic.
  EXPECT_EQ(sample(s, R"(bosun_messages_received_total{method="ping",peer="central"})"),
            kPings + resent)
      << s;
}

TEST(Metrics, OffOpensNoPortAndOnOpensExactlyItsOwn) {
  ClusterHarness h;
  ClusterNode& off = h.add_node("central");
  ClusterNode& on = h.add_node("ship1");
  const int port = free_port();
  on.config()["metrics"]["listen"] = "127.0.0.1:" + std::to_string(port);
  off.start();
  on.start();
  EXPECT_EQ(listening_ports(off.pid()), std::set<int>{});
  EXPECT_EQ(listening_ports(on.pid()), std::set<int>{port});
  EXPECT_FALSE(scrape(port).empty());
}

TEST(Metrics, AnAddressInUseIsAStartupErrorNamingTheKey) {
  // Hold a port: listening on it, so nobody else can.
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(::listen(fd, 1), 0);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  const int port = ntohs(addr.sin_port);

  NodeSetup setup;
  setup.doc()["metrics"]["listen"] = "127.0.0.1:" + std::to_string(port);
  std::string error;
  try {
    RunningNode node(setup.config());
  } catch (const std::exception& e) {
    error = e.what();
  }
  ::close(fd);
  EXPECT_NE(error.find("metrics.listen"), std::string::npos) << error;
  EXPECT_NE(error.find("127.0.0.1:" + std::to_string(port)), std::string::npos) << error;
}

// A node told to serve metrics without its metrics module does not start,
// and says which file it looked for.
TEST(Metrics, AMissingMetricsModuleIsAStartupErrorNamingTheFile) {
  NodeSetup setup;
  setup.doc()["metrics"]["listen"] = "127.0.0.1:" + std::to_string(free_port());
  const fs::path missing = setup.root() / "nowhere" / "bosun-metrics.so";
  fs::path config = setup.write_config();
  std::string out;
  int rc = run_command({"env", "BOSUN_METRICS_MODULE=" + missing.string(), BOSUN_BIN, "run",
                        "--config", config.string()},
                       &out, true, "", std::chrono::seconds(30));
  EXPECT_NE(rc, 0) << out;
  EXPECT_NE(out.find("metrics module cannot be loaded from " + missing.string()), std::string::npos)
      << out;
}

}  // namespace
}  // namespace bosun::test
