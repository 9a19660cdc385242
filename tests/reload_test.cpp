// Reloading the config of a running node (DESIGN §6, §8, §10): modules
// switched off and on, settings reaching on_settings, a bad config refused
// whole, live fields applied and the rest reported as needing a restart;
// reloads racing calls in flight and an update; SIGHUP to a real `bosun run`
// on a real nats-server, and `bosun reload`.
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "cluster_harness.hpp"
#include "node_harness.hpp"

namespace bosun::host {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace std::chrono_literals;
using test::NodeSetup;
using test::RunningNode;

const fs::path kHello100 = BOSUN_HELLO_1_0_0;
const fs::path kHello110 = BOSUN_HELLO_1_1_0;

json msg(const std::string& method, json args = json::array(), json extra = json::object()) {
  json m = {{"toNode", "n1"}, {"method", method}, {"methodArgs", std::move(args)}};
  m.update(extra);
  return m;
}

const std::string kHelloDisabled =
    "unknown method \"greet\" on node n1: plugin hello, which provides it, is disabled: "
    "disabled in the config ($.extensions.hello.enabled)";

// Collects the config_reloaded events a node emits.
struct ReloadEvents : test::EventPayloads {
  explicit ReloadEvents(Node& node) : EventPayloads(node, "config_reloaded") {}
};

class ReloadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(fs::exists(kHello100) && fs::exists(kHello110))
        << "the hello builds are missing: run `ctest -R hello_build` once";
    setup_.add_module(kHello100, "hello.so");
    setup_.add_fixture("fx_settings");
  }
  void TearDown() override {
    if (node_) node_->stop();
  }

  // In process, from the config file (a reload re-reads it).
  RunningNode& start() {
    node_ = std::make_unique<RunningNode>(load_config(setup_.write_config()));
    return *node_;
  }
  Node& node() { return node_->node(); }

  // Writes setup_'s config and reloads it.
  json reload() {
    setup_.write_config();
    return node().reload();
  }

  Message call(const json& m, std::chrono::milliseconds timeout = 30s) {
    auto out = test::submit_and_wait(node(), m, timeout);
    EXPECT_EQ(out.result.accepted.size(), 1u) << out.result.to_json().dump();
    const Message* r = out.final_reply();
    return r ? *r : Message{};
  }

  // The error submit gives for `m`, or "" when it was accepted.
  std::string rejection(const json& m) {
    auto r = node().submit(m);
    return r.errors.empty() ? "" : r.errors[0].error;
  }

  PluginInfo plugin(const std::string& name) {
    for (const auto& p : node().plugins()) {
      if (p.name == name) return p;
    }
    return {};
  }

  json held_settings() { return json::parse(call(msg("settings")).data, nullptr, false); }

  // Waits until `n` calls run on the node.
  bool calls_running(size_t n) {
    return test::wait_until([&] { return node().running_calls().size() >= n; }, 10s, 2ms);
  }

  NodeSetup setup_;
  std::unique_ptr<RunningNode> node_;
};

