// A standalone node end to end (DESIGN §4, §5, §9): messages in through the
// unix socket (NodeClient) and Node::submit, handlers run, replies out;
// errors that name the message and the field; timeouts, cancellation,
// streaming, concurrency, reply methods, KV persistence and the audit log.
#include "bosun/host/node.hpp"

#include "bosun/host/audit.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "node_harness.hpp"

namespace bosun::host {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace std::chrono_literals;
using test::NodeSetup;
using test::RunningNode;
using Clock = std::chrono::steady_clock;

json msg(const std::string& method, json extra = json::object()) {
  json m = {{"toNode", "n1"}, {"method", method}};
  m.update(extra);
  return m;
}

long long ms_since(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t).count();
}

class NodeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* name : {"fx_c_echo", "fx_slow", "fx_throw_handler", "fx_counter"}) {
      setup_.add_fixture(name);
    }
    setup_.add_plugin("sinks");
    setup_.add_module(BOSUN_HELLO_1_0_0);
  }

  RunningNode& start() {
    node_ = std::make_unique<RunningNode>(setup_.config());
    return *node_;
  }

  Node& node() { return node_->node(); }

  void TearDown() override {
    // A node that stopped answering will not stop either: do not wait long.
    if (node_ && wedged_) node_->stop(1s);
  }

  // The one final reply to a single message; fails the test when there is none.
  Message call(const json& m, std::chrono::milliseconds timeout = 20s) {
    if (wedged_) {
      ADD_FAILURE() << "not sending " << m.dump() << ": the node stopped answering";
      return {};
    }
    auto out = test::submit_and_wait(node(), m, timeout);
    EXPECT_EQ(out.result.accepted.size(), 1u) << out.result.to_json().dump();
    const Message* r = out.final_reply();
    if (r == nullptr) {
      ADD_FAILURE() << "no final reply to " << m.dump();
      wedged_ = out.result.accepted.size() == 1;
      return {};
    }
    return *r;
  }

  // The one error of submitting `batch` (rejected before it runs).
  std::string rejection(const json& batch) {
    SubmitResult r = node().submit(batch);
    EXPECT_TRUE(r.accepted.empty()) << r.to_json().dump();
    if (r.errors.size() != 1) {
      ADD_FAILURE() << "expected one error: " << r.to_json().dump();
      return "";
    }
    return r.errors[0].error;
  }

  std::vector<std::string> running_methods() {
    Message r = call(msg("op_process_list"), 5s);
    json list = json::parse(r.data, nullptr, false);
    std::vector<std::string> out;
    if (!list.is_array()) {
      ADD_FAILURE() << "op_process_list data is not a JSON array: " << r.data;
      return out;
    }
    for (const auto& c : list) out.push_back(c.value("method", ""));
    return out;
  }

  NodeSetup setup_;
  std::unique_ptr<RunningNode> node_;
  bool wedged_ = false;
};

bool contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

// ------------------------------------------------------------ the socket ---

TEST_F(NodeTest, PingThroughTheSocket) {
  start();
  auto lines = test::socket_send_wait(node_->socket(), json::array({msg("ping")}));
  auto result = test::lines_of_type(lines, "result");
  ASSERT_EQ(result.size(), 1u) << json(lines).dump();
  ASSERT_EQ(result[0]["accepted"].size(), 1u) << result[0].dump();
  auto replies = test::lines_of_type(lines, "reply");
  ASSERT_EQ(replies.size(), 1u) << json(lines).dump();
  EXPECT_EQ(replies[0]["data"], "pong");
  EXPECT_EQ(replies[0]["status"], "ok");
  EXPECT_EQ(replies[0]["final"], true);
  EXPECT_EQ(replies[0]["fromNode"], "n1");
  EXPECT_EQ(replies[0]["inReplyTo"], result[0]["accepted"][0]["id"]);
  auto done = test::lines_of_type(lines, "done");
  ASSERT_EQ(done.size(), 1u) << json(lines).dump();
  EXPECT_TRUE(done[0]["missing"].empty()) << done[0].dump();
}

TEST_F(NodeTest, PingThroughSubmit) {
  start();
  Message r = call(msg("ping"));
  EXPECT_EQ(r.data, "pong");
  EXPECT_EQ(r.status, "ok");
  EXPECT_TRUE(r.is_reply);
  EXPECT_EQ(r.request_method, "ping");
}

