// node: update_plugin, update_settings and message (DESIGN §6, §9).
//
// update_plugin verifies and stages the artifact; the host does the rest
// (probe, load beside, swap, drain, probation) through plugin_control. Every
// request ends in an UpdateResult, sent as the reply and, when it fails here
// before the host saw it, also published as event "update_result".
#include <bosun/plugin.hpp>

#include <chrono>
#include <mutex>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "artifact.hpp"

namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr const char* kVersion = "1.0.0";

bool is_token(std::string_view s) {
  if (s.empty() || s.size() > 128) return false;
  for (char c : s) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

// A version is also a folder name, so "." and ".." are out.
bool is_version(std::string_view s) {
  if (s.empty() || s.size() > 128 || s == "." || s == "..") return false;
  for (char c : s) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-' || c == '+';
    if (!ok) return false;
  }
  return true;
}

bool is_sha256_hex(std::string_view s) {
  if (s.size() != 64) return false;
  for (char c : s) {
    bool ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
    if (!ok) return false;
  }
  return true;
}

std::string lower(std::string s) {
  for (char& c : s) {
    if (c >= 'A' && c <= 'F') c = static_cast<char>(c - 'A' + 'a');
  }
  return s;
}

// Whether update_plugin needs a publisher signature, and whose: read from
// the running settings at every update, validated at init and on_settings.
struct SignaturePolicy {
  bool required = false;
  std::vector<std::string> keys;  // raw 32-byte Ed25519 public keys
};

SignaturePolicy parse_policy(std::string_view settings_json) {
  json s = json::parse(settings_json, nullptr, false);
  if (!s.is_object()) {
    throw std::runtime_error("node settings must be a JSON object, not: " +
                             std::string(settings_json));
  }
  SignaturePolicy p;
  if (auto it = s.find("requireSignature"); it != s.end()) {
    if (!it->is_boolean()) {
      throw std::runtime_error("node settings: \"requireSignature\" must be true or false, not " +
                               it->dump());
    }
    p.required = it->get<bool>();
  }
  if (auto it = s.find("publisherKeys"); it != s.end()) {
    if (!it->is_array()) {
      throw std::runtime_error(
          "node settings: \"publisherKeys\" must be an array of base64 Ed25519 public keys, not " +
          it->dump());
    }
    for (size_t i = 0; i < it->size(); ++i) {
      std::string where = "node settings: publisherKeys[" + std::to_string(i) + "]";
      const json& k = (*it)[i];
      if (!k.is_string()) throw std::runtime_error(where + " must be a string, not " + k.dump());
      std::string raw = bosun::node::base64_decode(k.get<std::string>(), where);
      if (raw.size() != 32) {
        throw std::runtime_error(where + " is not an Ed25519 public key (expected 32 bytes, got " +
                                 std::to_string(raw.size()) + ")");
      }
      p.keys.push_back(std::move(raw));
    }
  }
  return p;
}

// A request refused before the host saw it.
class Refused : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class NodeModule : public bosun::Plugin {
 public:
  NodeModule(bosun::Host host, std::string_view settings) : Plugin(host, settings) {
    parse_policy(settings);
  }

  // The policy is read from the running settings at each update; this only
  // refuses settings that would make it unreadable.
  void on_settings(std::string_view settings) override { parse_policy(settings); }

  // methodArgs [name, version, sha256hex(, signature base64)], data = the
  // module file in base64.
  void update_plugin(bosun::Call& call) {
    auto t0 = Clock::now();
    std::string name = call.arg_count() > 0 ? std::string(call.arg(0)) : "";
    std::string version = call.arg_count() > 1 ? std::string(call.arg(1)) : "";
    json result;
    try {
      result = update(call, name, version);
    } catch (const std::exception& e) {
      result = refused(name, current_version(name), version, e.what(), t0);
    }
    answer(call, "update_plugin", result);
  }

  // methodArgs [plugin(, settings JSON(, restart))]; the settings object
  // comes from methodArgs[1] when given, else from data.
  void update_settings(bosun::Call& call) {
    auto t0 = Clock::now();
    std::string name = call.arg_count() > 0 ? std::string(call.arg(0)) : "";
    json result;
    try {
      result = settings(call, name);
    } catch (const std::exception& e) {
      std::string v = current_version(name);
      result = refused(name, v, v, e.what(), t0);
    }
    answer(call, "update_settings", result);
  }

