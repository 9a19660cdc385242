// The docs cannot rot: docs/operating.md documents every config key the
// validator accepts, and docs/writing-plugins.md's own code blocks build
// against the installed SDK into a module that a real node loads, serves
// and hot-updates.
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "node_harness.hpp"

namespace bosun::test {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const fs::path kSource = BOSUN_SOURCE_DIR;

struct Outcome {
  int code;
  std::string out;
};

Outcome run(const std::vector<std::string>& argv, std::chrono::milliseconds timeout = 120s) {
  Outcome r{};
  r.code = run_command(argv, &r.out, true, "", timeout);
  return r;
}

// Objects whose keys are names the operator chooses, not config keys.
const std::set<std::string> kMaps = {"security.allow", "extensions", "security.keys"};

void flatten(const json& j, const std::string& path, std::set<std::string>& out) {
  for (const auto& [key, value] : j.items()) {
    std::string p = path.empty() ? key : path + "." + key;
    if (value.is_object() && kMaps.count(p) == 0) {
      flatten(value, p, out);
    } else {
      out.insert(p);
    }
  }
}

// Every key `bosun config init` writes (it lists every key with its
// default), plus the per-extension keys it cannot list.
std::set<std::string> config_keys() {
  TempDir dir;
  fs::path file = dir / "init.json";
  Outcome init = run({BOSUN_BIN, "config", "init", file.string(), "--name", "n1"});
  EXPECT_EQ(init.code, 0) << init.out;
  json doc = json::parse(read_file(file), nullptr, false);
  EXPECT_TRUE(doc.is_object()) << read_file(file);
  std::set<std::string> keys;
  if (doc.is_object()) flatten(doc, "", keys);
  keys.insert("extensions.<name>.enabled");
  keys.insert("extensions.<name>.settings");
  return keys;
}

TEST(OperatingGuide, DocumentsEveryConfigKey) {
  std::set<std::string> keys = config_keys();
  ASSERT_GT(keys.size(), 30u);
  std::string doc = read_file(kSource / "docs/operating.md");
  for (const auto& key : keys) {
    EXPECT_NE(doc.find("`" + key + "`"), std::string::npos)
        << "docs/operating.md does not document config key `" << key << "`";
  }
}

// The validator's own lists of known keys (host/src/config.cpp: each
// Section is built with one), so a key it accepts but `config init` leaves
// out is caught too.
TEST(OperatingGuide, ConfigInitListsEveryKeyTheValidatorKnows) {
  std::string source = read_file(kSource / "host/src/config.cpp");
  std::regex list(R"(Section\s*(?:root|s|tls|metrics|storage|log|host)?\s*[=(][^;{]*\{([^}]*)\})");
  std::regex quoted(R"re("([A-Za-z]+)")re");
  std::set<std::string> known;
  for (auto it = std::sregex_iterator(source.begin(), source.end(), list);
       it != std::sregex_iterator(); ++it) {
    std::string body = (*it)[1];
    for (auto q = std::sregex_iterator(body.begin(), body.end(), quoted);
         q != std::sregex_iterator(); ++q) {
      known.insert((*q)[1]);
    }
  }
  // Sanity: the scrape found the lists (the root's, the broker's, ...).
  for (const char* k : {"node", "broker", "servers", "dataDir", "caFile", "drainTimeout",
                        "mapSizeMB", "enabled", "settings", "allowSkew"}) {
    ASSERT_TRUE(known.count(k)) << "the scrape of host/src/config.cpp missed \"" << k
                                << "\": update this test's pattern";
  }
  std::set<std::string> names;
  for (const auto& key : config_keys()) {
    std::stringstream ss(key);
    for (std::string part; std::getline(ss, part, '.');) names.insert(part);
  }
  for (const auto& k : known) {
    EXPECT_TRUE(names.count(k)) << "host/src/config.cpp accepts \"" << k
                                << "\" but `bosun config init` does not write it, so "
                                   "docs/operating.md may not document it";
  }
}

TEST(OperatingGuide, DocumentsEveryExitCode) {
  std::string doc = read_file(kSource / "docs/operating.md");
  for (const char* row : {"| 0 |", "| 1 |", "| 2 |", "| 3 |"}) {
    EXPECT_NE(doc.find(row), std::string::npos) << "exit code row " << row << " is missing";
  }
}

// ```<lang> file=<name> ... ``` blocks of a Markdown page, by file name.
std::map<std::string, std::string> file_blocks(const std::string& markdown) {
  std::map<std::string, std::string> files;
  std::regex fence(R"(```[A-Za-z0-9+]* file=([A-Za-z0-9_.-]+)\n([\s\S]*?)\n```)");
  for (auto it = std::sregex_iterator(markdown.begin(), markdown.end(), fence);
       it != std::sregex_iterator(); ++it) {
    EXPECT_FALSE(files.count((*it)[1])) << "two blocks write " << (*it)[1];
    files[(*it)[1]] = std::string((*it)[2]) + "\n";
  }
  return files;
}

// Builds the guide's plugin against the installed SDK (as the guide says).
fs::path build_guide_plugin(const fs::path& src, const fs::path& build,
                            const std::string& version) {
  std::vector<std::string> configure = {BOSUN_CMAKE_COMMAND,
                                        "-S",
                                        src.string(),
                                        "-B",
                                        build.string(),
                                        "-DCMAKE_PREFIX_PATH=" BOSUN_INSTALL_PREFIX,
                                        "-DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF",
                                        "-DCMAKE_CXX_COMPILER=" BOSUN_CXX_COMPILER,
                                        "-DCMAKE_BUILD_TYPE=" BOSUN_BUILD_TYPE,
                                        "-DCMAKE_CXX_FLAGS=" BOSUN_MODULE_CXX_FLAGS,
                                        "-DGREETER_VERSION=" + version};
  Outcome c = run(configure, 240s);
  EXPECT_EQ(c.code, 0) << c.out;
  // The SDK came from the install prefix, not from the source tree or elsewhere.
  std::string cache = read_file(build / "CMakeCache.txt");
  EXPECT_NE(cache.find("bosun-sdk_DIR:PATH=" BOSUN_INSTALL_PREFIX), std::string::npos) << cache;
  Outcome b = run({BOSUN_CMAKE_COMMAND, "--build", build.string()}, 240s);
  EXPECT_EQ(b.code, 0) << b.out;
  return build / "greeter.so";
}

TEST(PluginGuide, ItsCodeBuildsLoadsServesAndHotUpdates) {
  std::map<std::string, std::string> files =
      file_blocks(read_file(kSource / "docs/writing-plugins.md"));
  ASSERT_TRUE(files.count("greeter.cpp") && files.count("CMakeLists.txt"))
      << "docs/writing-plugins.md lost its ```cpp file=greeter.cpp or ```cmake "
         "file=CMakeLists.txt block";
  TempDir work;
  fs::path src = work / "src";
  fs::create_directories(src);
  for (const auto& [name, text] : files) write_file(src / name, text);

  fs::path v100 = build_guide_plugin(src, work / "build", "1.0.0");
  fs::path v110 = build_guide_plugin(src, work / "build-1.1", "1.1.0");
  ASSERT_TRUE(fs::exists(v100) && fs::exists(v110)) << "no greeter.so was built";

  NodeSetup setup;
  setup.add_plugin("sinks");
  setup.add_plugin("node");
  setup.add_module(v100, "greeter.so");
  setup.extension("greeter")["settings"] = {{"greeting", "ahoy"}};
  // A sanitized Debug build of greeter.so is over 8 MiB, the default limit.
  setup.doc()["host"]["maxMessageBytes"] = 64 << 20;
  BosunRun node(setup);
  std::string config = node.config_file().string();
  auto send = [&](const std::string& method, std::vector<std::string> args = {}) {
    std::vector<std::string> argv = {BOSUN_BIN, "send",     "--config", config,   "--to",
                                     "n1",      "--method", method,     "--wait", "--"};
    argv.insert(argv.end(), args.begin(), args.end());
    return run(argv, 60s);
  };

  Outcome greet = send("greet", {"Ann"});
  EXPECT_EQ(greet.code, 0) << greet.out << node.log();
  EXPECT_NE(greet.out.find("[n1] ahoy, Ann from n1 (greeter 1.0.0)"), std::string::npos)
      << greet.out;

  Outcome first = send("count");
  EXPECT_EQ(first.code, 0) << first.out;
  EXPECT_NE(first.out.find("[n1] 1\n"), std::string::npos) << first.out;

  Outcome countdown = send("countdown", {"2"});
  EXPECT_EQ(countdown.code, 0) << countdown.out;
  EXPECT_NE(countdown.out.find("[n1] 2\n[n1] 1\n[n1] liftoff\n"), std::string::npos)
      << countdown.out;

  Outcome bad = send("countdown", {"99"});
  EXPECT_EQ(bad.code, 1) << bad.out;
  EXPECT_NE(bad.out.find("countdown: methodArgs[0] must be 0..60"), std::string::npos) << bad.out;

  Outcome update = run({BOSUN_BIN, "update-plugin", "--config", config, "--to", "n1", "--file",
                        v110.string(), "--wait", "--json"},
                       150s);
  ASSERT_EQ(update.code, 0) << update.out << "\nnode log:\n" << node.log();
  EXPECT_NE(update.out.find("\"status\":\"updated\""), std::string::npos) << update.out;

  greet = send("greet", {"Bob"});
  EXPECT_NE(greet.out.find("[n1] ahoy, Bob from n1 (greeter 1.1.0)"), std::string::npos)
      << greet.out;
  Outcome second = send("count");  // the KV store outlived the update
  EXPECT_NE(second.out.find("[n1] 2\n"), std::string::npos) << second.out;

  // New settings reach on_settings of the running module.
  setup.extension("greeter")["settings"] = {{"greeting", "hoi"}};
  setup.write_config();
  Outcome reload = run({BOSUN_BIN, "reload", "--config", config}, 60s);
  EXPECT_EQ(reload.code, 0) << reload.out;
  greet = send("greet", {"Cy"});
  EXPECT_NE(greet.out.find("[n1] hoi, Cy from n1 (greeter 1.1.0)"), std::string::npos) << greet.out;
}

}  // namespace
}  // namespace bosun::test