TEST_F(NodeTest, StewardStyleBatchWithoutAnOpIsAcceptedAndAnswered) {
  start();
  auto lines = test::socket_raw(node_->socket(), json::array({msg("ping")}).dump());
  ASSERT_EQ(lines.size(), 1u);
  json j = json::parse(lines[0]);
  EXPECT_EQ(j["type"], "result");
  EXPECT_EQ(j["accepted"].size(), 1u) << j.dump();
  EXPECT_TRUE(j["errors"].empty()) << j.dump();
}

TEST_F(NodeTest, PluginListThroughTheSocket) {
  start();
  auto lines = test::socket_request(node_->socket(), {{"op", "plugins"}});
  ASSERT_EQ(lines.size(), 1u) << json(lines).dump();
  EXPECT_EQ(lines[0]["type"], "plugins");
  std::map<std::string, json> by_name;
  for (const auto& p : lines[0]["plugins"]) by_name[p["name"]] = p;
  ASSERT_TRUE(by_name.count("fx_c_echo")) << lines[0].dump();
  EXPECT_EQ(by_name["fx_c_echo"]["state"], "active");
  EXPECT_EQ(by_name["fx_c_echo"]["version"], "1.0.0");
  EXPECT_EQ(by_name["fx_c_echo"]["methods"], json::array({"c_echo", "c_stream"}));
  EXPECT_EQ(by_name["sinks"]["state"], "active");
  EXPECT_EQ(by_name["hello"]["state"], "active");

  // The plugin_list method says the same, as JSON in the reply's data.
  auto sent = test::socket_send_wait(node_->socket(), json::array({msg("plugin_list")}));
  auto replies = test::lines_of_type(sent, "reply");
  ASSERT_EQ(replies.size(), 1u) << json(sent).dump();
  json list = json::parse(replies[0]["data"].get<std::string>(), nullptr, false);
  ASSERT_TRUE(list.is_array()) << replies[0].dump();
  EXPECT_EQ(list.size(), lines[0]["plugins"].size());
}

TEST_F(NodeTest, WrongTypeFieldRejectsOnlyItsMessage) {
  start();
  json batch = json::array({msg("c_echo", {{"methodArgs", {"first"}}}),
                            msg("c_echo", {{"methodArgs", "not an array"}}),
                            msg("c_echo", {{"methodArgs", {"third"}}})});
  // Through the socket...
  auto lines = test::socket_send_wait(node_->socket(), batch);
  auto result = test::lines_of_type(lines, "result");
  ASSERT_EQ(result.size(), 1u);
  ASSERT_EQ(result[0]["errors"].size(), 1u) << result[0].dump();
  EXPECT_EQ(result[0]["errors"][0]["index"], 1);
  std::string error = result[0]["errors"][0]["error"];
  EXPECT_NE(error.find("message 1"), std::string::npos) << error;
  EXPECT_NE(error.find("\"methodArgs\""), std::string::npos) << error;
  EXPECT_NE(error.find("expected an array"), std::string::npos) << error;
  std::vector<std::string> data;
  for (const auto& r : test::lines_of_type(lines, "reply")) data.push_back(r["data"]);
  std::sort(data.begin(), data.end());
  EXPECT_EQ(data, (std::vector<std::string>{"first", "third"}));

  // ... and through submit.
  auto out = test::submit_and_wait(node(), batch);
  ASSERT_EQ(out.result.accepted.size(), 2u);
  EXPECT_EQ(out.result.accepted[0].index, 0u);
  EXPECT_EQ(out.result.accepted[1].index, 2u);
  ASSERT_EQ(out.result.errors.size(), 1u);
  EXPECT_EQ(out.result.errors[0].index, 1u);
  ASSERT_NE(out.final_reply(0), nullptr);
  ASSERT_NE(out.final_reply(1), nullptr);
  EXPECT_EQ(out.final_reply(0)->data, "first");
  EXPECT_EQ(out.final_reply(1)->data, "third");
}

TEST_F(NodeTest, UnknownMethodSuggestsTheNearestOne) {
  start();
  std::string e = rejection(json::array({msg("pnig")}));
  EXPECT_NE(e.find("message 0"), std::string::npos) << e;
  EXPECT_NE(e.find("unknown method \"pnig\""), std::string::npos) << e;
  EXPECT_NE(e.find("did you mean \"ping\""), std::string::npos) << e;

  auto lines = test::socket_send_wait(node_->socket(), json::array({msg("pnig")}));
  auto result = test::lines_of_type(lines, "result");
  ASSERT_EQ(result.size(), 1u);
  ASSERT_EQ(result[0]["errors"].size(), 1u);
  EXPECT_NE(result[0]["errors"][0]["error"].get<std::string>().find("did you mean \"ping\""),
            std::string::npos);
  EXPECT_EQ(test::lines_of_type(lines, "done").size(), 1u) << json(lines).dump();
}

