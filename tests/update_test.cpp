// Hot update through the node module (DESIGN §6): update_plugin stages and
// verifies an artifact, the host probes, loads beside, swaps and drains.
// Real modules (examples/hello built as 1.0.0 and 1.1.0, the fixtures, C
// modules compiled here that crash), a real node in process, and the real
// `bosun` binary killed with SIGKILL for the probation rollback.
#include <bosun/plugin.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <signal.h>
#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "../host/src/signing.hpp"
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

// An Ed25519 key pair, as a module publisher holds it.
class Publisher {
 public:
  Publisher() : key_(EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519")) {}
  ~Publisher() { EVP_PKEY_free(key_); }
  Publisher(const Publisher&) = delete;
  Publisher& operator=(const Publisher&) = delete;

  std::string public_key_base64() const {
    std::string raw(32, '\0');
    size_t len = raw.size();
    EVP_PKEY_get_raw_public_key(key_, reinterpret_cast<unsigned char*>(raw.data()), &len);
    raw.resize(len);
    return base64_encode(raw);
  }
  std::string sign_base64(const std::string& bytes) const {
    EVP_MD_CTX* ctx = EVP_MD_CTX_new();
    std::string sig(64, '\0');
    size_t len = sig.size();
    EVP_DigestSignInit(ctx, nullptr, nullptr, nullptr, key_);
    EVP_DigestSign(ctx, reinterpret_cast<unsigned char*>(sig.data()), &len,
                   reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size());
    EVP_MD_CTX_free(ctx);
    sig.resize(len);
    return base64_encode(sig);
  }

 private:
  EVP_PKEY* key_;
};

json msg(const std::string& method, json args = json::array(), json extra = json::object()) {
  json m = {{"toNode", "n1"}, {"method", method}, {"methodArgs", std::move(args)}};
  m.update(extra);
  return m;
}

// update_plugin for `bytes` with the right SHA-256 unless `sha` is given.
json update_msg(const std::string& name, const std::string& version, const std::string& bytes,
                std::string sha = "", json more_args = json::array()) {
  json args = {name, version, sha.empty() ? sha256_hex(bytes) : sha};
  for (const auto& a : more_args) args.push_back(a);
  return msg("update_plugin", args, {{"data", base64_encode(bytes)}, {"methodTimeout", 60}});
}

std::string hello_version(const std::string& greeting) {
  if (greeting.find("(hello 1.0.0)") != std::string::npos) return "1.0.0";
  if (greeting.find("(hello 1.1.0)") != std::string::npos) return "1.1.0";
  return "";
}

// Compiles a C module at test time (for modules no build should ship).
fs::path compile_c_module(const fs::path& dir, const std::string& name, const std::string& source) {
  fs::path src = dir / (name + ".c");
  fs::path out = dir / (name + ".so");
  test::write_file(src, source);
  std::string log;
  int rc = test::run_command({BOSUN_C_COMPILER, "-std=gnu11", "-shared", "-fPIC", "-o",
                              out.string(), "-I" BOSUN_SOURCE_DIR "/sdk/include", src.string()},
                             &log);
  if (rc != 0) throw std::runtime_error("cannot compile " + src.string() + ": " + log);
  return out;
}

// A C module named `name` whose on_init aborts, or (when `in_constructor`)
// whose static constructor aborts as soon as it is loaded.
std::string crashing_module_source(const std::string& name, bool in_constructor) {
  std::string text = R"(#include <bosun/plugin.h>
#include <stdlib.h>
static bosun_status crash_init(bosun_host* h, const bosun_host_api* a, bosun_str s, void** i,
                               char* r, size_t n) {
  (void)h; (void)a; (void)s; (void)i; (void)r; (void)n;
  if (!IN_CONSTRUCTOR) abort();
  return BOSUN_OK;
}
#if IN_CONSTRUCTOR
__attribute__((constructor)) static void crash_on_load(void) { abort(); }
#endif
static bosun_status crash_call(void* i, bosun_call* c, const bosun_request* q) {
  (void)i; (void)c; (void)q;
  return BOSUN_OK;
}
static const bosun_method methods[] = {{sizeof(bosun_method), 0u, "NAME_call", crash_call, 0}};
static const bosun_plugin descriptor = {BOSUN_ABI_VERSION, sizeof(bosun_plugin), "NAME", "1.0.0",
  "crashes", methods, 1, sizeof(bosun_method), crash_init, 0, 0};
BOSUN_EXPORT const bosun_plugin* bosun_plugin_entry(void) { return &descriptor; }
)";
  for (size_t at; (at = text.find("NAME")) != std::string::npos;) text.replace(at, 4, name);
  return "#define IN_CONSTRUCTOR " + std::string(in_constructor ? "1" : "0") + "\n" + text;
}

