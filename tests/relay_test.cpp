// Relaying (DESIGN §9 core/relay, Steward's REQRelay) between three real
// `bosun run` nodes over a real nats-server: node1 sends a message naming
// relayViaNode "central"; central's relay module sends it on to node2 and
// routes node2's replies back. Checked end to end: the output reaches node1's
// relayReplyMethod and the original replyMethod runs on central; Steward's
// message file form; streams; toNodes; node2 offline at first; central
// restarted while node2 works; a target that never answers; bad input.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <future>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <bosun/host/message.hpp>
#include <bosun/host/transport.hpp>

#include "cluster_harness.hpp"
#include "node_harness.hpp"

namespace bosun::test {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

json bash(const std::string& script) {
  return json::array({"bash", "-c", script});
}

// A command that says where it ran and who asked: the config file of the
// `bosun run` that started it names the node.
const char kWhere[] = "echo \"from $BOSUN_FROM_NODE on $(tr '\\0' ' ' < /proc/$PPID/cmdline)\"";

std::string file_text(const fs::path& p) {
  return fs::exists(p) ? read_file(p) : std::string();
}

// The error texts of a send's {"type":"result"} line.
std::vector<std::string> submit_errors(const std::vector<json>& lines) {
  std::vector<std::string> out;
  for (const auto& l : lines) {
    if (!l.is_object() || l.value("type", "") != "result") continue;
    for (const auto& e : l["errors"]) out.push_back(e.value("error", ""));
  }
  return out;
}

// node1 (origin), central (relay node) and node2 (target), each with the
// relay, cli and sinks modules.
class RelayTest : public ::testing::Test {
 protected:
  RelayTest() : node1_(add("node1")), central_(add("central")), node2_(add("node2")) {}

  ClusterNode& add(const std::string& name) {
    ClusterNode& n = h_.add_node(name);
    n.add_module(plugin_module("relay"));
    n.add_module(plugin_module("cli"));
    return n;
  }

  // Every node stopped cleanly, with nothing for the sanitizers to report
  // (a node that crashed or leaked says so in its log).
  void TearDown() override {
    for (ClusterNode* n : {&node1_, &central_, &node2_}) {
      n->stop();
      std::string log = n->log();
      for (const char* bad : {"AddressSanitizer", "LeakSanitizer", "runtime error:"}) {
        EXPECT_EQ(log.find(bad), std::string::npos) << n->name() << "'s log reports " << bad;
      }
    }
  }

  void start_all() {
    central_.start();
    node2_.start();
    node1_.start();
  }

  // The one final reply of a single-message send; fails the test otherwise.
  json only_final(const std::vector<json>& lines) {
    auto finals = final_replies(lines);
    EXPECT_EQ(finals.size(), 1u) << json(lines).dump();
    return finals.empty() ? json::object() : finals[0];
  }

  // Sends one message through node1 and returns its final reply.
  json send1(const json& m, double wait_s = 20) {
    return only_final(node1_.send(json::array({m}), true, wait_s));
  }

  void expect_all_serving() {
    json direct = send1({{"toNode", "node2"}, {"method", "ping"}});
    EXPECT_EQ(direct.value("data", ""), "pong") << direct.dump();
    json central = send1({{"toNode", "central"}, {"method", "ping"}});
    EXPECT_EQ(central.value("data", ""), "pong") << central.dump();
    json relayed = send1({{"toNode", "node2"}, {"method", "ping"}, {"relayViaNode", "central"}});
    EXPECT_EQ(relayed.value("status", ""), "ok") << relayed.dump();
    EXPECT_EQ(relayed.value("data", ""), "pong") << relayed.dump();
  }