TEST_F(NodeTest, FieldTypoIsAnErrorWithASuggestion) {
  start();
  std::string e = rejection(msg("c_echo", {{"methodArg", {"x"}}}));
  EXPECT_NE(e.find("\"methodArg\""), std::string::npos) << e;
  EXPECT_NE(e.find("did you mean \"methodArgs\""), std::string::npos) << e;
}

TEST_F(NodeTest, NodeNameWithADotIsInvalid) {
  start();
  std::string e = rejection({{"toNode", "n1.evil"}, {"method", "ping"}});
  EXPECT_NE(e.find("\"toNode\""), std::string::npos) << e;
  EXPECT_NE(e.find("not a valid name"), std::string::npos) << e;
}

TEST_F(NodeTest, AnotherNodeIsUnreachableWhenStandalone) {
  start();
  std::string e = rejection({{"toNode", "n2"}, {"method", "ping"}});
  EXPECT_NE(e.find("\"n2\""), std::string::npos) << e;
  EXPECT_NE(e.find("standalone"), std::string::npos) << e;
}

TEST_F(NodeTest, TruncatedJsonOnTheSocket) {
  start();
  auto lines = test::socket_raw(node_->socket(), R"([{"toNode":"n1","method":"ping")");
  ASSERT_EQ(lines.size(), 1u);
  json j = json::parse(lines[0]);
  EXPECT_EQ(j["type"], "error");
  EXPECT_NE(j["error"].get<std::string>().find("not valid JSON"), std::string::npos) << j.dump();
  EXPECT_EQ(call(msg("ping")).data, "pong");  // and the node carries on
}

TEST_F(NodeTest, GarbageOnTheSocket) {
  start();
  auto lines = test::socket_raw(node_->socket(), "hello node, this is not JSON\n");
  ASSERT_EQ(lines.size(), 1u);
  json j = json::parse(lines[0]);
  EXPECT_EQ(j["type"], "error");
  EXPECT_NE(j["error"].get<std::string>().find("not valid JSON"), std::string::npos) << j.dump();

  // Valid JSON that is no message: the same clear error, by index.
  lines = test::socket_raw(node_->socket(), "[42]");
  ASSERT_EQ(lines.size(), 1u);
  j = json::parse(lines[0]);
  ASSERT_EQ(j["errors"].size(), 1u) << j.dump();
  EXPECT_NE(j["errors"][0]["error"].get<std::string>().find("message 0: expected a JSON object"),
            std::string::npos)
      << j.dump();
}

TEST_F(NodeTest, EmptyInputOnTheSocket) {
  start();
  auto lines = test::socket_raw(node_->socket(), "");
  ASSERT_EQ(lines.size(), 1u);
  json j = json::parse(lines[0]);
  EXPECT_EQ(j["type"], "error");
  EXPECT_NE(j["error"].get<std::string>().find("empty input"), std::string::npos) << j.dump();
}

TEST_F(NodeTest, ThrowingHandlerBecomesAnErrorReply) {
  start();
  Message r = call(msg("throw_handler"));
  EXPECT_EQ(r.status, "error");
  EXPECT_NE(r.error.find("fixture: handler exploded"), std::string::npos) << r.error;

  r = call(msg("throw_unknown"));
  EXPECT_EQ(r.status, "error");
  EXPECT_NE(r.error.find("unknown exception"), std::string::npos) << r.error;

  EXPECT_EQ(call(msg("ping")).data, "pong");
}

TEST_F(NodeTest, HandlerPastItsMethodTimeoutIsCancelled) {
  start();
  auto t0 = Clock::now();
  Message r = call(msg("slow_poll", {{"methodTimeout", 1}}));
  long long took = ms_since(t0);
  EXPECT_EQ(r.status, "error");
  EXPECT_NE(r.error.find("timed out after 1 s"), std::string::npos) << r.error;
  EXPECT_GE(took, 900);
  EXPECT_LT(took, 5000);
  // slow_poll sees the cancellation and returns: the call is gone.
  EXPECT_TRUE(test::wait_until([&] { return node().running_calls().empty(); }, 5s))
      << node().running_calls().dump();
  EXPECT_FALSE(contains(running_methods(), "slow_poll"));
}