TEST_F(ReloadTest, DisablingAndEnablingAModule) {
  start();
  ReloadEvents events(node());
  EXPECT_EQ(call(msg("greet")).data, "hello from n1 (hello 1.0.0)");

  setup_.extension("hello")["enabled"] = false;
  json r = reload();
  EXPECT_EQ(r["status"], "reloaded") << r.dump();
  EXPECT_EQ(r["node"], "n1");
  EXPECT_EQ(r["file"], (setup_.root() / "bosun.json").string());
  EXPECT_EQ(r["unloaded"],
            json::parse(R"([{"plugin":"hello","version":"1.0.0","drain":"drained"}])"));
  EXPECT_EQ(r["loaded"], json::array());
  EXPECT_EQ(r["failed"], json::array());
  EXPECT_EQ(r["needsRestart"], json::array());

  // A call to the disabled module gets a clear error, at submit and at dispatch.
  EXPECT_EQ(rejection(msg("greet")), "message 0: " + kHelloDisabled);
  EXPECT_EQ(plugin("hello").state, PluginState::disabled);
  EXPECT_EQ(plugin("hello").version, "1.0.0");
  EXPECT_EQ(node().config().extension("hello").enabled, false);

  json same = reload();
  EXPECT_EQ(same["status"], "unchanged") << same.dump();

  // On again; a module dropped into plugins.dir meanwhile is loaded too.
  setup_.extension("hello")["enabled"] = true;
  setup_.add_fixture("fx_c_echo");
  json on = reload();
  EXPECT_EQ(on["status"], "reloaded") << on.dump();
  EXPECT_EQ(on["loaded"], json::parse(R"([{"plugin":"fx_c_echo","version":"1.0.0"},
                                          {"plugin":"hello","version":"1.0.0"}])"));
  EXPECT_EQ(call(msg("greet")).data, "hello from n1 (hello 1.0.0)");
  EXPECT_EQ(plugin("hello").state, PluginState::active);
  EXPECT_EQ(plugin("fx_c_echo").state, PluginState::active);

  auto seen = events.payloads();
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_EQ(seen[0], r) << "the event carries the same outcome as the reply";
  EXPECT_EQ(seen[1]["status"], "unchanged");
  EXPECT_EQ(seen[2], on);
}

TEST_F(ReloadTest, CallsInFlightFinishOnTheModuleBeingDisabled) {
  start();
  auto waiter = std::make_shared<test::CollectingWaiter>();
  for (int i = 0; i < 4; ++i) {
    auto r = node().submit(msg("greet_slow", {"400"}), waiter);
    ASSERT_EQ(r.accepted.size(), 1u) << r.to_json().dump();
  }
  ASSERT_TRUE(calls_running(4));
  setup_.extension("hello")["enabled"] = false;
  json r = reload();
  EXPECT_EQ(r["unloaded"][0].value("drain", ""), "drained") << r.dump();
  ASSERT_TRUE(waiter->wait_finals(4, 10s));
  for (const auto& reply : waiter->replies()) {
    EXPECT_EQ(reply.status, "ok") << reply.error;
    EXPECT_EQ(reply.data, "hello from n1 (hello 1.0.0)");
  }
  EXPECT_EQ(rejection(msg("greet_slow", {"1"})),
            "message 0: unknown method \"greet_slow\" on node n1: plugin hello, which provides "
            "it, is disabled: disabled in the config ($.extensions.hello.enabled)");
}

TEST_F(ReloadTest, CallsThatOutlastTheDrainAreCancelledWithTheReason) {
  setup_.doc()["host"]["drainTimeout"] = 200;
  start();
  auto waiter = std::make_shared<test::CollectingWaiter>();
  auto sent = node().submit(msg("greet_slow", {"20000"}, {{"methodTimeout", 60}}), waiter);
  ASSERT_EQ(sent.accepted.size(), 1u);
  ASSERT_TRUE(calls_running(1));
  setup_.extension("hello")["enabled"] = false;
  auto t0 = std::chrono::steady_clock::now();
  json r = reload();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
  EXPECT_EQ(r["unloaded"][0].value("drain", ""), "1 call(s) cancelled after host.drainTimeout")
      << r.dump();
  ASSERT_TRUE(waiter->wait_finals(1, 10s));
  auto replies = waiter->replies();
  EXPECT_EQ(replies.back().status, "error");
  EXPECT_EQ(replies.back().error,
            "greet_slow: cancelled (module hello 1.0.0 was disabled by a config reload, and the "
            "call outlasted host.drainTimeout)");
}

