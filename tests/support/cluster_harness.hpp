// Several real `bosun run` nodes talking over a real nats-server, for the
// messaging tests: each node gets its own folder, config, copied modules,
// data and log, and can be killed, stopped and restarted with all of them.
//
// Layout under the harness's temp folder:
//   <root>/<node>/bosun.json     the config, rewritten at every start
//   <root>/<node>/plugins        plugins.dir (0755), modules copied in (0755)
//   <root>/<node>/data           node.dataDir, kept across restarts
//   <root>/<node>/bosun-run.log  stdout and stderr of every run, appended
// On a test failure the harness prints the tail of every node's log.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bosun/host/transport.hpp"
#include "nats_server.hpp"
#include "test_util.hpp"

namespace bosun::test {

using namespace std::chrono_literals;

class ClusterNode {
 public:
  ClusterNode(std::string name, std::filesystem::path root, nlohmann::json config);
  ~ClusterNode();
  ClusterNode(const ClusterNode&) = delete;
  ClusterNode& operator=(const ClusterNode&) = delete;

  const std::string& name() const { return name_; }
  const std::filesystem::path& root() const { return root_; }
  std::filesystem::path plugins_dir() const { return root_ / "plugins"; }
  std::filesystem::path data_dir() const { return root_ / "data"; }
  std::filesystem::path socket() const { return data_dir() / "bosun.sock"; }
  std::filesystem::path config_file() const { return root_ / "bosun.json"; }
  std::filesystem::path log_file() const { return root_ / "bosun-run.log"; }

  // The config document; edits take effect at the next start(), or at a
  // reload once written with write_config().
  nlohmann::json& config() { return config_; }
  void write_config() const;
  // Copies a module file into plugins_dir() (mode 0755).
  void add_module(const std::filesystem::path& file);

  // Writes the config, runs `bosun run --config FILE` and waits until the
  // socket answers {"op":"status"}. Throws std::runtime_error with the log
  // when it does not come up within `timeout`.
  void start(std::chrono::milliseconds timeout = 30s);
  // For the next start(): another `bosun` executable (default BOSUN_BIN),
  // such as a Release build's.
  void set_binary(std::filesystem::path bin) { binary_ = std::move(bin); }
  // The running process's id; -1 when it is not running.
  pid_t pid() const;
  void kill9();    // SIGKILL and reap; data stays
  void stop();     // SIGTERM and wait
  void restart();  // stop if running, start again with the same config and data
  bool running() const;
  void signal(int sig);  // to the running `bosun run` (SIGHUP reloads its config)

  std::string log() const;

  // Sends `batch` through the socket ({"op":"send"}) and returns every line
  // the node answers. With `wait` the node waits up to `wait_s` for the
  // replies; the call itself is bounded by wait_s + 10 s.
  std::vector<nlohmann::json> send(const nlohmann::json& batch, bool wait = true,
                                   double wait_s = 20);
  nlohmann::json status();    // the {"type":"status"} line
  nlohmann::json counters();  // status()["counters"]
  uint64_t counter(const std::string& name);
  // Messages refused for `reason` (status counters "refused"); 0 when none.
  uint64_t refused(const std::string& reason);
  // The trust store through the socket ({"op":"keys"}): action "list",
  // "accept" or "reject" (with a node); the answer line.
  nlohmann::json keys(const std::string& action, const std::string& node = {});
  // `peer`'s entry in keys("list"), or an empty object.
  nlohmann::json peer_key(const std::string& peer);
  // "<state>/<source>" of `peer`'s key here, or "" when unknown.
  std::string key_state(const std::string& peer);

 private:
  std::string name_;
  std::filesystem::path root_;
  nlohmann::json config_;
  std::filesystem::path binary_;
  std::unique_ptr<Process> process_;
};

class ClusterHarness {
 public:
  // Starts its own nats-server when `servers` is empty; otherwise every node
  // uses `servers` unless its config says otherwise.
  explicit ClusterHarness(std::vector<std::string> servers = {});
  ~ClusterHarness();  // prints every node's log tail when the test failed
  ClusterHarness(const ClusterHarness&) = delete;
  ClusterHarness& operator=(const ClusterHarness&) = delete;

  // Null when the harness was given servers.
  NatsServer* nats() { return nats_.get(); }
  const std::vector<std::string>& servers() const { return servers_; }
  const std::filesystem::path& root() const { return dir_.path(); }

  // A node named `name` with the central node "central", the sinks module,
  // ACKTimeout 1 s with 10 retries (replies too), reconnectWait 0.1 s and
  // log level debug. Not started: edit config() and add modules first.
  ClusterNode& add_node(const std::string& name);
  ClusterNode& node(const std::string& name);

  // Prints the last `lines` lines of every node's log to stderr.
  void dump_logs(size_t lines = 150) const;

  // A connection of its own to the harness's broker, connected, as no node:
  // for tests that listen to the bus or publish forged messages. Declare
  // what its callbacks fill before it: they may run until it is gone.
  std::unique_ptr<host::Transport> connect_bus(const std::string& name) const;

 private:
  TempDir dir_;
  std::unique_ptr<NatsServer> nats_;
  std::vector<std::string> servers_;
  std::map<std::string, std::unique_ptr<ClusterNode>> nodes_;
};

// What `node` itself would publish on `subject`: `body` in an envelope signed
// with its key (the key file its first start made under its data folder).
std::string sealed_by(const ClusterNode& node, const std::string& subject, const std::string& body,
                      int64_t signed_at_ms = 0);
// The same with a pair-key tag for `to` instead of a signature (what `node`
// publishes to `to` once it accepted its key, security.pairKeys).
std::string paired_by(const ClusterNode& node, const ClusterNode& to, const std::string& subject,
                      const std::string& body);
// The body of a signed envelope; the bytes themselves when they are not one.
std::string envelope_body(const std::string& wire);

// A request for `send`: to `to`, `method` with `args` (and `data`), a 1 s
// ACKTimeout and 2 retries.
nlohmann::json message(const std::string& to, const std::string& method,
                       std::vector<std::string> args = {}, const std::string& data = {});
// The lines of a send answer that are final replies.
std::vector<nlohmann::json> final_replies(const std::vector<nlohmann::json>& lines);
// The ids the node accepted ({"type":"result"} line), in order.
std::vector<std::string> accepted_ids(const std::vector<nlohmann::json>& lines);

}  // namespace bosun::test