TEST_F(NodeTest, TimeoutReplyDoesNotWaitForAHandlerThatIgnoresCancellation) {
  start();
  auto t0 = Clock::now();
  Message r = call(msg("slow_ignore", {{"methodTimeout", 1}}));
  long long took = ms_since(t0);
  EXPECT_EQ(r.status, "error");
  EXPECT_NE(r.error.find("timed out after 1 s"), std::string::npos) << r.error;
  EXPECT_GE(took, 900);
  EXPECT_LT(took, 2500) << "the reply waited for the handler (3 s) instead of the timeout (1 s)";
  EXPECT_NE(r.data, "slow_ignore done");
}

TEST_F(NodeTest, ProcessListShowsARunningCall) {
  start();
  auto waiter = std::make_shared<test::CollectingWaiter>();
  SubmitResult sent = node().submit(msg("slow_poll", {{"methodTimeout", 30}}), waiter);
  ASSERT_EQ(sent.accepted.size(), 1u) << sent.to_json().dump();
  const std::string id = sent.accepted[0].id;

  json listed;
  EXPECT_TRUE(test::wait_until(
      [&] {
        json list = json::parse(call(msg("REQOpProcessList"), 5s).data, nullptr, false);
        if (!list.is_array()) return true;  // reported by the expectations below
        for (const auto& c : list) {
          if (c.value("id", "") == id) listed = c;
        }
        return !listed.is_null();
      },
      5s, 20ms));
  ASSERT_TRUE(listed.is_object()) << "op_process_list does not list the running call " << id;
  EXPECT_EQ(listed["method"], "slow_poll");
  EXPECT_EQ(listed["fromNode"], "n1");
  EXPECT_GE(listed.value("elapsedMs", -1), 0);
}

TEST_F(NodeTest, ProcessStopCancelsARunningCall) {
  start();
  auto waiter = std::make_shared<test::CollectingWaiter>();
  SubmitResult sent = node().submit(msg("slow_poll", {{"methodTimeout", 30}}), waiter);
  ASSERT_EQ(sent.accepted.size(), 1u) << sent.to_json().dump();
  const std::string id = sent.accepted[0].id;
  ASSERT_TRUE(test::wait_until([&] { return !node().running_calls().empty(); }, 5s));

  auto t0 = Clock::now();
  Message stopped = call(msg("REQOpProcessStop", {{"methodArgs", {id}}}));
  EXPECT_EQ(stopped.status, "ok") << stopped.error;
  EXPECT_EQ(stopped.data, "cancelled " + id);
  ASSERT_TRUE(waiter->wait_finals(1, 5s)) << "slow_poll did not end after op_process_stop";
  EXPECT_LT(ms_since(t0), 5000);
  auto replies = waiter->replies_to(id);
  ASSERT_FALSE(replies.empty());
  EXPECT_EQ(replies.back().status, "error");
  EXPECT_NE(replies.back().error.find("cancelled"), std::string::npos) << replies.back().error;
  EXPECT_TRUE(test::wait_until([&] { return node().running_calls().empty(); }, 5s))
      << node().running_calls().dump();

  Message unknown = call(msg("op_process_stop", {{"methodArgs", {"NOSUCHID"}}}));
  EXPECT_EQ(unknown.status, "error");
  EXPECT_NE(unknown.error.find("no running call with id \"NOSUCHID\""), std::string::npos)
      << unknown.error;
}

TEST_F(NodeTest, StreamedRepliesArriveInOrderAndTheLastIsFinal) {
  start();
  auto out = test::submit_and_wait(node(), msg("c_stream"));
  ASSERT_EQ(out.result.accepted.size(), 1u);
  std::vector<std::string> data;
  std::vector<bool> finals;
  for (const auto& r : out.replies) {
    data.push_back(r.data);
    finals.push_back(r.final_reply);
    EXPECT_EQ(r.seq, data.size() - 1);
  }
  EXPECT_EQ(data, (std::vector<std::string>{"1", "2", "3"}));
  EXPECT_EQ(finals, (std::vector<bool>{false, false, true}));

  auto lines = test::socket_send_wait(node_->socket(), json::array({msg("c_stream")}));
  std::vector<std::string> socket_data;
  for (const auto& r : test::lines_of_type(lines, "reply")) socket_data.push_back(r["data"]);
  EXPECT_EQ(socket_data, (std::vector<std::string>{"1", "2", "3"}));
}

