#include "cluster_harness.hpp"

#include "../../host/src/security.hpp"
#include "bosun/host/client.hpp"
#include "bosun/host/message.hpp"

#include <gtest/gtest.h>

#include <fstream>
#include <iostream>
#include <stdexcept>

#include "node_harness.hpp"

namespace bosun::test {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string tail(const std::string& text, size_t lines) {
  size_t pos = text.size();
  for (size_t n = 0; n <= lines && pos > 0; ++n) {
    size_t nl = text.rfind('\n', pos - 1);
    if (nl == std::string::npos) return text;
    pos = nl;
  }
  return text.substr(pos);
}

}  // namespace

// ---------------------------------------------------------- ClusterNode ---

ClusterNode::ClusterNode(std::string name, fs::path root, json config)
    : name_(std::move(name)), root_(std::move(root)), config_(std::move(config)) {
  fs::create_directories(plugins_dir());
  fs::permissions(plugins_dir(), fs::perms(0755), fs::perm_options::replace);
}

ClusterNode::~ClusterNode() {
  if (process_) process_->stop();
}

void ClusterNode::add_module(const fs::path& file) {
  copy_module(file, plugins_dir() / file.filename());
}

void ClusterNode::start(std::chrono::milliseconds timeout) {
  if (running()) throw std::runtime_error("node " + name_ + " is already running");
  write_config();
  { std::ofstream(log_file(), std::ios::app) << "---- bosun run (" << name_ << ") ----\n"; }
  std::string bin = binary_.empty() ? std::string(BOSUN_BIN) : binary_.string();
  process_ = std::make_unique<Process>(
      std::vector<std::string>{bin, "run", "--config", config_file().string()}, log_file());
  bool up = wait_until(
      [&] {
        if (!process_->running()) return true;  // reported below
        if (!fs::exists(socket())) return false;
        try {
          auto lines = socket_request(socket(), {{"op", "status"}}, 2s);
          return !lines.empty() && lines[0].value("type", "") == "status";
        } catch (const std::exception&) {
          return false;
        }
      },
      timeout, 50ms);
  if (!up || !process_->running()) {
    throw std::runtime_error("node " + name_ + " (`bosun run --config " + config_file().string() +
                             "`) did not come up within " + std::to_string(timeout.count()) +
                             " ms; its log:\n" + tail(log(), 80));
  }
}

void ClusterNode::write_config() const {
  write_file(config_file(), config_.dump(2));
}

void ClusterNode::signal(int sig) {
  if (!process_) throw std::runtime_error("node " + name_ + " is not running");
  process_->signal(sig);
}

void ClusterNode::kill9() {
  if (process_) process_->kill9();
}

void ClusterNode::stop() {
  if (process_) process_->stop();
}

void ClusterNode::restart() {
  stop();
  start();
}

pid_t ClusterNode::pid() const {
  return running() ? process_->pid() : -1;
}

bool ClusterNode::running() const {
  return process_ && process_->running();
}

std::string ClusterNode::log() const {
  return fs::exists(log_file()) ? read_file(log_file()) : std::string();
}

std::vector<json> ClusterNode::send(const json& batch, bool wait, double wait_s) {
  json request = {{"op", "send"}, {"messages", batch}, {"wait", wait}, {"timeout", wait_s}};
  auto bound = std::chrono::milliseconds(static_cast<int64_t>(wait_s * 1000) + 10000);
  return socket_request(socket(), request, bound);
}

json ClusterNode::status() {
  auto lines = socket_request(socket(), {{"op", "status"}}, 5s);
  if (lines.empty() || lines[0].value("type", "") != "status") {
    throw std::runtime_error("node " + name_ + " answered status with " + json(lines).dump());
  }
  return lines[0];
}

json ClusterNode::counters() {
  return status().at("counters");
}

uint64_t ClusterNode::counter(const std::string& name) {
  json c = counters();
  if (!c.contains(name)) {
    throw std::runtime_error("node " + name_ + " has no counter \"" + name + "\": " + c.dump());
  }
  return c[name].get<uint64_t>();
}

uint64_t ClusterNode::refused(const std::string& reason) {
  return counters().value("refused", json::object()).value(reason, uint64_t{0});
}

json ClusterNode::keys(const std::string& action, const std::string& node) {
  json out;
  host::NodeClient c(socket());
  c.request({{"op", "keys"}, {"action", action}, {"node", node}}, [&](const json& line) {
    out = line;
    return false;
  });
  return out;
}

json ClusterNode::peer_key(const std::string& peer) {
  for (const auto& k : keys("list").value("keys", json::array())) {
    if (k.value("node", "") == peer) return k;
  }
  return json::object();
}