// The distinct mapped files of this process whose name is `file_name`.
std::set<std::string> mapped_files(const std::string& file_name) {
  std::ifstream maps("/proc/self/maps");
  std::set<std::string> out;
  for (std::string line; std::getline(maps, line);) {
    size_t slash = line.find('/');
    if (slash == std::string::npos) continue;
    fs::path p = line.substr(slash);
    if (p.filename() == file_name) out.insert(p.string());
  }
  return out;
}

long rss_kb() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  }
  return -1;
}

mode_t mode_of(const fs::path& p) {
  struct stat st {};
  ::lstat(p.c_str(), &st);
  return st.st_mode & 07777;
}

class UpdateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(fs::exists(kHello100) && fs::exists(kHello110))
        << "the hello builds are missing: run `ctest -R hello_build` once";
    hello100_ = test::read_file(kHello100);
    hello110_ = test::read_file(kHello110);
    setup_.add_plugin("node");
    setup_.add_module(kHello100, "hello.so");
  }
  void TearDown() override {
    if (node_) node_->stop();
  }

  RunningNode& start() {
    node_ = std::make_unique<RunningNode>(setup_.config());
    return *node_;
  }
  Node& node() { return node_->node(); }

  // The final reply to one message.
  Message call(const json& m, std::chrono::milliseconds timeout = 60s) {
    auto out = test::submit_and_wait(node(), m, timeout);
    EXPECT_EQ(out.result.accepted.size(), 1u) << out.result.to_json().dump();
    const Message* r = out.final_reply();
    EXPECT_NE(r, nullptr) << "no final reply to " << m.dump().substr(0, 300);
    return r ? *r : Message{};
  }

  // The UpdateResult a reply carries (null when it carries none).
  static json result_of(const Message& r) { return json::parse(r.data, nullptr, false); }

  std::string greet() { return call(msg("greet")).data; }

  std::string version_of(const std::string& plugin) {
    for (const auto& p : node().plugins()) {
      if (p.name == plugin) return p.version;
    }
    return "";
  }

  // Expects update_plugin to fail with `reason` (whole, or a part of it
  // when `exact` is false), leaving hello 1.0.0 serving.
  void expect_failed(const json& m, const std::string& reason, bool exact = true) {
    SCOPED_TRACE(reason);
    Message r = call(m);
    json res = result_of(r);
    ASSERT_TRUE(res.is_object()) << "no UpdateResult in: " << r.data;
    EXPECT_EQ(res.value("status", ""), "failed") << res.dump();
    EXPECT_EQ(res.value("node", ""), "n1");
    if (exact) {
      EXPECT_EQ(res.value("reason", ""), reason);
    } else {
      EXPECT_NE(res.value("reason", "").find(reason), std::string::npos) << res.dump();
    }
    EXPECT_EQ(r.status, "error");
    EXPECT_EQ(r.error, "update_plugin: " + res.value("reason", ""));
    EXPECT_EQ(hello_version(greet()), "1.0.0");
    EXPECT_EQ(version_of("hello"), "1.0.0");
  }

  NodeSetup setup_;
  std::unique_ptr<RunningNode> node_;
  std::string hello100_, hello110_;
};

// Collects the update_result events a node emits.
class UpdateEvents : public test::EventPayloads {
 public:
  explicit UpdateEvents(Node& node) : EventPayloads(node, "update_result") {}
  // Waits for an event whose payload has `status` and `reason`.
  bool wait_for(const std::string& status, const std::string& reason = "") {
    return test::wait_until(
        [&] {
          for (const auto& p : payloads()) {
            if (p.value("status", "") == status &&
                (reason.empty() || p.value("reason", "") == reason))
              return true;
          }
          return false;
        },
        10s);
  }
};

