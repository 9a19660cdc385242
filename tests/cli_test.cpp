// The `bosun` executable (DESIGN §10), run as a user would: help texts,
// config init/check, `bosun run` as a child process, and send / plugins
// against it through its socket.
#include <gtest/gtest.h>
#include <signal.h>

#include <string>
#include <vector>

#include "node_harness.hpp"

namespace bosun::test {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct Outcome {
  int code;
  std::string out;  // stdout and stderr
};

Outcome bosun(std::vector<std::string> args, const std::string& stdin_text = "") {
  args.insert(args.begin(), BOSUN_BIN);
  Outcome r{};
  r.code = run_command(args, &r.out, true, stdin_text, 30s);
  return r;
}

Outcome bosun_stdout(std::vector<std::string> args) {
  args.insert(args.begin(), BOSUN_BIN);
  Outcome r{};
  r.code = run_command(args, &r.out, false, "", 30s);
  return r;
}

TEST(Cli, EveryHelpExitsZeroAndShowsAnExample) {
  const std::vector<std::vector<std::string>> helps = {{"--help"},
                                                       {"run", "--help"},
                                                       {"send", "--help"},
                                                       {"plugins", "--help"},
                                                       {"watch", "--help"},
                                                       {"config", "--help"},
                                                       {"config", "init", "--help"},
                                                       {"config", "check", "--help"}};
  for (const auto& argv : helps) {
    std::string shown;
    for (const auto& a : argv) shown += a + " ";
    Outcome r = bosun(argv);
    EXPECT_EQ(r.code, 0) << "bosun " << shown << "\n" << r.out;
    EXPECT_NE(r.out.find("Example"), std::string::npos) << "bosun " << shown << "\n" << r.out;
  }
}

TEST(Cli, NoSubcommandIsAnError) {
  Outcome r = bosun({});
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("subcommand"), std::string::npos) << r.out;
}

TEST(Cli, ConfigInitWritesAFileThatConfigCheckAccepts) {
  TempDir dir;
  fs::path file = dir / "bosun.json";
  Outcome init = bosun({"config", "init", file.string(), "--name", "n1"});
  ASSERT_EQ(init.code, 0) << init.out;
  ASSERT_TRUE(fs::exists(file));
  json doc = json::parse(read_file(file), nullptr, false);
  ASSERT_TRUE(doc.is_object()) << read_file(file);
  EXPECT_EQ(doc["node"]["name"], "n1");

  Outcome check = bosun({"config", "check", "--config", file.string()});
  EXPECT_EQ(check.code, 0) << check.out;
  EXPECT_NE(check.out.find("n1"), std::string::npos) << check.out;

  // A second init keeps the file the operator may have edited.
  Outcome again = bosun({"config", "init", file.string(), "--name", "n2"});
  EXPECT_NE(again.code, 0) << again.out;
  EXPECT_NE(again.out.find("--force"), std::string::npos) << again.out;
  EXPECT_EQ(json::parse(read_file(file))["node"]["name"], "n1");
}

TEST(Cli, ConfigCheckNamesTheJsonPathOfAnUnknownKey) {
  TempDir dir;
  fs::path file = dir / "bosun.json";
  write_file(file, R"({"node": {"name": "n1", "dataDirr": "var/n1"}})");
  Outcome r = bosun({"config", "check", "--config", file.string()});
  EXPECT_NE(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("$.node.dataDirr"), std::string::npos) << r.out;
}

TEST(Cli, RunWithABadConfigExitsNonZeroNamingThePath) {
  TempDir dir;
  fs::path file = dir / "bosun.json";
  write_file(file, R"({"node": {"name": "n1"}, "defaults": {"methodTimeout": "ten"}})");
  Outcome r = bosun({"run", "--config", file.string()});
  EXPECT_NE(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("$.defaults.methodTimeout"), std::string::npos) << r.out;

  Outcome missing = bosun({"run", "--config", (dir / "nope.json").string()});
  EXPECT_NE(missing.code, 0) << missing.out;
  EXPECT_NE(missing.out.find("nope.json"), std::string::npos) << missing.out;
}

// ------------------------------------------------- against `bosun run` ---

class CliNode : public ::testing::Test {
 protected:
  void SetUp() override {
    setup_.add_plugin("sinks");
    setup_.add_fixture("fx_c_echo");
    run_ = std::make_unique<BosunRun>(setup_);
    config_ = run_->config_file().string();
  }

  NodeSetup setup_;
  std::unique_ptr<BosunRun> run_;
  std::string config_;
};

TEST_F(CliNode, SendPingWaitPrintsPong) {
  Outcome r = bosun({"send", "--config", config_, "--to", "n1", "--method", "ping", "--wait"});
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("pong"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("n1"), std::string::npos) << r.out;
}

TEST_F(CliNode, SendPassesArgumentsAfterTheDoubleDash) {
  Outcome r = bosun({"send", "--config", config_, "--to", "n1", "--method", "c_echo", "--wait",
                     "--", "hello", "--world"});
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("hello --world"), std::string::npos) << r.out;
}