  ClusterHarness h_;
  ClusterNode& node1_;
  ClusterNode& central_;
  ClusterNode& node2_;
};

// ---------------------------------------------------------- end to end ---

TEST_F(RelayTest, CommandRelayedThroughCentralAnswersNode1AndRunsTheReplyMethodOnCentral) {
  start_all();
  json m = {{"toNode", "node2"},
            {"relayViaNode", "central"},
            {"method", "cli_command"},
            {"methodArgs", bash(kWhere)},
            {"replyMethod", "to_file_append"},
            {"relayReplyMethod", "to_file"},
            {"directory", "relay"},
            {"fileName", "where.txt"}};
  auto lines = node1_.send(json::array({m}), true, 20);
  auto ids = accepted_ids(lines);
  ASSERT_EQ(ids.size(), 1u) << json(lines).dump();
  for (const auto& l : lines) {
    if (l.value("type", "") != "result") continue;
    EXPECT_EQ(l["accepted"][0]["toNode"], "node2") << l.dump();
    EXPECT_EQ(l["accepted"][0]["method"], "cli_command") << l.dump();
  }
  json r = only_final(lines);
  EXPECT_EQ(r.value("status", ""), "ok") << r.dump();
  EXPECT_EQ(r.value("inReplyTo", ""), ids[0]);
  EXPECT_EQ(r.value("fromNode", ""), "central") << "the relay node answers in its own name";
  EXPECT_EQ(r.value("method", ""), "cli_command") << r.dump();
  std::string out = r.value("data", "");
  // Ran on node2, asked by central (which sends in its own name).
  EXPECT_EQ(out.rfind("from central on ", 0), 0u) << out;
  EXPECT_NE(out.find((node2_.root() / "bosun.json").string()), std::string::npos) << out;

  // Step 6 on node1: relayReplyMethod to_file.
  fs::path at_node1 = node1_.data_dir() / "relay" / "where.txt";
  EXPECT_TRUE(wait_until([&] { return file_text(at_node1) == out; }, 10s))
      << at_node1 << ": " << file_text(at_node1);
  // Step 5 on central: the original replyMethod, to_file_append.
  fs::path at_central = central_.data_dir() / "relay" / "where.txt";
  EXPECT_TRUE(wait_until([&] { return file_text(at_central) == out; }, 10s))
      << at_central << ": " << file_text(at_central);
  EXPECT_FALSE(fs::exists(node2_.data_dir() / "relay")) << "no reply method runs on node2";

  // Each side ran its method once: a second relay appends once more on
  // central and replaces node1's file.
  json again = send1(m);
  EXPECT_EQ(again.value("status", ""), "ok") << again.dump();
  EXPECT_TRUE(wait_until([&] { return file_text(at_central) == out + out; }, 10s))
      << file_text(at_central);
  EXPECT_EQ(file_text(at_node1), out);
}

TEST_F(RelayTest, StewardMessageFileWorksUnchanged) {
  start_all();
  // The form of Steward's README relay example, with a command that ends.
  json steward = json::array({{{"directory", "/tail-logs/"},
                               {"fileName", "my-wifi.log"},
                               {"toNode", "node2"},
                               {"relayViaNode", "central"},
                               {"relayReplyMethod", "REQToFile"},
                               {"methodArgs", json::array({"bash", "-c", "echo wifi up"})},
                               {"method", "REQCliCommand"},
                               {"replyMethod", "REQToFileAppend"},
                               {"ACKTimeout", 5},
                               {"retries", 3},
                               {"replyACKTimeout", 5},
                               {"replyRetries", 3},
                               {"methodTimeout", 10}}});
  fs::path file = h_.root() / "relay-wifi.json";
  write_file(file, steward.dump(2));
  std::string out;
  int rc = run_command({BOSUN_BIN, "send", "--config", node1_.config_file().string(), "--wait",
                        "--timeout", "20", file.string()},
                       &out, true, "", 40s);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("wifi up"), std::string::npos) << out;

  fs::path at_central = central_.data_dir() / "tail-logs" / "my-wifi.log";
  fs::path at_node1 = node1_.data_dir() / "tail-logs" / "my-wifi.log";
  EXPECT_TRUE(wait_until([&] { return file_text(at_central) == "wifi up\n"; }, 10s))
      << file_text(at_central);
  EXPECT_TRUE(wait_until([&] { return file_text(at_node1) == "wifi up\n"; }, 10s))
      << file_text(at_node1);

  // Steward's own example streams (REQCliCommandCont) to REQToConsole.
  json cont = steward[0];
  cont["method"] = "REQCliCommandCont";
  cont["relayReplyMethod"] = "REQToConsole";
  cont["methodArgs"] = bash("for i in 1 2 3; do echo line$i; sleep 0.3; done");
  auto lines = node1_.send(json::array({cont}), true, 20);
  std::vector<std::string> chunks;
  for (const auto& l : lines) {
    if (l.value("type", "") == "reply") chunks.push_back(l.value("data", ""));
  }
  json r = only_final(lines);
  EXPECT_EQ(r.value("status", ""), "ok") << r.dump();
  std::string streamed;
  for (const auto& c : chunks) streamed += c;
  EXPECT_EQ(streamed, "line1\nline2\nline3\n") << json(lines).dump();
  EXPECT_GE(chunks.size(), 2u) << "streamed in pieces: " << json(lines).dump();
  EXPECT_TRUE(
      wait_until([&] { return file_text(at_central) == "wifi up\nline1\nline2\nline3\n"; }, 10s))
      << file_text(at_central);
  EXPECT_TRUE(wait_until([&] { return node1_.log().find("line3") != std::string::npos; }, 10s))
      << "REQToConsole printed nothing on node1";
}