TEST_F(ReloadTest, NoCallLostWhileAModuleIsSwitchedOffAndOn) {
  start();
  auto waiter = std::make_shared<test::CollectingWaiter>();
  std::atomic<bool> done{false};
  std::mutex mu;
  std::vector<std::string> accepted, bad_rejections;
  int rejected = 0;
  std::vector<std::thread> threads;
  auto deadline = std::chrono::steady_clock::now() + 60s;
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 2000 && !done && std::chrono::steady_clock::now() < deadline; ++i) {
        auto r = node().submit(msg("greet_slow", {"5"}), waiter);
        std::lock_guard<std::mutex> lock(mu);
        for (const auto& a : r.accepted) accepted.push_back(a.id);
        for (const auto& e : r.errors) {
          ++rejected;
          if (e.error.find("plugin hello, which provides it, is disabled") == std::string::npos) {
            bad_rejections.push_back(e.error);
          }
        }
        std::this_thread::sleep_for(1ms);
      }
    });
  }
  std::vector<json> outcomes;
  for (int i = 0; i < 8; ++i) {
    std::this_thread::sleep_for(30ms);
    setup_.extension("hello")["enabled"] = i % 2 == 1;
    outcomes.push_back(reload());
  }
  done = true;
  for (auto& t : threads) t.join();
  for (const auto& o : outcomes) {
    EXPECT_EQ(o["status"], "reloaded") << o.dump();
    EXPECT_EQ(o["failed"], json::array()) << o.dump();
  }
  EXPECT_TRUE(bad_rejections.empty()) << bad_rejections.front();
  ASSERT_TRUE(waiter->wait_finals(accepted.size(), 30s)) << "replies lost across the reloads";
  std::map<std::string, int> finals;
  int ok = 0, refused = 0;
  for (const auto& r : waiter->replies()) {
    if (!r.final_reply) continue;
    ++finals[r.in_reply_to];
    if (r.status == "ok") {
      EXPECT_EQ(r.data, "hello from n1 (hello 1.0.0)");
      ++ok;
    } else {
      // Accepted just before the switch, dispatched just after it.
      EXPECT_EQ(r.error,
                "unknown method \"greet_slow\" on node n1: plugin hello, which provides it, is "
                "disabled: disabled in the config ($.extensions.hello.enabled)");
      ++refused;
    }
  }
  EXPECT_EQ(finals.size(), accepted.size());
  for (const auto& id : accepted) EXPECT_EQ(finals[id], 1) << id;
  EXPECT_GT(ok, 0);
  EXPECT_GT(rejected + refused, 0) << "no call ever met the module switched off";
  EXPECT_EQ(call(msg("greet")).data, "hello from n1 (hello 1.0.0)");
}

TEST_F(ReloadTest, ChangedSettingsReachOnSettings) {
  setup_.extension("fx_settings")["settings"] = {{"level", 1}};
  setup_.add_fixture("fx_c_echo");  // takes no settings while running
  start();
  EXPECT_EQ(held_settings(), json::parse(R"({"settings":{"level":1},"updates":0})"));

  setup_.extension("fx_settings")["settings"] = {{"level", 2}, {"name", "b"}};
  json r = reload();
  EXPECT_EQ(r["status"], "reloaded") << r.dump();
  EXPECT_EQ(r["settingsUpdated"], json::array({"fx_settings"}));
  EXPECT_EQ(held_settings(), json::parse(R"({"settings":{"level":2,"name":"b"},"updates":1})"));

  // A module that refuses them keeps its settings; so does one without
  // on_settings; both are named, and the change that worked is kept.
  setup_.extension("fx_settings")["settings"] = {{"level", 3}, {"refuse", true}};
  setup_.extension("fx_c_echo")["settings"] = {{"x", 1}};
  setup_.doc()["defaults"]["retries"] = 7;
  json partial = reload();
  EXPECT_EQ(partial["status"], "partial") << partial.dump();
  EXPECT_EQ(partial["applied"], json::array({"$.defaults.retries"}));
  EXPECT_EQ(partial["failed"], json::parse(R"x([
      {"plugin":"fx_c_echo","reason":"settings not applied: module fx_c_echo takes no new settings while running (no on_settings)"
},
      {"plugin":"fx_settings","reason":"settings not applied: module refused the settings (BOSUN_ERR_INVALID_ARGUMENT); the running settings are unchanged"}])x"));
  EXPECT_EQ(held_settings(), json::parse(R"({"settings":{"level":2,"name":"b"},"updates":1})"));
  Config running = node().config();
  EXPECT_EQ(running.extension("fx_settings").settings, json::parse(R"({"level":2,"name":"b"})"))
      << "the running config says what really runs";
  EXPECT_EQ(running.defaults.retries, 7);

  // The same file again tries again (and fails again); fixed, it applies.
  EXPECT_EQ(reload()["status"], "failed");
  setup_.extension("fx_settings")["settings"] = {{"level", 4}};
  setup_.extension("fx_c_echo").erase("settings");
  json fixed = reload();
  EXPECT_EQ(fixed["status"], "reloaded") << fixed.dump();
  EXPECT_EQ(held_settings(), json::parse(R"({"settings":{"level":4},"updates":2})"));
}

