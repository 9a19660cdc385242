// core/beat: every node sends a heartbeat (`hello`) to the central node every
// beatInterval seconds and emits it as event `beat`. Whichever node receives
// beats (the central one) keeps the node registry in the module's KV store,
// emits `node_added` when a node appears (or comes back) and `node_removed`
// when it has missed its beats; `node_list` and `node_forget` serve
// `bosun nodes`.
//
// The KV store is the registry, with no cache in memory, so that two loaded
// versions of this module (during a hot update) never disagree about it:
//   "nodes"        a JSON array of the node names
//   "node/<name>"  the node's entry
#include <bosun/plugin.hpp>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace {

using bosun::Error;
using nlohmann::json;
using std::chrono::milliseconds;

constexpr char kVersion[] = "1.0.0";
constexpr double kMaxSeconds = 7 * 24 * 3600;

struct Settings {
  double beat_interval_s = 10;
  double splay = 1.0;  // fraction of the interval for the random first delay
  int missed_beats = 3;
  double ack_timeout_s = 0;  // the next beat replaces a lost one
  std::string central;       // empty: the node's own central
};

double seconds_setting(const std::string& key, const json& value, double min, bool min_allowed,
                       double max) {
  bool ok = value.is_number() && std::isfinite(value.get<double>()) && value.get<double>() <= max;
  if (ok) ok = min_allowed ? value.get<double>() >= min : value.get<double>() > min;
  if (!ok) {
    std::ostringstream want;
    want << "a number " << (min_allowed ? ">= " : "> ") << min << " and <= " << max;
    throw std::runtime_error("beat settings: \"" + key + "\" must be " + want.str() + ", not " +
                             value.dump());
  }
  return value.get<double>();
}

bool is_token(std::string_view s) {
  if (s.empty()) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
  });
}

Settings parse_settings(std::string_view text) {
  Settings s;
  json j = text.empty() ? json::object() : json::parse(text, nullptr, false);
  if (j.is_null()) j = json::object();
  if (j.is_discarded() || !j.is_object()) {
    throw std::runtime_error("beat settings must be a JSON object, not: " + std::string(text));
  }
  for (const auto& [key, value] : j.items()) {
    if (key == "beatInterval") {
      s.beat_interval_s = seconds_setting(key, value, 0, false, kMaxSeconds);
    } else if (key == "splay") {
      s.splay = seconds_setting(key, value, 0, true, 1);
    } else if (key == "missedBeats") {
      if (!value.is_number_integer() || value.get<int64_t>() < 1 || value.get<int64_t>() > 1000) {
        throw std::runtime_error(
            "beat settings: \"missedBeats\" must be an integer from 1 to 1000, not " +
            value.dump());
      }
      s.missed_beats = value.get<int>();
    } else if (key == "ackTimeout") {
      s.ack_timeout_s = seconds_setting(key, value, 0, true, kMaxSeconds);
    } else if (key == "central") {
      if (!value.is_string() || !is_token(value.get<std::string>())) {
        throw std::runtime_error(
            "beat settings: \"central\" must be a node name (letters, digits, '_' and '-'), "
            "not " +
            value.dump());
      }
      s.central = value.get<std::string>();
    } else {
      throw std::runtime_error("beat settings: unknown key \"" + key +
                               "\" (known: beatInterval, splay, missedBeats, ackTimeout, central)");
    }
  }
  // Timers tick in whole milliseconds.
  if (s.beat_interval_s < 0.001) {
    throw std::runtime_error("beat settings: \"beatInterval\" must be at least 0.001 s, not " +
                             j["beatInterval"].dump());
  }
  return s;
}

int64_t now_ms() {
  return std::chrono::duration_cast<milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

double round_ms(double seconds) {
  return std::round(seconds * 1000) / 1000;
}

std::string host_name() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0) return "";
  return buf;
}

