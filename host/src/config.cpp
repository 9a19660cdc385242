#include "bosun/host/config.hpp"

#include <sys/un.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <memory>
#include <set>
#include <string_view>

namespace bosun::host {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr size_t kMaxTokenLength = 128;
// Upper bounds keep every later unit conversion (s -> ms, MB -> bytes) far from overflow.
constexpr double kMaxSeconds = 1e9;
constexpr int64_t kMaxMs = 1'000'000'000'000;
constexpr int64_t kMaxMapSizeMB = int64_t{1} << 24;  // 16 TiB
constexpr int64_t kMaxMessageBytes = int64_t{1} << 30;
constexpr int64_t kMaxWorkers = 4096;
constexpr int64_t kMaxInt = std::numeric_limits<int>::max();

std::string json_quoted(std::string_view s) {
  constexpr size_t kShown = 80;
  std::string text(s.substr(0, kShown));
  std::string out = json(text).dump(-1, ' ', false, json::error_handler_t::replace);
  if (s.size() > kShown) out.insert(out.size() - 1, "...");
  return out;
}

std::string child_path(const std::string& parent, std::string_view key) {
  if (is_valid_token(key)) return parent + "." + std::string(key);
  return parent + "[" + json_quoted(key) + "]";
}

std::string index_path(const std::string& parent, size_t i) {
  return parent + "[" + std::to_string(i) + "]";
}

const char* kind(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return "boolean";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: return "integer";
    case json::value_t::number_float: return "number";
    case json::value_t::string: return "string";
    case json::value_t::array: return "array";
    case json::value_t::object: return "object";
    default: return "binary";
  }
}

ConfigError type_error(const std::string& path, const char* expected, const json& v) {
  return ConfigError(path, std::string("expected ") + expected + ", got " + kind(v));
}

ConfigError range_error(const std::string& path, const std::string& rule, const json& v) {
  return ConfigError(path, "must be " + rule + ", got " + v.dump());
}

