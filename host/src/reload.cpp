// Reloading the config of a running node (DESIGN §6, §8): on SIGHUP or
// `bosun reload`, the node re-reads its config file. A config with an error
// is refused as a whole; otherwise extensions switched off are drained and
// unloaded, extensions switched on are loaded, changed settings go to the
// module's on_settings, and the live fields of the config (see Config) apply
// to new work. What cannot change while running is reported, not ignored.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <map>
#include <set>

#include "node_impl.hpp"

namespace bosun::host {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// The JSON paths of what differs between `a` and `b` and needs a restart.
std::vector<std::string> restart_paths(const Config& a, const Config& b) {
  std::vector<std::string> out;
  auto field = [&](bool same, const char* path) {
    if (!same) out.push_back(path);
  };
  field(a.node.name == b.node.name, "$.node.name");
  field(a.node.central == b.node.central, "$.node.central");
  field(a.node.data_dir == b.node.data_dir, "$.node.dataDir");
  field(a.broker == b.broker, "$.broker");
  field(a.plugins.dir == b.plugins.dir, "$.plugins.dir");
  field(a.plugins.require_signature == b.plugins.require_signature, "$.plugins.requireSignature");
  field(a.plugins.publisher_keys == b.plugins.publisher_keys, "$.plugins.publisherKeys");
  // security.allow, allowSkew, autoAccept, keys and pairKeys are live.
  field(a.security.sign == b.security.sign, "$.security.sign");
  field(a.metrics == b.metrics, "$.metrics");
  field(a.storage.sync == b.storage.sync, "$.storage.sync");
  field(a.storage.sync_interval_ms == b.storage.sync_interval_ms, "$.storage.syncInterval");
  field(a.storage.map_size_mb == b.storage.map_size_mb, "$.storage.mapSizeMB");
  field(a.log.level == b.log.level, "$.log.level");
  field(a.log.file == b.log.file, "$.log.file");
  field(a.host.workers == b.host.workers, "$.host.workers");
  field(a.host.max_message_bytes == b.host.max_message_bytes, "$.host.maxMessageBytes");
  // Whole sections too (the live fields made equal), so that a field added
  // to the config later is reported rather than silently ignored.
  auto section = [&](bool same, const std::string& path) {
    if (same) return;
    for (const auto& p : out) {
      if (p == path || p.starts_with(path + ".")) return;
    }
    out.push_back(path);
  };
  section(a.node == b.node, "$.node");
  section(a.storage == b.storage, "$.storage");
  section(a.log == b.log, "$.log");
  Config la = a;
  la.file = b.file;
  la.extensions = b.extensions;
  la.defaults = b.defaults;
  la.host.drain_timeout_ms = b.host.drain_timeout_ms;
  la.plugins.probation_ms = b.plugins.probation_ms;
  la.security = b.security;
  la.security.sign = a.security.sign;
  section(la.plugins == b.plugins, "$.plugins");
  section(la.host == b.host, "$.host");
  section(la == b, "$");
  return out;
}

// The JSON paths of the live fields (other than extensions) that differ.
std::vector<std::string> live_paths(const Config& a, const Config& b) {
  std::vector<std::string> out;
  auto field = [&](bool same, const char* path) {
    if (!same) out.push_back(path);
  };
  const DefaultsConfig &x = a.defaults, &y = b.defaults;
  field(x.ack_timeout_s == y.ack_timeout_s, "$.defaults.ackTimeout");
  field(x.retries == y.retries, "$.defaults.retries");
  field(x.method_timeout_s == y.method_timeout_s, "$.defaults.methodTimeout");
  field(x.reply_ack_timeout_s == y.reply_ack_timeout_s, "$.defaults.replyACKTimeout");
  field(x.reply_retries == y.reply_retries, "$.defaults.replyRetries");
  field(x.reply_method_timeout_s == y.reply_method_timeout_s, "$.defaults.replyMethodTimeout");
  field(a.host.drain_timeout_ms == b.host.drain_timeout_ms, "$.host.drainTimeout");
  field(a.plugins.probation_ms == b.plugins.probation_ms, "$.plugins.probation");
  field(a.security.allow == b.security.allow, "$.security.allow");
  field(a.security.allow_skew_s == b.security.allow_skew_s, "$.security.allowSkew");
  field(a.security.auto_accept == b.security.auto_accept, "$.security.autoAccept");
  field(a.security.keys == b.security.keys, "$.security.keys");
  field(a.security.pair_keys == b.security.pair_keys, "$.security.pairKeys");
  return out;
}

std::string joined(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& i : items) out += (out.empty() ? "" : ", ") + i;
  return out;
}

}  // namespace