TEST_F(UpdateTest, UpdatesHelloAndPublishesTheResult) {
  start();
  UpdateEvents events(node());
  EXPECT_EQ(greet(), "hello from n1 (hello 1.0.0)");

  Message r = call(update_msg("hello", "1.1.0", hello110_));
  EXPECT_EQ(r.status, "ok") << r.error;
  json res = result_of(r);
  ASSERT_TRUE(res.is_object()) << r.data;
  EXPECT_EQ(res["node"], "n1");
  EXPECT_EQ(res["plugin"], "hello");
  EXPECT_EQ(res["from"], "1.0.0");
  EXPECT_EQ(res["to"], "1.1.0");
  EXPECT_EQ(res["status"], "updated");
  EXPECT_EQ(res["reason"], "");
  EXPECT_TRUE(res["durationMs"].is_number_integer());
  EXPECT_EQ(r.data, res.dump()) << "the reply is compact JSON";

  EXPECT_EQ(greet(), "hello from n1 (hello 1.1.0)");
  json list = json::parse(call(msg("plugin_list")).data);
  fs::path staged = setup_.data_dir() / "plugins" / "hello" / "1.1.0" / "hello.so";
  bool listed = false;
  for (const auto& p : list) {
    if (p["name"] != "hello") continue;
    listed = true;
    EXPECT_EQ(p["version"], "1.1.0");
    EXPECT_EQ(p["state"], "active");
    EXPECT_EQ(p["path"], staged.string());
  }
  EXPECT_TRUE(listed) << list.dump();

  EXPECT_EQ(test::read_file(staged), hello110_);
  EXPECT_EQ(mode_of(staged), 0755u);
  for (fs::path d = staged.parent_path(); d != setup_.data_dir(); d = d.parent_path()) {
    EXPECT_EQ(mode_of(d) & 022u, 0u) << d << " is group/other writable";
  }
  EXPECT_TRUE(events.wait_for("updated"));
  bool seen = false;
  for (const auto& p : events.payloads()) {
    if (p.value("status", "") == "updated") seen = p == res;
  }
  EXPECT_TRUE(seen) << "the event carries the same UpdateResult as the reply";

  // The same artifact again: the staged file is reused, nothing changes.
  Message again = call(update_msg("hello", "1.1.0", hello110_));
  EXPECT_EQ(result_of(again).value("status", ""), "unchanged") << again.data;
  EXPECT_EQ(greet(), "hello from n1 (hello 1.1.0)");
}

TEST_F(UpdateTest, NeverOverwritesAStagedFileWithOtherBytes) {
  start();
  ASSERT_EQ(result_of(call(update_msg("hello", "1.1.0", hello110_))).value("status", ""),
            "updated");
  // Other bytes claiming the same version (a trailing byte keeps it loadable).
  std::string other = hello110_ + std::string(1, '\0');
  Message r = call(update_msg("hello", "1.1.0", other));
  EXPECT_EQ(result_of(r).value("status", ""), "updated") << r.data;
  fs::path first = setup_.data_dir() / "plugins" / "hello" / "1.1.0" / "hello.so";
  fs::path second = setup_.data_dir() / "plugins" / "hello" /
                    ("1.1.0-" + sha256_hex(other).substr(0, 8)) / "hello.so";
  EXPECT_EQ(test::read_file(first), hello110_) << "a file that may be mapped was rewritten";
  EXPECT_EQ(test::read_file(second), other);
  bool listed = false;
  for (const auto& p : node().plugins()) {
    if (p.name == "hello") listed = p.path == second.string();
  }
  EXPECT_TRUE(listed);
  EXPECT_EQ(greet(), "hello from n1 (hello 1.1.0)");
}