// Levenshtein distance, ignoring case: "datadir" is a typo of "dataDir".
size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 0; i < a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i + 1;
    for (size_t j = 0; j < b.size(); ++j) {
      size_t above = row[j + 1];
      bool same = std::tolower(static_cast<unsigned char>(a[i])) ==
                  std::tolower(static_cast<unsigned char>(b[j]));
      row[j + 1] = std::min({above + 1, row[j] + 1, diagonal + (same ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

std::string token_rule() {
  return "1-128 characters of A-Z a-z 0-9 _ -";
}

std::string read_token(const json& v, const std::string& path, const char* what) {
  if (!v.is_string()) throw type_error(path, "a string", v);
  const auto& s = v.get_ref<const std::string&>();
  if (!is_valid_token(s)) {
    throw ConfigError(path, json_quoted(s) + " is not a valid " + what + " (" + token_rule() + ")");
  }
  return s;
}

int64_t read_integer(const json& v, const std::string& path, int64_t min, int64_t max) {
  if (!v.is_number_integer()) throw type_error(path, "an integer", v);
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(max)) {
    throw range_error(path, "<= " + std::to_string(max), v);
  }
  int64_t n = v.get<int64_t>();
  if (n < min) throw range_error(path, ">= " + std::to_string(min), v);
  if (n > max) throw range_error(path, "<= " + std::to_string(max), v);
  return n;
}

json number_json(double x) {
  if (x == std::floor(x) && std::fabs(x) < 1e15) return static_cast<int64_t>(x);
  return x;
}

json ms_as_seconds_json(int64_t ms) {
  return number_json(static_cast<double>(ms) / 1000);
}

// A duration in seconds, integer or fraction; `exclusive` makes `min` itself invalid.
double read_seconds(const json& v, const std::string& path, double min, bool exclusive) {
  if (!v.is_number()) throw type_error(path, "a number of seconds", v);
  double s = v.get<double>();
  std::string min_text = number_json(min).dump();
  if (!std::isfinite(s) || (exclusive ? s <= min : s < min)) {
    throw range_error(path, (exclusive ? "> " : ">= ") + min_text, v);
  }
  if (s > kMaxSeconds) throw range_error(path, "<= " + number_json(kMaxSeconds).dump(), v);
  return s;
}

fs::path resolve_path(const fs::path& base, const std::string& text) {
  fs::path p = (base / text).lexically_normal();
  if (!p.has_filename() && p != p.root_path()) p = p.parent_path();  // drop a trailing '/'
  return p;
}

// What is wrong with "host:port" ("[v6addr]:port" for IPv6), or "" when nothing is.
std::string host_port_problem(std::string_view hp) {
  std::string_view host;
  std::string_view port;
  if (hp.starts_with('[')) {
    size_t close = hp.find(']');
    if (close == std::string_view::npos) return "missing ']' after the IPv6 address";
    host = hp.substr(1, close - 1);
    std::string_view rest = hp.substr(close + 1);
    if (!rest.starts_with(':')) return "missing \":port\"";
    port = rest.substr(1);
  } else {
    size_t colon = hp.rfind(':');
    if (colon == std::string_view::npos) return "missing \":port\"";
    host = hp.substr(0, colon);
    port = hp.substr(colon + 1);
    if (host.find(':') != std::string_view::npos)
      return "an IPv6 address needs brackets: [addr]:port";
  }
  if (host.empty()) return "missing host";
  for (char c : host) {
    // strchr also matches the terminating NUL, so a NUL in the host is refused too.
    if (std::isspace(static_cast<unsigned char>(c)) || std::strchr("/?#@[]", c) != nullptr) {
      return "bad character in host " + json_quoted(host);
    }
  }
  bool digits = !port.empty() && port.size() <= 5 &&
                std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; });
  int number = digits ? std::stoi(std::string(port)) : 0;
  if (number < 1 || number > 65535) {
    return "port must be a number from 1 to 65535, got " + json_quoted(port);
  }
  return "";
}

// nats.c 3.4 speaks only plain and TLS connections (no websocket), so only
// nats:// and tls:// are accepted. Credentials in the URL ("user:pass@") are
// allowed but never echoed.
std::string server_url_problem(std::string_view url) {
  size_t sep = url.find("://");
  if (sep == std::string_view::npos) return "expected \"nats://host:port\" or \"tls://host:port\"";
  std::string_view scheme = url.substr(0, sep);
  if (scheme != "nats" && scheme != "tls") {
    return "unknown scheme " + json_quoted(scheme) + " (expected nats or tls)";
  }
  std::string_view rest = url.substr(sep + 3);
  if (size_t at = rest.rfind('@'); at != std::string_view::npos) rest = rest.substr(at + 1);
  return host_port_problem(rest);
}

bool is_base64_ed25519_key(std::string_view s) {
  // 32 bytes are 43 base64 characters and one '=' of padding.
  if (s.size() == 44 && s.back() == '=') s.remove_suffix(1);
  return s.size() == 43 && std::all_of(s.begin(), s.end(), [](char c) {
           return std::isalnum(static_cast<unsigned char>(c)) || c == '+' || c == '/';
         });
}

// One JSON object of the config: refuses keys it does not know and reads the
// ones it does into their fields, leaving the defaults where a key is absent.
class Section {
 public:
  Section(const json* v, std::string path, std::initializer_list<std::string_view> known)
      : v_(v), path_(std::move(path)) {
    if (v_ == nullptr) return;
    if (!v_->is_object()) throw type_error(path_, "an object", *v_);
    for (const auto& item : v_->items()) {
      const std::string& key = item.key();
      if (std::find(known.begin(), known.end(), key) != known.end()) continue;
      std::string message = "unknown key";
      std::string_view best;
      size_t best_distance = 3;
      for (std::string_view k : known) {
        if (size_t d = edit_distance(key, k); d < best_distance) {
          best_distance = d;
          best = k;
        }
      }
      if (!best.empty()) message += " (did you mean \"" + std::string(best) + "\"?)";
      throw ConfigError(child_path(path_, key), message);
    }
  }

  Section section(std::string_view key, std::initializer_list<std::string_view> known) const {
    return Section(find(key), path(key), known);
  }
  const json* find(std::string_view key) const {
    if (v_ == nullptr) return nullptr;
    auto it = v_->find(std::string(key));
    return it == v_->end() ? nullptr : &*it;
  }
  const json* object() const { return v_; }
  const std::string& path() const { return path_; }
  std::string path(std::string_view key) const { return child_path(path_, key); }

  void string(std::string_view key, std::string& out) const {
    if (const json* v = find(key)) {
      if (!v->is_string()) throw type_error(path(key), "a string", *v);
      out = v->get<std::string>();
    }
  }
  void token(std::string_view key, std::string& out, const char* what) const {
    if (const json* v = find(key)) out = read_token(*v, path(key), what);
  }
  void boolean(std::string_view key, bool& out) const {
    if (const json* v = find(key)) {
      if (!v->is_boolean()) throw type_error(path(key), "a boolean", *v);
      out = v->get<bool>();
    }
  }
  template <class Int>
  void integer(std::string_view key, Int& out, int64_t min, int64_t max) const {
    if (const json* v = find(key)) out = static_cast<Int>(read_integer(*v, path(key), min, max));
  }
  void seconds(std::string_view key, double& out, double min, bool exclusive) const {
    if (const json* v = find(key)) out = read_seconds(*v, path(key), min, exclusive);
  }
  void seconds_as_ms(std::string_view key, int64_t& out, double min, bool exclusive) const {
    if (const json* v = find(key)) {
      double s = read_seconds(*v, path(key), min, exclusive);
      out = std::llround(s * 1000);
      if (exclusive && out <= 0) out = 1;  // a positive duration never rounds to "none"
    }
  }
  // A path relative to `base`; an empty string is allowed only where it means "unset".
  void file(std::string_view key, fs::path& out, const fs::path& base, bool may_be_empty) const {
    const json* v = find(key);
    if (v == nullptr) return;
    if (!v->is_string()) throw type_error(path(key), "a string (a path)", *v);
    const auto& s = v->get_ref<const std::string&>();
    if (s.find('\0') != std::string::npos) {
      throw ConfigError(path(key), "a path must not contain a NUL character");
    }
    if (s.empty()) {
      if (!may_be_empty) throw ConfigError(path(key), "must not be empty");
      out.clear();
      return;
    }
    out = resolve_path(base, s);
  }
  // One of `choices`, or nullopt when the key is absent.
  std::optional<std::string> choice(std::string_view key,
                                    std::initializer_list<std::string_view> choices) const {
    const json* v = find(key);
    if (v == nullptr) return std::nullopt;
    if (!v->is_string()) throw type_error(path(key), "a string", *v);
    const auto& s = v->get_ref<const std::string&>();
    if (std::find(choices.begin(), choices.end(), s) != choices.end()) return s;
    std::string list;
    for (std::string_view c : choices)
      list += (list.empty() ? "\"" : ", \"") + std::string(c) + "\"";
    throw ConfigError(path(key), "must be one of " + list + ", got " + json_quoted(s));
  }

 private:
  const json* v_;
  std::string path_;
};

std::vector<std::string> read_string_array(const json& v, const std::string& path) {
  if (!v.is_array()) throw type_error(path, "an array of strings", v);
  std::vector<std::string> out;
  for (size_t i = 0; i < v.size(); ++i) {
    if (!v[i].is_string()) throw type_error(index_path(path, i), "a string", v[i]);
    out.push_back(v[i].get<std::string>());
  }
  return out;
}

void parse_node(const Section& root, const fs::path& base, NodeConfig& node) {
  Section s = root.section("node", {"name", "central", "dataDir"});
  if (s.find("name") == nullptr) {
    throw ConfigError(root.path("node") + ".name", "missing (every node needs a name)");
  }
  s.token("name", node.name, "node name");
  s.token("central", node.central, "node name");
  node.data_dir = resolve_path(base, "var/" + node.name);
  s.file("dataDir", node.data_dir, base, false);
  // The node's unix socket lives in dataDir, and sun_path is short.
  constexpr size_t kMaxSocketPath = sizeof(sockaddr_un{}.sun_path) - 1;
  if ((node.data_dir / "bosun.sock").string().size() > kMaxSocketPath) {
    throw ConfigError(s.path("dataDir"),
                      "too long: " + node.data_dir.string() + "/bosun.sock exceeds the " +
                          std::to_string(kMaxSocketPath) + " characters of a unix socket path");
  }
}

void parse_broker(const Section& root, const fs::path& base, BrokerConfig& broker) {
  Section s = root.section(
      "broker", {"servers", "subjectPrefix", "user", "password", "token", "nkeySeedFile",
                 "credentialsFile", "tls", "connectTimeout", "reconnectWait", "reconnectJitter",
                 "reconnectJitterTLS", "maxReconnects"});
  if (const json* v = s.find("servers")) {
    broker.servers = read_string_array(*v, s.path("servers"));
    for (size_t i = 0; i < broker.servers.size(); ++i) {
      std::string problem = server_url_problem(broker.servers[i]);
      if (!problem.empty()) throw ConfigError(index_path(s.path("servers"), i), problem);
    }
  }
  s.token("subjectPrefix", broker.subject_prefix, "subject prefix");
  s.string("user", broker.user);
  s.string("password", broker.password);
  s.string("token", broker.token);
  s.file("nkeySeedFile", broker.nkey_seed_file, base, true);
  s.file("credentialsFile", broker.credentials_file, base, true);
  Section tls = s.section("tls", {"caFile", "certFile", "keyFile"});
  tls.file("caFile", broker.tls.ca_file, base, true);
  tls.file("certFile", broker.tls.cert_file, base, true);
  tls.file("keyFile", broker.tls.key_file, base, true);
  if (broker.tls.cert_file.empty() != broker.tls.key_file.empty()) {
    throw ConfigError(tls.path(), "certFile and keyFile must be given together");
  }
  s.seconds_as_ms("connectTimeout", broker.connect_timeout_ms, 0, true);
  s.seconds_as_ms("reconnectWait", broker.reconnect_wait_ms, 0, false);
  s.integer("reconnectJitter", broker.reconnect_jitter_ms, 0, kMaxMs);
  s.integer("reconnectJitterTLS", broker.reconnect_jitter_tls_ms, 0, kMaxMs);
  s.integer("maxReconnects", broker.max_reconnects, -1, kMaxInt);
}

void parse_plugins(const Section& root, const fs::path& base, PluginsConfig& plugins) {
  Section s = root.section("plugins", {"dir", "requireSignature", "publisherKeys", "probation"});
  plugins.dir = resolve_path(base, "plugins");
  s.file("dir", plugins.dir, base, false);
  s.seconds_as_ms("probation", plugins.probation_ms, 0, false);
  s.boolean("requireSignature", plugins.require_signature);
  if (const json* v = s.find("publisherKeys")) {
    plugins.publisher_keys = read_string_array(*v, s.path("publisherKeys"));
    for (size_t i = 0; i < plugins.publisher_keys.size(); ++i) {
      if (!is_base64_ed25519_key(plugins.publisher_keys[i])) {
        throw ConfigError(index_path(s.path("publisherKeys"), i),
                          "expected an Ed25519 public key in base64 (44 characters)");
      }
    }
  }
  if (plugins.require_signature && plugins.publisher_keys.empty()) {
    throw ConfigError(s.path("publisherKeys"),
                      "requireSignature is true but no publisher key is trusted");
  }
}

void parse_extensions(const Section& root, std::map<std::string, ExtensionConfig>& out) {
  const json* v = root.find("extensions");
  if (v == nullptr) return;
  const std::string path = root.path("extensions");
  if (!v->is_object()) throw type_error(path, "an object", *v);
  for (const auto& item : v->items()) {
    std::string ext_path = child_path(path, item.key());
    if (!is_valid_token(item.key())) {
      throw ConfigError(
          ext_path, json_quoted(item.key()) + " is not a valid plugin name (" + token_rule() + ")");
    }
    Section s(&item.value(), ext_path, {"enabled", "settings"});
    ExtensionConfig ext;
    s.boolean("enabled", ext.enabled);
    if (const json* settings = s.find("settings")) {
      if (!settings->is_object()) throw type_error(s.path("settings"), "an object", *settings);
      ext.settings = *settings;
    }
    out[item.key()] = std::move(ext);
  }
}

void parse_defaults(const Section& root, DefaultsConfig& d) {
  Section s = root.section("defaults", {"ackTimeout", "retries", "methodTimeout", "replyACKTimeout",
                                        "replyRetries", "replyMethodTimeout"});
  s.seconds("ackTimeout", d.ack_timeout_s, 0, false);
  s.integer("retries", d.retries, 0, kMaxInt);
  s.seconds("methodTimeout", d.method_timeout_s, 0, false);
  s.seconds("replyACKTimeout", d.reply_ack_timeout_s, 0, false);
  s.integer("replyRetries", d.reply_retries, 0, kMaxInt);
  s.seconds("replyMethodTimeout", d.reply_method_timeout_s, 0, false);
}

void parse_security(const Section& root, SecurityConfig& security) {
  Section s =
      root.section("security", {"allow", "allowSkew", "sign", "pairKeys", "autoAccept", "keys"});
  if (const json* allow = s.find("allow")) {
    const std::string path = s.path("allow");
    if (!allow->is_object()) throw type_error(path, "an object (peer -> methods)", *allow);
    security.allow.clear();  // a given table replaces the default one
    for (const auto& item : allow->items()) {
      std::string peer_path = child_path(path, item.key());
      if (item.key() != "*" && !is_valid_token(item.key())) {
        throw ConfigError(peer_path, json_quoted(item.key()) + " is not a node name or \"*\" (" +
                                         token_rule() + ")");
      }
      std::vector<std::string> methods = read_string_array(item.value(), peer_path);
      for (size_t i = 0; i < methods.size(); ++i) {
        if (methods[i] != "*" && !is_valid_token(methods[i])) {
          throw ConfigError(
              index_path(peer_path, i),
              json_quoted(methods[i]) + " is not a method name or \"*\" (" + token_rule() + ")");
        }
      }
      security.allow[item.key()] = std::move(methods);
    }
  }
  s.seconds("allowSkew", security.allow_skew_s, 0, true);
  s.boolean("sign", security.sign);
  s.boolean("pairKeys", security.pair_keys);
  if (const json* v = s.find("autoAccept")) {
    security.auto_accept = read_string_array(*v, s.path("autoAccept"));
    for (size_t i = 0; i < security.auto_accept.size(); ++i) {
      std::string name = security.auto_accept[i];
      if (!name.empty() && name.back() == '*') name.pop_back();
      if (!name.empty() && !is_valid_token(name)) {
        throw ConfigError(index_path(s.path("autoAccept"), i),
                          json_quoted(security.auto_accept[i]) +
                              " is not a node name, \"prefix*\" or \"*\" (" + token_rule() + ")");
      }
    }
  }
  if (const json* v = s.find("keys")) {
    const std::string path = s.path("keys");
    if (!v->is_object()) throw type_error(path, "an object (node -> public key)", *v);
    for (const auto& item : v->items()) {
      std::string key_path = child_path(path, item.key());
      if (!is_valid_token(item.key())) {
        throw ConfigError(key_path,
                          json_quoted(item.key()) + " is not a node name (" + token_rule() + ")");
      }
      if (!item.value().is_string()) throw type_error(key_path, "a string", item.value());
      if (!is_base64_ed25519_key(item.value().get<std::string>())) {
        throw ConfigError(key_path,
                          "expected an Ed25519 public key in base64 (44 characters), as "
                          "`bosun keys list` shows it");
      }
      security.keys[item.key()] = item.value().get<std::string>();
    }
  }
}

void parse_rest(const Section& root, const fs::path& base, Config& cfg) {
  Section metrics = root.section("metrics", {"listen"});
  metrics.string("listen", cfg.metrics.listen);
  if (!cfg.metrics.listen.empty()) {
    std::string problem = host_port_problem(cfg.metrics.listen);
    if (!problem.empty()) throw ConfigError(metrics.path("listen"), problem);
  }

  Section storage = root.section("storage", {"sync", "syncInterval", "mapSizeMB"});
  if (auto sync = storage.choice("sync", {"interval", "always"})) {
    cfg.storage.sync = *sync == "always" ? SyncMode::always : SyncMode::interval;
  }
  storage.integer("syncInterval", cfg.storage.sync_interval_ms, 1, kMaxMs);
  storage.integer("mapSizeMB", cfg.storage.map_size_mb, 1, kMaxMapSizeMB);

  Section log = root.section("log", {"level", "file"});
  if (auto level = log.choice("level", {"trace", "debug", "info", "warn", "error", "off"})) {
    cfg.log.level = *level;
  }
  log.file("file", cfg.log.file, base, true);

  Section host = root.section("host", {"workers", "maxMessageBytes", "drainTimeout"});
  host.integer("workers", cfg.host.workers, 0, kMaxWorkers);
  host.integer("maxMessageBytes", cfg.host.max_message_bytes, 1024, kMaxMessageBytes);
  host.integer("drainTimeout", cfg.host.drain_timeout_ms, 0, kMaxMs);
}

// nlohmann keeps the last of two equal keys silently; in a config file that
// is almost always a mistake, so the parser callback refuses it.
class DuplicateKeyCheck {
 public:
  bool operator()(int /*depth*/, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start: stack_.push_back({false, {}, {}, 0}); break;
      case json::parse_event_t::array_start: stack_.push_back({true, {}, {}, 0}); break;
      case json::parse_event_t::key: {
        Frame& f = stack_.back();
        f.key = parsed.get<std::string>();
        if (!f.keys.insert(f.key).second) throw ConfigError(path(), "duplicate key");
        break;
      }
      case json::parse_event_t::value: element_done(); break;
      case json::parse_event_t::object_end:
      case json::parse_event_t::array_end:
        stack_.pop_back();
        element_done();
        break;
    }
    return true;
  }

 private:
  struct Frame {
    bool array;
    std::set<std::string> keys;
    std::string key;
    size_t index;
  };
  void element_done() {
    if (!stack_.empty() && stack_.back().array) ++stack_.back().index;
  }
  std::string path() const {
    std::string p = "$";
    for (const Frame& f : stack_) p = f.array ? index_path(p, f.index) : child_path(p, f.key);
    return p;
  }
  std::vector<Frame> stack_;
};

