// core/beat (DESIGN §9): heartbeats at the configured interval, the node
// registry on the node that receives them (node_added, node_removed after
// missed beats, a node coming back), hello's checks, node_list and
// node_forget, settings validation; and over a real nats-server, a node's
// beats reaching the central node.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "cluster_harness.hpp"
#include "node_harness.hpp"

namespace bosun::test {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// The events a node emits, as they come.
class EventLog {
 public:
  struct Entry {
    std::string event;
    json payload;
    Clock::time_point at;
  };

  void attach(host::Node& node) {
    node.add_event_listener([this](const std::string& event, const json& body) {
      std::lock_guard<std::mutex> lock(mu_);
      entries_.push_back({event, body.value("payload", json::object()), Clock::now()});
    });
  }

  // Entries named `event` whose payload.node is `node` (any node when empty).
  std::vector<Entry> of(const std::string& event, const std::string& node = "") const {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<Entry> out;
    for (const auto& e : entries_) {
      if (e.event == event && (node.empty() || e.payload.value("node", "") == node)) {
        out.push_back(e);
      }
    }
    return out;
  }
  size_t count(const std::string& event, const std::string& node = "") const {
    return of(event, node).size();
  }

 private:
  mutable std::mutex mu_;
  std::vector<Entry> entries_;
};

json beat_settings(double interval = 0.2) {
  return {{"beatInterval", interval}, {"splay", 0}, {"missedBeats", 3}};
}

// A standalone node whose central is another node only emits its beats as
// events: its own registry stays for the test to fill.
json quiet_settings() {
  return {{"beatInterval", 30}, {"splay", 0}, {"central", "hq"}};
}

class BeatTest : public ::testing::Test {
 protected:
  BeatTest() : setup_("central") { setup_.add_plugin("beat"); }

  void start(json settings = beat_settings()) {
    setup_.extension("beat")["settings"] = std::move(settings);
    node_ = std::make_unique<RunningNode>(setup_.config());
    events_.attach(node());
  }
  host::Node& node() { return node_->node(); }

  // The final reply to one message sent from this node.
  host::Message call(const json& m) {
    auto out = submit_and_wait(node(), m, 10s);
    EXPECT_EQ(out.result.accepted.size(), 1u) << out.result.to_json().dump();
    const host::Message* r = out.final_reply();
    return r == nullptr ? host::Message{} : *r;
  }

  json node_list() {
    host::Message r = call({{"toNode", "central"}, {"method", "node_list"}});
    EXPECT_EQ(r.status, "ok") << r.error;
    json list = json::parse(r.data, nullptr, false);
    EXPECT_TRUE(list.is_array()) << r.data;
    return list.is_array() ? list : json::array();
  }

  // The registry entry of `name`, or null.
  json entry(const std::string& name) {
    for (const auto& e : node_list()) {
      if (e.value("node", "") == name) return e;
    }
    return nullptr;
  }

  // A beat from another node, as its beat module would send it.
  void hello_from(const std::string& from, json data) {
    json m = {{"toNode", "central"}, {"method", "hello"}, {"data", std::move(data)}};
    auto r = node().submit(m, nullptr, from);
    EXPECT_EQ(r.accepted.size(), 1u) << r.to_json().dump();
  }
  static json ship_beat(const std::string& name) {
    return {{"node", name},
            {"hostname", "host-" + name},
            {"pid", 4242},
            {"uptimeS", 1.5},
            {"status", "ok"},
            {"beatIntervalS", 0.2},
            {"plugins", {{"beat", "1.0.0"}}}};
  }

  host::Message hello_error(const json& data) {
    host::Message r = call({{"toNode", "central"}, {"method", "hello"}, {"data", data}});
    EXPECT_EQ(r.status, "error") << "data " << data.dump() << " was accepted";
    return r;
  }