TEST_F(NodeTest, HandlersRunConcurrently) {
  start();
  json batch = json::array();
  for (int i = 0; i < 8; ++i) batch.push_back(msg("greet_slow", {{"methodArgs", {"300"}}}));
  auto t0 = Clock::now();
  auto out = test::submit_and_wait(node(), batch, 20s);
  long long took = ms_since(t0);
  ASSERT_EQ(out.result.accepted.size(), 8u);
  for (size_t i = 0; i < 8; ++i) {
    ASSERT_NE(out.final_reply(i), nullptr);
    EXPECT_EQ(out.final_reply(i)->status, "ok") << out.final_reply(i)->error;
  }
  EXPECT_LT(took, 1500) << "8 calls of 300 ms took " << took << " ms: not run concurrently";
}

TEST_F(NodeTest, StewardReplyMethodAliasWritesTheFile) {
  start();
  Message r = call(
      msg("ping",
          {{"replyMethod", "REQToFile"}, {"directory", "replies/ping"}, {"fileName", "ping.txt"}}));
  EXPECT_EQ(r.data, "pong");
  fs::path file = setup_.data_dir() / "replies/ping/ping.txt";
  ASSERT_TRUE(test::wait_until([&] { return fs::exists(file); }, 5s)) << file;
  EXPECT_TRUE(test::wait_until([&] { return test::read_file(file) == "pong"; }, 2s))
      << test::read_file(file);

  // An absolute directory counts from the data folder, as in Steward.
  call(msg("ping", {{"replyMethod", "REQToFile"}, {"directory", "/abs"}, {"fileName", "p.txt"}}));
  EXPECT_TRUE(test::wait_until([&] { return fs::exists(setup_.data_dir() / "abs/p.txt"); }, 5s));
}

TEST_F(NodeTest, ReplyToFileRefusesToClimbOutOfTheDataFolder) {
  test::LogCapture log;
  start();
  Message r = call(msg(
      "ping", {{"replyMethod", "to_file"}, {"directory", "../x"}, {"fileName", "escaped.txt"}}));
  EXPECT_EQ(r.data, "pong");
  EXPECT_TRUE(test::wait_until([&] { return log.contains("must not contain \"..\""); }, 5s))
      << "the refusal is not logged; log:\n"
      << log.text();
  EXPECT_TRUE(log.contains("to_file")) << log.text();
  node_->stop();
  EXPECT_FALSE(fs::exists(setup_.root() / "x/escaped.txt"));
  EXPECT_FALSE(fs::exists(setup_.root() / "x"));
}

TEST_F(NodeTest, KvCounterPersistsAcrossARestart) {
  start();
  EXPECT_EQ(call(msg("count")).data, "1");
  EXPECT_EQ(call(msg("count")).data, "2");
  node_->stop();
  start();
  EXPECT_EQ(call(msg("count")).data, "3");
}

// Appends from several threads, past several buffer-fulls: every line
// whole, each thread's lines in the order it appended them.
TEST(AuditLog, LinesFromManyThreadsArriveWholeAndInOrder) {
  test::TempDir dir;
  const fs::path file = dir.path() / "audit.log";
  constexpr int kThreads = 4;
  constexpr int kLines = 3000;  // ~1 MiB in all: the 256 KiB buffer is swapped out often
  {
    AuditLog audit(file);
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&audit, t] {
        const std::string pad(60, 'a' + t);
        for (int i = 0; i < kLines; ++i) {
          audit.append("sent", json{{"thread", t}, {"n", i}, {"pad", pad}});
        }
      });
    }
    for (auto& th : threads) th.join();
  }  // closing writes out the rest
  std::vector<int> next(kThreads, 0);
  std::string text = test::read_file(file);
  size_t pos = 0, lines = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    ASSERT_NE(end, std::string::npos) << "last line not ended";
    json line = json::parse(text.substr(pos, end - pos), nullptr, false);
    ASSERT_FALSE(line.is_discarded()) << "not JSON: " << text.substr(pos, end - pos);
    ASSERT_EQ(line["kind"], "sent");
    ASSERT_TRUE(line["t"].is_number_integer());
    const int t = line["message"]["thread"];
    ASSERT_EQ(line["message"]["n"], next[t]) << "thread " << t << " out of order";
    ++next[t];
    ++lines;
    pos = end + 1;
  }
  EXPECT_EQ(lines, static_cast<size_t>(kThreads * kLines));
}