  // LegionIO's "message" runner: data is a JSON object merged into this
  // module's stored settings (key "settings" of its key-value store).
  void message(bosun::Call& call) {
    auto t0 = Clock::now();
    json result;
    try {
      result = merge_stored(call.data(), t0);
      host().emit("update_result", result.dump());
    } catch (const std::exception& e) {
      result = refused("node", kVersion, kVersion, e.what(), t0);
    }
    answer(call, "message", result);
  }

 private:
  json update(const bosun::Call& call, const std::string& name, const std::string& version) {
    if (call.arg_count() < 3 || call.arg_count() > 4) {
      throw Refused("expected methodArgs [name, version, sha256hex] or [..., signature], got " +
                    std::to_string(call.arg_count()) + " argument(s)");
    }
    if (!is_token(name)) {
      throw Refused("methodArgs[0]: \"" + name +
                    "\" is not a plugin name (1 to 128 of A-Z a-z 0-9 _ -)");
    }
    if (!is_version(version)) {
      throw Refused("methodArgs[1]: \"" + version +
                    "\" is not a version (1 to 128 of A-Z a-z 0-9 . _ - +, not . or ..)");
    }
    std::string expected(call.arg(2));
    if (!is_sha256_hex(expected)) {
      throw Refused("methodArgs[2]: \"" + expected + "\" is not a SHA-256 (64 hex digits)");
    }
    expected = lower(expected);
    if (call.data().empty()) {
      throw Refused("data is empty: expected the module file in base64");
    }
    std::string bytes = bosun::node::base64_decode(call.data(), "data (the module file)");
    std::string got = bosun::node::sha256_hex(bytes);
    if (got != expected) throw Refused("sha256 mismatch: expected " + expected + ", got " + got);

    SignaturePolicy policy = signature_policy();
    if (policy.required) {
      if (call.arg_count() < 4 || call.arg(3).empty()) {
        throw Refused(
            "a publisher signature is required (requireSignature is true) but "
            "methodArgs[3] is missing");
      }
      if (policy.keys.empty()) {
        throw Refused(
            "requireSignature is true but publisherKeys is empty: no publisher "
            "is trusted");
      }
      std::string sig = bosun::node::base64_decode(call.arg(3), "methodArgs[3] (the signature)");
      if (!bosun::node::ed25519_verify_any(bytes, sig, policy.keys)) {
        throw Refused("the signature in methodArgs[3] does not verify against any of the " +
                      std::to_string(policy.keys.size()) + " trusted publisher key(s)");
      }
    }

    auto path =
        bosun::node::stage_module(std::string(host().data_dir()), name, version, got, bytes);
    host().info("staged " + name + " " + version + " at " + path.string());
    json request = {
        {"op", "update"}, {"name", name}, {"path", path.string()}, {"version", version}};
    return json::parse(host().plugin_control(request.dump()));
  }

  // The module's settings, tightened by the host's plugins.requireSignature
  // and publisherKeys where its node_info carries them.
  SignaturePolicy signature_policy() const {
    SignaturePolicy p = parse_policy(host().settings());
    json info = json::parse(host().node_info(), nullptr, false);
    json from_host = json::object();
    for (const char* key : {"requireSignature", "publisherKeys"}) {
      if (info.is_object() && info.contains(key)) from_host[key] = info[key];
    }
    SignaturePolicy h = parse_policy(from_host.dump());
    p.required = p.required || h.required;
    p.keys.insert(p.keys.end(), h.keys.begin(), h.keys.end());
    return p;
  }