TEST_F(CliNode, SendWaitWithAnUnknownMethodFails) {
  Outcome r = bosun({"send", "--config", config_, "--to", "n1", "--method", "pnig", "--wait"});
  EXPECT_NE(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("unknown method \"pnig\""), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("did you mean \"ping\""), std::string::npos) << r.out;
}

TEST_F(CliNode, SendWaitJsonPrintsOneObjectPerLine) {
  Outcome r = bosun_stdout(
      {"send", "--config", config_, "--to", "n1", "--method", "ping", "--wait", "--json"});
  EXPECT_EQ(r.code, 0) << r.out;
  bool pong = false;
  size_t pos = 0;
  while (pos < r.out.size()) {
    size_t end = r.out.find('\n', pos);
    if (end == std::string::npos) end = r.out.size();
    json line = json::parse(r.out.substr(pos, end - pos), nullptr, false);
    EXPECT_FALSE(line.is_discarded()) << r.out.substr(pos, end - pos);
    if (line.value("type", "") == "reply" && line.value("data", "") == "pong") pong = true;
    pos = end + 1;
  }
  EXPECT_TRUE(pong) << r.out;
}

TEST_F(CliNode, SendAStewardMessageFile) {
  // A message file as Steward users write them: its field names, a Steward
  // reply method, delivery settings.
  fs::path file = setup_.root() / "ping.json";
  write_file(file, R"([
  {
    "directory": "cli-replies",
    "fileName": "ping.txt",
    "toNode": "n1",
    "method": "ping",
    "methodArgs": [],
    "replyMethod": "REQToFile",
    "ACKTimeout": 5,
    "retries": 1,
    "replyACKTimeout": 5,
    "replyRetries": 1,
    "methodTimeout": 10
  }
])");
  Outcome r = bosun({"send", "--config", config_, "--wait", file.string()});
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("pong"), std::string::npos) << r.out;
  fs::path written = setup_.data_dir() / "cli-replies/ping.txt";
  EXPECT_TRUE(wait_until([&] { return read_file(written) == "pong"; }, 10s))
      << written << " holds \"" << read_file(written) << "\"; node log:\n"
      << run_->log();

  // Without --wait it says what was accepted.
  Outcome nowait = bosun({"send", "--config", config_, file.string()});
  EXPECT_EQ(nowait.code, 0) << nowait.out;
  EXPECT_NE(nowait.out.find("accepted"), std::string::npos) << nowait.out;
  EXPECT_NE(nowait.out.find("-> n1 ping"), std::string::npos) << nowait.out;

  // The same from stdin.
  Outcome in = bosun({"send", "--config", config_, "--wait", "-"}, read_file(file));
  EXPECT_EQ(in.code, 0) << in.out;
  EXPECT_NE(in.out.find("pong"), std::string::npos) << in.out;
}

TEST_F(CliNode, SendAFileThatIsNotJsonFails) {
  fs::path file = setup_.root() / "bad.json";
  write_file(file, R"([{"toNode": "n1", "method": "ping")");
  Outcome r = bosun({"send", "--config", config_, "--wait", file.string()});
  EXPECT_NE(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("not valid JSON"), std::string::npos) << r.out;
}

TEST_F(CliNode, PluginsJsonListsSinksActive) {
  Outcome r = bosun_stdout({"plugins", "--config", config_, "--json"});
  ASSERT_EQ(r.code, 0) << r.out;
  json list = json::parse(r.out, nullptr, false);
  ASSERT_TRUE(list.is_array()) << r.out;
  bool sinks = false;
  for (const auto& p : list) {
    if (p.value("name", "") != "sinks") continue;
    sinks = true;
    EXPECT_EQ(p.value("state", ""), "active") << p.dump();
    EXPECT_NE(std::find(p["methods"].begin(), p["methods"].end(), "to_file"), p["methods"].end());
  }
  EXPECT_TRUE(sinks) << r.out;

  Outcome table = bosun({"plugins", "--config", config_});
  EXPECT_EQ(table.code, 0) << table.out;
  EXPECT_NE(table.out.find("sinks"), std::string::npos) << table.out;
  EXPECT_NE(table.out.find("active"), std::string::npos) << table.out;
}

TEST_F(CliNode, SigtermStopsTheNodeAndRemovesTheSocket) {
  ASSERT_TRUE(fs::exists(setup_.socket()));
  run_->process().signal(SIGTERM);
  int code = run_->process().wait(15s);
  EXPECT_EQ(code, 0) << "exit code " << code << "; log:\n" << run_->log();
  EXPECT_FALSE(fs::exists(setup_.socket()));

  Outcome r = bosun({"send", "--config", config_, "--to", "n1", "--method", "ping", "--wait"});
  EXPECT_NE(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("is `bosun run` running?"), std::string::npos) << r.out;
}

TEST(Cli, SecondNodeOnTheSameSocketIsRefused) {
  NodeSetup setup;
  BosunRun first(setup);
  Outcome second = bosun({"run", "--config", first.config_file().string()});
  EXPECT_NE(second.code, 0) << second.out;
  EXPECT_NE(second.out.find("already serving"), std::string::npos) << second.out;
  EXPECT_TRUE(first.process().running());
}

}  // namespace
}  // namespace bosun::test