// A disk that takes no more (/dev/full): the lines are lost, said in the
// node's log, and appending goes on without an exception.
TEST(AuditLog, AFullDiskLosesLinesButNotTheNode) {
  if (!fs::exists("/dev/full")) GTEST_SKIP() << "no /dev/full here";
  AuditLog audit("/dev/full");
  for (int i = 0; i < 5000; ++i) {
    ASSERT_NO_THROW(audit.append("sent", json{{"n", i}, {"pad", std::string(100, 'x')}}));
  }
  EXPECT_NO_THROW(audit.flush());
}

TEST_F(NodeTest, AuditLogHoldsWholeMessages) {
  start();
  auto out = test::submit_and_wait(
      node(), msg("c_echo", {{"methodArgs", {"audit", "me"}}, {"replyMethod", "none"}}));
  ASSERT_EQ(out.result.accepted.size(), 1u);
  const std::string id = out.result.accepted[0].id;
  node_->stop();  // everything written and closed

  std::map<std::string, json> by_kind;
  std::string text = test::read_file(setup_.data_dir() / "audit.log");
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    json line = json::parse(text.substr(pos, end - pos), nullptr, false);
    ASSERT_FALSE(line.is_discarded()) << "audit line is not JSON: " << text.substr(pos, end - pos);
    const json& m = line["message"];
    if (m.value("id", "") == id || m.value("inReplyTo", "") == id) by_kind[line["kind"]] = line;
    pos = end + 1;
  }
  ASSERT_TRUE(by_kind.count("accepted")) << text;
  ASSERT_TRUE(by_kind.count("received")) << text;
  ASSERT_TRUE(by_kind.count("reply")) << text;
  for (const char* kind : {"accepted", "received"}) {
    const json& m = by_kind[kind]["message"];
    EXPECT_EQ(m["toNode"], "n1") << kind;
    EXPECT_EQ(m["fromNode"], "n1") << kind;
    EXPECT_EQ(m["method"], "c_echo") << kind;
    EXPECT_EQ(m["methodArgs"], json::array({"audit", "me"})) << kind;
    EXPECT_EQ(m["replyMethod"], "none") << kind;
    EXPECT_TRUE(m.contains("sentAt")) << kind;
    EXPECT_TRUE(by_kind[kind].contains("t")) << kind;
  }
  const json& reply = by_kind["reply"]["message"];
  EXPECT_EQ(reply["data"], "audit me");
  EXPECT_EQ(reply["isReply"], true);
  EXPECT_EQ(reply["method"], "none");
  EXPECT_EQ(reply["requestMethod"], "c_echo");
  EXPECT_EQ(reply["status"], "ok");
  // A line is enough to recreate the message.
  Message again = parse_message(by_kind["accepted"]["message"], "audit");
  EXPECT_EQ(again.method, "c_echo");
  EXPECT_EQ(again.method_args, (std::vector<std::string>{"audit", "me"}));
}

TEST(MessageText, IsTheSameJsonAsTheLibrarysForEveryKindOfData) {
  // to_text copies data that needs no escaping as it is and leaves the rest
  // to the JSON library: either way the text parses to to_json's object.
  Message m;
  m.id = new_message_id();
  m.from_node = "n1";
  m.to_node = "n2";
  m.method = "c_echo";
  m.method_args = {"a \"quoted\" arg", "tab\there"};
  m.sent_at_ms = 1234;
  m.extra["cause"] = {{"subject", "bosun.req.n1.x"}, {"envelope", "QUJD"}};
  std::string bad_utf8 = "caf\xc3";  // cut in the middle of a character
  for (const std::string& data :
       {std::string(), std::string("QUJDRA==+/09az"), std::string(300 * 1024, 'Q'),
        std::string("line\nwith \"quotes\" and \\ backslash"), std::string("\x01\x1f\x7f"),
        std::string("caf\xc3\xa9 \xe2\x82\xac"), bad_utf8}) {
    m.data = data;
    std::string text = to_text(m);
    json parsed = json::parse(text, nullptr, false);
    ASSERT_FALSE(parsed.is_discarded()) << text.substr(0, 200);
    json expected = json::parse(to_json(m).dump(-1, ' ', false, json::error_handler_t::replace),
                                nullptr, false);
    EXPECT_EQ(parsed, expected) << text.substr(0, 200);
    if (!data.empty() && data != bad_utf8) {
      EXPECT_EQ(parse_message(parsed, "text").data, data);
    }
  }
  // Invalid UTF-8 is replaced, as the library's dump does it.
  m.data = bad_utf8;
  EXPECT_EQ(parse_message(json::parse(to_text(m)), "text").data, "caf\xef\xbf\xbd");
}

