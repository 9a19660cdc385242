// core/cli end to end (DESIGN §9): a standalone node with the real cli.so
// runs real commands; output, exit codes, streaming, methodTimeout killing
// the whole process group, the child's environment, output limits, bad
// input, Steward's alias, and cli_command as a reply method.
#include <gtest/gtest.h>
#include <signal.h>

#include <cerrno>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
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

json msg(const std::string& method, json args, json extra = json::object()) {
  json m = {{"toNode", "n1"}, {"method", method}, {"methodArgs", std::move(args)}};
  m.update(extra);
  return m;
}

json bash(const std::string& script) {
  return json::array({"bash", "-c", script});
}

long long ms_since(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t).count();
}

// Gone, or a zombie waiting for whoever inherited it to reap it.
bool process_gone(pid_t pid) {
  if (::kill(pid, 0) != 0 && errno == ESRCH) return true;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return true;
  size_t paren = line.rfind(')');
  return paren != std::string::npos && paren + 2 < line.size() && line[paren + 2] == 'Z';
}

class CliModuleTest : public ::testing::Test {
 protected:
  void SetUp() override { setup_.add_plugin("cli"); }

  RunningNode& start() {
    node_ = std::make_unique<RunningNode>(setup_.config());
    return *node_;
  }
  Node& node() { return node_->node(); }

  // Every reply to a single message, the final one last.
  std::vector<Message> replies(const json& m, std::chrono::milliseconds timeout = 20s) {
    auto out = test::submit_and_wait(node(), m, timeout);
    EXPECT_EQ(out.result.accepted.size(), 1u) << out.result.to_json().dump();
    if (out.result.accepted.empty()) return {};
    std::vector<Message> mine;
    for (const auto& r : out.replies) {
      if (r.in_reply_to == out.result.accepted[0].id) mine.push_back(r);
    }
    EXPECT_FALSE(mine.empty()) << "no reply to " << m.dump();
    if (!mine.empty()) {
      EXPECT_TRUE(mine.back().final_reply);
    }
    return mine;
  }

  Message call(const json& m, std::chrono::milliseconds timeout = 20s) {
    auto all = replies(m, timeout);
    if (all.empty()) return {};
    EXPECT_EQ(all.size(), 1u) << "cli_command replies once";
    return all.back();
  }

  NodeSetup setup_;
  std::unique_ptr<RunningNode> node_;
};

TEST_F(CliModuleTest, EchoRepliesWithItsStdout) {
  start();
  Message r = call(msg("cli_command", {"echo", "hello"}));
  EXPECT_EQ(r.status, "ok") << r.error;
  EXPECT_EQ(r.data, "hello\n");
}

TEST_F(CliModuleTest, StewardAliasRunsTheCommand) {
  start();
  Message r = call(msg("REQCliCommand", {"echo", "from", "steward"}));
  EXPECT_EQ(r.status, "ok") << r.error;
  EXPECT_EQ(r.request_method, "cli_command");
  EXPECT_EQ(r.data, "from steward\n");
}

TEST_F(CliModuleTest, NonZeroExitFailsTheCallButStillRepliesTheOutput) {
  start();
  Message r = call(msg("cli_command", bash("echo partial; echo first >&2; echo boom >&2; exit 3")));
  EXPECT_EQ(r.status, "error");
  EXPECT_EQ(r.error, "cli_command: exit code 3: boom");
  EXPECT_EQ(r.data, "partial\n--- stderr ---\nfirst\nboom\n");
}

TEST_F(CliModuleTest, ExitCodeWithoutStderrIsNamedAlone) {
  start();
  Message r = call(msg("cli_command", {"false"}));
  EXPECT_EQ(r.status, "error");
  EXPECT_EQ(r.error, "cli_command: exit code 1");
  EXPECT_EQ(r.data, "");
}

TEST_F(CliModuleTest, StderrIsCapturedAfterASeparatorLine) {
  start();
  Message r = call(msg("cli_command", bash("printf out; echo err >&2")));
  EXPECT_EQ(r.status, "ok") << r.error;
  EXPECT_EQ(r.data, "out\n--- stderr ---\nerr\n");
}

TEST_F(CliModuleTest, JsonFormatGivesEveryField) {
  setup_.extension("cli")["settings"] = {{"format", "json"}};
  start();
  Message r = call(msg("cli_command", bash("echo out; echo err >&2; exit 4")));
  EXPECT_EQ(r.status, "error");
  EXPECT_EQ(r.error, "cli_command: exit code 4: err");
  json j = json::parse(r.data, nullptr, false);
  ASSERT_TRUE(j.is_object()) << r.data;
  EXPECT_EQ(j["stdout"], "out\n");
  EXPECT_EQ(j["stderr"], "err\n");
  EXPECT_EQ(j["exitCode"], 4);
  EXPECT_TRUE(j["signal"].is_null());
  EXPECT_EQ(j["timedOut"], false);
  EXPECT_EQ(j["truncated"], false);
  EXPECT_TRUE(j["durationMs"].is_number_integer());

  Message killed = call(msg("cli_command", bash("kill -9 $$")));
  EXPECT_EQ(killed.status, "error");
  EXPECT_EQ(killed.error, "cli_command: killed by signal 9 (SIGKILL)");
  json k = json::parse(killed.data, nullptr, false);
  ASSERT_TRUE(k.is_object()) << killed.data;
  EXPECT_TRUE(k["exitCode"].is_null());
  EXPECT_EQ(k["signal"], 9);
}

