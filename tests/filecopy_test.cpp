// core/filecopy between real `bosun run` nodes over a real nats-server
// (DESIGN §9): content and mode arrive, memory stays bounded for a file
// four times the bound, a receiver killed mid-copy resumes, a copy sent again
// after its budget ran out resumes the partial file, a chunk sent again is
// not written twice, progress on a terminal, and every bad input gets an
// error naming it.
#include <gtest/gtest.h>

#include <pty.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <future>
#include <thread>

#include "../host/src/signing.hpp"
#include "cluster_harness.hpp"
#include "node_harness.hpp"

namespace bosun::test {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr uint64_t kMiB = 1 << 20;
// Each chunk goes through several JSON encodings on its way; unoptimised and
// under AddressSanitizer that runs near 1 MiB/s on a loaded two-core box, so
// the sanitizer build moves small files (the Release build, bigger ones).
#ifdef BOSUN_SANITIZED
constexpr bool kSanitized = true;
constexpr uint64_t kCutFile = 6 * kMiB;
#else
constexpr bool kSanitized = false;
constexpr uint64_t kCutFile = 64 * kMiB;
#endif

// ------------------------------------------------------------ helpers ---

// `size` pseudo-random bytes (splitmix64 from `seed`), written 1 MiB at a time.
void make_file(const fs::path& p, uint64_t size, uint64_t seed, fs::perms mode) {
  fs::create_directories(p.parent_path());
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  std::vector<uint64_t> block(kMiB / 8);
  uint64_t x = seed;
  for (uint64_t left = size; left > 0;) {
    for (auto& w : block) {
      uint64_t z = (x += 0x9E3779B97F4A7C15ull);
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      w = z ^ (z >> 31);
    }
    uint64_t n = std::min<uint64_t>(left, kMiB);
    out.write(reinterpret_cast<const char*>(block.data()), static_cast<std::streamsize>(n));
    left -= n;
  }
  out.close();
  fs::permissions(p, mode, fs::perm_options::replace);
}

// The digests and encoding are the CLI's own (host/src/signing.hpp).
std::string sha256_of_file(const fs::path& p) {
  if (!fs::exists(p)) return "(missing " + p.string() + ")";
  return host::sha256_file_hex(p);
}

std::string sha256_of(const std::string& bytes) {
  return host::sha256_hex(bytes);
}

std::string base64(const std::string& bytes) {
  return host::base64_encode(bytes);
}

unsigned mode_of(const fs::path& p) {
  struct stat st {};
  if (::stat(p.c_str(), &st) != 0) return 0;
  return st.st_mode & 07777;
}

// A "VmRSS" / "VmHWM" line of /proc/<pid>/status, in KiB; -1 when unreadable.
long status_kib(pid_t pid, const std::string& field) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(field + ":", 0) == 0) return std::stol(line.substr(field.size() + 1));
  }
  return -1;
}

// Partial files (".<name>.<key>.bosun-part") in `dir`.
std::vector<fs::path> partial_files(const fs::path& dir) {
  std::vector<fs::path> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (e.path().filename().string().ends_with(".bosun-part")) out.push_back(e.path());
  }
  return out;
}

uint64_t partial_bytes(const fs::path& dir) {
  uint64_t n = 0;
  std::error_code ec;
  for (const auto& p : partial_files(dir)) n += fs::file_size(p, ec);
  return n;
}

// A node with the filecopy module; `settings` for it.
ClusterNode& add_copy_node(ClusterHarness& h, const std::string& name,
                           json settings = json::object()) {
  ClusterNode& n = h.add_node(name);
  n.add_module(plugin_module("filecopy"));
  n.config()["extensions"]["filecopy"]["settings"] = std::move(settings);
  n.config()["log"]["level"] = "info";  // debug logs a line per chunk message
  n.config()["defaults"]["methodTimeout"] = 120;
  return n;
}

json copy_from(const std::string& src, const std::string& to_node, const std::string& dst,
               json extra = json::object()) {
  json m = {{"toNode", "ship1"},
            {"method", "copy_file_from"},
            {"methodArgs", {src, to_node, dst}},
            {"methodTimeout", 120}};
  m.update(extra);
  return m;
}

// The one final reply of `lines`; fails the test when there is not exactly one.
json final_of(const std::vector<json>& lines) {
  auto finals = final_replies(lines);
  if (finals.size() != 1) {
    ADD_FAILURE() << "expected one final reply, got " << json(lines).dump().substr(0, 4000);
    return json::object();
  }
  return finals[0];
}