// to_text writes a message without the JSON library when it has no fields
// of its own: byte for byte what the library writes (keys in its order,
// its number formats, its escaping), "data" last.
TEST(MessageText, WrittenDirectlyIsByteForByteTheLibrarysText) {
  auto reference = [](const Message& m) {
    json j = to_json(m);
    json data = j.contains("data") ? j["data"] : json();
    j.erase("data");
    std::string text = j.dump(-1, ' ', false, json::error_handler_t::replace);
    if (data.is_null()) return text;
    text.pop_back();
    if (text.size() > 1) text += ',';
    return text + "\"data\":" + data.dump(-1, ' ', false, json::error_handler_t::replace) + "}";
  };
  std::vector<Message> cases(1);  // an empty message first
  Message r;
  r.id = new_message_id();
  r.to_node = "central";
  r.from_node = "ship1";
  r.method = "to_file_append";
  r.method_args = {"x"};
  r.reply_method_args = {"caf\xc3\xa9", "tab\there", ""};
  r.is_reply = true;
  r.in_reply_to = new_message_id();
  r.request_method = "cli_command";
  r.final_reply = false;
  r.seq = 4294967295u;
  r.status = "error";
  r.error = "it \"failed\"\n";
  r.directory = "/results";
  r.file_name = "out.txt";
  r.sent_at_ms = 1796654122274;
  r.data = "line\n";
  cases.push_back(r);
  Message q;
  q.to_node = "ship2";
  q.to_nodes = {"ship2", "ship3"};
  q.method = "ping";
  q.reply_method = "to_console";
  q.ack_timeout = 5;
  q.retries = 0;
  q.reply_ack_timeout = 0.25;
  q.reply_retries = 1000;
  q.method_timeout = -1;
  q.reply_method_timeout = 1e-3;
  q.relay_via_node = "central";
  q.relay_reply_method = "none";
  q.status = "ignored on a request";
  q.data = "caf\xc3";  // cut UTF-8: replaced
  cases.push_back(q);
  q.method_timeout = 123456.789;
  q.is_reply = true;  // a reply's defaults: final, seq 0, no status
  q.data.clear();
  cases.push_back(q);
  for (const auto& m : cases) EXPECT_EQ(to_text(m), reference(m));
  // With fields of its own it is the library's text too.
  q.extra["cause"] = {{"subject", "s"}, {"envelope", "QUJD"}};
  q.extra["zzz"] = 1;
  EXPECT_EQ(to_text(q), reference(q));
}

// Every field of a message, for comparing two.
json every_field(const Message& m) {
  auto opt = [](const auto& o) { return o ? json(*o) : json(); };
  return {{"to_node", m.to_node},
          {"to_nodes", m.to_nodes},
          {"method", m.method},
          {"method_args", m.method_args},
          {"reply_method", m.reply_method},
          {"reply_method_args", m.reply_method_args},
          {"ack_timeout", opt(m.ack_timeout)},
          {"retries", opt(m.retries)},
          {"reply_ack_timeout", opt(m.reply_ack_timeout)},
          {"reply_retries", opt(m.reply_retries)},
          {"method_timeout", opt(m.method_timeout)},
          {"reply_method_timeout", opt(m.reply_method_timeout)},
          {"directory", m.directory},
          {"file_name", m.file_name},
          {"relay_via_node", m.relay_via_node},
          {"relay_reply_method", m.relay_reply_method},
          {"data", json::binary({m.data.begin(), m.data.end()})},
          {"id", m.id},
          {"from_node", m.from_node},
          {"sent_at_ms", m.sent_at_ms},
          {"is_reply", m.is_reply},
          {"in_reply_to", m.in_reply_to},
          {"request_method", m.request_method},
          {"final_reply", m.final_reply},
          {"seq", m.seq},
          {"status", m.status},
          {"error", m.error},
          {"extra", m.extra}};
}

// What the general way (json::parse + parse_message) makes of a text: the
// messages, or nullopt when it refuses it.
std::optional<std::vector<Message>> read_generally(std::string_view text) {
  json doc = json::parse(text, nullptr, false);
  if (doc.is_discarded()) return std::nullopt;
  std::vector<Message> out;
  try {
    if (!doc.is_array()) {
      out.push_back(parse_message(doc, "m"));
    } else {
      for (const auto& one : doc) out.push_back(parse_message(one, "m"));
    }
  } catch (const MessageError&) {
    return std::nullopt;
  }
  return out;
}

