// Copy throughput: a 256 MiB file copied node to node with copy_file_from
// (two real `bosun run` processes over a nats-server of our own, data on the
// same disk) against `cp` of the same file on that disk, and cp followed by
// fdatasync (bosun's commit flushes the file before it renames it). Both
// processes' resident memory is sampled during the copy. Human-readable
// lines, then one JSON line.
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>
#include "../host/src/signing.hpp"

#include <algorithm>
#include <atomic>
#include <cstdio>

#include "bench_nodes.hpp"
#include "nats_server.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kSize = 256 * kMiB;
constexpr int kCopies = 3;

double secs_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

void make_file(const fs::path& p, uint64_t size) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  std::vector<uint64_t> block(kMiB / 8);
  uint64_t x = 42;
  for (uint64_t left = size; left > 0; left -= std::min(left, kMiB)) {
    for (auto& w : block) {
      uint64_t z = (x += 0x9E3779B97F4A7C15ull);
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      w = z ^ (z >> 31);
    }
    out.write(reinterpret_cast<const char*>(block.data()),
              static_cast<std::streamsize>(std::min(left, kMiB)));
  }
}

std::string sha256_of_file(const fs::path& p) {
  return bosun::host::sha256_file_hex(p);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? -1 : v[v.size() / 2];
}

double mibps(double secs) {
  return secs > 0 ? static_cast<double>(kSize) / kMiB / secs : 0;
}

int run() {
  bosun::test::NatsServer server;
  bosun::test::TempDir root;
  std::vector<std::string> servers = {server.url()};
  std::vector<std::unique_ptr<bench::Node>> nodes;
  for (const char* name : {"ship1", "ship2"}) {
    nodes.push_back(std::make_unique<bench::Node>(name, root.path(), servers,
                                                  std::vector<std::string>{"filecopy"}));
  }
  for (auto& n : nodes) n->start();
  for (auto& n : nodes) n->wait_ready(30s);
  bench::Node& ship1 = *nodes[0];
  bench::Node& ship2 = *nodes[1];
  fs::path src = root.path() / "source.bin";
  make_file(src, kSize);
  const std::string want = sha256_of_file(src);  // also puts the file in the page cache
  std::printf("%llu MiB file under %s, sha256 %s\n", static_cast<unsigned long long>(kSize / kMiB),
              root.path().c_str(), want.c_str());

  // cp, and cp + fdatasync, of the same file on the same disk.
  std::vector<double> cp_s, cp_sync_s;
  for (int i = 0; i < kCopies; ++i) {
    fs::path dst = root.path() / ("cp-" + std::to_string(i) + ".bin");
    std::string out;
    auto t = Clock::now();
    int rc = bosun::test::run_command({"cp", src.string(), dst.string()}, &out);
    cp_s.push_back(secs_since(t));
    int fd = ::open(dst.c_str(), O_RDONLY);
    ::fdatasync(fd);
    ::close(fd);
    cp_sync_s.push_back(secs_since(t));
    if (rc != 0) throw std::runtime_error("cp failed: " + out);
    fs::remove(dst);
  }

  json warm = {{"toNode", "ship1"},
               {"method", "copy_file_from"},
               {"methodArgs", {src.string(), "ship2", "warm.bin"}}};
  ship1.send(json::array({warm}), 300);  // connections, LMDB pages, page cache
  std::vector<double> copy_s;
  long peak[2] = {0, 0};
  std::string failure;
  for (int i = 0; i < kCopies && failure.empty(); ++i) {
    std::string dst = "copy-" + std::to_string(i) + ".bin";
    json m = {{"toNode", "ship1"},
              {"method", "copy_file_from"},
              {"methodArgs", {src.string(), "ship2", dst}}};
    std::atomic<bool> copying{true};
    std::thread sampler([&] {
      while (copying) {
        for (int k = 0; k < 2; ++k) {
          peak[k] = std::max(peak[k], bench::status_kib(nodes[k]->pid(), "VmRSS"));
        }
        std::this_thread::sleep_for(20ms);
      }
    });
    auto t = Clock::now();
    auto lines = ship1.send(json::array({m}), 300);
    copy_s.push_back(secs_since(t));
    copying = false;
    sampler.join();
    json result;
    for (const auto& l : lines) {
      if (l.value("type", "") == "reply" && l.value("final", false)) {
        if (l.value("status", "") != "ok") failure = l.value("error", "failed");
        result = json::parse(l.value("data", ""), nullptr, false);
      }
    }
    if (failure.empty() && sha256_of_file(ship2.data_dir() / dst) != want) {
      failure = "the copy's SHA-256 differs from the source's";
    }
    std::printf("copy %d: %.2f s (%.0f MiB/s)%s%s\n", i + 1, copy_s.back(), mibps(copy_s.back()),
                failure.empty() ? "" : " FAILED: ", failure.c_str());
    fs::remove(ship2.data_dir() / dst);
  }
  long hwm[2] = {bench::status_kib(ship1.pid(), "VmHWM"), bench::status_kib(ship2.pid(), "VmHWM")};
  bench::stop_all(nodes);

  double cp = median(cp_s), cp_sync = median(cp_sync_s), copy = median(copy_s);
  std::printf("cp:                %.3f s (%.0f MiB/s), median of %d\n", cp, mibps(cp), kCopies);
  std::printf("cp + fdatasync:    %.3f s (%.0f MiB/s)\n", cp_sync, mibps(cp_sync));
  std::printf("bosun copy_file_from ship1 -> ship2: %.3f s (%.0f MiB/s), median of %zu\n", copy,
              mibps(copy), copy_s.size());
  std::printf("throughput ratio bosun/cp %.3f, bosun/(cp + fdatasync) %.3f\n",
              mibps(copy) / mibps(cp), mibps(copy) / mibps(cp_sync));
  std::printf("peak resident memory: sender %ld KiB (VmHWM %ld), receiver %ld KiB (VmHWM %ld)\n",
              peak[0], hwm[0], peak[1], hwm[1]);
  std::fflush(stdout);
  std::printf(
      "{\"bench\": \"filecopy\", \"bytes\": %llu, \"bosun_s\": %.3f, \"bosun_mibps\": %.1f, "
      "\"cp_s\": %.3f, \"cp_mibps\": %.1f, \"cp_fdatasync_s\": %.3f, \"ratio\": %.4f, "
      "\"ratio_vs_cp_fdatasync\": %.4f, \"sender_hwm_kib\": %ld, \"receiver_hwm_kib\": %ld}\n",
      static_cast<unsigned long long>(kSize), copy, mibps(copy), cp, mibps(cp), cp_sync,
      mibps(copy) / mibps(cp), mibps(copy) / mibps(cp_sync), hwm[0], hwm[1]);
  if (!failure.empty()) {
    std::fprintf(stderr, "filecopy_bench: %s\n", failure.c_str());
    return 1;
  }
  return 0;
}

}  // namespace

int main() {
  spdlog::set_level(spdlog::level::warn);
  try {
    return run();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "filecopy_bench: %s\n", e.what());
    return 1;
  }
}