// The copy's result after checking it succeeded: the last reply with data
// that is not progress. (A host sends a reply it held for 30 ms without
// waiting for the call to end, so the final reply may be an empty marker.)
json result_of(const std::vector<json>& lines) {
  json f = final_of(lines);
  EXPECT_EQ(f.value("status", ""), "ok") << f.dump();
  json r;
  for (const auto& l : lines) {
    if (l.value("type", "") != "reply" || l.value("inReplyTo", "") != f.value("inReplyTo", "")) {
      continue;
    }
    json d = json::parse(l.value("data", ""), nullptr, false);
    if (d.is_object() && !d.contains("progress")) r = d;
  }
  EXPECT_TRUE(r.is_object()) << json(lines).dump().substr(0, 4000);
  return r.is_object() ? r : json::object();
}

// The final reply's error; fails the test unless the reply is an error.
std::string error_of(const std::vector<json>& lines) {
  json f = final_of(lines);
  EXPECT_EQ(f.value("status", ""), "error") << f.dump();
  return f.value("error", "");
}

// Runs argv on a pseudo-terminal; returns what it printed there.
std::string run_in_pty(const std::vector<std::string>& argv, std::chrono::milliseconds timeout,
                       int* exit_code) {
  std::vector<char*> cargv;
  for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  int master = -1;
  pid_t pid = ::forkpty(&master, nullptr, nullptr, nullptr);
  if (pid < 0) throw std::runtime_error("forkpty failed");
  if (pid == 0) {
    ::execv(cargv[0], cargv.data());
    _exit(127);
  }
  std::string out;
  auto deadline = Clock::now() + timeout;
  char buf[4096];
  while (Clock::now() < deadline) {
    ssize_t n = ::read(master, buf, sizeof buf);
    if (n <= 0) break;  // EIO once the child closed the terminal
    out.append(buf, static_cast<size_t>(n));
  }
  if (Clock::now() >= deadline) ::kill(pid, SIGKILL);
  int st = 0;
  ::waitpid(pid, &st, 0);
  ::close(master);
  *exit_code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  return out;
}

// Every progress reply among `lines` ({"progress": {...}} in a non-final reply).
std::vector<json> progress_of(const std::vector<json>& lines) {
  std::vector<json> out;
  for (const auto& l : lines) {
    if (l.value("type", "") != "reply" || l.value("final", true)) continue;
    json d = json::parse(l.value("data", ""), nullptr, false);
    if (d.is_object() && d.contains("progress")) out.push_back(d["progress"]);
  }
  return out;
}

// ------------------------------------------------------------ copying ---

TEST(FileCopy, CopiesContentAndModeBetweenTwoNodesBothWays) {
  ClusterHarness h;
  ClusterNode& ship1 = add_copy_node(h, "ship1");
  ClusterNode& ship2 = add_copy_node(h, "ship2");
  ship1.start();
  ship2.start();
  TempDir files;

  // copy_file_from, a size that ends in a short chunk, mode 0640.
  fs::path one = files / "one.bin";
  make_file(one, kMiB + 4321, 1, fs::perms(0640));
  json r = result_of(ship1.send(json::array({copy_from(one, "ship2", "incoming/one.bin")})));
  fs::path got = ship2.data_dir() / "incoming" / "one.bin";
  ASSERT_TRUE(fs::exists(got)) << r.dump();
  EXPECT_EQ(fs::file_size(got), fs::file_size(one));
  EXPECT_EQ(sha256_of_file(got), sha256_of_file(one));
  EXPECT_EQ(r.value("sha256", ""), sha256_of_file(one)) << r.dump();
  EXPECT_EQ(r.value("bytes", 0u), kMiB + 4321) << r.dump();
  EXPECT_EQ(r.value("destination", ""), fs::canonical(got).string()) << r.dump();
  EXPECT_EQ(mode_of(got), 0640u);

  // Steward's alias, an absolute destination inside the data folder, mode 0755.
  fs::path two = files / "two.sh";
  make_file(two, 100 * 1024, 2, fs::perms(0755));
  fs::path abs_dst = ship2.data_dir() / "bin" / "two.sh";
  json steward = copy_from(two, "ship2", abs_dst.string());
  steward["method"] = "REQCopyFileFrom";
  result_of(ship1.send(json::array({steward})));
  EXPECT_EQ(sha256_of_file(abs_dst), sha256_of_file(two));
  EXPECT_EQ(mode_of(abs_dst), 0755u);

  // copy_file_to, sent to the node that is to have the file; an empty file.
  fs::path three = files / "empty";
  make_file(three, 0, 3, fs::perms(0600));
  json to = {{"toNode", "ship2"},
             {"method", "copy_file_to"},
             {"methodArgs", {"ship1", three.string(), "incoming/empty"}},
             {"methodTimeout", 60}};
  r = result_of(ship1.send(json::array({to})));
  fs::path got3 = ship2.data_dir() / "incoming" / "empty";
  ASSERT_TRUE(fs::exists(got3)) << r.dump();
  EXPECT_EQ(fs::file_size(got3), 0u);
  EXPECT_EQ(mode_of(got3), 0600u);
  EXPECT_EQ(r.value("sha256", ""), sha256_of(""));

  // copy_file_to again, a real file, overwriting the earlier copy in place.
  make_file(one, 1 * kMiB + 1, 4, fs::perms(0600));
  to["methodArgs"] = {"ship1", one.string(), "incoming/one.bin"};
  result_of(ship1.send(json::array({to})));
  EXPECT_EQ(sha256_of_file(got), sha256_of_file(one));
  EXPECT_EQ(mode_of(got), 0600u);

  EXPECT_TRUE(partial_files(ship2.data_dir() / "incoming").empty());
  EXPECT_TRUE(partial_files(ship2.data_dir() / "bin").empty());
}