// read_messages (the bus's fast path) reads bosun's own messages itself,
// and whatever it reads, alone or in a batch, the general way reads the
// same; whatever it leaves, the general way gets. Checked on every message
// of the to_text test and on thousands of corruptions of them.
TEST(MessageText, ReadDirectlyIsWhatTheGeneralWayMakesOfIt) {
  std::vector<Message> ms(3);
  ms[0].id = new_message_id();
  ms[0].to_node = "ship1";
  ms[0].from_node = "central";
  ms[0].method = "ping";
  ms[0].sent_at_ms = 1796654122274;
  ms[1] = ms[0];
  ms[1].method = "cli_command";
  ms[1].method_args = {"bash", "-c", "echo \"a\tb\" \\ /x"};
  ms[1].reply_method = "to_file_append";
  ms[1].reply_method_args = {"y"};
  ms[1].ack_timeout = 0.5;
  ms[1].retries = 3;
  ms[1].reply_ack_timeout = 5;
  ms[1].reply_retries = 0;
  ms[1].method_timeout = -1;
  ms[1].reply_method_timeout = 604800;
  ms[1].directory = "/d";
  ms[1].file_name = "f";
  ms[1].relay_via_node = "central";
  ms[1].relay_reply_method = "to_console";
  ms[1].to_nodes = {"ship1", "ship2"};
  ms[1].data = "line 1\nline 2\u0001";
  ms[2] = ms[0];
  ms[2].is_reply = true;
  ms[2].in_reply_to = new_message_id();
  ms[2].request_method = "ping";
  ms[2].final_reply = false;
  ms[2].seq = 7;
  ms[2].status = "error";
  ms[2].error = "it failed";
  ms[2].data = "pong";

  std::vector<std::string> texts;
  for (const auto& m : ms) texts.push_back(to_text(m));
  texts.push_back("[" + texts[0] + "," + texts[1] + ",\n " + texts[2] + "]");
  texts.push_back(" {\"toNode\":\"a\",\"method\":\"REQPing\",\"\\u0069d\":\"x\\u00e9\\/\"} ");
  for (const auto& t : texts) {
    bool batch = false;
    auto fast = read_messages(t, &batch);
    ASSERT_TRUE(fast.has_value()) << "bosun's own message went the general way: " << t;
    auto general = read_generally(t);
    ASSERT_TRUE(general.has_value()) << t;
    ASSERT_EQ(fast->size(), general->size());
    EXPECT_EQ(batch, t.find('[') < t.find('{'));
    for (size_t i = 0; i < fast->size(); ++i) {
      EXPECT_EQ(every_field((*fast)[i].msg), every_field((*general)[i])) << t;
      // Each message's own text, for the inbox, is the JSON of that message.
      EXPECT_EQ(every_field(parse_message(json::parse((*fast)[i].text), "m")),
                every_field((*general)[i]));
    }
  }

  // Corruptions: every byte of each text replaced by each of these, or
  // removed. Whatever the fast path reads must be what the general way reads.
  const std::string replacements[] = {"",  "\"", "\\", "0", "-",    "1e400",
                                      "[", "{",  ",",  "x", "\x80", "null"};
  size_t read_fast = 0, checked = 0;
  for (const auto& t : texts) {
    for (size_t pos = 0; pos < t.size(); ++pos) {
      for (const auto& r : replacements) {
        std::string bad = t.substr(0, pos) + r + t.substr(pos + 1);
        bool batch = false;
        auto fast = read_messages(bad, &batch);
        ++checked;
        if (!fast) continue;
        ++read_fast;
        auto general = read_generally(bad);
        ASSERT_TRUE(general.has_value()) << "read directly, refused generally: " << bad;
        ASSERT_EQ(fast->size(), general->size()) << bad;
        for (size_t i = 0; i < fast->size(); ++i) {
          ASSERT_EQ(every_field((*fast)[i].msg), every_field((*general)[i])) << bad;
        }
      }
    }
  }
  // Enough of them were still messages for this to have checked something.
  EXPECT_GT(read_fast, checked / 20) << read_fast << " of " << checked;
}

TEST_F(NodeTest, HelloFromTheInstalledSdkBuildGreets) {
  start();
  Message r = call(msg("greet", {{"methodArgs", {"world"}}}));
  EXPECT_EQ(r.status, "ok") << r.error;
  EXPECT_EQ(r.data, "hello world from n1 (hello 1.0.0)");
}

}  // namespace
}  // namespace bosun::host
