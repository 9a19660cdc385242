// Real `bosun run` processes for the benchmarks: each node in its own folder
// (config, plugins copied in, data, log), started as a child process and
// ready once its socket answers. Stopping sends every node SIGTERM first and
// then waits, so fifty nodes stop in parallel.
#pragma once

#include <bosun/host/client.hpp>

#include <signal.h>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "test_util.hpp"

namespace bench {

namespace fs = std::filesystem;
using nlohmann::json;

class Node {
 public:
  Node(std::string name, const fs::path& root, const std::vector<std::string>& servers,
       const std::vector<std::string>& modules, json extensions = json::object())
      : name_(std::move(name)), dir_(root / name_) {
    fs::create_directories(dir_ / "plugins");
    fs::permissions(dir_ / "plugins", fs::perms(0755), fs::perm_options::replace);
    for (const auto& m : modules) {
      fs::path to = dir_ / "plugins" / (m + ".so");
      fs::copy_file(fs::path(BOSUN_PLUGIN_DIR) / (m + ".so"), to,
                    fs::copy_options::overwrite_existing);
      fs::permissions(to, fs::perms(0755), fs::perm_options::replace);
    }
    json config = {{"node", {{"name", name_}, {"central", "central"}, {"dataDir", "data"}}},
                   {"broker", {{"servers", servers}}},
                   {"plugins", {{"dir", "plugins"}}},
                   {"extensions", std::move(extensions)},
                   {"defaults", {{"methodTimeout", 300}}},
                   {"security", {{"autoAccept", {"*"}}, {"allow", {{"*", {"*"}}}}}},
                   {"log", {{"level", "warn"}}}};
    std::ofstream(dir_ / "bosun.json") << config.dump(2);
  }

  void start() {
    process_ = std::make_unique<bosun::test::Process>(
        std::vector<std::string>{BOSUN_BIN, "run", "--config", (dir_ / "bosun.json").string()},
        dir_ / "bosun-run.log");
  }

  // Waits until the socket answers a status request.
  void wait_ready(std::chrono::milliseconds timeout,
                  std::chrono::milliseconds step = std::chrono::milliseconds(20)) {
    bool up = bosun::test::wait_until(
        [&] {
          if (!fs::exists(socket())) return false;
          try {
            bool ok = false;
            bosun::host::NodeClient c(socket());
            c.request({{"op", "status"}}, [&](const json& line) {
              ok = line.value("type", "") == "status";
              return false;
            });
            return ok;
          } catch (const std::exception&) {
            return false;
          }
        },
        timeout, step);
    if (!up) throw std::runtime_error("node " + name_ + " did not come up; see " + log().string());
  }

  // {"op":"send"} with wait; every answer line until "done".
  std::vector<json> send(const json& messages, double timeout_s) {
    std::vector<json> lines;
    bosun::host::NodeClient c(socket());
    c.request({{"op", "send"}, {"messages", messages}, {"wait", true}, {"timeout", timeout_s}},
              [&](const json& line) {
                lines.push_back(line);
                std::string type = line.value("type", "");
                return type != "done" && type != "error";
              });
    return lines;
  }

  pid_t pid() const { return process_ ? process_->pid() : -1; }
  void signal_stop() {
    if (process_) process_->signal(SIGTERM);
  }
  void wait_stopped() {
    if (process_) process_->stop();
  }
  const std::string& name() const { return name_; }
  fs::path data_dir() const { return dir_ / "data"; }
  fs::path socket() const { return data_dir() / "bosun.sock"; }
  fs::path log() const { return dir_ / "bosun-run.log"; }

 private:
  std::string name_;
  fs::path dir_;
  std::unique_ptr<bosun::test::Process> process_;
};

// SIGTERM to all, then wait for each.
inline void stop_all(std::vector<std::unique_ptr<Node>>& nodes) {
  for (auto& n : nodes) n->signal_stop();
  for (auto& n : nodes) n->wait_stopped();
}

// A "VmRSS" / "VmHWM" value of /proc/<pid>/status in KiB; -1 if unreadable.
inline long status_kib(pid_t pid, const std::string& field) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(field + ":", 0) == 0) return std::stol(line.substr(field.size() + 1));
  }
  return -1;
}

// Milliseconds since `t` (steady clock).
inline double ms_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count();
}

// One fan-out from `central`: the time until its "done" line, or -1 (and
// ++*bad) when fewer than `expect` final replies were ok.
inline double fan_out(Node& central, const json& message, int expect, int* bad) {
  auto t = std::chrono::steady_clock::now();
  auto lines = central.send(json::array({message}), 30);
  double ms = ms_since(t);
  int ok = 0;
  for (const auto& l : lines) {
    if (l.value("type", "") == "reply" && l.value("final", false) &&
        l.value("status", "") == "ok") {
      ++ok;
    }
  }
  if (ok != expect) {
    ++*bad;
    std::fprintf(stderr, "fan-out: %d of %d ok; last line %s\n", ok, expect,
                 lines.empty() ? "(none)" : lines.back().dump().c_str());
    return -1;
  }
  return ms;
}

}  // namespace bench