TEST_F(RelayTest, ToNodesRelaysOneMessageToEachTarget) {
  start_all();
  json m = {{"toNodes", json::array({"node2", "central"})},
            {"relayViaNode", "central"},
            {"method", "cli_command"},
            {"methodArgs", bash(kWhere)}};
  auto lines = node1_.send(json::array({m}), true, 20);
  std::map<std::string, std::string> target_of;  // id -> toNode
  for (const auto& l : lines) {
    if (l.value("type", "") != "result") continue;
    for (const auto& a : l["accepted"]) target_of[a["id"]] = a["toNode"];
  }
  ASSERT_EQ(target_of.size(), 2u) << json(lines).dump();
  auto finals = final_replies(lines);
  ASSERT_EQ(finals.size(), 2u) << json(lines).dump();
  std::set<std::string> seen;
  for (const auto& r : finals) {
    EXPECT_EQ(r.value("status", ""), "ok") << r.dump();
    std::string target = target_of[r.value("inReplyTo", "")];
    seen.insert(target);
    ClusterNode& ran_on = target == "node2" ? node2_ : central_;
    EXPECT_NE(r.value("data", "").find((ran_on.root() / "bosun.json").string()), std::string::npos)
        << target << ": " << r.dump();
  }
  EXPECT_EQ(seen, (std::set<std::string>{"node2", "central"}));
}

// --------------------------------------------------- offline, restarts ---

TEST_F(RelayTest, TargetOfflineAtFirstGetsItWithinTheRetryBudget) {
  central_.start();
  node1_.start();  // node2 comes later
  json m = {{"toNode", "node2"},          {"relayViaNode", "central"}, {"method", "cli_command"},
            {"methodArgs", bash(kWhere)}, {"ACKTimeout", 1},           {"retries", 15}};
  auto pending =
      std::async(std::launch::async, [&] { return node1_.send(json::array({m}), true, 40); });
  EXPECT_TRUE(wait_until([&] { return central_.counter("retried") >= 2; }, 15s))
      << "node2 is down: central should be resending the relayed message";
  node2_.start();

  ASSERT_EQ(pending.wait_for(45s), std::future_status::ready);
  json r = only_final(pending.get());
  EXPECT_EQ(r.value("status", ""), "ok") << r.dump();
  EXPECT_NE(r.value("data", "").find((node2_.root() / "bosun.json").string()), std::string::npos)
      << r.dump();
  EXPECT_EQ(central_.counter("failed"), 0u);
}

TEST_F(RelayTest, RouteBackSurvivesARestartOfTheRelayNode) {
  start_all();
  json m = {{"toNode", "node2"},
            {"relayViaNode", "central"},
            {"method", "cli_command"},
            {"methodArgs", bash("sleep 1; echo late answer")},
            {"replyMethod", "to_file_append"},
            {"directory", "relay"},
            {"fileName", "late.txt"},
            {"replyACKTimeout", 1},
            {"replyRetries", 30}};
  auto pending =
      std::async(std::launch::async, [&] { return node1_.send(json::array({m}), true, 45); });
  // Central has relayed it once node2 runs it; stop central before node2
  // answers, and start it again only after node2 has had to resend.
  ASSERT_TRUE(wait_until(
      [&] {
        // The relayed command itself: a key_set from central is a call too.
        auto lines = socket_request(node2_.socket(), {{"op", "calls"}}, 5s);
        if (lines.empty() || !lines[0]["calls"].is_array()) return false;
        for (const auto& c : lines[0]["calls"]) {
          if (c.value("method", "") == "cli_command") return true;
        }
        return false;
      },
      15s, 20ms))
      << "node2 never ran the relayed command";
  central_.stop();
  EXPECT_TRUE(wait_until([&] { return node2_.counter("retried") >= 1; }, 15s))
      << "node2's reply should be waiting for central";
  central_.start();

  ASSERT_EQ(pending.wait_for(50s), std::future_status::ready);
  json r = only_final(pending.get());
  EXPECT_EQ(r.value("status", ""), "ok") << r.dump();
  EXPECT_EQ(r.value("data", ""), "late answer\n") << r.dump();
  fs::path at_central = central_.data_dir() / "relay" / "late.txt";
  EXPECT_TRUE(wait_until([&] { return file_text(at_central) == "late answer\n"; }, 10s))
      << file_text(at_central);
}

