// Hot update of a module (DESIGN §6): probe the new file in a child process,
// load it beside the running version, swap the method table, drain the old
// version and unload it once its last call has returned. The active version
// is recorded in the store, and a probation record makes the next start roll
// back when the host dies before the new version has proven itself.
#include <poll.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <map>

#include "node_impl.hpp"

namespace bosun::host {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// ---- the probe: a forked child loads and inits the module, then exits ----
// The child has no worker threads and no store: it gets a host API of its own
// that keeps KV writes in memory and runs nothing in the background.

std::string g_probe_node, g_probe_dir;
std::map<std::string, std::string> g_probe_kv;

void p_log(bosun_host*, bosun_log_level, const char*, size_t) {}
bosun_status p_reply(bosun_call*, const char*, size_t) {
  return BOSUN_ERR_UNSUPPORTED;
}
bosun_status p_set_error(bosun_call*, const char*, size_t) {
  return BOSUN_ERR_UNSUPPORTED;
}
int32_t p_cancelled(bosun_call*) {
  return 1;
}
bosun_status p_send(bosun_host*, const char*, size_t) {
  return BOSUN_OK;
}
bosun_status p_emit(bosun_host*, const char*, size_t, const char*, size_t) {
  return BOSUN_OK;
}
bosun_status p_kv_put(bosun_host*, const char* k, size_t kl, const char* v, size_t vl) {
  g_probe_kv[std::string(k, kl)] = std::string(v, vl);
  return BOSUN_OK;
}
bosun_status p_kv_get(bosun_host*, const char* k, size_t kl, bosun_on_value cb, void* ud) {
  auto it = g_probe_kv.find(std::string(k, kl));
  if (it == g_probe_kv.end()) return BOSUN_ERR_NOT_FOUND;
  cb(ud, it->second.data(), it->second.size());
  return BOSUN_OK;
}
bosun_status p_kv_delete(bosun_host*, const char* k, size_t kl) {
  return g_probe_kv.erase(std::string(k, kl)) ? BOSUN_OK : BOSUN_ERR_NOT_FOUND;
}
bosun_str p_node_name(bosun_host*) {
  return {g_probe_node.data(), g_probe_node.size()};
}
bosun_str p_data_dir(bosun_host*) {
  return {g_probe_dir.data(), g_probe_dir.size()};
}
bosun_status p_settings(bosun_host*, bosun_on_value cb, void* ud) {
  cb(ud, "{}", 2);
  return BOSUN_OK;
}
bosun_status p_timer_start(bosun_host*, uint64_t, uint64_t, bosun_on_timer, void*, uint64_t* id) {
  if (id) *id = 1;
  return BOSUN_OK;
}
bosun_status p_timer_cancel(bosun_host*, uint64_t) {
  return BOSUN_OK;
}
bosun_status p_call_send(bosun_call*, const char*, size_t) {
  return BOSUN_ERR_UNSUPPORTED;
}
bosun_status p_json(bosun_host*, bosun_on_value cb, void* ud) {
  cb(ud, "{}", 2);
  return BOSUN_OK;
}
bosun_status p_list(bosun_host*, bosun_on_value cb, void* ud) {
  cb(ud, "[]", 2);
  return BOSUN_OK;
}

bosun_status p_control(bosun_host*, const char*, size_t, bosun_on_value, void*) {
  return BOSUN_ERR_UNSUPPORTED;
}

const bosun_host_api kProbeApi = {
    .abi_version = BOSUN_ABI_VERSION,
    .struct_size = sizeof(bosun_host_api),
    .log = &p_log,
    .reply = &p_reply,
    .set_error = &p_set_error,
    .cancelled = &p_cancelled,
    .send = &p_send,
    .emit_event = &p_emit,
    .kv_put = &p_kv_put,
    .kv_get = &p_kv_get,
    .kv_delete = &p_kv_delete,
    .node_name = &p_node_name,
    .data_dir = &p_data_dir,
    .settings_get = &p_settings,
    .timer_start = &p_timer_start,
    .timer_cancel = &p_timer_cancel,
    .call_send = &p_call_send,
    .node_info = &p_json,
    .plugins_get = &p_list,
    .plugin_control = &p_control,
    // A probed module gets no keys: it only has to load, init and shut down.
    .peer_keys = &p_json,
    .encrypt_to_node = nullptr,
    .decrypt_for_self = nullptr,
    .cluster_secret_set = nullptr,
    .cluster_secret_seal_for = nullptr,
    .cluster_secret_receive = nullptr,
    .key_control = nullptr,
};

// In the child: returns "" when the module loads, inits and shuts down.
std::string probe_in_child(const fs::path& path, const std::string& name,
                           const std::string& settings) {
  try {
    auto file = ModuleFile::open(path, name);
    const bosun_plugin& d = file->descriptor();
    bosun_host handle{nullptr};
    void* instance = nullptr;
    char reason[512] = {};
    bosun_status st = d.on_init(&handle, &kProbeApi, bosun_str{settings.data(), settings.size()},
                                &instance, reason, sizeof reason);
    reason[sizeof reason - 1] = '\0';
    if (st == BOSUN_ERR_NOT_APPLICABLE) {
      return std::string("declines to activate on this host: ") + reason;
    }
    if (st != BOSUN_OK) {
      return std::string("init failed (") + bosun_status_name(st) + "): " + reason;
    }
    if (d.on_shutdown) d.on_shutdown(instance);
    return "";
  } catch (const std::exception& e) {
    return e.what();
  }
}

// The executable to run a probe in: $BOSUN_PROBE_EXE, else this process's
// own file when it is `bosun`; empty: fork without exec (a library user).
std::string probe_executable() {
  if (const char* e = std::getenv("BOSUN_PROBE_EXE"); e != nullptr && *e != '\0') return e;
  std::error_code ec;
  fs::path self = fs::read_symlink("/proc/self/exe", ec);
  if (!ec && self.filename() == "bosun") return self.string();
  return {};
}

}  // namespace

