// `cmake --install` into a prefix (the ctest fixture install_prefix does it,
// see tests/sdk_tests.cmake): the layout, the installed binary serving the
// installed modules, the example config, the systemd unit; and the journal
// log format of `bosun run` under systemd.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <regex>
#include <string>
#include <vector>

#include "node_harness.hpp"

namespace bosun::test {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const fs::path kPrefix = BOSUN_INSTALL_PREFIX;
const std::vector<std::string> kModules = {"beat",  "cli",   "crypt", "filecopy", "node",
                                           "relay", "sinks", "tail",  "vault"};

TEST(Install, LaysOutBinaryModulesSdkConfigAndUnit) {
  ASSERT_TRUE(fs::exists(kPrefix))
      << kPrefix << " is missing: run the ctest fixture install_prefix";
  fs::path bin = kPrefix / "bin/bosun";
  ASSERT_TRUE(fs::exists(bin));
  EXPECT_TRUE((fs::status(bin).permissions() & fs::perms::owner_exec) != fs::perms::none);
  // Loaded by bin/bosun only when metrics.listen is set.
  EXPECT_TRUE(fs::exists(kPrefix / "lib/bosun/bosun-metrics.so"));
  for (const auto& m : kModules) {
    fs::path so = kPrefix / "lib/bosun/plugins" / (m + ".so");
    EXPECT_TRUE(fs::exists(so)) << so;
    // The loader refuses modules others can write.
    EXPECT_EQ(fs::status(so).permissions() & (fs::perms::group_write | fs::perms::others_write),
              fs::perms::none)
        << so;
  }
  for (const char* f : {"include/bosun/plugin.h", "include/bosun/plugin.hpp",
                        "lib/cmake/bosun-sdk/bosun-sdkConfig.cmake",
                        "lib/cmake/bosun-sdk/bosun-sdkConfigVersion.cmake",
                        "lib/cmake/bosun-sdk/BosunPlugin.cmake", "share/bosun/bosun.example.json",
                        "lib/systemd/system/bosun.service", "lib/sysusers.d/bosun.conf",
                        "share/doc/bosun/operating.md", "share/doc/bosun/writing-plugins.md"}) {
    EXPECT_TRUE(fs::exists(kPrefix / f)) << kPrefix / f;
  }
}

TEST(Install, ExampleConfigPassesConfigCheckAndNamesTheInstalledModules) {
  fs::path example = kPrefix / "share/bosun/bosun.example.json";
  std::string out;
  int code = run_command(
      {(kPrefix / "bin/bosun").string(), "config", "check", "--config", example.string(), "--json"},
      &out, false);
  ASSERT_EQ(code, 0) << out;
  json result = json::parse(out, nullptr, false);
  EXPECT_EQ(result.value("ok", false), true) << out;
  json doc = json::parse(read_file(example), nullptr, false);
  ASSERT_TRUE(doc.is_object());
  EXPECT_EQ(doc["plugins"]["dir"], (kPrefix / "lib/bosun/plugins").string());
  EXPECT_EQ(doc["node"]["dataDir"], "/var/lib/bosun");  // the unit's StateDirectory
}

// Runs the installed binary on `setup` with the installed modules, and waits
// (30 s at most) until `bosun plugins --json` answers: its output in *plugins.
// The node is null when it stopped or never answered (the log says why).
std::unique_ptr<Process> start_installed(NodeSetup& setup, const fs::path& log,
                                         std::string* plugins) {
  const std::string bin = (kPrefix / "bin/bosun").string();
  setup.doc()["plugins"]["dir"] = (kPrefix / "lib/bosun/plugins").string();
  fs::path config = setup.write_config();
  auto node = std::make_unique<Process>(
      std::vector<std::string>{bin, "run", "--config", config.string()}, log);
  bool listed = wait_until(
      [&] {
        if (!node->running()) return true;
        plugins->clear();
        return run_command({bin, "plugins", "--config", config.string(), "--json"}, plugins, false,
                           "", 10s) == 0;
      },
      30s, 100ms);
  if (!listed || !node->running()) return nullptr;
  return node;
}

TEST(Install, TheInstalledBinaryServesTheInstalledModules) {
  NodeSetup setup;
  fs::path log = setup.root() / "run.log";
  std::string out;
  auto node = start_installed(setup, log, &out);
  ASSERT_TRUE(node) << read_file(log);
  json plugins = json::parse(out, nullptr, false);
  ASSERT_TRUE(plugins.is_array()) << out;
  for (const auto& m : kModules) {
    // vault is off unless its settings enable it (it needs a Vault address).
    const std::string want = m == "vault" ? "inactive" : "active";
    bool found = false;
    for (const auto& p : plugins) found = found || (p["name"] == m && p["state"] == want);
    EXPECT_TRUE(found) << m << " is not " << want << ": " << out;
  }
}

// The installed binary finds the installed metrics module beside it and
// serves /metrics; without metrics.listen it does not map the module at all.
TEST(Install, TheInstalledBinaryServesMetricsFromTheInstalledModule) {
  auto maps_module = [](pid_t pid) {
    return read_file("/proc/" + std::to_string(pid) + "/maps").find("bosun-metrics.so") !=
           std::string::npos;
  };

  std::string out;
  NodeSetup plain;
  auto quiet = start_installed(plain, plain.root() / "run.log", &out);
  ASSERT_TRUE(quiet) << read_file(plain.root() / "run.log");
  EXPECT_FALSE(maps_module(quiet->pid()));

  NodeSetup setup;
  int port = free_port();
  setup.doc()["metrics"]["listen"] = "127.0.0.1:" + std::to_string(port);
  fs::path log = setup.root() / "run.log";
  auto node = start_installed(setup, log, &out);
  ASSERT_TRUE(node) << read_file(log);
  EXPECT_TRUE(maps_module(node->pid()));
  std::string body = http_get(port, "/metrics");
  EXPECT_NE(body.find("bosun_messages_refused_total{reason=\"bad_json\"} 0"), std::string::npos)
      << body;
  EXPECT_NE(body.find("plugin=\"cli\""), std::string::npos) << body;
}

TEST(Install, SystemdUnitRunsBosunUnprivilegedInASandbox) {
  std::string unit = read_file(kPrefix / "lib/systemd/system/bosun.service");
  std::string exec =
      "ExecStart=" + (kPrefix / "bin/bosun").string() + " run --config /etc/bosun/bosun.json\n";
  EXPECT_NE(unit.find(exec), std::string::npos) << unit;
  for (const char* line :
       {"User=bosun\n", "NoNewPrivileges=yes\n", "ProtectSystem=strict\n",
        "ReadWritePaths=/var/lib/bosun\n", "StateDirectory=bosun\n", "ProtectHome=yes\n",
        "PrivateTmp=yes\n", "PrivateDevices=yes\n", "ProtectKernelTunables=yes\n",
        "ProtectKernelModules=yes\n", "ProtectKernelLogs=yes\n",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6\n", "SystemCallFilter=@system-service\n",
        "CapabilityBoundingSet=\n", "LockPersonality=yes\n", "MemoryDenyWriteExecute=yes\n",
        "RestrictNamespaces=yes\n", "SystemCallFilter=setpriority\n"}) {
    EXPECT_NE(unit.find(std::string("\n") + line), std::string::npos) << "missing " << line;
  }
  EXPECT_EQ(unit.find("@"), unit.find("@system-service")) << "a @PLACEHOLDER@ was left unfilled:\n"
                                                          << unit;
}

TEST(Install, SystemdAnalyzeVerifiesTheUnit) {
  std::string out;
  if (run_command({"sh", "-c", "command -v systemd-analyze"}, &out) != 0) {
    GTEST_SKIP() << "systemd-analyze is not installed";
  }
  int code = run_command(
      {"systemd-analyze", "verify", (kPrefix / "lib/systemd/system/bosun.service").string()}, &out,
      true, "", 60s);
  EXPECT_EQ(code, 0) << out;
  // verify reports problems it does not count as failures, too.
  EXPECT_EQ(out.find("bosun.service:"), std::string::npos) << out;
}

// ------------------------------------------------------------- journal ---

// Runs `bosun run` with stdout and stderr into a file until `serving` (that
// file when empty) says it serves, then stops it; returns its stdout+stderr.
// `journal`: JOURNAL_STREAM names that file, as systemd names the journal.
std::string run_and_stop(NodeSetup& setup, const std::vector<std::string>& env, bool journal,
                         fs::path serving = {}) {
  fs::path config = setup.write_config();
  fs::path log = setup.root() / "run.log";
  write_file(log, "");
  std::vector<std::string> vars = env;
  if (journal) {
    struct stat st {};
    EXPECT_EQ(::stat(log.c_str(), &st), 0);
    vars.push_back("JOURNAL_STREAM=" + std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino));
  }
  if (serving.empty()) serving = log;
  Process node({BOSUN_BIN, "run", "--config", config.string()}, log, vars);
  bool up = wait_until(
      [&] {
        return !node.running() ||
               (fs::exists(serving) && read_file(serving).find("serving on") != std::string::npos);
      },
      30s, 20ms);
  EXPECT_TRUE(up && node.running()) << read_file(log);
  node.stop();
  return read_file(log);
}