  json settings(const bosun::Call& call, const std::string& name) {
    if (call.arg_count() < 1 || call.arg_count() > 3) {
      throw Refused("expected methodArgs [plugin(, settings JSON(, restart))], got " +
                    std::to_string(call.arg_count()) + " argument(s)");
    }
    if (!is_token(name)) {
      throw Refused("methodArgs[0]: \"" + name +
                    "\" is not a plugin name (1 to 128 of A-Z a-z 0-9 _ -)");
    }
    bool from_args = call.arg_count() >= 2 && !call.arg(1).empty();
    std::string_view text = from_args ? call.arg(1) : call.data();
    const char* where = from_args ? "methodArgs[1]" : "data";
    if (text.empty()) {
      throw Refused("no settings: give a JSON object as data or as methodArgs[1]");
    }
    json patch = json::parse(text, nullptr, false);
    if (!patch.is_object()) {
      throw Refused(std::string("the settings (") + where +
                    ") must be a JSON object, not: " + std::string(text.substr(0, 200)));
    }
    if (call.arg_count() == 3) {
      std::string_view restart = call.arg(2);
      if (restart != "true" && restart != "false") {
        throw Refused("methodArgs[2] (restart) must be \"true\" or \"false\", not \"" +
                      std::string(restart) + "\"");
      }
      if (restart == "true") {
        throw Refused(
            "restart is not supported yet: nothing was changed; send update_settings without "
            "restart to hand the settings to the running module");
      }
    }
    json request = {{"op", "settings"}, {"name", name}, {"settings", patch}};
    return json::parse(host().plugin_control(request.dump()));
  }

  json merge_stored(std::string_view data, Clock::time_point t0) {
    json patch = json::parse(data, nullptr, false);
    if (!patch.is_object()) {
      throw Refused("data must be a JSON object of settings, not: " +
                    std::string(data.substr(0, 200)));
    }
    for (const char* key : {"requireSignature", "publisherKeys"}) {
      if (patch.contains(key)) {
        throw Refused(std::string("\"") + key +
                      "\" is a security setting: set it in the config (extensions.node.settings) "
                      "or with update_settings");
      }
    }
    std::lock_guard<std::mutex> lock(stored_mu_);
    json stored = json::object();
    if (auto text = host().kv_get("settings")) {
      stored = json::parse(*text, nullptr, false);
      if (!stored.is_object()) stored = json::object();
    }
    json merged = stored;
    merged.merge_patch(patch);
    bool changed = merged != stored;
    if (changed) host().kv_put("settings", merged.dump());
    return outcome("node", kVersion, kVersion, changed ? "updated" : "unchanged", "", t0);
  }

  json outcome(const std::string& plugin, const std::string& from, const std::string& to,
               const std::string& status, const std::string& reason, Clock::time_point t0) const {
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
    return {{"node", std::string(host().node_name())},
            {"plugin", plugin},
            {"from", from},
            {"to", to},
            {"status", status},
            {"reason", reason},
            {"durationMs", ms}};
  }

  // A failure of ours (the host publishes its own): published here.
  json refused(const std::string& plugin, const std::string& from, const std::string& to,
               const std::string& reason, Clock::time_point t0) const {
    json r = outcome(plugin, from, to, "failed", reason, t0);
    try {
      host().error("update_result " + r.dump());
      host().emit("update_result", r.dump());
    } catch (const std::exception& e) {
      host().error(std::string("cannot publish update_result: ") + e.what());
    }
    return r;
  }

  std::string current_version(const std::string& name) const {
    json list = json::parse(host().plugins(), nullptr, false);
    if (!list.is_array()) return "";
    for (const auto& p : list) {
      if (p.is_object() && p.value("name", "") == name) return p.value("version", "");
    }
    return "";
  }

  static void answer(const bosun::Call& call, const std::string& method, const json& result) {
    call.reply(result.dump());
    if (result.value("status", "") == "failed") {
      throw bosun::Error(method + ": " + result.value("reason", ""));
    }
  }

  std::mutex stored_mu_;
};

}  // namespace

BOSUN_PLUGIN(NodeModule, "node", kVersion, "Updates this node's plugins and settings",
             BOSUN_METHOD_EX(NodeModule, update_plugin, "update_plugin", BOSUN_METHOD_SERIAL,
                             "methodArgs [name, version, sha256(, signature)], data = the module "
                             "in base64: stage, verify and hot-swap a plugin"),
             BOSUN_METHOD(NodeModule, update_settings,
                          "methodArgs [plugin(, settings JSON)], or data = settings: merge into "
                          "the plugin's running settings"),
             BOSUN_METHOD(NodeModule, message,
                          "data = JSON object: merge into this module's stored settings"))
