// The `bosun` executable (DESIGN §10), run as a user would: help texts,
// config init/check, `bosun run` as a child process, and send / plugins
// against it through its socket.
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <signal.h>

#include <set>
#include <sstream>
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

// The subcommands a help text lists under "Subcommands:".
std::vector<std::string> listed_subcommands(const std::string& help) {
  std::vector<std::string> names;
  size_t at = help.find("Subcommands:\n");
  if (at == std::string::npos) at = help.find("SUBCOMMANDS:\n");  // CLI11 before 2.0
  if (at == std::string::npos) return names;
  std::stringstream lines(help.substr(at + 13));
  for (std::string line; std::getline(lines, line) && !line.empty();) {
    if (line.rfind("  ", 0) != 0 || line[2] == ' ') continue;  // a wrapped description
    names.push_back(line.substr(2, line.find(' ', 2) - 2));
  }
  return names;
}

// Every subcommand, found from `bosun --help` (so one added later is
// covered too), has --help with at least one example line.
TEST(Cli, EveryHelpExitsZeroAndShowsAnExample) {
  std::vector<std::vector<std::string>> helps = {{"--help"}};
  for (size_t i = 0; i < helps.size(); ++i) {
    std::vector<std::string> argv = helps[i];
    std::string shown;
    for (const auto& a : argv) shown += a + " ";
    Outcome r = bosun(argv);
    EXPECT_EQ(r.code, 0) << "bosun " << shown << "\n" << r.out;
    size_t example = r.out.find("Example");
    ASSERT_NE(example, std::string::npos) << "bosun " << shown << "\n" << r.out;
    // An example is a line that runs bosun.
    EXPECT_NE(r.out.find("\n  bosun ", example), std::string::npos) << "bosun " << shown << "\n"
                                                                    << r.out;
    argv.pop_back();  // "--help"
    for (const auto& sub : listed_subcommands(r.out)) {
      std::vector<std::string> deeper = argv;
      deeper.push_back(sub);
      deeper.push_back("--help");
      helps.push_back(deeper);
    }
  }
  std::set<std::string> seen;
  for (const auto& argv : helps) seen.insert(argv.front());
  for (const char* sub : {"run", "send", "plugins", "nodes", "update-plugin", "sign-plugin",
                          "watch", "reload", "config"}) {
    EXPECT_TRUE(seen.count(sub)) << "bosun --help does not list " << sub;
  }
  EXPECT_GE(helps.size(), 12u);  // the above, config init and config check
}