TEST(FileCopy, ProgressIsALineOnATerminalAndPlainRepliesOtherwise) {
  ClusterHarness h;
  json settings = {{"progressInterval", 50}, {"window", 2}, {"chunkSize", 16 * 1024}};
  ClusterNode& ship1 = add_copy_node(h, "ship1", settings);
  ClusterNode& ship2 = add_copy_node(h, "ship2", settings);
  ship1.start();
  ship2.start();
  TempDir files;
  fs::path src = files / "big.bin";
  const uint64_t size = 2 * kMiB;
  make_file(src, size, 5, fs::perms(0644));
  std::vector<std::string> argv = {BOSUN_BIN, "send",      "--config", ship1.config_file(),
                                   "--to",    "ship1",     "--method", "copy_file_from",
                                   "--wait",  "--timeout", "60",       "--",
                                   src,       "ship2",     "tty.bin"};

  int rc = -1;
  std::string tty = run_in_pty(argv, 90s, &rc);
  EXPECT_EQ(rc, 0) << tty;
  EXPECT_NE(tty.find("\r\033[K[ship1] copy " + src.string() + " to ship2:tty.bin"),
            std::string::npos)
      << tty;
  EXPECT_NE(tty.find("% "), std::string::npos) << tty;
  size_t draws = 0;
  for (size_t pos = tty.find("\r\033[K["); pos != std::string::npos;
       pos = tty.find("\r\033[K[", pos + 1)) {
    ++draws;
  }
  // 50 ms apart: eight draws span enough time (0.2 s) to show a rate.
  if (draws >= 8) {
    EXPECT_NE(tty.find("MiB/s"), std::string::npos) << tty;
  }
  EXPECT_EQ(tty.find("{\"progress\""), std::string::npos) << "drawn, not printed: " << tty;
  EXPECT_NE(tty.find("\"sha256\":\"" + sha256_of_file(src) + "\""), std::string::npos) << tty;
  EXPECT_EQ(sha256_of_file(ship2.data_dir() / "tty.bin"), sha256_of_file(src));

  // Not a terminal: every reply as it is, progress too, and no line drawing.
  argv.back() = "plain.bin";
  std::string plain;
  rc = run_command(argv, &plain, false, "", 90s);
  EXPECT_EQ(rc, 0) << plain;
  EXPECT_EQ(plain.find('\r'), std::string::npos) << plain;
  EXPECT_NE(plain.find("[ship1] {\"progress\":{"), std::string::npos) << plain;
  EXPECT_NE(plain.find("\"sha256\":\"" + sha256_of_file(src) + "\""), std::string::npos) << plain;

  // Through the socket: progress replies count up to the size.
  auto lines = ship1.send(json::array({copy_from(src, "ship2", "socket.bin")}), true, 60);
  result_of(lines);
  auto progress = progress_of(lines);
  ASSERT_FALSE(progress.empty()) << json(lines).dump().substr(0, 2000);
  for (size_t i = 1; i < progress.size(); ++i) {
    EXPECT_GE(progress[i]["done"].get<uint64_t>(), progress[i - 1]["done"].get<uint64_t>());
  }
  EXPECT_EQ(progress.back()["done"], size);
  EXPECT_EQ(progress.back()["total"], size);
}