TEST_F(UpdateTest, NoCallLostOrRunTwiceAcrossTenUpdatesUnderLoad) {
  start();
  constexpr int kThreads = 4, kSteps = 10, kBefore = 25, kPerStep = 20, kAfter = 25;
  static_assert(kThreads * (kBefore + kSteps * kPerStep + kAfter) == 1000);
  auto waiter = std::make_shared<test::CollectingWaiter>();
  std::mutex ids_mu;
  std::map<std::string, int> phase_of;  // request id -> -1 before, kSteps after, else the step
  std::atomic<int> phase{-1};
  std::atomic<int> submitted_in_phase[kSteps + 2] = {};
  auto deadline = std::chrono::steady_clock::now() + 30s;

  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int p = -1; p <= kSteps; ++p) {
        while (phase.load() < p && std::chrono::steady_clock::now() < deadline) {
          std::this_thread::sleep_for(1ms);
        }
        int n = p < 0 ? kBefore : p == kSteps ? kAfter : kPerStep;
        for (int i = 0; i < n; ++i) {
          auto r = node().submit(msg("greet"), waiter);
          std::lock_guard<std::mutex> lock(ids_mu);
          for (const auto& a : r.accepted) phase_of[a.id] = p;
          if (r.accepted.size() != 1) ADD_FAILURE() << r.to_json().dump();
          std::this_thread::sleep_for(1ms);
        }
        ++submitted_in_phase[p + 1];
      }
    });
  }
  auto all_submitted = [&](int p) {
    return test::wait_until([&] { return submitted_in_phase[p + 1].load() == kThreads; }, 30s, 1ms);
  };
  // Everything submitted before the first update runs on 1.0.0.
  EXPECT_TRUE(all_submitted(-1));
  EXPECT_TRUE(waiter->wait_finals(kThreads * kBefore, 30s));

  int updated = 0;
  for (int step = 0; step < kSteps; ++step) {
    phase = step;  // the threads submit while this update runs
    bool to_110 = step % 2 == 0;
    auto out = test::submit_and_wait(
        node(), update_msg("hello", to_110 ? "1.1.0" : "1.0.0", to_110 ? hello110_ : hello100_),
        30s);
    const Message* r = out.final_reply();
    if (r && result_of(*r).value("status", "") == "updated") ++updated;
    if (r == nullptr || result_of(*r).value("status", "") != "updated") {
      ADD_FAILURE() << "update " << step << ": " << (r ? r->data + " " + r->error : "no reply");
    }
    EXPECT_TRUE(all_submitted(step));
  }
  phase = kSteps;
  EXPECT_TRUE(all_submitted(kSteps));
  for (auto& t : threads) t.join();
  EXPECT_EQ(updated, kSteps);

  ASSERT_TRUE(waiter->wait_finals(1000, 30s)) << "replies lost across the updates";
  std::map<std::string, int> replies_per_id;
  std::map<std::string, int> versions;
  for (const auto& r : waiter->replies()) {
    ++replies_per_id[r.in_reply_to];
    EXPECT_TRUE(r.final_reply);
    EXPECT_EQ(r.status, "ok") << r.error;
    std::string v = hello_version(r.data);
    EXPECT_FALSE(v.empty()) << "a reply that names no version: " << r.data;
    EXPECT_TRUE(r.data.find("1.0.0") == std::string::npos ||
                r.data.find("1.1.0") == std::string::npos)
        << "a reply names two versions: " << r.data;
    ++versions[v];
    int p = phase_of.count(r.in_reply_to) ? phase_of[r.in_reply_to] : -2;
    // 10 updates alternating from 1.0.0 end on 1.0.0 again.
    if (p == -1 || p == kSteps) {
      EXPECT_EQ(v, "1.0.0") << "phase " << p;
    }
  }
  EXPECT_EQ(replies_per_id.size(), 1000u);
  EXPECT_EQ(phase_of.size(), 1000u);
  for (const auto& [id, n] : replies_per_id) {
    EXPECT_EQ(n, 1) << "request " << id << " answered " << n << " times";
    EXPECT_TRUE(phase_of.count(id)) << "a reply to a request nobody sent: " << id;
  }
  EXPECT_GT(versions["1.0.0"], 0);
  EXPECT_GT(versions["1.1.0"], 0) << "no call ever ran on 1.1.0";
  EXPECT_EQ(versions["1.0.0"] + versions["1.1.0"], 1000);
}