std::string read_whole_file(const fs::path& file) {
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(file.c_str(), "rb"), &std::fclose);
  if (!f) throw ConfigError("$", "cannot read " + file.string() + ": " + std::strerror(errno));
  std::string text;
  char buf[65536];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f.get())) > 0) text.append(buf, n);
  if (std::ferror(f.get())) {
    throw ConfigError("$", "cannot read " + file.string() + ": " + std::strerror(errno));
  }
  return text;
}

}  // namespace

ExtensionConfig Config::extension(const std::string& plugin) const {
  auto it = extensions.find(plugin);
  return it == extensions.end() ? ExtensionConfig{} : it->second;
}

Config parse_config(const json& doc, const fs::path& base_dir) {
  const fs::path base = base_dir.empty() ? fs::current_path() : fs::absolute(base_dir);
  Section root(&doc, "$",
               {"node", "broker", "plugins", "extensions", "defaults", "security", "metrics",
                "storage", "log", "host"});
  Config cfg;
  parse_node(root, base, cfg.node);
  parse_broker(root, base, cfg.broker);
  parse_plugins(root, base, cfg.plugins);
  parse_extensions(root, cfg.extensions);
  parse_defaults(root, cfg.defaults);
  parse_security(root, cfg.security);
  parse_rest(root, base, cfg);
  return cfg;
}