// The memory bound: a file four times the bound, both processes sampled
// while it is copied. This needs the Release build of bosun: unoptimised and
// sanitized, a 256 MiB copy takes many minutes, and AddressSanitizer's
// shadow memory and quarantine make resident size say little about bosun.
// So the sanitizer build runs it against the Release build named by
// BOSUN_RELEASE_DIR (a build folder with bin/bosun and plugins/) and skips
// it without one; a Release build of the tests runs it on its own binary.
TEST(FileCopy, A256MiBCopyKeepsBothNodesUnder64MiBResident) {
  constexpr uint64_t kSize = 256 * kMiB;
  constexpr long kBoundKiB = 64 * 1024;
  fs::path bin = BOSUN_BIN;
  fs::path plugins = BOSUN_PLUGIN_DIR;
  if (kSanitized) {
    const char* release = std::getenv("BOSUN_RELEASE_DIR");
    if (release == nullptr) {
      GTEST_SKIP() << "needs a Release build of bosun (BOSUN_RELEASE_DIR=<build folder>); "
                      "`make bench` measures the same with filecopy_bench";
    }
    bin = fs::path(release) / "bin" / "bosun";
    plugins = fs::path(release) / "plugins";
  }
  ClusterHarness h;
  ClusterNode& ship1 = add_copy_node(h, "ship1");
  ClusterNode& ship2 = add_copy_node(h, "ship2");
  for (ClusterNode* n : {&ship1, &ship2}) {
    n->set_binary(bin);
    for (const char* m : {"sinks", "filecopy"}) n->add_module(plugins / (std::string(m) + ".so"));
  }
  ship1.start();
  ship2.start();
  TempDir files;
  fs::path src = files / "quarter-gig.bin";
  make_file(src, kSize, 6, fs::perms(0644));

  // Idle, but warmed up: one small copy first.
  fs::path small = files / "small.bin";
  make_file(small, kMiB, 7, fs::perms(0644));
  result_of(ship1.send(json::array({copy_from(small, "ship2", "warm.bin")})));
  const pid_t pids[2] = {ship1.pid(), ship2.pid()};
  const long idle[2] = {status_kib(pids[0], "VmRSS"), status_kib(pids[1], "VmRSS")};
  ASSERT_GT(idle[0], 0);
  ASSERT_GT(idle[1], 0);

  std::atomic<bool> copying{true};
  long peak[2] = {0, 0};
  std::string series;  // every 0.5 s: seconds, sender KiB, receiver KiB
  std::thread sampler([&] {
    auto t0 = Clock::now();
    for (int n = 0; copying; ++n) {
      long now[2];
      for (int i = 0; i < 2; ++i) {
        now[i] = status_kib(pids[i], "VmRSS");
        peak[i] = std::max(peak[i], now[i]);
      }
      if (n % 25 == 0) {
        char line[96];
        std::snprintf(line, sizeof line, "%.1f s: %ld %ld\n",
                      std::chrono::duration<double>(Clock::now() - t0).count(), now[0], now[1]);
        series += line;
      }
      std::this_thread::sleep_for(20ms);
    }
  });
  auto started = Clock::now();
  auto lines = ship1.send(json::array({copy_from(src, "ship2", "big/quarter-gig.bin")}), true, 120);
  double secs = std::chrono::duration<double>(Clock::now() - started).count();
  copying = false;
  sampler.join();
  json r = result_of(lines);
  EXPECT_EQ(r.value("sha256", ""), sha256_of_file(src));
  EXPECT_EQ(sha256_of_file(ship2.data_dir() / "big" / "quarter-gig.bin"), r.value("sha256", ""));
  EXPECT_FALSE(progress_of(lines).empty()) << "a copy of " << secs << " s showed no progress";

  const char* names[2] = {"sender ship1", "receiver ship2"};
  for (int i = 0; i < 2; ++i) {
    long hwm = status_kib(pids[i], "VmHWM");
    peak[i] = std::max(peak[i], status_kib(pids[i], "VmRSS"));
    std::printf(
        "[ memory ] %s (%s): idle VmRSS %ld KiB, sampled peak VmRSS %ld KiB, VmHWM %ld "
        "KiB; copy %.1f s (%.1f MiB/s)\n",
        names[i], bin.c_str(), idle[i], peak[i], hwm, secs, kSize / kMiB / secs);
    EXPECT_LT(hwm, kBoundKiB) << names[i] << " peaked at " << hwm << " KiB";
    EXPECT_LT(peak[i], kBoundKiB) << names[i] << "; VmRSS (KiB) while copying:\n" << series;
  }
  // The outbox holds a window of chunks and the inbox keeps finished
  // messages without their bodies, so neither node's LMDB holds the file.
  // With MDB_WRITEMAP the file is as long as the map (sparse): count the
  // blocks it really holds.
  for (ClusterNode* n : {&ship1, &ship2}) {
    struct stat st {};
    fs::path file = n->data_dir() / "state" / "data.mdb";
    ASSERT_EQ(::stat(file.c_str(), &st), 0) << file;
    uint64_t used = static_cast<uint64_t>(st.st_blocks) * 512;
    EXPECT_LT(used, 64 * kMiB) << "LMDB file of " << n->name() << " holds " << used
                               << " bytes on disk";
  }
}