TEST_F(UpdateTest, BadArtifactsFailWithTheReasonAndChangeNothing) {
  start();
  UpdateEvents events(node());
  std::string wrong = sha256_hex(hello100_);
  std::string right = sha256_hex(hello110_);
  expect_failed(update_msg("hello", "1.1.0", hello110_, wrong),
                "sha256 mismatch: expected " + wrong + ", got " + right);
  EXPECT_TRUE(events.wait_for("failed", "sha256 mismatch: expected " + wrong + ", got " + right))
      << "a failure before the host saw the update is published too";
  EXPECT_FALSE(fs::exists(setup_.data_dir() / "plugins" / "hello" / "1.1.0"))
      << "a bad artifact was staged";

  json bad64 = update_msg("hello", "1.1.0", hello110_);
  bad64["data"] = "AAAA AAAA";
  expect_failed(bad64,
                "data (the module file) is not valid base64: unexpected character ' ' at offset 4");
  bad64["data"] = "AAAAA";
  expect_failed(bad64,
                "data (the module file) is not valid base64: its length (5 characters) is not a "
                "multiple of 4");
  bad64["data"] = "";
  expect_failed(bad64, "data is empty: expected the module file in base64");

  expect_failed(msg("update_plugin", {"hello", "1.1.0"}, {{"data", base64_encode(hello110_)}}),
                "expected methodArgs [name, version, sha256hex] or [..., signature], got 2 "
                "argument(s)");
  expect_failed(update_msg("../hello", "1.1.0", hello110_),
                "methodArgs[0]: \"../hello\" is not a plugin name (1 to 128 of A-Z a-z 0-9 _ -)");
  expect_failed(update_msg("hello", "..", hello110_),
                "methodArgs[1]: \"..\" is not a version (1 to 128 of A-Z a-z 0-9 . _ - +, not . "
                "or ..)");
  expect_failed(update_msg("hello", "1.1.0", hello110_, "abc"),
                "methodArgs[2]: \"abc\" is not a SHA-256 (64 hex digits)");

  // The module must be the one named, in this ABI, loadable and able to start.
  std::string abi = test::read_file(test::fixture_module("fx_abi_major"));
  expect_failed(update_msg("fx_abi_major", "99.0.0", abi),
                "built for bosun ABI 99.0, this host speaks ABI " +
                    std::to_string(BOSUN_ABI_MAJOR) + "." + std::to_string(BOSUN_ABI_MINOR),
                false);
  expect_failed(update_msg("other", "1.1.0", hello110_),
                "module declares the name \"hello\", expected \"other\"", false);
  std::string truncated = test::read_file(test::fixture_module("fx_truncated"));
  fs::path staged_cut = setup_.data_dir() / "plugins" / "fx_c_echo" / "1.0.0" / "fx_c_echo.so";
  expect_failed(update_msg("fx_c_echo", "1.0.0", truncated),
                "probe failed: " + staged_cut.string() + ": cannot load: ", false);
  std::string garbage = test::read_file(test::fixture_module("fx_garbage"));
  expect_failed(update_msg("fx_c_echo", "1.0.1", garbage), "not an ELF shared object", false);
  std::string init_fails = test::read_file(test::fixture_module("fx_init_fails"));
  expect_failed(update_msg("fx_init_fails", "1.0.0", init_fails),
                "probe failed: init failed (BOSUN_ERR_INIT_FAILED): fixture: database unreachable");
  // The module says 1.0.0: shipped as 2.0.0 it is refused.
  std::string c_echo = test::read_file(test::fixture_module("fx_c_echo"));
  expect_failed(update_msg("fx_c_echo", "2.0.0", c_echo),
                "the module says it is version 1.0.0, not 2.0.0");
  EXPECT_EQ(version_of("fx_c_echo"), "");
}

TEST_F(UpdateTest, AModuleThatCrashesOnlyCrashesTheProbe) {
  test::TempDir build;
  for (bool in_constructor : {false, true}) {
    std::string name = in_constructor ? "fx_crash_load" : "fx_crash_init";
    compile_c_module(build.path(), name, crashing_module_source(name, in_constructor));
  }
  start();
  for (std::string name : {"fx_crash_init", "fx_crash_load"}) {
    std::string bytes = test::read_file(build.path() / (name + ".so"));
    expect_failed(update_msg(name, "1.0.0", bytes),
                  "probe failed: the module crashed the probe process (signal 6, Aborted)");
    Message ping = call(msg("ping"));
    EXPECT_EQ(ping.status, "ok") << ping.error;
    EXPECT_EQ(version_of(name), "");
  }
}

TEST_F(UpdateTest, RequireSignatureChecksThePublisherSignature) {
  Publisher publisher, stranger;
  setup_.extension("node")["settings"] = {{"requireSignature", true},
                                          {"publisherKeys", {publisher.public_key_base64()}}};
  start();
  expect_failed(update_msg("hello", "1.1.0", hello110_),
                "a publisher signature is required (requireSignature is true) but "
                "methodArgs[3] is missing");
  expect_failed(update_msg("hello", "1.1.0", hello110_, "", {stranger.sign_base64(hello110_)}),
                "the signature in methodArgs[3] does not verify against any of the 1 trusted "
                "publisher key(s)");
  // The publisher's signature of other bytes does not cover these.
  expect_failed(update_msg("hello", "1.1.0", hello110_, "", {publisher.sign_base64(hello100_)}),
                "the signature in methodArgs[3] does not verify against any of the 1 trusted "
                "publisher key(s)");
  expect_failed(update_msg("hello", "1.1.0", hello110_, "", {"%%%%"}),
                "methodArgs[3] (the signature) is not valid base64: unexpected character '%' at "
                "offset 0");
  EXPECT_FALSE(fs::exists(setup_.data_dir() / "plugins" / "hello"));

  Message ok =
      call(update_msg("hello", "1.1.0", hello110_, "", {publisher.sign_base64(hello110_)}));
  EXPECT_EQ(result_of(ok).value("status", ""), "updated") << ok.data << " " << ok.error;
  EXPECT_EQ(greet(), "hello from n1 (hello 1.1.0)");
}