TEST_F(CliModuleTest, ContStreamsEachLineAsItComes) {
  start();
  auto t0 = Clock::now();
  auto all = replies(msg("cli_command_cont", bash("for i in 1 2 3; do echo $i; sleep 0.2; done")));
  EXPECT_GE(ms_since(t0), 400);
  std::vector<std::string> chunks;
  for (const auto& r : all) {
    if (!r.data.empty()) chunks.push_back(r.data);
  }
  EXPECT_EQ(chunks, (std::vector<std::string>{"1\n", "2\n", "3\n"}));
  ASSERT_FALSE(all.empty());
  EXPECT_EQ(all.back().status, "ok") << all.back().error;
  for (size_t i = 0; i < all.size(); ++i) EXPECT_EQ(all[i].seq, i);
}

TEST_F(CliModuleTest, ContFailsOnNonZeroExitAfterStreaming) {
  start();
  auto all = replies(msg("cli_command_cont", bash("echo one; sleep 0.2; echo bad >&2; exit 5")));
  std::string text;
  for (const auto& r : all) text += r.data;
  EXPECT_EQ(text, "one\nbad\n");
  ASSERT_FALSE(all.empty());
  EXPECT_EQ(all.back().status, "error");
  EXPECT_EQ(all.back().error, "cli_command_cont: exit code 5: bad");
}

TEST_F(CliModuleTest, MethodTimeoutKillsTheWholeProcessGroup) {
  start();
  fs::path pid_file = setup_.root() / "grandchild.pid";
  std::string script =
      "sleep 30 & echo $! > " + pid_file.string() + "; trap '' TERM; sleep 30; wait";
  auto t0 = Clock::now();
  Message r = call(msg("cli_command", bash(script), {{"methodTimeout", 1}}), 10s);
  long long took = ms_since(t0);
  EXPECT_EQ(r.status, "error");
  EXPECT_NE(r.error.find("timed out after 1 s"), std::string::npos) << r.error;
  EXPECT_GE(took, 900);
  EXPECT_LT(took, 3000);

  ASSERT_TRUE(test::wait_until([&] { return fs::exists(pid_file); }, 2s));
  pid_t grandchild = std::stoi(test::read_file(pid_file));
  ASSERT_GT(grandchild, 1);
  // bash ignores SIGTERM here, so only the SIGKILL after killGrace (2 s) ends it.
  EXPECT_TRUE(test::wait_until([&] { return process_gone(grandchild); }, 5s))
      << "the background sleep " << grandchild << " outlived the call";
  EXPECT_TRUE(test::wait_until([&] { return node().running_calls().empty(); }, 5s))
      << node().running_calls().dump();
}

TEST_F(CliModuleTest, ProcessStopCancelsAndSaysSo) {
  setup_.extension("cli")["settings"] = {{"killGrace", 200}};
  start();
  auto waiter = std::make_shared<test::CollectingWaiter>();
  SubmitResult sent = node().submit(
      msg("cli_command_cont", bash("echo started; sleep 30"), {{"methodTimeout", 30}}), waiter);
  ASSERT_EQ(sent.accepted.size(), 1u) << sent.to_json().dump();
  const std::string id = sent.accepted[0].id;
  ASSERT_TRUE(test::wait_until([&] { return !waiter->replies_to(id).empty(); }, 5s));

  auto t0 = Clock::now();
  Message stopped = call(msg("op_process_stop", {id}));
  EXPECT_EQ(stopped.status, "ok") << stopped.error;
  ASSERT_TRUE(waiter->wait_finals(1, 5s));
  EXPECT_LT(ms_since(t0), 2000);
  auto all = waiter->replies_to(id);
  ASSERT_FALSE(all.empty());
  EXPECT_EQ(all.front().data, "started\n");
  EXPECT_EQ(all.back().status, "error");
  EXPECT_EQ(all.back().error,
            "cli_command_cont: cancelled: the command's process group was killed");
}

TEST_F(CliModuleTest, ChildSeesTheRequestInItsEnvironment) {
  start();
  auto out = test::submit_and_wait(
      node(), msg("cli_command", bash("echo $BOSUN_METHOD $BOSUN_FROM_NODE $BOSUN_MESSAGE_ID")));
  ASSERT_EQ(out.result.accepted.size(), 1u);
  const Message* r = out.final_reply();
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->status, "ok") << r->error;
  EXPECT_EQ(r->data, "cli_command n1 " + out.result.accepted[0].id + "\n");
}

TEST_F(CliModuleTest, ChildGetsNullStdinAndNoInheritedDescriptors) {
  start();
  Message r = call(msg("cli_command", bash("cat; ls /proc/self/fd")));
  EXPECT_EQ(r.status, "ok") << r.error;
  // 0-2, and the folder ls itself opened.
  EXPECT_EQ(r.data, "0\n1\n2\n3\n");
}