std::string run_module_probe(const fs::path& path, const std::string& name,
                             const std::string& settings, const std::string& node,
                             const std::string& data_dir) {
  g_probe_node = node;
  g_probe_dir = data_dir;
  return probe_in_child(path, name, settings);
}

std::string Node::Impl::probe_module(const fs::path& path, const std::string& name) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return std::string("pipe: ") + std::strerror(errno);
  std::string settings = current_config()->extension(name).settings.dump();
  // A fresh process (`bosun probe-module`) when we can: a fork of this
  // multi-threaded process inherits whatever lock another thread held at
  // that instant (the dynamic loader's, an allocator's: GCC 12's ASan
  // allocator is not fork-safe), and the child may wait on it for ever.
  const std::string exe = probe_executable();
  std::vector<std::string> argv_text;
  std::vector<char*> argv;
  if (!exe.empty()) {
    argv_text = {exe,      "probe-module",   path.string(), name,
                 settings, config.node.name, data_dir_text};
    for (auto& a : argv_text) argv.push_back(a.data());
    argv.push_back(nullptr);
  }
  // Without exec: no other thread is inside dlopen/dlclose while we fork.
  std::unique_lock<std::mutex> loader;
  if (exe.empty()) loader = ModuleFile::loader_lock();
  pid_t pid = ::fork();
  if (pid == 0 && !exe.empty()) {
    ::dup2(fds[1], STDOUT_FILENO);
    ::execv(exe.c_str(), argv.data());
    ::_exit(127);
  }
  if (pid == 0) {
    ModuleFile::in_forked_child();
  } else if (loader.owns_lock()) {
    loader.unlock();
  }
  if (pid < 0) {
    ::close(fds[0]);
    ::close(fds[1]);
    return std::string("fork: ") + std::strerror(errno);
  }
  if (pid == 0) {
    ::close(fds[0]);
    ::alarm(10);  // a module that hangs in init fails the probe
    g_probe_node = config.node.name;
    g_probe_dir = data_dir_text;
    std::string err = probe_in_child(path, name, settings);
    std::string out = err.empty() ? "OK" : err;
    ssize_t ignored = ::write(fds[1], out.data(), out.size());
    (void)ignored;
    ::_exit(err.empty() ? 0 : 1);
  }
  ::close(fds[1]);
  std::string text;
  char buf[1024];
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
  while (std::chrono::steady_clock::now() < deadline) {
    pollfd pfd{fds[0], POLLIN, 0};
    if (::poll(&pfd, 1, 100) <= 0) continue;
    ssize_t n = ::read(fds[0], buf, sizeof buf);
    if (n <= 0) break;
    text.append(buf, static_cast<size_t>(n));
  }
  ::close(fds[0]);
  // EOF on the pipe comes a moment before the child can be reaped.
  int status = 0;
  pid_t reaped = 0;
  while ((reaped = ::waitpid(pid, &status, WNOHANG)) == 0 &&
         std::chrono::steady_clock::now() < deadline) {
    ::usleep(1000);
  }
  if (reaped == 0) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
    return "the probe did not finish within 15 s";
  }
  if (WIFSIGNALED(status)) {
    return std::string("the module crashed the probe process (signal ") +
           std::to_string(WTERMSIG(status)) + ", " + ::strsignal(WTERMSIG(status)) + ")";
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0 && text == "OK") return "";
  if (WIFEXITED(status) && WEXITSTATUS(status) == 127 && text.empty() && !exe.empty()) {
    return "cannot run the probe " + exe + " (exec failed)";
  }
  return text.empty() ? "the probe exited with code " + std::to_string(WEXITSTATUS(status)) : text;
}