TEST(FileCopy, ReceiverKilledMidCopyResumesWhenItComesBackWithinTheBudget) {
  ClusterHarness h;
  ClusterNode& ship1 = add_copy_node(h, "ship1");
  ClusterNode& ship2 = add_copy_node(h, "ship2");
  ship1.start();
  ship2.start();
  TempDir files;
  fs::path src = files / "cut.bin";
  const uint64_t size = kCutFile;
  make_file(src, size, 8, fs::perms(0640));
  fs::path dir = ship2.data_dir() / "cut";

  auto pending = std::async(std::launch::async, [&] {
    return ship1.send(
        json::array({copy_from(src, "ship2", "cut/cut.bin", {{"ACKTimeout", 1}, {"retries", 30}})}),
        true, 150);
  });
  ASSERT_TRUE(wait_until([&] { return partial_bytes(dir) >= size / 6; }, 60s, 2ms))
      << "the copy never got a sixth of the way into ship2";
  ship2.kill9();
  uint64_t at_kill = partial_bytes(dir);
  EXPECT_LT(at_kill, size) << "killed too late: the copy was done";
  EXPECT_FALSE(fs::exists(dir / "cut.bin"));
  uint64_t retried = ship1.counter("retried");
  EXPECT_TRUE(wait_until([&] { return ship1.counter("retried") > retried; }, 10s, 50ms))
      << "ship1 does not resend the chunks in flight while ship2 is away";
  ship2.start();

  ASSERT_EQ(pending.wait_for(150s), std::future_status::ready);
  json r = result_of(pending.get());
  EXPECT_EQ(r.value("sha256", ""), sha256_of_file(src)) << r.dump();
  EXPECT_EQ(sha256_of_file(dir / "cut.bin"), sha256_of_file(src));
  EXPECT_EQ(mode_of(dir / "cut.bin"), 0640u);
  EXPECT_TRUE(partial_files(dir).empty());
  // Every chunk written once in the receiver's record, across its two runs.
  EXPECT_EQ(r.value("chunksWritten", 0u), size / (256 * 1024)) << r.dump();
  std::printf("[ resume ] killed at %llu of %llu bytes; %s\n",
              static_cast<unsigned long long>(at_kill), static_cast<unsigned long long>(size),
              r.dump().c_str());
}

TEST(FileCopy, TheSameCopySentAgainAfterItsBudgetRanOutResumesThePartialFile) {
  ClusterHarness h;
  ClusterNode& ship1 = add_copy_node(h, "ship1");
  ClusterNode& ship2 = add_copy_node(h, "ship2");
  ship1.start();
  ship2.start();
  TempDir files;
  fs::path src = files / "again.bin";
  const uint64_t size = kCutFile;
  make_file(src, size, 9, fs::perms(0644));
  fs::path dir = ship2.data_dir() / "again";
  // A budget of 1.5 s: the sender gives up 6.5 s after ship2 went away.
  json m = copy_from(src, "ship2", "again/again.bin", {{"ACKTimeout", 0.5}, {"retries", 2}});

  auto pending =
      std::async(std::launch::async, [&] { return ship1.send(json::array({m}), true, 60); });
  ASSERT_TRUE(wait_until([&] { return partial_bytes(dir) >= size / 3; }, 60s, 2ms));
  ship2.kill9();
  ASSERT_EQ(pending.wait_for(60s), std::future_status::ready);
  std::string error = error_of(pending.get());
  EXPECT_NE(error.find("copy_file_from: no answer from node ship2 for"), std::string::npos)
      << error;
  EXPECT_NE(error.find("the same copy sent again resumes"), std::string::npos) << error;

  ship2.start();
  json r = result_of(ship1.send(json::array({m}), true, 60));
  EXPECT_EQ(sha256_of_file(dir / "again.bin"), sha256_of_file(src));
  EXPECT_GE(r.value("resumedBytes", 0u), size / 4) << "started over: " << r.dump();
  EXPECT_EQ(r.value("chunksWritten", 0u), size / (256 * 1024)) << r.dump();
  EXPECT_TRUE(partial_files(dir).empty());
}