void Node::Impl::on_sighup() {
  hangup->async_wait([this](const boost::system::error_code& ec, int) {
    if (ec || stopping) return;
    spdlog::info("SIGHUP: reloading the config from {}", config.file.string());
    asio::post(*pool, [this] { reload(); });
    on_sighup();
  });
}

json Node::Impl::reload() {
  auto t0 = std::chrono::steady_clock::now();
  json result = {{"node", config.node.name},         {"file", config.file.string()},
                 {"loaded", json::array()},          {"unloaded", json::array()},
                 {"settingsUpdated", json::array()}, {"applied", json::array()},
                 {"failed", json::array()},          {"needsRestart", json::array()}};
  auto finish = [&](const std::string& status) {
    result["status"] = status;
    result["durationMs"] =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
            .count();
    if (status == "refused") {
      spdlog::error("config reload refused: {}; the running config stays",
                    result.value("error", ""));
    } else {
      auto names = [&](const char* key) {
        std::vector<std::string> v;
        for (const auto& e : result[key]) {
          v.push_back(e.is_string() ? e.get<std::string>() : e.value("plugin", ""));
        }
        return joined(v);
      };
      std::string text = "config reloaded from " + config.file.string() + ": " + status;
      for (const char* key : {"loaded", "unloaded", "settingsUpdated", "applied", "failed"}) {
        if (!result[key].empty()) text += "; " + std::string(key) + ": " + names(key);
      }
      if (status == "partial" || status == "failed") {
        for (const auto& f : result["failed"]) {
          spdlog::error("config reload: plugin {}: {}", f.value("plugin", ""),
                        f.value("reason", ""));
        }
        spdlog::warn("{}", text);
      } else {
        spdlog::info("{}", text);
      }
      if (!result["needsRestart"].empty()) {
        std::vector<std::string> paths = result["needsRestart"];
        spdlog::warn("config reload: changes to {} need a restart of the node", joined(paths));
      }
    }
    emit_event("config_reloaded", result);
    return result;
  };
  auto refuse = [&](const std::string& error) {
    result["error"] = error;
    return finish("refused");
  };

  if (config.file.empty()) {
    return refuse("this node was not started from a config file: there is nothing to re-read");
  }
  Config next;
  try {
    next = load_config(config.file);
  } catch (const ConfigError& e) {
    return refuse(e.what());
  } catch (const std::exception& e) {
    return refuse(config.file.string() + ": " + e.what());
  }

  std::vector<std::shared_ptr<DrainStatus>> drain_statuses;
  int64_t drain_timeout_before = 0;
  {
    std::lock_guard<std::mutex> one_at_a_time(update_mu);
    if (stopping) return refuse("the node is stopping");
    const auto cur = current_config();
    drain_timeout_before = cur->host.drain_timeout_ms;
    for (const auto& p : restart_paths(*cur, next)) result["needsRestart"].push_back(p);
    for (const auto& p : live_paths(*cur, next)) result["applied"].push_back(p);

    // Every plugin the node knows of, and every module now in plugins.dir.
    std::map<std::string, fs::path> files;
    std::error_code ec;
    if (fs::is_directory(config.plugins.dir, ec)) {
      for (const auto& e : fs::directory_iterator(config.plugins.dir, ec)) {
        if (e.path().extension() == ".so") files[e.path().stem().string()] = e.path();
      }
    }
    std::map<std::string, PluginInfo> infos;
    std::map<std::string, std::shared_ptr<ModuleInstance>> active;
    {
      std::lock_guard<std::mutex> lock(plugins_mu);
      for (const auto& p : plugin_infos) infos[p.name] = p;
      for (const auto& i : instances) active[i->name()] = i;
    }
    std::set<std::string> names;
    for (const auto& [n, f] : files) names.insert(n);
    for (const auto& [n, p] : infos) names.insert(n);

    // The running extensions become the file's, except where a change failed:
    // those keep what is really running, so the next reload tries again.
    std::map<std::string, ExtensionConfig> extensions = next.extensions;
    auto keep_running = [&](const std::string& name) {
      if (auto it = cur->extensions.find(name); it != cur->extensions.end()) {
        extensions[name] = it->second;
      } else {
        extensions.erase(name);
      }
    };
    auto fail = [&](const std::string& name, const std::string& reason) {
      result["failed"].push_back({{"plugin", name}, {"reason", reason}});
      keep_running(name);
    };
    // With plugins_mu held (in the same step as the table, so that what a
    // caller is told about a missing method matches the table).
    auto set_info_locked = [&](const PluginInfo& info) {
      for (auto& p : plugin_infos) {
        if (p.name == info.name) {
          p = info;
          return;
        }
      }
      plugin_infos.push_back(info);
    };

    std::vector<std::string> to_unload, to_settle, to_load;
    for (const auto& name : names) {
      const ExtensionConfig before = cur->extension(name);
      const ExtensionConfig after = next.extension(name);
      auto inst = active.count(name) ? active[name] : nullptr;
      auto info = infos.find(name);
      if (inst) {
        if (!after.enabled) {
          to_unload.push_back(name);
        } else if (before.settings != after.settings) {
          to_settle.push_back(name);
        }
      } else if (after.enabled) {
        // Not running: load it when it was off, is new, or its config changed.
        if (info == infos.end() || info->second.state == PluginState::disabled || before != after) {
          to_load.push_back(name);
        }
      } else if (info == infos.end() || info->second.state != PluginState::disabled) {
        PluginInfo off = info == infos.end() ? PluginInfo{} : info->second;
        off.name = name;
        if (off.path.empty() && files.count(name)) off.path = files[name].string();
        off.state = PluginState::disabled;
        off.reason = "disabled in the config ($.extensions." + name + ".enabled)";
        std::lock_guard<std::mutex> lock(plugins_mu);
        set_info_locked(off);
      }
    }

    // Unload first, so that a module switched on may take over their methods.
    for (const auto& name : to_unload) {
      auto inst = active[name];
      PluginInfo info = infos[name];
      info.state = PluginState::disabled;
      info.reason = "disabled in the config ($.extensions." + name + ".enabled)";
      {
        std::lock_guard<std::mutex> lock(plugins_mu);
        auto t = std::make_shared<MethodTable>(*table);
        std::erase_if(*t, [&](const auto& kv) { return kv.second.module == inst; });
        table = std::move(t);
        std::erase(instances, inst);
        set_info_locked(info);
      }
      drain_statuses.push_back(start_drain(inst, "was disabled by a config reload"));
      result["unloaded"].push_back({{"plugin", name}, {"version", inst->file->version()}});
    }
    for (const auto& name : to_settle) {
      std::string why = apply_settings(active[name], next.extension(name).settings.dump());
      if (why.empty()) {
        result["settingsUpdated"].push_back(name);
      } else {
        fail(name, "settings not applied: " + why);
      }
    }
    for (const auto& name : to_load) {
      fs::path path = files.count(name) ? files[name] : config.plugins.dir / (name + ".so");
      PluginInfo info;
      auto taken = methods();
      auto inst = load_module(path, next.extension(name), *taken, info, false);
      {
        std::lock_guard<std::mutex> lock(plugins_mu);
        if (inst) {
          auto t = std::make_shared<MethodTable>(*table);
          for (const auto& m : inst->file->methods()) (*t)[m.name] = method_entry(inst, m);
          table = std::move(t);
          instances.push_back(inst);
        }
        set_info_locked(info);
      }
      if (inst) {
        result["loaded"].push_back({{"plugin", name}, {"version", info.version}});
      } else {
        fail(name, info.reason);
      }
    }

    auto updated = std::make_shared<Config>(*cur);
    updated->extensions = std::move(extensions);
    updated->defaults = next.defaults;
    updated->host.drain_timeout_ms = next.host.drain_timeout_ms;
    updated->plugins.probation_ms = next.plugins.probation_ms;
    const bool sign = updated->security.sign;
    updated->security = next.security;
    updated->security.sign = sign;  // needs a restart
    if (trust) trust->configure(updated->security);
    std::lock_guard<std::mutex> lock(config_mu);
    running_config = std::move(updated);
  }

  // Outside update_mu: a call being drained may be an update waiting for it.
  // The drains run on the drain timeout from before this reload.
  auto bound =
      std::chrono::steady_clock::now() +
      std::chrono::milliseconds(std::max(drain_timeout_before, next.host.drain_timeout_ms)) +
      std::chrono::seconds(5);
  for (size_t i = 0; i < drain_statuses.size(); ++i) {
    DrainStatus& s = *drain_statuses[i];
    std::unique_lock<std::mutex> lock(s.mu);
    bool done = s.cv.wait_until(lock, bound, [&] { return s.done; });
    result["unloaded"][i]["drain"] = done ? s.summary() : "still draining";
  }

  bool changed = !result["loaded"].empty() || !result["unloaded"].empty() ||
                 !result["settingsUpdated"].empty() || !result["applied"].empty();
  if (!result["failed"].empty()) return finish(changed ? "partial" : "failed");
  return finish(changed ? "reloaded" : "unchanged");
}

}  // namespace bosun::host