TEST_F(UpdateTest, BadSignatureSettingsFailTheNodeModule) {
  setup_.extension("node")["settings"] = {{"requireSignature", true}, {"publisherKeys", {"short"}}};
  start();
  bool found = false;
  for (const auto& p : node().plugins()) {
    if (p.name != "node") continue;
    found = true;
    EXPECT_EQ(p.state, PluginState::failed);
    EXPECT_NE(p.reason.find("node settings: publisherKeys[0] is not valid base64: its length (5 "
                            "characters) is not a multiple of 4"),
              std::string::npos)
        << p.reason;
  }
  EXPECT_TRUE(found);
}

// Without debug info the artifacts are about half as big, which halves the
// time the host spends encoding them (mostly JSON, slow under ASan).
std::string stripped(const fs::path& module, const fs::path& dir) {
  fs::path out = dir / (module.parent_path().filename().string() + ".so");
  std::string log;
  if (test::run_command({"strip", "-o", out.string(), module.string()}, &log) != 0) {
    return test::read_file(module);
  }
  return test::read_file(out);
}

TEST_F(UpdateTest, AHundredUpdatesMapAtMostTwoVersions) {
  test::TempDir tmp;
  const json to_110 = update_msg("hello", "1.1.0", stripped(kHello110, tmp.path()));
  const json to_100 = update_msg("hello", "1.0.0", stripped(kHello100, tmp.path()));
  start();
  long rss_before = rss_kb();
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 100; ++i) {
    Message r = call(i % 2 == 0 ? to_110 : to_100, 30s);
    ASSERT_EQ(result_of(r).value("status", ""), "updated") << "update " << i << ": " << r.data;
    // A bound on the loop, not a speed goal: each update probes the module
    // in a fresh `bosun probe-module` process, ~0.5 s under ASan.
    ASSERT_LT(std::chrono::steady_clock::now() - t0, 200s) << "after " << i << " updates";
  }
  EXPECT_EQ(greet(), "hello from n1 (hello 1.0.0)");
  // Only two staged files, each reused 50 times.
  std::set<std::string> staged;
  for (const auto& e : fs::recursive_directory_iterator(setup_.data_dir() / "plugins" / "hello")) {
    if (e.is_regular_file()) staged.insert(e.path().string());
  }
  EXPECT_EQ(staged.size(), 2u);
  int hellos = 0;
  for (const auto& p : node().plugins()) {
    if (p.name == "hello") {
      ++hellos;
      EXPECT_EQ(p.state, PluginState::active);
    }
  }
  EXPECT_EQ(hellos, 1);
#ifdef BOSUN_SANITIZED
  // No dlclose under ASan, so the maps keep every file once loaded; the
  // staged paths are reused, so they stay few. ASan holds up to 256 MB of
  // freed memory in quarantine (its default), so memory is bounded loosely.
  EXPECT_LE(mapped_files("hello.so").size(), 3u);
  EXPECT_LT(rss_kb() - rss_before, 512 * 1024) << "RSS grew by more than 512 MB";
  // bench/swap_bench runs this scenario in a Release build and fails on a
  // third mapped version (`make bench`).
  GTEST_SKIP() << "at most two mapped versions holds only where modules are dlclosed (not "
                  "under ASan): checked by swap_bench in a Release build";
#else
  (void)rss_before;
  std::set<std::string> mapped;
  bool at_most_two = test::wait_until(
      [&] {
        mapped = mapped_files("hello.so");
        return mapped.size() <= 2;
      },
      10s, 50ms);
  EXPECT_TRUE(at_most_two) << mapped.size() << " hello.so files mapped";
#endif
}

// The real binary: an update on probation rolls back when the host dies;
// a clean stop keeps it.
class ProbationTest : public UpdateTest {
 protected:
  void SetUp() override {
    UpdateTest::SetUp();
    setup_.doc()["plugins"]["probation"] = 30;
  }

  json update_through_socket(const fs::path& socket) {
    auto lines =
        test::socket_send_wait(socket, json::array({update_msg("hello", "1.1.0", hello110_)}), 60);
    auto replies = test::lines_of_type(lines, "reply");
    if (replies.size() != 1) return json(lines);
    return json::parse(replies[0].value("data", ""), nullptr, false);
  }

  std::string greet_through_socket(const fs::path& socket) {
    auto replies =
        test::lines_of_type(test::socket_send_wait(socket, json::array({msg("greet")})), "reply");
    return replies.empty() ? "" : replies[0].value("data", "");
  }
};