TEST_F(RelayTest, TargetThatNeverAnswersIsReportedAfterReplyTimeout) {
  central_.config()["extensions"]["relay"]["settings"] = {{"replyTimeout", 2}};
  start_all();
  json m = {{"toNode", "node3"},
            {"relayViaNode", "central"},
            {"method", "ping"},
            {"ACKTimeout", 0.5},
            {"retries", 1},
            {"methodTimeout", 1},
            {"replyMethod", "to_file"},
            {"directory", "relay"},
            {"fileName", "node3.txt"}};
  auto start = std::chrono::steady_clock::now();
  json r = send1(m, 20);
  auto took = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(r.value("status", ""), "error") << r.dump();
  std::string error = r.value("error", "");
  EXPECT_NE(error.find("relay via central: no reply from node3 to ping within 3 s"),
            std::string::npos)
      << error;
  EXPECT_GE(took, 2s) << error;
  EXPECT_LT(took, 10s) << error;
  // The original replyMethod on central hears it too.
  fs::path at_central = central_.data_dir() / "relay" / "node3.txt";
  EXPECT_TRUE(wait_until(
      [&] { return file_text(at_central).find("no reply from node3") != std::string::npos; }, 10s))
      << file_text(at_central);
  expect_all_serving();
}

// ------------------------------------------------------------ bad input ---

TEST_F(RelayTest, AReplyFromAnotherNodeThanTheTargetIsNotForwarded) {
  start_all();
  json m = {{"toNode", "node2"},
            {"relayViaNode", "central"},
            {"method", "cli_command"},
            {"methodArgs", bash("sleep 1; echo the real answer")}};
  auto pending =
      std::async(std::launch::async, [&] { return node1_.send(json::array({m}), true, 20); });
  // The relay id is the id node1 accepted, which central uses as the route.
  std::string relay_id;
  ASSERT_TRUE(wait_until(
      [&] {
        std::string log = central_.log();
        size_t at = log.find("relayed cli_command from node1 to node2 (relay ");
        if (at == std::string::npos) return false;
        relay_id = log.substr(at + 47, 26);
        return true;
      },
      10s));
  // node1 (any node on the bus) answers in node2's stead.
  auto bus = h_.connect_bus("forger");
  host::Message forged;
  forged.id = host::new_message_id();
  forged.from_node = "node1";
  forged.to_node = "central";
  forged.method = "relay_reply";
  forged.method_args = {relay_id};
  forged.is_reply = true;
  forged.in_reply_to = host::new_message_id();
  forged.request_method = "cli_command";
  forged.data = "forged";
  forged.status = "ok";
  forged.sent_at_ms = host::now_ms();
  // Signed with node1's own key: an accepted node of the fleet, lying.
  auto ack = bus->request(
      "bosun.req.central.relay_reply",
      sealed_by(node1_, "bosun.req.central.relay_reply", host::to_json(forged).dump()), 5s);
  ASSERT_TRUE(ack.has_value());
  EXPECT_EQ(envelope_body(*ack), "ACK");
  EXPECT_TRUE(wait_until(
      [&] {
        return central_.log().find("reply from node1 to relayed message " + relay_id +
                                   " dropped: that message went to node2") != std::string::npos;
      },
      10s));

  ASSERT_EQ(pending.wait_for(25s), std::future_status::ready);
  auto lines = pending.get();
  json r = only_final(lines);
  EXPECT_EQ(r.value("data", ""), "the real answer\n") << json(lines).dump();
  EXPECT_EQ(json(lines).dump().find("forged"), std::string::npos) << json(lines).dump();
}

