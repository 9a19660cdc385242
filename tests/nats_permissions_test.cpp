// The NATS permissions example of docs/operating.md, taken from the document
// itself, in a real nats-server: the nodes work under it, and a ship cannot
// read another node's requests or ACKs, nor call a node other than central.
#include <gtest/gtest.h>

#include <atomic>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <string>

#include "bosun/host/transport.hpp"
#include "cluster_harness.hpp"
#include "test_util.hpp"

namespace {

using namespace std::chrono_literals;
using bosun::test::ClusterHarness;
using bosun::test::ClusterNode;
using bosun::test::final_replies;
using bosun::test::NatsServer;
using bosun::test::read_file;
using nlohmann::json;
namespace host = bosun::host;

// The first fenced block after the "## NATS permissions" heading.
std::string documented_block() {
  std::string doc = read_file(std::filesystem::path(BOSUN_SOURCE_DIR) / "docs" / "operating.md");
  size_t at = doc.find("## NATS permissions");
  if (at == std::string::npos) return {};
  size_t open = doc.find("```\n", at);
  size_t close = doc.find("```\n", open + 4);
  if (open == std::string::npos || close == std::string::npos) return {};
  std::string block = doc.substr(open + 4, close - open - 4);
  block = std::regex_replace(block, std::regex("\\$CENTRAL_PASSWORD"), "central-secret");
  return std::regex_replace(block, std::regex("\\$SHIP1_PASSWORD"), "ship1-secret");
}

host::Transport as_user(const std::string& url, const std::string& user,
                        const std::string& password) {
  host::BrokerConfig c;
  c.servers = {url};
  c.user = user;
  c.password = password;
  c.connect_timeout_ms = 2000;
  return host::Transport(c, user);
}

TEST(NatsPermissions, TheDocumentedExampleConfinesEachNodeToItsOwnSubjects) {
  std::string block = documented_block();
  ASSERT_NE(block.find("authorization"), std::string::npos) << "no example in operating.md";
  NatsServer nats(block);
  ClusterHarness h({nats.url()});
  ClusterNode& central = h.add_node("central");
  ClusterNode& ship1 = h.add_node("ship1");
  central.config()["broker"]["user"] = "central";
  central.config()["broker"]["password"] = "central-secret";
  ship1.config()["broker"]["user"] = "ship1";
  ship1.config()["broker"]["password"] = "ship1-secret";
  central.start();
  ship1.start();

  // Requests, ACKs both ways, replies: all work under the permissions.
  auto finals = final_replies(central.send(
      json::array({{{"toNode", "ship1"}, {"method", "ping"}, {"ACKTimeout", 1}, {"retries", 5}}})));
  ASSERT_EQ(finals.size(), 1u);
  EXPECT_EQ(finals[0]["data"], "pong");
  EXPECT_EQ(central.counter("retried"), 0u) << "an ACK did not get through";

  // A second connection with ship1's credentials tries what it may not.
  host::Transport spy = as_user(nats.url(), "ship1", "ship1-secret");
  spy.connect(false);
  std::atomic<int> seen{0};
  spy.subscribe("bosun.req.central.>", [&](host::Incoming&&) { ++seen; });
  spy.subscribe("_INBOX.central.>", [&](host::Incoming&&) { ++seen; });
  host::Transport boss = as_user(nats.url(), "central", "central-secret");
  boss.connect(false);
  std::atomic<int> got{0};
  boss.subscribe("bosun.req.central.probe", [&](host::Incoming&&) { ++got; });
  ASSERT_TRUE(boss.flush(2s));
  // Control: what ship1 may do arrives.
  ASSERT_TRUE(spy.publish("bosun.req.central.probe", "allowed"));
  ASSERT_TRUE(spy.flush(2s));
  ASSERT_TRUE(bosun::test::wait_until([&] { return got.load() == 1; }, 5s));
  // ... and what it may not, does not.
  spy.publish("bosun.req.ship2.ping", "not allowed");
  boss.publish("bosun.req.central.other", "for central only");
  spy.flush(2s);
  boss.flush(2s);
  // The same traffic again after a round trip: anything delivered is in.
  central.send(json::array({{{"toNode", "ship1"}, {"method", "ping"}}}));
  EXPECT_EQ(seen.load(), 0) << "ship1's credentials read central's requests or ACKs";
  for (const std::string v :
       {"Subscription Violation - User \"ship1\", Subject \"bosun.req.central.>\"",
        "Subscription Violation - User \"ship1\", Subject \"_INBOX.central.>\"",
        "Publish Violation - User \"ship1\", Subject \"bosun.req.ship2.ping\""}) {
    EXPECT_TRUE(
        bosun::test::wait_until([&] { return nats.log().find(v) != std::string::npos; }, 5s))
        << "nats-server did not refuse: " << v << "\n"
        << nats.log();
  }
}

}  // namespace