TEST_F(ProbationTest, AHostKilledDuringProbationRollsBackAtTheNextStart) {
  {
    test::BosunRun run(setup_);
    json res = update_through_socket(setup_.socket());
    ASSERT_EQ(res.value("status", ""), "updated") << res.dump();
    EXPECT_EQ(greet_through_socket(setup_.socket()), "hello from n1 (hello 1.1.0)");
    run.process().kill9();
  }
  // Restart in process, listening before start: the rollback is published
  // while the node starts.
  std::mutex mu;
  std::vector<json> results;
  {
    Node restarted(setup_.config());
    restarted.add_event_listener([&](const std::string& event, const json& body) {
      std::lock_guard<std::mutex> lock(mu);
      if (event == "update_result") results.push_back(body["payload"]);
    });
    restarted.start();
    std::thread loop([&] { restarted.run(); });
    for (const auto& p : restarted.plugins()) {
      if (p.name != "hello") continue;
      EXPECT_EQ(p.version, "1.0.0");
      EXPECT_EQ(p.path, (setup_.plugins_dir() / "hello.so").string());
    }
    auto out = test::submit_and_wait(restarted, msg("greet"));
    const Message* r = out.final_reply();
    EXPECT_EQ(r ? r->data : "", "hello from n1 (hello 1.0.0)");
    restarted.stop();
    loop.join();
  }
  std::lock_guard<std::mutex> lock(mu);
  ASSERT_EQ(results.size(), 1u) << json(results).dump();
  EXPECT_EQ(results[0]["status"], "rolled_back");
  EXPECT_EQ(results[0]["plugin"], "hello");
  EXPECT_EQ(results[0]["from"], "1.1.0");
  EXPECT_EQ(results[0]["to"], "1.0.0");
  EXPECT_EQ(results[0]["reason"], "the host stopped while version 1.1.0 was on probation");

  // The rollback is what the store now records: the next start keeps 1.0.0.
  test::BosunRun again(setup_);
  EXPECT_EQ(greet_through_socket(setup_.socket()), "hello from n1 (hello 1.0.0)");
}

TEST_F(ProbationTest, ACleanStopDuringProbationKeepsTheUpdate) {
  {
    test::BosunRun run(setup_);
    json res = update_through_socket(setup_.socket());
    ASSERT_EQ(res.value("status", ""), "updated") << res.dump();
    run.process().stop();
  }
  test::BosunRun run(setup_);
  auto replies = test::lines_of_type(
      test::socket_send_wait(setup_.socket(), json::array({msg("plugin_list")})), "reply");
  ASSERT_EQ(replies.size(), 1u);
  json list = json::parse(replies[0].value("data", ""), nullptr, false);
  bool listed = false;
  for (const auto& p : list) {
    if (p.value("name", "") == "hello") listed = p.value("version", "") == "1.1.0";
  }
  EXPECT_TRUE(listed) << list.dump();
  EXPECT_EQ(greet_through_socket(setup_.socket()), "hello from n1 (hello 1.1.0)");
  EXPECT_EQ(run.log().find("rolled back"), std::string::npos) << run.log();
}

class SettingsTest : public UpdateTest {
 protected:
  void SetUp() override {
    UpdateTest::SetUp();
    setup_.add_plugin("cli");
    setup_.add_fixture("fx_counter");
    setup_.add_fixture("fx_c_echo");
  }

  Message update_settings(const std::string& plugin, const json& settings) {
    return call(msg("update_settings", {plugin}, {{"data", settings.dump()}}));
  }

  void expect_settings_failed(const Message& r, const std::string& reason) {
    SCOPED_TRACE(reason);
    json res = result_of(r);
    EXPECT_EQ(res.value("status", ""), "failed") << r.data;
    EXPECT_EQ(res.value("reason", ""), reason);
    EXPECT_EQ(r.status, "error");
    EXPECT_EQ(r.error, "update_settings: " + reason);
  }

  std::string long_output() {
    Message r = call(msg("cli_command", {"bash", "-c", "head -c 1000 /dev/zero | tr '\\0' x"}));
    EXPECT_EQ(r.status, "ok") << r.error;
    return r.data;
  }
};