  // Declared before the node so that it outlives the node's listeners.
  EventLog events_;
  NodeSetup setup_;
  std::unique_ptr<RunningNode> node_;
};

TEST_F(BeatTest, CentralBeatsToItselfAtTheInterval) {
  start();
  ASSERT_TRUE(wait_until([&] { return events_.count("beat") >= 6; }, 10s));
  auto beats = events_.of("beat");
  std::vector<long> gaps;
  for (size_t i = 1; i < beats.size(); ++i) {
    gaps.push_back(
        std::chrono::duration_cast<std::chrono::milliseconds>(beats[i].at - beats[i - 1].at)
            .count());
  }
  std::sort(gaps.begin(), gaps.end());
  long median = gaps[gaps.size() / 2];
  EXPECT_GE(median, 150);
  EXPECT_LE(median, 300);

  const json& p = beats.back().payload;
  EXPECT_EQ(p["node"], "central");
  EXPECT_EQ(p["pid"], static_cast<int64_t>(::getpid()));
  EXPECT_FALSE(p["hostname"].get<std::string>().empty());
  EXPECT_EQ(p["status"], "ok");
  EXPECT_EQ(p["beatIntervalS"], 0.2);
  EXPECT_EQ(p["plugins"], json({{"beat", "1.0.0"}})) << p.dump();
  EXPECT_GE(p["uptimeS"].get<double>(), 0.0);

  ASSERT_TRUE(wait_until([&] {
    json e = entry("central");
    return e.is_object() && e["beats"].get<int>() >= 3;
  }));
  json e = entry("central");
  EXPECT_EQ(e["status"], "ok");
  EXPECT_EQ(e["pid"], static_cast<int64_t>(::getpid()));
  EXPECT_EQ(e["plugins"], json({{"beat", "1.0.0"}}));
  EXPECT_LE(e["firstSeenMs"].get<int64_t>(), e["lastSeenMs"].get<int64_t>());
  EXPECT_GE(e["lastSeenAgoS"].get<double>(), 0.0);
  EXPECT_LT(e["lastSeenAgoS"].get<double>(), 1.0);

  ASSERT_EQ(events_.count("node_added", "central"), 1u);
  EXPECT_EQ(events_.of("node_added", "central")[0].payload,
            json({{"node", "central"}, {"hostname", p["hostname"]}}));
  EXPECT_EQ(events_.count("node_removed"), 0u);
}

TEST_F(BeatTest, NodeAddedRemovedAfterMissedBeatsAndBack) {
  start();
  // When the last beat was sent: central sees it a little later, so the
  // time to its removal is measured from no later than central's own view.
  Clock::time_point last_beat;
  for (int i = 0; i < 3; ++i) {
    if (i > 0) std::this_thread::sleep_for(100ms);
    last_beat = Clock::now();
    hello_from("ship9", ship_beat("ship9"));
  }
  ASSERT_TRUE(wait_until([&] {
    json e = entry("ship9");
    return e.is_object() && e["beats"] == 3;
  }));
  json e = entry("ship9");
  EXPECT_EQ(e["status"], "ok");
  EXPECT_EQ(e["hostname"], "host-ship9");
  EXPECT_EQ(e["pid"], 4242);
  EXPECT_EQ(e["uptimeS"], 1.5);
  EXPECT_EQ(e["plugins"], json({{"beat", "1.0.0"}}));
  ASSERT_EQ(events_.count("node_added", "ship9"), 1u);
  EXPECT_EQ(events_.of("node_added", "ship9")[0].payload,
            json({{"node", "ship9"}, {"hostname", "host-ship9"}}));

  // ship9 goes quiet: 3 missed beats of 0.2 s.
  ASSERT_TRUE(wait_until([&] { return events_.count("node_removed", "ship9") >= 1; }, 5s));
  auto removed_after = std::chrono::duration_cast<std::chrono::milliseconds>(
      events_.of("node_removed", "ship9")[0].at - last_beat);
  EXPECT_GE(removed_after.count(), 500) << "removed before missing 3 beats";
  json removed = events_.of("node_removed", "ship9")[0].payload;
  EXPECT_EQ(removed["lastSeenMs"], e["lastSeenMs"]);
  EXPECT_GE(removed["missedBeats"].get<int>(), 3);

  std::this_thread::sleep_for(700ms);
  EXPECT_EQ(events_.count("node_removed", "ship9"), 1u) << "node_removed is emitted once";
  EXPECT_EQ(events_.count("node_removed", "central"), 0u) << "central keeps beating";
  e = entry("ship9");
  EXPECT_EQ(e["status"], "removed") << e.dump();
  EXPECT_EQ(entry("central")["status"], "ok");

  // It comes back.
  hello_from("ship9", ship_beat("ship9"));
  ASSERT_TRUE(wait_until([&] { return events_.count("node_added", "ship9") == 2; }, 5s));
  e = entry("ship9");
  EXPECT_EQ(e["status"], "ok");
  EXPECT_EQ(e["beats"], 4);
  EXPECT_FALSE(e.contains("removedMs")) << e.dump();
}

TEST_F(BeatTest, HelloRefusesBadData) {
  start(quiet_settings());
  EXPECT_EQ(hello_error("not json").error, "hello: data must be a JSON object, got: not json");
  EXPECT_EQ(hello_error(json::array({1})).error, "hello: data must be a JSON object, got: [1]");
  EXPECT_EQ(hello_error("").error, "hello: data must be a JSON object, got: (empty)");
  EXPECT_EQ(hello_error("a\x01\nb").error, "hello: data must be a JSON object, got: a??b");
  EXPECT_EQ(hello_error(json::object()).error, "hello: data has no \"node\"");
  EXPECT_EQ(hello_error({{"hostname", "h"}}).error, "hello: data has no \"node\"");
  EXPECT_EQ(hello_error({{"node", 5}}).error, "hello: data.node must be a node name, got 5");
  EXPECT_EQ(hello_error({{"node", "a b"}}).error,
            "hello: data.node must be a node name, got \"a b\"");
  EXPECT_EQ(hello_error({{"node", "ship9"}}).error,
            "hello: data.node \"ship9\" does not match the sender \"central\"");
  EXPECT_EQ(hello_error({{"node", "central"}, {"pid", "x"}}).error,
            "hello: data.pid must be an integer, got string");
  EXPECT_EQ(hello_error({{"node", "central"}, {"plugins", json::array()}}).error,
            "hello: data.plugins must be an object (name -> version), got array");
  EXPECT_EQ(hello_error({{"node", "central"}, {"beatIntervalS", 0}}).error,
            "hello: data.beatIntervalS must be > 0, got 0");
  EXPECT_TRUE(node_list().empty()) << "nothing was recorded: " << node_list().dump();
  EXPECT_EQ(events_.count("node_added"), 0u);

  // A good one from itself is recorded, and the reply carries no data.
  host::Message ok = call({{"toNode", "central"},
                           {"method", "hello"},
                           {"data", {{"node", "central"}, {"status", "ok"}}}});
  EXPECT_EQ(ok.status, "ok") << ok.error;
  EXPECT_EQ(ok.data, "");
  EXPECT_EQ(entry("central")["beats"], 1);
}

TEST_F(BeatTest, NodeForget) {
  start(quiet_settings());
  ASSERT_TRUE(wait_until([&] { return events_.count("beat", "central") == 1; }));
  hello_from("ship9", ship_beat("ship9"));
  hello_from("ship8", ship_beat("ship8"));
  ASSERT_TRUE(wait_until([&] { return node_list().size() == 2; }));
  json names = json::array();
  for (const auto& e : node_list()) names.push_back(e["node"]);
  EXPECT_EQ(names, json({"ship8", "ship9"})) << "sorted by name";

  host::Message r =
      call({{"toNode", "central"}, {"method", "node_forget"}, {"methodArgs", {"ship9"}}});
  EXPECT_EQ(r.status, "ok") << r.error;
  EXPECT_EQ(json::parse(r.data), json({{"forgotten", "ship9"}}));
  EXPECT_TRUE(entry("ship9").is_null());
  EXPECT_FALSE(entry("ship8").is_null());

  r = call({{"toNode", "central"}, {"method", "node_forget"}, {"methodArgs", {"ship9"}}});
  EXPECT_EQ(r.error, "node_forget: unknown node \"ship9\"");
  r = call({{"toNode", "central"}, {"method", "node_forget"}});
  EXPECT_EQ(r.error, "node_forget: methodArgs must be [node]");

  // A forgotten node that beats again is a new node.
  hello_from("ship9", ship_beat("ship9"));
  ASSERT_TRUE(wait_until([&] { return events_.count("node_added", "ship9") == 2; }));
  EXPECT_EQ(entry("ship9")["beats"], 1);
}

TEST_F(BeatTest, RegistryOutlivesARestart) {
  start(beat_settings(0.2));
  hello_from("ship9", ship_beat("ship9"));
  ASSERT_TRUE(wait_until([&] { return !entry("ship9").is_null(); }));
  node_->stop();
  node_.reset();
  std::this_thread::sleep_for(700ms);  // longer than ship9's 3 missed beats

  start(beat_settings(0.2));
  json e = entry("ship9");
  ASSERT_TRUE(e.is_object());
  EXPECT_EQ(e["status"], "ok") << "a restarted central gives nodes a full window first";
  EXPECT_EQ(e["beats"], 1);
  // Then the window passes without a beat from ship9.
  ASSERT_TRUE(wait_until([&] { return events_.count("node_removed", "ship9") == 1; }, 5s));
}

struct BadSettings {
  json settings;
  std::string reason;
};

TEST(BeatSettings, RefusesBadSettings) {
  const std::vector<BadSettings> cases = {
      {{{"beatInterval", 1}, {"bogus", 1}},
       "beat settings: unknown key \"bogus\" (known: beatInterval, splay, missedBeats, "
       "ackTimeout, central)"},
      {{{"beatInterval", 0}},
       "beat settings: \"beatInterval\" must be a number > 0 and <= 604800, not 0"},
      {{{"beatInterval", "10"}},
       "beat settings: \"beatInterval\" must be a number > 0 and <= 604800, not \"10\""},
      {{{"splay", 1.5}}, "beat settings: \"splay\" must be a number >= 0 and <= 1, not 1.5"},
      {{{"missedBeats", 0}},
       "beat settings: \"missedBeats\" must be an integer from 1 to 1000, not 0"},
      {{{"ackTimeout", -1}},
       "beat settings: \"ackTimeout\" must be a number >= 0 and <= 604800, not -1"},
      {{{"central", "a.b"}},
       "beat settings: \"central\" must be a node name (letters, digits, '_' and '-'), not "
       "\"a.b\""},
  };
  for (const auto& c : cases) {
    NodeSetup setup("central");
    setup.add_plugin("beat");
    setup.extension("beat")["settings"] = c.settings;
    RunningNode node(setup.config());
    auto plugins = node->plugins();
    auto it = std::find_if(plugins.begin(), plugins.end(),
                           [](const host::PluginInfo& p) { return p.name == "beat"; });
    ASSERT_NE(it, plugins.end());
    EXPECT_EQ(it->state, host::PluginState::failed) << c.settings.dump();
    EXPECT_EQ(it->reason, "init failed (BOSUN_ERR_INIT_FAILED): " + c.reason);
  }
}

// Over a real nats-server: ship1's beats reach central, and central declares
// ship1 removed once it is killed.
TEST(BeatCluster, ShipBeatsReachCentral) {
  ClusterHarness cluster;
  json settings = {{"beatInterval", 0.2}, {"splay", 0.5}, {"missedBeats", 3}};
  for (const char* name : {"central", "ship1"}) {
    ClusterNode& n = cluster.add_node(name);
    n.add_module(plugin_module("beat"));
    n.config()["extensions"]["beat"]["settings"] = settings;
    n.start();
  }
  ClusterNode& central = cluster.node("central");
  auto registry = [&]() {
    auto finals = final_replies(
        central.send(json::array({{{"toNode", "central"}, {"method", "node_list"}}})));
    if (finals.size() != 1) return json::array();
    json list = json::parse(finals[0].value("data", ""), nullptr, false);
    return list.is_array() ? list : json::array();
  };
  auto ship1 = [&]() {
    for (const auto& e : registry()) {
      if (e.value("node", "") == "ship1") return e;
    }
    return json();
  };

  ASSERT_TRUE(wait_until(
      [&] {
        json e = ship1();
        return e.is_object() && e["beats"].get<int>() >= 3;
      },
      20s, 100ms))
      << registry().dump();
  json e = ship1();
  EXPECT_EQ(e["status"], "ok");
  EXPECT_EQ(e["plugins"]["beat"], "1.0.0");
  EXPECT_EQ(e["plugins"]["sinks"], "1.0.0");
  EXPECT_GT(e["pid"].get<int64_t>(), 0);
  EXPECT_NE(e["pid"].get<int64_t>(), static_cast<int64_t>(::getpid())) << "its own process";

  cluster.node("ship1").kill9();
  ASSERT_TRUE(wait_until([&] { return ship1().value("status", "") == "removed"; }, 10s, 100ms))
      << registry().dump();
  json central_entry;
  for (const auto& x : registry()) {
    if (x.value("node", "") == "central") central_entry = x;
  }
  EXPECT_EQ(central_entry.value("status", ""), "ok") << registry().dump();
}

}  // namespace
}  // namespace bosun::test