TEST_F(CliModuleTest, OutputBeyondTheLimitIsCutWithAMarker) {
  setup_.extension("cli")["settings"] = {{"maxOutputBytes", 4096}};
  start();
  const std::string producer = "head -c 10000000 /dev/zero | tr '\\0' x";
  Message r = call(msg("cli_command", bash(producer)), 30s);
  EXPECT_EQ(r.status, "ok") << r.error;
  EXPECT_LT(r.data.size(), 8192u);
  EXPECT_EQ(r.data.substr(0, 4096), std::string(4096, 'x'));
  EXPECT_EQ(r.data.substr(4096), "\n[bosun: output truncated after 4096 bytes]\n");

  auto all = replies(msg("cli_command_cont", bash(producer)), 30s);
  std::string streamed;
  for (const auto& m : all) streamed += m.data;
  EXPECT_LT(streamed.size(), 8192u);
  EXPECT_NE(streamed.find("[bosun: output truncated after 4096 bytes]"), std::string::npos);
}

TEST_F(CliModuleTest, MissingCommandIsNamedWithTheReason) {
  start();
  Message r = call(msg("cli_command", {"nosuchcmd", "-x"}));
  EXPECT_EQ(r.status, "error");
  EXPECT_EQ(r.error, "cli_command: cannot run \"nosuchcmd\": No such file or directory");

  Message dir = call(msg("cli_command", {setup_.root().string()}));
  EXPECT_EQ(dir.status, "error");
  EXPECT_EQ(dir.error,
            "cli_command: cannot run \"" + setup_.root().string() + "\": Permission denied");
}

TEST_F(CliModuleTest, EmptyMethodArgsIsAnError) {
  start();
  Message r = call(msg("cli_command", json::array()));
  EXPECT_EQ(r.status, "error");
  EXPECT_EQ(r.error,
            "cli_command: methodArgs must hold the command to run, e.g. [\"uname\",\"-a\"]");
  Message empty = call(msg("cli_command_cont", {""}));
  EXPECT_EQ(empty.status, "error");
  EXPECT_EQ(empty.error,
            "cli_command_cont: methodArgs[0] must name the command to run, not be empty");
}

TEST_F(CliModuleTest, AsAReplyMethodTheDataReplacesThePlaceholders) {
  start();
  fs::path out = setup_.root() / "OUT";
  Message pong = call(msg(
      "ping", json::array(),
      {{"replyMethod", "cli_command"},
       {"replyMethodArgs", bash("echo got {{BOSUN_DATA}} {{STEWARD_DATA}} > " + out.string())}}));
  EXPECT_EQ(pong.data, "pong");
  EXPECT_TRUE(
      test::wait_until([&] { return fs::exists(out) && !test::read_file(out).empty(); }, 5s));
  EXPECT_EQ(test::read_file(out), "got pong pong\n");
  EXPECT_TRUE(test::wait_until([&] { return node().running_calls().empty(); }, 5s))
      << node().running_calls().dump();
}

TEST_F(CliModuleTest, BackgroundProcessHoldingThePipesDoesNotHoldTheCall) {
  start();
  auto t0 = Clock::now();
  Message r = call(msg("cli_command", bash("sleep 3 & echo done")));
  EXPECT_LT(ms_since(t0), 2000) << "the call waited for the background sleep";
  EXPECT_EQ(r.status, "ok") << r.error;
  EXPECT_EQ(r.data, "done\n");
}

TEST_F(CliModuleTest, CallsRunConcurrentlyEachWithItsOwnOutput) {
  start();
  json batch = json::array({msg("cli_command", bash("sleep 1; echo a")),
                            msg("cli_command", bash("sleep 1; echo b >&2; exit 2"))});
  auto t0 = Clock::now();
  auto out = test::submit_and_wait(node(), batch);
  EXPECT_LT(ms_since(t0), 1900);
  ASSERT_EQ(out.result.accepted.size(), 2u);
  const Message* a = out.final_reply(0);
  const Message* b = out.final_reply(1);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(a->status, "ok") << a->error;
  EXPECT_EQ(a->data, "a\n");
  EXPECT_EQ(b->status, "error");
  EXPECT_EQ(b->error, "cli_command: exit code 2: b");
  EXPECT_EQ(b->data, "--- stderr ---\nb\n");
}

TEST_F(CliModuleTest, BadSettingsFailTheModuleWithTheReason) {
  setup_.extension("cli")["settings"] = {{"maxOutputBytes", "big"}};
  start();
  bool found = false;
  for (const auto& p : node().plugins()) {
    if (p.name != "cli") continue;
    found = true;
    EXPECT_EQ(p.state, PluginState::failed);
    EXPECT_NE(p.reason.find("\"maxOutputBytes\" must be a positive integer, not \"big\""),
              std::string::npos)
        << p.reason;
  }
  EXPECT_TRUE(found);
}

}  // namespace
}  // namespace bosun::host