TEST_F(SettingsTest, UpdateSettingsReachesModulesThatTakeThem) {
  start();
  UpdateEvents events(node());
  expect_settings_failed(
      update_settings("fx_counter", {{"x", 1}}),
      "module refused the settings (BOSUN_ERR_UNSUPPORTED); the running settings are unchanged");
  expect_settings_failed(update_settings("fx_c_echo", {{"x", 1}}),
                         "module fx_c_echo takes no new settings while running (no on_settings)");
  expect_settings_failed(update_settings("nosuch", {{"x", 1}}),
                         "no active plugin named \"nosuch\"");

  EXPECT_EQ(long_output(), std::string(1000, 'x'));
  Message r = update_settings("cli", {{"maxOutputBytes", 100}});
  json res = result_of(r);
  EXPECT_EQ(res.value("status", ""), "updated") << r.data << " " << r.error;
  EXPECT_EQ(res.value("plugin", ""), "cli");
  EXPECT_EQ(long_output(), std::string(100, 'x') + "\n[bosun: output truncated after 100 bytes]\n");
  EXPECT_TRUE(events.wait_for("updated"));

  // Refused settings leave the running ones in place.
  expect_settings_failed(
      update_settings("cli", {{"maxOutputBytes", "big"}}),
      "module refused the settings (BOSUN_ERR_INVALID_ARGUMENT); the running settings are "
      "unchanged");
  // The settings as methodArgs[1]; the same again changes nothing.
  Message as_arg = call(msg("update_settings", {"cli", R"({"maxOutputBytes": 200})"}));
  EXPECT_EQ(result_of(as_arg).value("status", ""), "updated") << as_arg.data;
  EXPECT_EQ(long_output().substr(0, 201), std::string(200, 'x') + "\n");
  Message same = call(msg("update_settings", {"cli", R"({"maxOutputBytes": 200})"}));
  EXPECT_EQ(result_of(same).value("status", ""), "unchanged") << same.data;
}

TEST_F(SettingsTest, BadUpdateSettingsRequestsAreNamed) {
  start();
  expect_settings_failed(
      call(msg("update_settings", {"cli", R"({"maxOutputBytes": 100})", "true"})),
      "restart is not supported yet: nothing was changed; send update_settings without restart "
      "to hand the settings to the running module");
  expect_settings_failed(call(msg("update_settings", {"cli", "[1, 2]"})),
                         "the settings (methodArgs[1]) must be a JSON object, not: [1, 2]");
  expect_settings_failed(call(msg("update_settings", {"cli"})),
                         "no settings: give a JSON object as data or as methodArgs[1]");
  expect_settings_failed(call(msg("update_settings", json::array())),
                         "expected methodArgs [plugin(, settings JSON(, restart))], got 0 "
                         "argument(s)");
  EXPECT_EQ(long_output(), std::string(1000, 'x'));
}

TEST_F(SettingsTest, TheNodeModuleReadsItsSignaturePolicyAtEachUpdate) {
  Publisher publisher;
  start();
  Message r = update_settings(
      "node", {{"requireSignature", true}, {"publisherKeys", {publisher.public_key_base64()}}});
  EXPECT_EQ(result_of(r).value("status", ""), "updated") << r.data << " " << r.error;
  expect_failed(update_msg("hello", "1.1.0", hello110_),
                "a publisher signature is required (requireSignature is true) but "
                "methodArgs[3] is missing");
  expect_settings_failed(
      update_settings("node", {{"requireSignature", "yes"}}),
      "module refused the settings (BOSUN_ERR_INVALID_ARGUMENT); the running settings are "
      "unchanged");
}

TEST_F(SettingsTest, MessageMergesIntoTheNodeModulesStoredSettings) {
  start();
  Message r = call(msg("message", json::array(), {{"data", R"({"color": "blue"})"}}));
  json res = result_of(r);
  EXPECT_EQ(res.value("status", ""), "updated") << r.data << " " << r.error;
  EXPECT_EQ(res.value("plugin", ""), "node");
  EXPECT_EQ(res.value("from", ""), "1.0.0");
  Message same = call(msg("message", json::array(), {{"data", R"({"color": "blue"})"}}));
  EXPECT_EQ(result_of(same).value("status", ""), "unchanged") << same.data;
  Message other = call(msg("message", json::array(), {{"data", R"({"size": 3})"}}));
  EXPECT_EQ(result_of(other).value("status", ""), "updated") << other.data;

  Message bad = call(msg("message", json::array(), {{"data", "[1]"}}));
  EXPECT_EQ(result_of(bad).value("reason", ""), "data must be a JSON object of settings, not: [1]");
  EXPECT_EQ(bad.error, "message: data must be a JSON object of settings, not: [1]");
  Message security =
      call(msg("message", json::array(), {{"data", R"({"requireSignature": false})"}}));
  EXPECT_EQ(result_of(security).value("status", ""), "failed");
  EXPECT_EQ(result_of(security).value("reason", ""),
            "\"requireSignature\" is a security setting: set it in the config "
            "(extensions.node.settings) or with update_settings");

  // Kept across a restart, in the module's own store.
  node_->stop();
  start();
  Message after =
      call(msg("message", json::array(), {{"data", R"({"color": "blue", "size": 3})"}}));
  EXPECT_EQ(result_of(after).value("status", ""), "unchanged") << after.data;
}

}  // namespace
}  // namespace bosun::host