Config load_config(const fs::path& file) {
  const fs::path absolute = fs::absolute(file).lexically_normal();
  std::string text = read_whole_file(absolute);
  json doc;
  try {
    doc = json::parse(text, DuplicateKeyCheck{});
  } catch (const json::parse_error& e) {
    // Drop nlohmann's "[json.exception.parse_error.101] " prefix; keep its line and column.
    std::string what = e.what();
    if (size_t close = what.find("] "); what.starts_with("[") && close != std::string::npos) {
      what.erase(0, close + 2);
    }
    throw ConfigError("$", absolute.string() + ": " + what);
  } catch (const ConfigError& e) {
    throw ConfigError(e.json_path(), std::string(e.what()).substr(e.json_path().size() + 2) +
                                         " in " + absolute.string());
  }
  Config cfg = parse_config(doc, absolute.parent_path());
  cfg.file = absolute;
  return cfg;
}

std::string default_config_text(const std::string& node_name) {
  if (!is_valid_token(node_name)) {
    throw ConfigError("$.node.name",
                      json_quoted(node_name) + " is not a valid node name (" + token_rule() + ")");
  }
  const Config d;
  using ojson = nlohmann::ordered_json;
  ojson allow = ojson::object();
  for (const auto& [peer, methods] : d.security.allow) allow[peer] = methods;
  ojson j;
  j["node"] = {{"name", node_name}, {"central", d.node.central}, {"dataDir", "var/" + node_name}};
  j["broker"] = {
      {"servers", ojson::array()},
      {"subjectPrefix", d.broker.subject_prefix},
      {"user", ""},
      {"password", ""},
      {"token", ""},
      {"nkeySeedFile", ""},
      {"credentialsFile", ""},
      {"tls", {{"caFile", ""}, {"certFile", ""}, {"keyFile", ""}}},
      {"connectTimeout", ms_as_seconds_json(d.broker.connect_timeout_ms)},
      {"reconnectWait", ms_as_seconds_json(d.broker.reconnect_wait_ms)},
      {"reconnectJitter", d.broker.reconnect_jitter_ms},
      {"reconnectJitterTLS", d.broker.reconnect_jitter_tls_ms},
      {"maxReconnects", d.broker.max_reconnects},
  };
  j["plugins"] = {{"dir", "plugins"},
                  {"requireSignature", d.plugins.require_signature},
                  {"probation", d.plugins.probation_ms / 1000.0},
                  {"publisherKeys", ojson::array()}};
  j["extensions"] = ojson::object();
  j["defaults"] = {{"ackTimeout", number_json(d.defaults.ack_timeout_s)},
                   {"retries", d.defaults.retries},
                   {"methodTimeout", number_json(d.defaults.method_timeout_s)},
                   {"replyACKTimeout", number_json(d.defaults.reply_ack_timeout_s)},
                   {"replyRetries", d.defaults.reply_retries},
                   {"replyMethodTimeout", number_json(d.defaults.reply_method_timeout_s)}};
  j["security"] = {{"allow", allow},
                   {"allowSkew", number_json(d.security.allow_skew_s)},
                   {"sign", d.security.sign},
                   {"pairKeys", d.security.pair_keys},
                   {"autoAccept", ojson::array()},
                   {"keys", ojson::object()}};
  j["metrics"] = {{"listen", d.metrics.listen}};
  j["storage"] = {{"sync", d.storage.sync == SyncMode::always ? "always" : "interval"},
                  {"syncInterval", d.storage.sync_interval_ms},
                  {"mapSizeMB", d.storage.map_size_mb}};
  j["log"] = {{"level", d.log.level}, {"file", ""}};
  j["host"] = {{"workers", d.host.workers},
               {"maxMessageBytes", d.host.max_message_bytes},
               {"drainTimeout", d.host.drain_timeout_ms}};
  return j.dump(2) + "\n";
}

}  // namespace bosun::host