TEST_F(RelayTest, BadInputGetsAnErrorNamingTheProblemAndTheNodesKeepServing) {
  start_all();
  // Refused by node1's host before anything is sent.
  struct Refused {
    json msg;
    std::vector<std::string> expect;
  };
  std::vector<Refused> refused = {
      {{{"toNode", "node2"}, {"method", "ping"}, {"relayViaNode", "no such node!"}},
       {"field \"relayViaNode\"", "\"no such node!\" is not a valid name"}},
      {{{"toNode", "node2"}, {"method", "ping"}, {"relayViaNode", "node1"}},
       {"field \"relayViaNode\"", "\"node1\" is this node", "loops"}},
      {{{"method", "ping"}, {"relayViaNode", "central"}}, {"needs \"toNode\" or \"toNodes\""}},
      {{{"toNode", "node2"}, {"method", "REQRelay"}, {"relayViaNode", "central"}, {"data", "{}"}},
       {"field \"relayViaNode\"", "a relay message cannot itself be relayed"}},
  };
  for (const auto& c : refused) {
    auto lines = node1_.send(json::array({c.msg}), true, 10);
    EXPECT_TRUE(accepted_ids(lines).empty()) << json(lines).dump();
    auto errors = submit_errors(lines);
    ASSERT_EQ(errors.size(), 1u) << json(lines).dump();
    for (const auto& want : c.expect) {
      EXPECT_NE(errors[0].find(want), std::string::npos) << "want " << want << " in " << errors[0];
    }
  }

  // `relay` messages that reach central and are answered with an error.
  auto relay_msg = [](json data) {
    json m = {{"toNode", "central"}, {"method", "relay"}};
    if (!data.is_null()) m["data"] = data;
    return m;
  };
  struct Answered {
    json msg;
    std::string expect;
  };
  std::vector<Answered> answered = {
      {relay_msg(nullptr), "relay: the relay message has no \"data\""},
      {relay_msg("not a message"),
       "relay: \"data\" does not hold a message to relay (expected a JSON object, got \"not a "
       "message\")"},
      {relay_msg(json{{"method", "ping"}}),
       "relay: the embedded message has no \"toNode\": nothing says where to relay it"},
      {relay_msg(json{{"toNode", "node 2"}, {"method", "ping"}}),
       "relay: the embedded message's \"toNode\" \"node 2\" is not a valid node name"},
      {relay_msg(json{{"toNode", "node2"}}), "relay: the embedded message has no \"method\""},
      {relay_msg(json{{"toNode", "node2"}, {"method", "ping"}, {"relayViaNode", "node2"}}),
       "relay: relay chain: the embedded message asks to be relayed again, via \"node2\""},
      {relay_msg(json{{"toNode", "node2"}, {"method", "REQRelay"}, {"data", "{}"}}),
       "relay: relay chain: the embedded message is itself a \"REQRelay\" message"},
      {relay_msg(json{{"toNodes", json::array({"node2", "central"})}, {"method", "ping"}}),
       "relay: the embedded message names \"toNodes\""},
      {relay_msg(json{{"toNode", "node2"}, {"method", "ping"}, {"replyMethod", "relay_reply"}}),
       "relay: the embedded message's \"replyMethod\" \"relay_reply\" is one of the relay's own"},
  };
  for (const auto& c : answered) {
    json r = send1(c.msg, 15);
    EXPECT_EQ(r.value("status", ""), "error") << c.msg.dump() << " -> " << r.dump();
    EXPECT_EQ(r.value("fromNode", ""), "central") << r.dump();
    EXPECT_NE(r.value("error", "").find(c.expect), std::string::npos)
        << "want " << c.expect << " in " << r.dump();
  }
  // The same hand-written relay message with a good embedded message works.
  json by_hand = send1({{"toNode", "central"},
                        {"method", "relay"},
                        {"data", json{{"toNode", "node2"}, {"method", "ping"}}.dump()}});
  EXPECT_EQ(by_hand.value("status", ""), "ok") << by_hand.dump();
  EXPECT_EQ(by_hand.value("data", ""), "pong") << by_hand.dump();
  // A relay message the relay node sends itself would loop: refused.
  std::string out;
  int rc = run_command({BOSUN_BIN, "send", "--config", central_.config_file().string(), "--to",
                        "central", "--method", "relay", "--wait", "--timeout", "10"},
                       &out);
  EXPECT_NE(rc, 0) << out;
  EXPECT_NE(out.find("relay: the relay message comes from central itself"), std::string::npos)
      << out;

  expect_all_serving();
  EXPECT_EQ(central_.counter("dropped"), 0u) << "every bad input was answered, none dropped";
}

}  // namespace
}  // namespace bosun::test