TEST_F(ReloadTest, ABadConfigIsRefusedAndTheRunningOneStays) {
  setup_.extension("fx_settings")["settings"] = {{"level", 1}};
  start();
  ReloadEvents events(node());
  fs::path file = setup_.root() / "bosun.json";

  // Among good changes, one error: nothing of it applies.
  setup_.extension("fx_settings")["settings"] = {{"level", 2}};
  setup_.extension("hello")["enabled"] = "no";
  json r = reload();
  EXPECT_EQ(r["status"], "refused") << r.dump();
  EXPECT_EQ(r["error"], "$.extensions.hello.enabled: expected a boolean, got string");
  EXPECT_EQ(call(msg("greet")).data, "hello from n1 (hello 1.0.0)");
  EXPECT_EQ(held_settings(), json::parse(R"({"settings":{"level":1},"updates":0})"));

  setup_.extension("hello")["enabled"] = false;
  setup_.doc()["defaults"]["methodTimeot"] = 3;
  json typo = reload();
  EXPECT_EQ(typo["status"], "refused");
  EXPECT_EQ(typo["error"],
            "$.defaults.methodTimeot: unknown key (did you mean \"methodTimeout\"?)");
  EXPECT_EQ(plugin("hello").state, PluginState::active);

  test::write_file(file, "{\"node\": {\"name\": \"n1\"},");
  json broken = node().reload();
  EXPECT_EQ(broken["status"], "refused");
  EXPECT_EQ(broken["error"].get<std::string>().rfind(
                "$: " + file.string() + ": parse error at line 1, column 25: syntax error", 0),
            0u)
      << broken.dump();
  fs::remove(file);
  json gone = node().reload();
  EXPECT_EQ(gone["error"], "$: cannot read " + file.string() + ": No such file or directory");

  EXPECT_EQ(call(msg("greet")).data, "hello from n1 (hello 1.0.0)");
  auto seen = events.payloads();
  ASSERT_EQ(seen.size(), 4u);
  for (const auto& e : seen) EXPECT_EQ(e["status"], "refused");
  EXPECT_EQ(seen[0], r);
}

TEST_F(ReloadTest, LiveFieldsApplyAndTheRestNeedsARestart) {
  start();
  setup_.doc()["defaults"]["methodTimeout"] = 0.3;
  setup_.doc()["node"]["central"] = "boss";
  setup_.doc()["storage"] = {{"syncInterval", 50}};
  setup_.doc()["log"] = {{"level", "debug"}};
  setup_.doc()["host"]["drainTimeout"] = 500;
  json r = reload();
  EXPECT_EQ(r["status"], "reloaded") << r.dump();
  EXPECT_EQ(r["applied"], json::parse(R"(["$.defaults.methodTimeout", "$.host.drainTimeout"])"));
  EXPECT_EQ(r["needsRestart"],
            json::parse(R"(["$.node.central", "$.storage.syncInterval", "$.log.level"])"));
  Message slow = call(msg("greet_slow", {"3000"}));
  EXPECT_EQ(slow.error, "greet_slow timed out after 0.3 s (methodTimeout); the call was cancelled");
  Config running = node().config();
  EXPECT_EQ(running.node.central, "central") << "a restart field stays as it started";
  EXPECT_EQ(running.defaults.method_timeout_s, 0.3);
  EXPECT_EQ(running.host.drain_timeout_ms, 500);

  json again = reload();
  EXPECT_EQ(again["status"], "unchanged");
  EXPECT_EQ(again["needsRestart"], r["needsRestart"]) << "still pending: still reported";
}