TEST(Cli, HelpListsTheExitCodes) {
  Outcome r = bosun({"--help"});
  EXPECT_NE(r.out.find("Exit codes: 0 ok; 1 the operation failed"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("3 the node is not reachable"), std::string::npos) << r.out;
}

TEST(Cli, UsageAndConfigErrorsExitTwo) {
  EXPECT_EQ(bosun({"frobnicate"}).code, 2);
  EXPECT_EQ(bosun({"send", "--to", "n1"}).code, 2);  // no --config
  EXPECT_EQ(bosun({"plugins", "--config", "/nonexistent/bosun.json"}).code, 2);
  TempDir dir;
  fs::path bad = dir / "bad.json";
  write_file(bad, R"({"node": {"name": "n1"}, "brokr": {}})");
  Outcome check = bosun({"config", "check", "--config", bad.string()});
  EXPECT_EQ(check.code, 2) << check.out;
  EXPECT_NE(check.out.find("$.brokr: unknown key (did you mean \"broker\"?)"), std::string::npos)
      << check.out;
  Outcome json_check = bosun_stdout({"config", "check", "--config", bad.string(), "--json"});
  EXPECT_EQ(json_check.code, 2) << json_check.out;
  json j = json::parse(json_check.out, nullptr, false);
  EXPECT_EQ(j.value("path", ""), "$.brokr") << json_check.out;
  EXPECT_EQ(bosun({"plugins", "--config", bad.string()}).code, 2);
  EXPECT_EQ(bosun({"run", "--config", bad.string()}).code, 2);
}

TEST(Cli, ANodeThatIsNotRunningExitsThree) {
  NodeSetup setup;
  std::string config = setup.write_config().string();
  for (std::vector<std::string> argv :
       {std::vector<std::string>{"plugins", "--config", config},
        {"nodes", "--config", config},
        {"watch", "--config", config},
        {"reload", "--config", config},
        {"send", "--config", config, "--to", "n1", "--method", "ping", "--wait"}}) {
    Outcome r = bosun(argv);
    EXPECT_EQ(r.code, 3) << argv[0] << ": " << r.out;
    EXPECT_NE(r.out.find("cannot reach the node at " + setup.socket().string()), std::string::npos)
        << r.out;
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

TEST_F(CliNode, SendWaitWithAnUnknownMethodFailsWithOne) {
  Outcome r = bosun({"send", "--config", config_, "--to", "n1", "--method", "pnig", "--wait"});
  EXPECT_EQ(r.code, 1) << r.out;
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

// ------------------------------------------- publisher signatures ---

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  return s;
}

std::string base64_decode(const std::string& text) {
  std::string out(text.size() / 4 * 3, '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(text.data()),
                          static_cast<int>(text.size()));
  if (n < 0 || text.size() % 4 != 0) return "";
  size_t pad = 0;
  for (size_t i = text.size(); i > 0 && text[i - 1] == '='; --i) ++pad;
  out.resize(static_cast<size_t>(n) - pad);
  return out;
}

// OpenSSL's own verdict on a base64 signature of `bytes` by a base64 raw key.
bool ed25519_verifies(const std::string& bytes, const std::string& signature_b64,
                      const std::string& public_key_b64) {
  std::string key = base64_decode(public_key_b64);
  std::string sig = base64_decode(signature_b64);
  EVP_PKEY* pkey = EVP_PKEY_new_raw_public_key(
      EVP_PKEY_ED25519, nullptr, reinterpret_cast<const unsigned char*>(key.data()), key.size());
  if (pkey == nullptr) return false;
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  bool ok =
      EVP_DigestVerifyInit(ctx, nullptr, nullptr, nullptr, pkey) == 1 &&
      EVP_DigestVerify(ctx, reinterpret_cast<const unsigned char*>(sig.data()), sig.size(),
                       reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size()) == 1;
  EVP_MD_CTX_free(ctx);
  EVP_PKEY_free(pkey);
  return ok;
}

// A private key of `type` written as PKCS#8 PEM, as `openssl genpkey` does.
void write_openssl_key(const fs::path& file, EVP_PKEY* key) {
  ASSERT_NE(key, nullptr);
  FILE* f = std::fopen(file.c_str(), "w");
  ASSERT_NE(f, nullptr) << file;
  EXPECT_EQ(PEM_write_PrivateKey(f, key, nullptr, nullptr, 0, nullptr, nullptr), 1);
  std::fclose(f);
  EVP_PKEY_free(key);
}

const std::string kHello110 = BOSUN_HELLO_1_1_0;

TEST(CliSign, NewKeyThenSignVerifiesWithOpenSsl) {
  TempDir dir;
  fs::path key = dir / "publisher.pem";
  Outcome made = bosun_stdout({"sign-plugin", "--new-key", key.string()});
  ASSERT_EQ(made.code, 0) << made.out;
  std::string public_key = trim(made.out);
  EXPECT_EQ(base64_decode(public_key).size(), 32u) << made.out;
  ASSERT_TRUE(fs::exists(key));
  EXPECT_EQ(fs::status(key).permissions() & fs::perms::all, fs::perms(0600));
  EXPECT_NE(read_file(key).find("-----BEGIN PRIVATE KEY-----"), std::string::npos);

  // A second --new-key on the same file keeps the key there.
  std::string before = read_file(key);
  Outcome again = bosun({"sign-plugin", "--new-key", key.string()});
  EXPECT_NE(again.code, 0) << again.out;
  EXPECT_NE(again.out.find(key.string() + " exists"), std::string::npos) << again.out;
  EXPECT_EQ(read_file(key), before);

  std::string module = read_file(kHello110);
  ASSERT_FALSE(module.empty());
  Outcome signed_ = bosun_stdout({"sign-plugin", "--key", key.string(), "--file", kHello110});
  ASSERT_EQ(signed_.code, 0) << signed_.out;
  std::string signature = trim(signed_.out);
  EXPECT_EQ(base64_decode(signature).size(), 64u) << signed_.out;
  EXPECT_TRUE(ed25519_verifies(module, signature, public_key));
  EXPECT_FALSE(ed25519_verifies(module + "x", signature, public_key));

  Outcome js = bosun_stdout({"sign-plugin", "--key", key.string(), "--file", kHello110, "--json"});
  ASSERT_EQ(js.code, 0) << js.out;
  json doc = json::parse(js.out, nullptr, false);
  ASSERT_TRUE(doc.is_object()) << js.out;
  EXPECT_EQ(doc.value("file", ""), kHello110);
  EXPECT_EQ(doc.value("signature", ""), signature);  // Ed25519 is deterministic
  EXPECT_EQ(doc.value("publicKey", ""), public_key);
  EXPECT_EQ(doc.value("sha256", "").size(), 64u);

  // A key OpenSSL wrote (genpkey's PKCS#8 PEM) signs as well.
  fs::path theirs = dir / "openssl.pem";
  write_openssl_key(theirs, EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519"));
  Outcome other =
      bosun_stdout({"sign-plugin", "--key", theirs.string(), "--file", kHello110, "--json"});
  ASSERT_EQ(other.code, 0) << other.out;
  json o = json::parse(other.out, nullptr, false);
  ASSERT_TRUE(o.is_object()) << other.out;
  EXPECT_TRUE(ed25519_verifies(module, o.value("signature", ""), o.value("publicKey", "")));
  EXPECT_FALSE(ed25519_verifies(module, o.value("signature", ""), public_key));
}

TEST(CliSign, BadKeysAndFilesAreNamedInTheError) {
  TempDir dir;
  fs::path rsa = dir / "rsa.pem";
  write_openssl_key(rsa, EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", size_t{1024}));
  Outcome r = bosun({"sign-plugin", "--key", rsa.string(), "--file", kHello110});
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find(rsa.string() + " holds RSA private key, not an Ed25519 one"),
            std::string::npos)
      << r.out;

  fs::path garbage = dir / "garbage.pem";
  write_file(garbage, "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n");
  r = bosun({"sign-plugin", "--key", garbage.string(), "--file", kHello110});
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find(garbage.string() + " is not an unencrypted PEM private key"),
            std::string::npos)
      << r.out;

  fs::path missing = dir / "nope.pem";
  r = bosun({"sign-plugin", "--key", missing.string(), "--file", kHello110});
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("cannot read " + missing.string() + ": No such file or directory"),
            std::string::npos)
      << r.out;

  fs::path key = dir / "k.pem";
  ASSERT_EQ(bosun({"sign-plugin", "--new-key", key.string()}).code, 0);
  fs::path no_module = dir / "nope.so";
  r = bosun({"sign-plugin", "--key", key.string(), "--file", no_module.string()});
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("cannot read " + no_module.string()), std::string::npos) << r.out;

  r = bosun({"sign-plugin", "--key", key.string()});
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("--file"), std::string::npos) << r.out;

  NodeSetup setup;
  fs::path config = setup.write_config();
  r = bosun({"update-plugin", "--config", config.string(), "--to", "n1", "--file", kHello110,
             "--signature", "AAAA", "--sign-key", key.string()});
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("give --signature or --sign-key, not both"), std::string::npos) << r.out;

  r = bosun({"update-plugin", "--config", config.string(), "--to", "n1", "--file", kHello110,
             "--sign-key", rsa.string()});
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find(rsa.string() + " holds RSA private key"), std::string::npos) << r.out;
}