TEST(Journal, UnderSystemdEachLineCarriesItsSyslogPriorityAndNoTimestamp) {
  NodeSetup setup;
  fs::path not_a_folder = setup.root() / "not-a-folder";
  write_file(not_a_folder, "");
  setup.doc()["plugins"]["dir"] = not_a_folder.string();  // a warning
  std::string log = run_and_stop(setup, {}, true);
  EXPECT_NE(log.find("<6>[n1] node n1 serving on"), std::string::npos) << log;
  EXPECT_NE(log.find("<4>[n1] plugins.dir " + not_a_folder.string() + " is not a folder"),
            std::string::npos)
      << log;
  std::regex timestamp(R"(\d{4}-\d\d-\d\dT\d\d:\d\d)");
  std::stringstream lines(log);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("<", 0) != 0) continue;  // sanitizer or library output, not the log
    EXPECT_TRUE(std::regex_search(line, std::regex(R"(^<[0-7]>\[n1\] )"))) << line;
    EXPECT_FALSE(std::regex_search(line, timestamp)) << line;
  }
}

TEST(Journal, AJournalStreamThatIsNotStderrKeepsThePlainFormat) {
  NodeSetup setup;
  std::string log = run_and_stop(setup, {"JOURNAL_STREAM=1:1"}, false);
  EXPECT_TRUE(std::regex_search(
      log, std::regex(R"(\d{4}-\d\d-\d\dT[0-9:.]+ info  \[n1\] node n1 serving on)")))
      << log;
  EXPECT_EQ(log.find("<6>"), std::string::npos) << log;
}

TEST(Journal, LogFileTakesTheLogInstead) {
  NodeSetup setup;
  setup.doc()["log"]["file"] = "node.log";
  std::string stderr_text = run_and_stop(setup, {}, true, setup.root() / "node.log");
  std::string file_text = read_file(setup.root() / "node.log");
  EXPECT_NE(file_text.find("info  [n1] node n1 serving on"), std::string::npos) << file_text;
  EXPECT_EQ(stderr_text.find("serving on"), std::string::npos) << stderr_text;
}

}  // namespace
}  // namespace bosun::test