// The receiver's side driven by hand, as any peer could: a chunk that comes
// again is acknowledged and not written again, and garbage gets errors.
TEST(FileCopy, AChunkSentAgainIsNotWrittenTwiceAndBadChunksAreRefused) {
  ClusterHarness h;
  ClusterNode& ship1 = add_copy_node(h, "ship1");
  ClusterNode& ship2 = add_copy_node(h, "ship2");
  ship1.start();
  ship2.start();
  const std::string key = "0123456789abcdef0123456789abcdef";
  auto to_ship2 = [&](const std::string& method, json args, const std::string& data) {
    json m = {{"toNode", "ship2"}, {"method", method}, {"methodArgs", std::move(args)}};
    if (!data.empty()) m["data"] = data;
    return ship1.send(json::array({m}), true, 20);
  };
  json begin = {{"key", key}, {"src", "/x"},   {"dst", "hand/x.bin"},
                {"size", 8},  {"chunk", 4096}, {"mode", 0600}};
  json b = result_of(to_ship2("filecopy_begin", {key}, begin.dump()));
  EXPECT_EQ(b.value("next", 99), 0) << b.dump();

  EXPECT_EQ(error_of(to_ship2("filecopy_chunk", {key, "0"}, "QUFB!UFB")),
            "filecopy_chunk: the chunk's data is not base64");
  EXPECT_EQ(error_of(to_ship2("filecopy_chunk", {key, "0"}, base64("CC"))),
            "filecopy_chunk: the chunk at offset 0 holds 2 bytes, expected 8");
  json first = result_of(to_ship2("filecopy_chunk", {key, "0"}, base64("AAAAAAAA")));
  EXPECT_EQ(first, json({{"offset", 0}}));
  json again = result_of(to_ship2("filecopy_chunk", {key, "0"}, base64("BBBBBBBB")));
  EXPECT_EQ(again, json({{"offset", 0}, {"duplicate", true}}));

  EXPECT_EQ(error_of(to_ship2("filecopy_chunk", {key, "4096"}, base64("CC"))),
            "filecopy_chunk: offset 4096 is not the start of a chunk of the 8-byte file");
  EXPECT_EQ(error_of(to_ship2("filecopy_chunk", {key, "zero"}, base64("CC"))),
            "filecopy_chunk: the offset must be a decimal number of bytes");
  EXPECT_EQ(error_of(to_ship2("filecopy_chunk", {"../../etc", "0"}, base64("CC"))),
            "filecopy_chunk: the transfer key must be 32 lowercase hex digits");
  EXPECT_NE(error_of(to_ship2("filecopy_chunk", {std::string(32, 'f'), "0"}, base64("CC")))
                .find("filecopy_chunk: no copy in progress for transfer ffff"),
            std::string::npos);
  EXPECT_EQ(error_of(to_ship2("filecopy_begin", {key}, "not json")),
            "filecopy_begin: the message's data must be a JSON object");

  json commit = {{"sha256", sha256_of("AAAAAAAA")}, {"size", 8}};
  json c = result_of(to_ship2("filecopy_commit", {key}, commit.dump()));
  EXPECT_EQ(c.value("chunksWritten", 0), 1) << c.dump();
  EXPECT_EQ(c.value("duplicateChunks", 0), 1) << c.dump();
  fs::path got = ship2.data_dir() / "hand" / "x.bin";
  EXPECT_EQ(read_file(got), "AAAAAAAA");
  EXPECT_EQ(mode_of(got), 0600u);

  // A wrong SHA-256 removes the partial file and leaves the destination alone.
  begin["key"] = std::string(32, 'a');
  result_of(to_ship2("filecopy_begin", {std::string(32, 'a')}, begin.dump()));
  result_of(to_ship2("filecopy_chunk", {std::string(32, 'a'), "0"}, base64("DDDDDDDD")));
  std::string e = error_of(to_ship2("filecopy_commit", {std::string(32, 'a')}, commit.dump()));
  EXPECT_NE(e.find("filecopy_commit: SHA-256 mismatch"), std::string::npos) << e;
  EXPECT_EQ(read_file(got), "AAAAAAAA");
  EXPECT_TRUE(partial_files(got.parent_path()).empty());
  EXPECT_TRUE(ship2.running()) << "garbage from a peer must not take the node down";
}

// ---------------------------------------------------------- bad input ---

