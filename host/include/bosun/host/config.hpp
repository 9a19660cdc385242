// The node's JSON config (DESIGN §8): parsed, validated and defaulted in one
// place. An unknown key or a value of the wrong type is a ConfigError naming
// its JSON path ("$.broker.servers[1]").
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace bosun::host {

class ConfigError : public std::runtime_error {
 public:
  ConfigError(std::string json_path, const std::string& what)
      : std::runtime_error(json_path + ": " + what), path_(std::move(json_path)) {}
  const std::string& json_path() const noexcept { return path_; }

 private:
  std::string path_;
};

struct NodeConfig {
  std::string name;                 // one NATS token
  std::string central = "central";  // the central node's name
  std::filesystem::path data_dir;   // absolute after load; default <configdir>/var/<name>
  bool operator==(const NodeConfig&) const = default;
};

struct TlsConfig {
  std::filesystem::path ca_file;
  std::filesystem::path cert_file;
  std::filesystem::path key_file;
  bool enabled() const { return !ca_file.empty() || !cert_file.empty(); }
  bool operator==(const TlsConfig&) const = default;
};

struct BrokerConfig {
  std::vector<std::string> servers;  // empty = standalone
  std::string subject_prefix = "bosun";
  std::string user;
  std::string password;
  std::string token;
  std::filesystem::path nkey_seed_file;
  std::filesystem::path credentials_file;
  TlsConfig tls;
  int64_t connect_timeout_ms = 20000;  // Steward: natsConnOptTimeout 20 s
  int64_t reconnect_wait_ms = 10000;   // Steward: natsConnectRetryInterval 10 s
  int64_t reconnect_jitter_ms = 100;   // Steward: natsReconnectJitter 100 ms
  int64_t reconnect_jitter_tls_ms = 5000;
  int max_reconnects = -1;  // -1 = forever
  bool standalone() const { return servers.empty(); }
  bool operator==(const BrokerConfig&) const = default;
};

struct ExtensionConfig {
  bool enabled = true;
  nlohmann::json settings = nlohmann::json::object();
  bool operator==(const ExtensionConfig&) const = default;
};

struct PluginsConfig {
  std::filesystem::path dir;  // absolute after load
  bool require_signature = false;
  std::vector<std::string> publisher_keys;  // Ed25519 public keys (base64) trusted to sign modules
  int64_t probation_ms = 60000;  // a host crash within this after an update rolls it back
  bool operator==(const PluginsConfig&) const = default;
};

struct DefaultsConfig {
  double ack_timeout_s = 5;
  int retries = 3;
  double method_timeout_s = 10;
  double reply_ack_timeout_s = 5;
  int reply_retries = 3;
  double reply_method_timeout_s = 10;
  bool operator==(const DefaultsConfig&) const = default;
};

struct SecurityConfig {
  std::map<std::string, std::vector<std::string>> allow{{"central", {"*"}}};
  double allow_skew_s = 300;
  // Envelopes signed and checked (DESIGN §7). Off only for a benchmark's
  // baseline or a closed lab: then any peer is believed.
  bool sign = true;
  // A message to one node whose key this node accepted carries an
  // HMAC-SHA256 tag under the key the two share (X25519 of their Ed25519
  // keys) instead of an Ed25519 signature: as unforgeable by any third node,
  // at a fraction of the cost. Events (many readers) stay signed. false:
  // every message signed.
  bool pair_keys = true;
  // Peer names whose keys are accepted without an operator: exact names,
  // "prefix*" or "*". Empty by default (opt-in).
  std::vector<std::string> auto_accept;
  // Keys pinned by the operator: node name -> Ed25519 public key (base64).
  std::map<std::string, std::string> keys;
  bool operator==(const SecurityConfig&) const = default;
};

struct MetricsConfig {
  std::string listen;  // "host:port"; empty = off
  bool operator==(const MetricsConfig&) const = default;
};

enum class SyncMode { interval, always };

struct StorageConfig {
  SyncMode sync = SyncMode::interval;
  int64_t sync_interval_ms = 100;
  int64_t map_size_mb = 1024;
  bool operator==(const StorageConfig&) const = default;
};

struct LogConfig {
  std::string level = "info";  // trace|debug|info|warn|error|off
  std::filesystem::path file;  // empty = stderr
  bool operator==(const LogConfig&) const = default;
};

struct HostConfig {
  int workers = 0;                      // 0 = auto (max(4, 2 * cores))
  int64_t max_message_bytes = 8 << 20;  // larger messages are refused
  int64_t drain_timeout_ms = 10000;     // in-flight calls get this long on unload
  bool operator==(const HostConfig&) const = default;
};

// What a reload (SIGHUP, `bosun reload`) changes in a running node:
// extensions, defaults, host.drainTimeout and plugins.probation. Everything
// else is reported as needing a restart.
struct Config {
  std::filesystem::path file;  // the file it was read from (absolute); empty if none
  NodeConfig node;
  BrokerConfig broker;
  PluginsConfig plugins;
  std::map<std::string, ExtensionConfig> extensions;
  DefaultsConfig defaults;
  SecurityConfig security;
  MetricsConfig metrics;
  StorageConfig storage;
  LogConfig log;
  HostConfig host;

  // The extension's config, or the default (enabled, empty settings).
  ExtensionConfig extension(const std::string& plugin) const;
  std::filesystem::path socket_path() const { return node.data_dir / "bosun.sock"; }
  bool operator==(const Config&) const = default;
};

// Reads and validates `file`; relative paths count from its folder.
Config load_config(const std::filesystem::path& file);
// Validates a parsed document; relative paths count from `base_dir`.
Config parse_config(const nlohmann::json& doc, const std::filesystem::path& base_dir);
// The text `bosun config init` writes: every fixed key with its default.
std::string default_config_text(const std::string& node_name);

// True when `s` is a single NATS token usable as a node or method name.
bool is_valid_token(std::string_view s);

}  // namespace bosun::host
