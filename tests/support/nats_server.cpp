#include "nats_server.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <sstream>
#include <stdexcept>

namespace bosun::test {

namespace fs = std::filesystem;

std::string nats_server_binary() {
  if (::access("/usr/sbin/nats-server", X_OK) == 0) return "/usr/sbin/nats-server";
  if (const char* path = std::getenv("PATH")) {
    std::stringstream ss(path);
    std::string dir;
    while (std::getline(ss, dir, ':')) {
      fs::path candidate = fs::path(dir) / "nats-server";
      if (!dir.empty() && ::access(candidate.c_str(), X_OK) == 0) return candidate.string();
    }
  }
  throw std::runtime_error("nats-server not found in /usr/sbin or PATH (apt install nats-server)");
}

static bool accepts_tcp(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  ::close(fd);
  return ok;
}

NatsServer::NatsServer(Options options) : options_(std::move(options)) {
  if (options_.port == 0) options_.port = free_port();
  start();
}

NatsServer::NatsServer(std::string extra_config)
    : NatsServer([&] {
        Options o;
        o.extra_config = std::move(extra_config);
        return o;
      }()) {}

NatsServer::~NatsServer() {
  stop();
}

void NatsServer::start() {
  std::vector<std::string> argv = {nats_server_binary(), "-a", "127.0.0.1", "-p",
                                   std::to_string(options_.port)};
  if (!options_.extra_config.empty()) {
    write_file(dir_ / "nats.conf", options_.extra_config + "\n");
    argv.insert(argv.end(), {"-c", (dir_ / "nats.conf").string()});
  }
  if (options_.cluster_port != 0) {
    argv.insert(argv.end(), {"--cluster_name", "bosun-test", "--cluster",
                             "nats://127.0.0.1:" + std::to_string(options_.cluster_port)});
    std::string routes;
    for (int p : options_.route_ports) {
      if (!routes.empty()) routes += ",";
      routes += "nats://127.0.0.1:" + std::to_string(p);
    }
    if (!routes.empty()) argv.insert(argv.end(), {"--routes", routes});
  }
  process_ = std::make_unique<Process>(argv, dir_ / "nats-server.log");
  bool up = wait_until([&] { return !process_->running() || accepts_tcp(options_.port); },
                       std::chrono::seconds(10), std::chrono::milliseconds(10));
  if (!up || !process_->running()) {
    std::string text = log();
    process_.reset();
    throw std::runtime_error("nats-server on port " + std::to_string(options_.port) +
                             " did not start; its log:\n" + text);
  }
}

std::string NatsServer::url() const {
  return "nats://127.0.0.1:" + std::to_string(options_.port);
}

bool NatsServer::running() const {
  return process_ && process_->running();
}

std::string NatsServer::log() const {
  return read_file(dir_ / "nats-server.log");
}

void NatsServer::stop() {
  if (process_) process_->stop();
}

void NatsServer::kill9() {
  if (process_) process_->kill9();
}

void NatsServer::restart() {
  stop();
  start();
}

NatsCluster::NatsCluster(size_t size, std::string extra_config) {
  // All ports chosen up front and distinct: free_port() may hand out a port again.
  std::vector<int> ports;
  while (ports.size() < 2 * size) {
    int p = free_port();
    if (std::find(ports.begin(), ports.end(), p) == ports.end()) ports.push_back(p);
  }
  std::vector<int> cluster_ports(ports.begin() + static_cast<std::ptrdiff_t>(size), ports.end());
  for (size_t i = 0; i < size; ++i) {
    NatsServer::Options o;
    o.extra_config = extra_config;
    o.port = ports[i];
    o.cluster_port = cluster_ports[i];
    for (size_t j = 0; j < size; ++j) {
      if (j != i) o.route_ports.push_back(cluster_ports[j]);
    }
    servers_.push_back(std::make_unique<NatsServer>(std::move(o)));
  }
}

std::vector<std::string> NatsCluster::urls() const {
  std::vector<std::string> out;
  for (const auto& s : servers_) out.push_back(s->url());
  return out;
}

}  // namespace bosun::test