TEST(CliSign, ANodeRequiringSignaturesTakesOnlyTheSignedModule) {
  TempDir keys;
  fs::path publisher = keys / "publisher.pem";
  fs::path stranger = keys / "stranger.pem";
  Outcome made = bosun_stdout({"sign-plugin", "--new-key", publisher.string()});
  ASSERT_EQ(made.code, 0) << made.out;
  ASSERT_EQ(bosun({"sign-plugin", "--new-key", stranger.string()}).code, 0);

  NodeSetup setup;
  setup.add_plugin("node");
  setup.add_module(BOSUN_HELLO_1_0_0, "hello.so");
  setup.doc()["plugins"]["requireSignature"] = true;
  setup.doc()["plugins"]["publisherKeys"] = {trim(made.out)};
  BosunRun run(setup);
  std::string config = run.config_file().string();
  auto update = [&](std::vector<std::string> extra) {
    std::vector<std::string> argv = {BOSUN_BIN, "update-plugin", "--config", config,  "--to",
                                     "n1",      "--file",        kHello110,  "--wait"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    Outcome r{};
    r.code = run_command(argv, &r.out, true, "", 120s);
    return r;
  };
  auto greeting = [&] {
    return bosun({"send", "--config", config, "--to", "n1", "--method", "greet", "--wait"}).out;
  };

  Outcome unsigned_ = update({});
  EXPECT_EQ(unsigned_.code, 1) << unsigned_.out;
  EXPECT_NE(unsigned_.out.find("a publisher signature is required (requireSignature is true) "
                               "but methodArgs[3] is missing"),
            std::string::npos)
      << unsigned_.out;
  EXPECT_NE(unsigned_.out.find("failed"), std::string::npos) << unsigned_.out;

  Outcome sig = bosun_stdout({"sign-plugin", "--key", stranger.string(), "--file", kHello110});
  ASSERT_EQ(sig.code, 0) << sig.out;
  Outcome strangers = update({"--signature", trim(sig.out)});
  EXPECT_EQ(strangers.code, 1) << strangers.out;
  EXPECT_NE(strangers.out.find("does not verify against any of the 1 trusted publisher key(s)"),
            std::string::npos)
      << strangers.out;
  EXPECT_NE(greeting().find("(hello 1.0.0)"), std::string::npos) << run.log();

  Outcome ok = update({"--sign-key", publisher.string()});
  EXPECT_EQ(ok.code, 0) << ok.out << "\nnode log:\n" << run.log();
  EXPECT_NE(ok.out.find("updated"), std::string::npos) << ok.out;
  std::string now = greeting();
  EXPECT_NE(now.find("(hello 1.1.0)"), std::string::npos) << now;
}

}  // namespace
}  // namespace bosun::test