TEST(FileCopy, EveryBadInputGetsAnErrorNamingIt) {
  ClusterHarness h;
  ClusterNode& ship1 = add_copy_node(h, "ship1");
  ClusterNode& ship2 = add_copy_node(h, "ship2");
  ship1.start();
  ship2.start();
  TempDir files;
  const std::string src = (files / "ok.txt").string();
  make_file(src, 1000, 10, fs::perms(0644));
  fs::create_directories(ship2.data_dir() / "adir");
  fs::create_symlink("/tmp", ship2.data_dir() / "link");
  ::mkfifo((files / "fifo").c_str(), 0644);
  const std::string d2 = fs::canonical(ship2.data_dir()).string();
  const std::string usage = "[source path, destination node, destination path]";

  struct Case {
    json args;
    std::string error;  // the whole error text, or a part of it after "~"
  };
  std::vector<Case> cases = {
      {json::array(), "copy_file_from: methodArgs must be " + usage + ", got 0 argument(s)"},
      {json::array({src}), "copy_file_from: methodArgs must be " + usage + ", got 1 argument(s)"},
      {{src, "ship2", "x", "y"},
       "copy_file_from: methodArgs must be " + usage + ", got 4 argument(s)"},
      {{src, "ship2", ""}, "copy_file_from: methodArgs[2] is empty; methodArgs must be " + usage},
      {{(files / "missing.txt").string(), "ship2", "x"},
       "copy_file_from: the source file \"" + (files / "missing.txt").string() +
           "\" does not exist"},
      {{files.path().string(), "ship2", "x"},
       "copy_file_from: the source \"" + files.path().string() + "\" is a folder, not a file"},
      {{(files / "fifo").string(), "ship2", "x"},
       "copy_file_from: the source \"" + (files / "fifo").string() +
           "\" is not a regular file (a FIFO, socket or device)"},
      {{src, "ship 2", "x"},
       "copy_file_from: the destination node \"ship 2\" is not a node name (letters, digits, '_' "
       "and '-' only)"},
      {{src, "ship2.eu", "x"},
       "copy_file_from: the destination node \"ship2.eu\" is not a node name (letters, digits, "
       "'_' and '-' only)"},
      {{src, "ship2", "/etc/passwd"},
       "~copy_file_from: node ship2: filecopy_begin: the destination \"/etc/passwd\" is outside "
       "the allowed folders (\"" +
           ship2.data_dir().string()},
      {{src, "ship2", "../../escape.txt"},
       "copy_file_from: node ship2: filecopy_begin: the destination path \"../../escape.txt\" "
       "must not contain \"..\""},
      {{src, "ship2", "a/../../b"},
       "copy_file_from: node ship2: filecopy_begin: the destination path \"a/../../b\" must not "
       "contain \"..\""},
      {{src, "ship2", "adir"},
       "copy_file_from: node ship2: filecopy_begin: the destination \"" + d2 +
           "/adir\" is a folder; give the path of the file to write"},
      {{src, "ship2", "adir/"},
       "copy_file_from: node ship2: filecopy_begin: the destination \"adir/\" is a folder; give "
       "the path of the file to write"},
      {{src, "ship2", "link/escaped.txt"},
       "~copy_file_from: node ship2: filecopy_begin: the destination \"" +
           ship2.data_dir().string() +
           "/link/escaped.txt\" leaves the allowed folders through a symbolic link"},
  };
  if (::geteuid() != 0) {
    fs::path locked = files / "locked.txt";
    make_file(locked, 10, 11, fs::perms(0000));
    cases.push_back({{locked.string(), "ship2", "x"},
                     "copy_file_from: the source file \"" + locked.string() +
                         "\" cannot be read: Permission denied"});
  }  // root reads any file: no unreadable source to be had

  // One at a time: a node runs only so many copies at once (maxConcurrentCopies).
  for (const auto& c : cases) {
    std::string got =
        error_of(ship1.send(json::array({copy_from("", "", "", {{"methodArgs", c.args}})})));
    const std::string& want = c.error;
    if (want.starts_with("~")) {
      EXPECT_EQ(got.find(want.substr(1)), 0u) << c.args.dump() << " -> " << got;
    } else {
      EXPECT_EQ(got, want) << c.args.dump();
    }
  }
  EXPECT_FALSE(fs::exists("/tmp/escaped.txt"));
  EXPECT_TRUE(partial_files(ship2.data_dir()).empty());

  // copy_file_to checks the same on its own node, before asking the source.
  json to = {{"toNode", "ship2"}, {"method", "copy_file_to"}};
  to["methodArgs"] = json::array({"ship1"});
  EXPECT_EQ(error_of(ship1.send(json::array({to}))),
            "copy_file_to: methodArgs must be [source node, source path, destination path], got "
            "1 argument(s)");
  to["methodArgs"] = {"ship/1", src, "x"};
  EXPECT_EQ(error_of(ship1.send(json::array({to}))),
            "copy_file_to: the source node \"ship/1\" is not a node name (letters, digits, '_' and "
            "'-' only)");
  to["methodArgs"] = {"ship1", src, "../x"};
  EXPECT_EQ(error_of(ship1.send(json::array({to}))),
            "copy_file_to: the destination path \"../x\" must not contain \"..\"");
  to["methodArgs"] = {"ship1", (files / "missing.txt").string(), "x"};
  EXPECT_EQ(error_of(ship1.send(json::array({to}))),
            "copy_file_to: node ship1: copy_file_from: the source file \"" +
                (files / "missing.txt").string() + "\" does not exist");

  // A node nobody runs: the copy gives up after the delivery budget.
  json nobody = copy_from(src, "ship9", "x", {{"ACKTimeout", 0.5}, {"retries", 1}});
  std::string e = error_of(ship1.send(json::array({nobody}), true, 30));
  EXPECT_EQ(e.find("copy_file_from: no answer from node ship9 for"), 0u) << e;
  EXPECT_TRUE(ship1.running());
  EXPECT_TRUE(ship2.running());
}