TEST_F(ReloadTest, AReloadRacingAnUpdateEndsConsistent) {
  setup_.add_plugin("node");
  start();
  std::string bytes = test::read_file(kHello110);
  // Disabled first: an update is refused rather than switching it back on.
  setup_.extension("hello")["enabled"] = false;
  reload();
  EXPECT_EQ(node().update_plugin("hello", kHello110, "1.1.0")["reason"],
            "plugin hello is disabled in the config ($.extensions.hello.enabled): enable it and "
            "reload the config first");
  setup_.extension("hello")["enabled"] = true;
  ASSERT_EQ(reload()["status"], "reloaded");

  // An update and a reload switching the module off, at the same time:
  // whichever goes first, the end is off, and a later reload brings back
  // the version the update left active.
  json update_result;
  std::thread updater([&] { update_result = node().update_plugin("hello", kHello110, "1.1.0"); });
  std::this_thread::sleep_for(2ms);
  setup_.extension("hello")["enabled"] = false;
  json off = reload();
  updater.join();
  std::string status = update_result.value("status", "");
  ASSERT_TRUE(status == "updated" || status == "failed") << update_result.dump();
  EXPECT_EQ(off["status"], "reloaded") << off.dump();
  ASSERT_EQ(off["unloaded"].size(), 1u) << off.dump();
  if (status == "updated") {
    EXPECT_EQ(off["unloaded"][0]["version"], "1.1.0") << "the reload waited for the update";
  } else {
    EXPECT_EQ(update_result["reason"],
              "plugin hello is disabled in the config ($.extensions.hello.enabled): enable it and "
              "reload the config first");
    EXPECT_EQ(off["unloaded"][0]["version"], "1.0.0");
  }
  EXPECT_EQ(rejection(msg("greet")), "message 0: " + kHelloDisabled);
  setup_.extension("hello")["enabled"] = true;
  json on = reload();
  std::string expected = status == "updated" ? "1.1.0" : "1.0.0";
  EXPECT_EQ(on["loaded"][0]["version"], expected) << on.dump();
  EXPECT_EQ(call(msg("greet")).data, "hello from n1 (hello " + expected + ")");
}

TEST_F(ReloadTest, ANodeNotStartedFromAFileRefusesToReload) {
  node_ = std::make_unique<RunningNode>(setup_.config());
  json r = node().reload();
  EXPECT_EQ(r["status"], "refused");
  EXPECT_EQ(r["error"],
            "this node was not started from a config file: there is nothing to re-read");
}

// ------------------------------------------------ the real binary ----

TEST(ReloadProcessTest, SighupReloadsARealNodeOnABroker) {
  test::ClusterHarness cluster;
  auto& central = cluster.add_node("central");
  auto& ship = cluster.add_node("ship1");
  ship.add_module(kHello100);
  central.start();
  ship.start();
  json greet = json::array({{{"toNode", "ship1"}, {"method", "greet"}}});
  auto answer = [&] {
    auto finals = test::final_replies(central.send(greet));
    return finals.empty() ? json::object() : finals[0];
  };
  auto hello_state = [&] {
    auto lines = test::socket_request(ship.socket(), {{"op", "plugins"}});
    for (const auto& p : lines.at(0)["plugins"]) {
      if (p.value("name", "") == "hello") return p.value("state", "");
    }
    return std::string();
  };
  EXPECT_EQ(answer().value("data", ""), "hello from ship1 (hello 1.0.0)");

  ship.config()["extensions"]["hello"]["enabled"] = false;
  ship.write_config();
  ship.signal(SIGHUP);
  EXPECT_TRUE(test::wait_until([&] { return hello_state() == "disabled"; }, 20s, 50ms))
      << ship.log();
  json refused = answer();
  EXPECT_EQ(refused.value("status", ""), "error");
  EXPECT_EQ(refused.value("error", ""),
            "unknown method \"greet\" on node ship1: plugin hello, which provides it, is "
            "disabled: disabled in the config ($.extensions.hello.enabled)");

  // A bad config: refused, logged with its JSON path, the node runs on as it was.
  ship.config()["extensions"]["hello"]["enabled"] = true;
  ship.config()["extensions"]["hello"]["settings"] = "loud";
  ship.write_config();
  ship.signal(SIGHUP);
  EXPECT_TRUE(test::wait_until(
      [&] {
        return ship.log().find(
                   "config reload refused: $.extensions.hello.settings: expected an "
                   "object, got string; the running config stays") != std::string::npos;
      },
      20s, 50ms))
      << ship.log();
  EXPECT_TRUE(ship.running());
  EXPECT_EQ(hello_state(), "disabled");

  ship.config()["extensions"]["hello"].erase("settings");
  ship.write_config();
  ship.signal(SIGHUP);
  EXPECT_TRUE(test::wait_until([&] { return hello_state() == "active"; }, 20s, 50ms)) << ship.log();
  EXPECT_EQ(answer().value("data", ""), "hello from ship1 (hello 1.0.0)");
}