json Node::Impl::update_module(const std::string& name, const fs::path& path,
                               const std::string& expect_version, UpdateTimings* timings) {
  std::lock_guard<std::mutex> one_at_a_time(update_mu);
  auto t0 = std::chrono::steady_clock::now();
  const auto cfg = current_config();
  std::shared_ptr<ModuleInstance> old;
  {
    std::lock_guard<std::mutex> lock(plugins_mu);
    for (const auto& i : instances) {
      if (i->name() == name) old = i;
    }
  }
  json result = {{"node", config.node.name},
                 {"plugin", name},
                 {"from", old ? old->file->version() : ""},
                 {"to", expect_version}};
  auto finish = [&](const std::string& status, const std::string& reason) {
    result["status"] = status;
    result["reason"] = reason;
    result["durationMs"] =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
            .count();
    if (status == "failed") {
      spdlog::error("update_result {}", result.dump());
    } else {
      spdlog::info("update_result {}", result.dump());
    }
    count_update(result);
    emit_event("update_result", result);
    return result;
  };
  if (!is_valid_token(name)) return finish("failed", "\"" + name + "\" is not a valid plugin name");
  if (stopping) return finish("failed", "the node is stopping");
  // A reload may have switched it off while this update waited for its turn.
  if (!cfg->extension(name).enabled) {
    return finish("failed", "plugin " + name + " is disabled in the config ($.extensions." + name +
                                ".enabled): enable it and reload the config first");
  }

  auto probe_start = std::chrono::steady_clock::now();
  std::string probe_error = probe_module(path, name);
  auto swap_start = std::chrono::steady_clock::now();
  if (timings) timings->probe = swap_start - probe_start;
  if (!probe_error.empty()) return finish("failed", "probe failed: " + probe_error);
  std::unique_ptr<ModuleFile> file;
  try {
    file = ModuleFile::open(path, name);
  } catch (const ModuleLoadError& e) {
    return finish("failed", e.what());
  }
  result["to"] = file->version();
  if (!expect_version.empty() && file->version() != expect_version) {
    return finish("failed",
                  "the module says it is version " + file->version() + ", not " + expect_version);
  }
  if (old && old->file->version() == file->version() && old->file->path() == path) {
    return finish("unchanged", "version " + file->version() + " is already active");
  }
  {
    auto t = methods();
    for (const auto& m : file->methods()) {
      auto it = t->find(m.name);
      if (it == t->end()) continue;
      bool ours = it->second.module && it->second.module->name() == name;
      if (!ours) {
        return finish("failed", "method \"" + m.name + "\" is already provided by " +
                                    (it->second.module ? "module " + it->second.module->name()
                                                       : std::string("the host")));
      }
    }
  }
  PluginInfo info;
  info.name = name;
  info.path = path.string();
  info.version = file->version();
  info.description = file->description();
  for (const auto& m : file->methods()) info.methods.push_back(m.name);
  auto inst = init_module(std::move(file), cfg->extension(name), info);
  if (!inst) return finish("failed", info.reason);

  // The swap: one new table; calls already dispatched keep their entry (and
  // with it the old instance) until they return.
  {
    std::lock_guard<std::mutex> lock(plugins_mu);
    auto t = std::make_shared<MethodTable>(*table);
    for (auto it = t->begin(); it != t->end();) {
      it = it->second.module && it->second.module->name() == name ? t->erase(it) : std::next(it);
    }
    for (const auto& m : inst->file->methods()) (*t)[m.name] = method_entry(inst, m);
    table = std::move(t);
    if (old) std::erase(instances, old);
    instances.push_back(inst);
    bool found = false;
    for (auto& p : plugin_infos) {
      if (p.name == name) {
        p = info;
        found = true;
      }
    }
    if (!found) plugin_infos.push_back(info);
  }
  json active = {{"path", path.string()}, {"version", inst->file->version()}};
  if (old) {
    json probation = {{"fromPath", old->file->path().string()},
                      {"fromVersion", old->file->version()},
                      {"toVersion", inst->file->version()},
                      {"startedMs", now_ms()}};
    store->meta_put("probation/" + name, probation.dump());
    start_drain(old, "was replaced by version " + inst->file->version());
    auto timer = std::make_shared<asio::steady_timer>(io);
    timer->expires_after(std::chrono::milliseconds(cfg->plugins.probation_ms));
    int64_t started = probation["startedMs"];
    timer->async_wait([this, name, timer, started](const boost::system::error_code& ec) {
      if (!ec) asio::post(*pool, [this, name, started] { end_probation(name, started); });
    });
  }
  store->meta_put("active/" + name, active.dump());
  if (timings) timings->swap = std::chrono::steady_clock::now() - swap_start;
  return finish("updated", "");
}

