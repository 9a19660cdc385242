// A real nats-server (the Debian binary) on a free 127.0.0.1 port, for
// tests and benchmarks. Kept free of GoogleTest so the benchmarks can use it.
//
// Flags used, exactly:
//   nats-server -a 127.0.0.1 -p <port> [-c <dir>/nats.conf]
//               [--cluster_name bosun-test --cluster nats://127.0.0.1:<cluster port>
//                --routes nats://127.0.0.1:<peer cluster port>,...]
// `-c` is given only when there is extra config text (auth, permissions);
// flags override the file. Output goes to <dir>/nats-server.log.
#pragma once

#include "test_util.hpp"

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace bosun::test {

// The nats-server binary: /usr/sbin/nats-server, else the first on PATH.
// Throws std::runtime_error when there is none.
std::string nats_server_binary();

class NatsServer {
 public:
  struct Options {
    std::string extra_config;      // nats-server config text, e.g. an authorization block
    int port = 0;                  // 0 = a free one
    int cluster_port = 0;          // 0 = not in a cluster
    std::vector<int> route_ports;  // cluster ports of the peers
  };

  NatsServer() : NatsServer(Options{}) {}
  explicit NatsServer(std::string extra_config);
  // Starts the server and waits (up to 10 s) until its port accepts TCP
  // connections; throws std::runtime_error with the server's log otherwise.
  explicit NatsServer(Options options);
  ~NatsServer();
  NatsServer(const NatsServer&) = delete;
  NatsServer& operator=(const NatsServer&) = delete;

  std::string url() const;  // nats://127.0.0.1:<port>
  int port() const { return options_.port; }
  int cluster_port() const { return options_.cluster_port; }
  bool running() const;
  pid_t pid() const { return process_ ? process_->pid() : -1; }
  std::string log() const;  // the server's output so far

  void stop();     // SIGTERM, wait
  void kill9();    // SIGKILL, wait
  void restart();  // stop if running, start again on the same port(s)

 private:
  void start();

  Options options_;
  TempDir dir_;
  std::unique_ptr<Process> process_;
};

// Three servers on loopback with cluster routes between them, each with its
// own client and cluster port.
class NatsCluster {
 public:
  explicit NatsCluster(size_t size = 3, std::string extra_config = "");
  std::vector<std::string> urls() const;
  NatsServer& server(size_t i) { return *servers_.at(i); }
  size_t size() const { return servers_.size(); }
  void kill(size_t i) { servers_.at(i)->kill9(); }

 private:
  std::vector<std::unique_ptr<NatsServer>> servers_;
};

}  // namespace bosun::test