TEST(ReloadProcessTest, BosunReloadPrintsWhatChangedAndFailsOnARefusal) {
  NodeSetup setup;
  setup.add_module(kHello100, "hello.so");
  setup.add_fixture("fx_settings");
  test::BosunRun run(setup);
  fs::path file = run.config_file();
  auto bosun_reload = [&](std::vector<std::string> extra, std::string* out) {
    std::vector<std::string> argv{BOSUN_BIN, "reload", "--config", file.string()};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return test::run_command(argv, out);
  };

  setup.extension("hello")["enabled"] = false;
  setup.extension("fx_settings")["settings"] = {{"level", 2}};
  setup.doc()["node"]["central"] = "boss";
  setup.write_config();
  std::string out;
  EXPECT_EQ(bosun_reload({}, &out), 0) << out;
  EXPECT_NE(out.find("node n1: config reloaded from " + file.string() + " (reloaded, "),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("  unloaded          hello 1.0.0 (drained)\n"), std::string::npos) << out;
  EXPECT_NE(out.find("  settings updated  fx_settings\n"), std::string::npos) << out;
  EXPECT_NE(out.find("  needs a restart   $.node.central\n"), std::string::npos) << out;
  auto replies = test::lines_of_type(
      test::socket_send_wait(setup.socket(), json::array({msg("settings")})), "reply");
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_EQ(json::parse(replies[0].value("data", ""), nullptr, false)["settings"]["level"], 2);

  // Refused: non-zero, the JSON path named, the node unchanged.
  setup.extension("hello")["enabled"] = 1;
  setup.write_config();
  EXPECT_EQ(bosun_reload({}, &out), 1) << out;
  EXPECT_NE(out.find("bosun reload: node n1 refused " + file.string() +
                     ": $.extensions.hello.enabled: expected a boolean, got integer\n"
                     "the running config stays\n"),
            std::string::npos)
      << out;
  EXPECT_NE(run.log().find("config reload refused: $.extensions.hello.enabled"), std::string::npos);

  setup.extension("hello")["enabled"] = true;
  setup.write_config();
  EXPECT_EQ(bosun_reload({"--json"}, &out), 0) << out;
  json r = json::parse(out, nullptr, false);
  EXPECT_EQ(r.value("status", ""), "reloaded") << out;
  EXPECT_EQ(r["loaded"], json::parse(R"([{"plugin":"hello","version":"1.0.0"}])"));
  EXPECT_EQ(r["needsRestart"], json::array({"$.node.central"}));
  replies = test::lines_of_type(test::socket_send_wait(setup.socket(), json::array({msg("greet")})),
                                "reply");
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_EQ(replies[0].value("data", ""), "hello from n1 (hello 1.0.0)");

  // A file so broken that its node cannot be found: refused locally, a
  // config error (exit code 2, docs/operating.md "Exit codes").
  test::write_file(file, "{");
  EXPECT_EQ(bosun_reload({}, &out), 2) << out;
  EXPECT_NE(out.find("the node was not asked: its socket is unknown"), std::string::npos) << out;
}

}  // namespace
}  // namespace bosun::host