std::string Node::Impl::apply_settings(const std::shared_ptr<ModuleInstance>& inst,
                                       const std::string& settings) {
  const bosun_plugin& d = inst->file->descriptor();
  if (d.on_settings == nullptr) {
    return "module " + inst->name() + " takes no new settings while running (no on_settings)";
  }
  bosun_status st = d.on_settings(inst->instance, bosun_str{settings.data(), settings.size()});
  if (st != BOSUN_OK) {
    return std::string("module refused the settings (") + bosun_status_name(st) +
           "); the running settings are unchanged";
  }
  std::lock_guard<std::mutex> lock(inst->settings_mu);
  inst->settings_json = settings;
  return "";
}

json Node::Impl::update_settings(const std::string& name, const json& patch) {
  std::lock_guard<std::mutex> one_at_a_time(update_mu);
  auto t0 = std::chrono::steady_clock::now();
  std::shared_ptr<ModuleInstance> inst;
  {
    std::lock_guard<std::mutex> lock(plugins_mu);
    for (const auto& i : instances) {
      if (i->name() == name) inst = i;
    }
  }
  json result = {{"node", config.node.name}, {"plugin", name}};
  auto finish = [&](const std::string& status, const std::string& reason) {
    result["status"] = status;
    result["reason"] = reason;
    result["durationMs"] =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
            .count();
    count_update(result);
    emit_event("update_result", result);
    return result;
  };
  if (!inst) return finish("failed", "no active plugin named \"" + name + "\"");
  result["from"] = result["to"] = inst->file->version();
  if (!patch.is_object()) return finish("failed", "settings must be a JSON object");
  std::string before;
  {
    std::lock_guard<std::mutex> lock(inst->settings_mu);
    before = inst->settings_json;
  }
  json merged = json::parse(before, nullptr, false);
  if (!merged.is_object()) merged = json::object();
  merged.merge_patch(patch);
  std::string after = merged.dump();
  if (after == before) return finish("unchanged", "");
  if (std::string why = apply_settings(inst, after); !why.empty()) return finish("failed", why);
  return finish("updated", "");
}

void Node::Impl::end_probation(const std::string& name, int64_t started_ms) {
  if (!store) return;
  bool had = false;
  store->write([key = "probation/" + name, &had, started_ms](WriteTxn& t) {
    // A later update has a probation of its own: leave that one be.
    if (started_ms != 0) {
      auto v = t.get(Db::meta, key);
      if (!v) return;
      auto j = json::parse(*v, nullptr, false);
      if (!j.is_object() || j.value("startedMs", int64_t{0}) != started_ms) return;
    }
    had = t.del(Db::meta, key);
  });
  if (had) spdlog::info("module {}: probation over; this version stays", name);
}

std::optional<fs::path> Node::Impl::recorded_module_path(const std::string& name,
                                                         std::string* rollback_note,
                                                         bool at_start) {
  if (!store) return std::nullopt;
  if (auto p = at_start ? store->meta_get("probation/" + name) : std::nullopt) {
    // The host stopped (crashed) while the new version was on probation.
    json j = json::parse(*p, nullptr, false);
    store->write([key = "probation/" + name](WriteTxn& t) { t.del(Db::meta, key); });
    if (j.is_object() && j.contains("fromPath")) {
      fs::path from = j.value("fromPath", "");
      json active = {{"path", from.string()}, {"version", j.value("fromVersion", "")}};
      store->meta_put("active/" + name, active.dump());
      json r = {{"node", config.node.name},
                {"plugin", name},
                {"from", j.value("toVersion", "")},
                {"to", j.value("fromVersion", "")},
                {"status", "rolled_back"},
                {"reason", "the host stopped while version " + j.value("toVersion", "") +
                               " was on probation"},
                {"durationMs", 0}};
      pending_update_results.push_back(r);
      if (rollback_note) *rollback_note = r["reason"];
      return from;
    }
  }
  if (auto a = store->meta_get("active/" + name)) {
    json j = json::parse(*a, nullptr, false);
    if (j.is_object() && j.contains("path")) {
      fs::path p = j.value("path", "");
      std::error_code ec;
      if (fs::is_regular_file(p, ec)) return p;
    }
  }
  return std::nullopt;
}

}  // namespace bosun::host