// Seconds since this process started (from /proc), or nullopt.
std::optional<double> process_uptime_s() {
  std::ifstream stat_file("/proc/self/stat");
  std::string stat;
  if (!std::getline(stat_file, stat)) return std::nullopt;
  size_t paren = stat.rfind(')');
  if (paren == std::string::npos) return std::nullopt;
  std::istringstream fields(stat.substr(paren + 1));
  std::string field;
  // Field 22 (starttime, in clock ticks after boot); fields after ')' start at 3.
  for (int i = 3; i <= 22 && (fields >> field); ++i) {
  }
  std::ifstream uptime_file("/proc/uptime");
  double since_boot = 0;
  long ticks = ::sysconf(_SC_CLK_TCK);
  if (field.empty() || !(uptime_file >> since_boot) || ticks <= 0) return std::nullopt;
  try {
    return std::max(0.0, since_boot - std::stod(field) / static_cast<double>(ticks));
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

std::string type_name(const json& v) {
  return v.is_number() ? "number" : v.type_name();
}

// Checks that data.<field>, when present, has the type `is` accepts.
void check_field(const json& data, const char* field, bool (json::*is)() const noexcept,
                 const char* want) {
  auto it = data.find(field);
  if (it == data.end() || ((*it).*is)()) return;
  throw Error(std::string("hello: data.") + field + " must be " + want + ", got " + type_name(*it),
              BOSUN_ERR_INVALID_ARGUMENT);
}

class Beat : public bosun::Plugin {
 public:
  Beat(bosun::Host host, std::string_view settings_json)
      : Plugin(host, settings_json), settings_(parse_settings(settings_json)) {
    json info = json::parse(host.node_info(), nullptr, false);
    if (!info.is_object()) info = json::object();
    central_ = settings_.central;
    if (central_.empty()) central_ = info.value("central", std::string("central"));
    standalone_ = info.value("standalone", false);
    bosun_version_ = info.value("version", std::string());
    hostname_ = host_name();
    started_ms_ = now_ms();
    if (standalone_ && central_ != node_name()) {
      host.info("standalone node: beats are emitted as events only, not sent to " + central_);
    }

    auto interval = milliseconds(std::llround(settings_.beat_interval_s * 1000));
    // Spread a fleet's beats so they do not all arrive in the same instant.
    milliseconds first{0};
    auto splay_ms = static_cast<int64_t>(settings_.splay * static_cast<double>(interval.count()));
    if (splay_ms > 0) {
      std::mt19937_64 rng{std::random_device{}()};
      first = milliseconds(std::uniform_int_distribution<int64_t>(0, splay_ms - 1)(rng));
    }
    start_timer(first, interval, [this] { send_beat(); });
    start_timer(interval, interval, [this] { check_registry(); });
  }

  void hello(bosun::Call& call) {
    json data = json::parse(call.data(), nullptr, false);
    if (data.is_discarded() || !data.is_object()) {
      // Quoted as printable ASCII: the error text travels in a JSON reply.
      std::string shown(call.data().substr(0, 80));
      for (char& c : shown) {
        if (c < 0x20 || c > 0x7e) c = '?';
      }
      throw Error("hello: data must be a JSON object, got: " + (shown.empty() ? "(empty)" : shown),
                  BOSUN_ERR_INVALID_ARGUMENT);
    }
    auto node_it = data.find("node");
    if (node_it == data.end()) {
      throw Error("hello: data has no \"node\"", BOSUN_ERR_INVALID_ARGUMENT);
    }
    if (!node_it->is_string() || !is_token(node_it->get<std::string>())) {
      throw Error("hello: data.node must be a node name, got " + node_it->dump(),
                  BOSUN_ERR_INVALID_ARGUMENT);
    }
    std::string node = node_it->get<std::string>();
    if (node != call.from_node()) {
      throw Error("hello: data.node \"" + node + "\" does not match the sender \"" +
                      std::string(call.from_node()) + "\"",
                  BOSUN_ERR_INVALID_ARGUMENT);
    }
    check_field(data, "hostname", &json::is_string, "a string");
    check_field(data, "pid", &json::is_number_integer, "an integer");
    check_field(data, "uptimeS", &json::is_number, "a number");
    check_field(data, "status", &json::is_string, "a string");
    check_field(data, "plugins", &json::is_object, "an object (name -> version)");
    check_field(data, "beatIntervalS", &json::is_number, "a number");
    check_field(data, "bosunVersion", &json::is_string, "a string");
    if (data.contains("beatIntervalS") &&
        !(data["beatIntervalS"].get<double>() > 0 && data["beatIntervalS"].get<double>() <= 1e9)) {
      throw Error("hello: data.beatIntervalS must be > 0, got " + data["beatIntervalS"].dump(),
                  BOSUN_ERR_INVALID_ARGUMENT);
    }

    bool added = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      std::optional<json> entry = load_entry(node);
      added = !entry || entry->value("status", "") == "removed";
      if (!entry) {
        add_to_index(node);
        entry = json{{"node", node}, {"firstSeenMs", now_ms()}, {"beats", 0}};
      }
      json& e = *entry;
      for (const char* field :
           {"hostname", "pid", "uptimeS", "plugins", "beatIntervalS", "bosunVersion"}) {
        if (data.contains(field)) e[field] = data[field];
      }
      e["status"] = data.value("status", std::string("ok"));
      e["lastSeenMs"] = now_ms();
      e["beats"] = e.value("beats", int64_t{0}) + 1;
      e.erase("removedMs");
      host().kv_put(key_of(node), e.dump());
    }
    if (added) {
      host().emit("node_added",
                  json{{"node", node}, {"hostname", data.value("hostname", "")}}.dump());
    }
  }

  void node_list(bosun::Call& call) {
    json out = json::array();
    int64_t now = now_ms();
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (const auto& node : load_index()) {
        std::optional<json> e = load_entry(node);
        if (!e) continue;
        (*e)["lastSeenAgoS"] =
            round_ms(static_cast<double>(now - e->value("lastSeenMs", now)) / 1000);
        out.push_back(std::move(*e));
      }
    }
    call.reply(out.dump());
  }

  void node_forget(bosun::Call& call) {
    if (call.arg_count() != 1 || call.arg(0).empty()) {
      throw Error("node_forget: methodArgs must be [node]", BOSUN_ERR_INVALID_ARGUMENT);
    }
    std::string node(call.arg(0));
    {
      std::lock_guard<std::mutex> lock(mu_);
      std::vector<std::string> index = load_index();
      auto it = std::find(index.begin(), index.end(), node);
      bool had_entry = is_token(node) && host().kv_delete(key_of(node));
      if (it == index.end() && !had_entry) {
        throw Error("node_forget: unknown node \"" + node + "\"", BOSUN_ERR_NOT_FOUND);
      }
      if (it != index.end()) {
        index.erase(it);
        host().kv_put("nodes", json(index).dump());
      }
    }
    call.reply(json{{"forgotten", node}}.dump());
  }

 private:
  static std::string key_of(const std::string& node) { return "node/" + node; }

  // Loaded plugins as {name: version}. The one place that knows how the host
  // lists them.
  json plugin_versions() const {
    json out = json::object();
    json list = json::parse(host().plugins(), nullptr, false);
    if (!list.is_array()) return out;
    for (const auto& p : list) {
      if (!p.is_object() || !p.contains("name") || !p["name"].is_string()) continue;
      std::string state = p.value("state", "");
      if (state == "failed" || state == "disabled" || state == "inactive") continue;
      out[p["name"].get<std::string>()] = p.value("version", "");
    }
    return out;
  }

  json beat_data() const {
    json data = {{"node", std::string(node_name())},
                 {"hostname", hostname_},
                 {"pid", static_cast<int64_t>(::getpid())},
                 {"status", "ok"},
                 {"plugins", plugin_versions()},
                 {"beatIntervalS", settings_.beat_interval_s},
                 {"beatVersion", kVersion}};
    std::optional<double> uptime = process_uptime_s();
    data["uptimeS"] =
        round_ms(uptime ? *uptime : static_cast<double>(now_ms() - started_ms_) / 1000);
    if (!bosun_version_.empty()) data["bosunVersion"] = bosun_version_;
    return data;
  }

  void send_beat() {
    json data = beat_data();
    host().emit("beat", data.dump());
    if (standalone_ && central_ != node_name()) return;
    json msg = {{"toNode", central_},
                {"method", "hello"},
                {"data", data},
                {"ACKTimeout", settings_.ack_timeout_s},
                {"retries", 0},
                {"replyMethod", "none"},
                // The empty reply is as disposable as the beat.
                {"replyACKTimeout", settings_.ack_timeout_s},
                {"replyRetries", 0}};
    try {
      host().send(msg.dump());
      send_failing_ = false;
    } catch (const std::exception& e) {
      // The host logs every failure; say once why beats stop arriving.
      if (!send_failing_) host().warn("cannot send the beat to " + central_ + ": " + e.what());
      send_failing_ = true;
    }
  }

  void check_registry() {
    std::vector<json> removed;
    {
      std::lock_guard<std::mutex> lock(mu_);
      int64_t now = now_ms();
      for (const auto& node : load_index()) {
        std::optional<json> e = load_entry(node);
        if (!e || e->value("status", "") == "removed") continue;
        double interval_s = e->value("beatIntervalS", settings_.beat_interval_s);
        auto window_ms =
            static_cast<int64_t>(std::llround(interval_s * 1000 * settings_.missed_beats));
        int64_t last_seen = e->value("lastSeenMs", int64_t{0});
        // Nodes get a full window after this module starts, so a central
        // node that was down does not declare the whole fleet gone.
        if (now - std::max(last_seen, started_ms_) <= window_ms) continue;
        (*e)["status"] = "removed";
        (*e)["removedMs"] = now;
        host().kv_put(key_of(node), e->dump());
        auto missed =
            static_cast<int64_t>(static_cast<double>(now - last_seen) / (interval_s * 1000));
        removed.push_back({{"node", node}, {"lastSeenMs", last_seen}, {"missedBeats", missed}});
      }
    }
    for (const auto& payload : removed) {
      host().warn("node " + payload["node"].get<std::string>() + " removed: no beat for " +
                  std::to_string(payload["missedBeats"].get<int64_t>()) + " intervals");
      host().emit("node_removed", payload.dump());
    }
  }

  std::vector<std::string> load_index() const {
    std::optional<std::string> text = host().kv_get("nodes");
    if (!text) return {};
    json j = json::parse(*text, nullptr, false);
    std::vector<std::string> out;
    if (!j.is_array()) {
      host().error("the registry index (KV key \"nodes\") is not a JSON array; ignoring it");
      return out;
    }
    for (const auto& n : j) {
      if (n.is_string()) out.push_back(n.get<std::string>());
    }
    std::sort(out.begin(), out.end());
    return out;
  }

  void add_to_index(const std::string& node) {
    std::vector<std::string> index = load_index();
    if (std::find(index.begin(), index.end(), node) != index.end()) return;
    index.push_back(node);
    std::sort(index.begin(), index.end());
    host().kv_put("nodes", json(index).dump());
  }

  std::optional<json> load_entry(const std::string& node) const {
    std::optional<std::string> text = host().kv_get(key_of(node));
    if (!text) return std::nullopt;
    json e = json::parse(*text, nullptr, false);
    if (!e.is_object()) {
      host().error("registry entry " + key_of(node) + " is not a JSON object; ignoring it");
      return std::nullopt;
    }
    return e;
  }

  const Settings settings_;
  std::string central_;
  bool standalone_ = false;
  std::string bosun_version_;
  std::string hostname_;
  int64_t started_ms_ = 0;
  bool send_failing_ = false;  // only touched by the beat timer
  std::mutex mu_;              // every read-modify-write of the registry
};

}  // namespace

BOSUN_PLUGIN(Beat, "beat", kVersion, "Heartbeats to the central node and the node registry",
             BOSUN_METHOD(Beat, hello, "record a node's heartbeat (runs on the central node)"),
             BOSUN_METHOD(Beat, node_list, "reply the node registry as a JSON array"),
             BOSUN_METHOD(Beat, node_forget, "delete methodArgs[0] from the node registry"))