std::string ClusterNode::key_state(const std::string& peer) {
  json k = peer_key(peer);
  return k.empty() ? "" : k.value("state", "") + "/" + k.value("source", "");
}

// ------------------------------------------------------- ClusterHarness ---

ClusterHarness::ClusterHarness(std::vector<std::string> servers) : servers_(std::move(servers)) {
  if (servers_.empty()) {
    nats_ = std::make_unique<NatsServer>();
    servers_ = {nats_->url()};
  }
}

ClusterHarness::~ClusterHarness() {
  if (::testing::Test::HasFailure()) dump_logs();
  // Nodes before the broker, so none spends its stop reconnecting.
  nodes_.clear();
}

ClusterNode& ClusterHarness::add_node(const std::string& name) {
  if (nodes_.count(name)) throw std::runtime_error("node " + name + " added twice");
  fs::path root = dir_.path() / name;
  json config = {
      {"node", {{"name", name}, {"central", "central"}, {"dataDir", "data"}}},
      {"broker",
       {{"servers", servers_},
        {"reconnectWait", 0.1},
        {"reconnectJitter", 10},
        {"connectTimeout", 2}}},
      {"plugins", {{"dir", "plugins"}}},
      {"defaults",
       {{"ackTimeout", 1},
        {"retries", 10},
        {"replyACKTimeout", 1},
        {"replyRetries", 10},
        {"methodTimeout", 10}}},
      {"host", {{"drainTimeout", 2000}}},
      {"log", {{"level", "debug"}}},
      // Signed envelopes as everywhere, but every peer trusted and allowed:
      // the tests of security (security_test.cpp) narrow this down.
      {"security", {{"autoAccept", {"*"}}, {"allow", {{"*", {"*"}}}}}},
  };
  auto node = std::make_unique<ClusterNode>(name, root, std::move(config));
  node->add_module(plugin_module("sinks"));
  ClusterNode& ref = *node;
  nodes_[name] = std::move(node);
  return ref;
}

ClusterNode& ClusterHarness::node(const std::string& name) {
  auto it = nodes_.find(name);
  if (it == nodes_.end()) throw std::runtime_error("no node " + name + " in the harness");
  return *it->second;
}

std::unique_ptr<host::Transport> ClusterHarness::connect_bus(const std::string& name) const {
  host::BrokerConfig bc;
  bc.servers = servers_;
  bc.connect_timeout_ms = 2000;
  auto bus = std::make_unique<host::Transport>(bc, name);
  bus->connect(false);
  return bus;
}

void ClusterHarness::dump_logs(size_t lines) const {
  for (const auto& [name, node] : nodes_) {
    std::cerr << "==== last " << lines << " lines of " << node->log_file().string() << " ====\n"
              << tail(node->log(), lines) << "\n";
  }
  if (nats_) std::cerr << "==== nats-server ====\n" << tail(nats_->log(), 40) << "\n";
}

// -------------------------------------------------------------- helpers ---

std::string sealed_by(const ClusterNode& node, const std::string& subject, const std::string& body,
                      int64_t signed_at_ms) {
  auto id = host::Identity::load_or_create(node.data_dir());
  return id.seal(node.name(), subject, body, signed_at_ms ? signed_at_ms : host::now_ms());
}

std::string paired_by(const ClusterNode& node, const ClusterNode& to, const std::string& subject,
                      const std::string& body) {
  auto id = host::Identity::load_or_create(node.data_dir());
  auto peer = host::Identity::load_or_create(to.data_dir());
  return id.seal(node.name(), subject, body, host::now_ms(), nullptr, peer.public_key_raw());
}

std::string envelope_body(const std::string& wire) {
  host::Envelope env;
  if (!host::parse_envelope(wire, env, nullptr)) return wire;
  return std::string(env.body);
}

json message(const std::string& to, const std::string& method, std::vector<std::string> args,
             const std::string& data) {
  json m = {
      {"toNode", to}, {"method", method}, {"methodArgs", args}, {"ACKTimeout", 1}, {"retries", 2}};
  if (!data.empty()) m["data"] = data;
  return m;
}

std::vector<json> final_replies(const std::vector<json>& lines) {
  std::vector<json> out;
  for (const auto& l : lines) {
    if (l.is_object() && l.value("type", "") == "reply" && l.value("final", false)) {
      out.push_back(l);
    }
  }
  return out;
}

std::vector<std::string> accepted_ids(const std::vector<json>& lines) {
  std::vector<std::string> out;
  for (const auto& l : lines) {
    if (!l.is_object() || l.value("type", "") != "result") continue;
    for (const auto& a : l["accepted"]) out.push_back(a.at("id").get<std::string>());
  }
  return out;
}

}  // namespace bosun::test