// In-process and standalone: module settings are checked, and a standalone
// node copies to itself but says at once that it reaches no other node.
TEST(FileCopy, SettingsAreCheckedAndAStandaloneNodeCopiesOnlyToItself) {
  {
    NodeSetup setup("solo");
    setup.add_plugin("filecopy");
    setup.extension("filecopy")["settings"] = {{"chunkSize", 10}};
    RunningNode node(setup.config());
    auto plugins = node->plugins();
    auto it = std::find_if(plugins.begin(), plugins.end(),
                           [](const auto& p) { return p.name == "filecopy"; });
    ASSERT_NE(it, plugins.end());
    EXPECT_EQ(it->state, host::PluginState::failed);
    EXPECT_NE(it->reason.find("filecopy settings: \"chunkSize\" must be an integer from 4096 to "
                              "524288, not 10"),
              std::string::npos)
        << it->reason;
  }
  NodeSetup setup("solo");
  setup.add_plugin("filecopy");
  TempDir outside;
  setup.extension("filecopy")["settings"] = {{"allowedDirs", {outside.path().string(), "inbox"}},
                                             {"chunkSize", 4096},
                                             {"maxConcurrentCopies", 1}};
  RunningNode node(setup.config());
  fs::path src = outside / "src.bin";
  make_file(src, 50000, 12, fs::perms(0604));
  auto call = [&](json args) {
    json m = {{"toNode", "solo"}, {"method", "copy_file_from"}, {"methodArgs", std::move(args)}};
    auto out = submit_and_wait(node.node(), m, 30s);
    const host::Message* r = out.final_reply();
    return r ? *r : host::Message{};
  };
  host::Message ok = call({src.string(), "solo", (outside / "sub" / "dst.bin").string()});
  EXPECT_EQ(ok.status, "ok") << ok.error;
  EXPECT_EQ(sha256_of_file(outside / "sub" / "dst.bin"), sha256_of_file(src));
  EXPECT_EQ(mode_of(outside / "sub" / "dst.bin"), 0604u);
  ok = call({src.string(), "solo", "inbox/rel.bin"});
  EXPECT_EQ(ok.status, "ok") << ok.error;
  EXPECT_EQ(sha256_of_file(setup.data_dir() / "inbox" / "rel.bin"), sha256_of_file(src));

  host::Message outside_allowed = call({src.string(), "solo", "elsewhere.bin"});
  EXPECT_NE(outside_allowed.error.find("is outside the allowed folders"), std::string::npos)
      << outside_allowed.error;
  host::Message far = call({src.string(), "ship2", "x"});
  EXPECT_EQ(far.error,
            "copy_file_from: node solo is standalone (no broker.servers in its config) and cannot "
            "reach node ship2");

  // One copy at a time here: the second of two sent together is refused.
  fs::path longer = outside / "longer.bin";
  make_file(longer, 512 * 1024, 13, fs::perms(0600));
  json two = json::array();
  for (const char* dst : {"inbox/a.bin", "inbox/b.bin"}) {
    two.push_back({{"toNode", "solo"},
                   {"method", "copy_file_from"},
                   {"methodArgs", {longer.string(), "solo", dst}}});
  }
  auto out = submit_and_wait(node.node(), two, 60s);
  ASSERT_EQ(out.result.accepted.size(), 2u);
  int ok_count = 0;
  std::string refusal;
  for (size_t i = 0; i < 2; ++i) {
    const host::Message* r = out.final_reply(i);
    ASSERT_NE(r, nullptr);
    if (r->status == "ok") ++ok_count;
    if (r->status == "error") refusal = r->error;
  }
  EXPECT_EQ(ok_count, 1);
  EXPECT_EQ(refusal,
            "copy_file_from: node solo is already running 1 copies (filecopy setting "
            "maxConcurrentCopies, by default half of host.workers); send it again when one is "
            "done");
}

}  // namespace
}  // namespace bosun::test
