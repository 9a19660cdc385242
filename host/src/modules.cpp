// Loading the modules of plugins.dir, initialising them, and unloading them.
#include <spdlog/spdlog.h>

#include <algorithm>

#include "node_impl.hpp"

namespace bosun::host {

namespace fs = std::filesystem;

const char* to_string(PluginState s) {
  switch (s) {
    case PluginState::active: return "active";
    case PluginState::updating: return "updating";
    case PluginState::rolling_back: return "rolling_back";
    case PluginState::failed: return "failed";
    case PluginState::disabled: return "disabled";
    case PluginState::inactive: return "inactive";
  }
  return "unknown";
}

nlohmann::json PluginInfo::to_json() const {
  nlohmann::json j = {{"name", name}, {"version", version}, {"state", to_string(state)},
                      {"path", path}, {"methods", methods}, {"description", description}};
  if (!reason.empty()) j["reason"] = reason;
  return j;
}

std::shared_ptr<ModuleInstance> Node::Impl::init_module(std::unique_ptr<ModuleFile> file,
                                                        const ExtensionConfig& ext,
                                                        PluginInfo& info) {
  auto inst = std::make_shared<ModuleInstance>();
  inst->node = this;
  inst->file = std::move(file);
  inst->settings_json = ext.settings.dump();
  const bosun_plugin& d = inst->file->descriptor();
  char reason[512] = {};
  bosun_status st = BOSUN_ERR_INIT_FAILED;
  try {
    st = d.on_init(&inst->handle, host_api_table(),
                   bosun_str{inst->settings_json.data(), inst->settings_json.size()},
                   &inst->instance, reason, sizeof reason);
  } catch (...) {
    std::snprintf(reason, sizeof reason, "on_init threw an exception across the C ABI");
    st = BOSUN_ERR_INIT_FAILED;
  }
  reason[sizeof reason - 1] = '\0';
  if (st == BOSUN_OK) {
    info.state = PluginState::active;
    return inst;
  }
  inst->cancel_timers();  // whatever it started before failing
  if (st == BOSUN_ERR_NOT_APPLICABLE) {
    info.state = PluginState::inactive;
    info.reason = std::string("declined to activate on this host: ") +
                  (reason[0] ? reason : "no reason given");
  } else {
    info.state = PluginState::failed;
    info.reason = std::string("init failed (") + bosun_status_name(st) +
                  "): " + (reason[0] ? reason : "no reason given");
  }
  return nullptr;
}

MethodEntry Node::Impl::method_entry(const std::shared_ptr<ModuleInstance>& inst,
                                     const MethodSpec& m) {
  MethodEntry e;
  e.name = m.name;
  e.flags = m.flags;
  e.module = inst;
  e.on_call = m.on_call;
  if (m.flags & BOSUN_METHOD_SERIAL) e.serial = std::make_shared<Strand>(pool->get_executor());
  return e;
}

std::shared_ptr<ModuleInstance> Node::Impl::load_module(const fs::path& path,
                                                        const ExtensionConfig& ext,
                                                        const MethodTable& taken, PluginInfo& info,
                                                        bool at_start) {
  info.name = path.stem().string();
  info.path = path.string();
  info.state = PluginState::failed;
  info.reason.clear();
  if (!ext.enabled) {
    info.state = PluginState::disabled;
    info.reason = "disabled in the config ($.extensions." + info.name + ".enabled)";
    spdlog::info("module {}: disabled in the config", info.name);
    return nullptr;
  }
  std::unique_ptr<ModuleFile> file;
  fs::path chosen = path;
  std::string rollback;
  if (auto recorded = recorded_module_path(info.name, &rollback, at_start)) {
    chosen = *recorded;  // the version last activated by an update (or rolled back to)
    info.path = chosen.string();
    if (!rollback.empty()) spdlog::warn("module {}: rolled back: {}", info.name, rollback);
  }
  try {
    file = ModuleFile::open(chosen, info.name);
  } catch (const ModuleLoadError& e) {
    info.reason = e.what();
    spdlog::error("module {} failed to load: {}", info.name, e.what());
    return nullptr;
  }
  info.version = file->version();
  info.description = file->description();
  info.methods.clear();
  for (const auto& m : file->methods()) info.methods.push_back(m.name);
  for (const auto& m : file->methods()) {
    if (auto it = taken.find(m.name); it != taken.end()) {
      info.reason =
          "method \"" + m.name + "\" is already provided by " +
          (it->second.module ? "module " + it->second.module->name() : std::string("the host"));
      spdlog::error("module {} not loaded: {}", info.name, info.reason);
      return nullptr;
    }
  }
  auto inst = init_module(std::move(file), ext, info);
  if (!inst) {
    if (info.state == PluginState::inactive) {
      spdlog::info("module {} inactive: {}", info.name, info.reason);
    } else {
      spdlog::error("module {} failed: {}", info.name, info.reason);
    }
    return nullptr;
  }
  spdlog::info("module {} {} active: {} method(s)", info.name, info.version, info.methods.size());
  return inst;
}

void Node::Impl::load_modules() {
  const fs::path& dir = config.plugins.dir;
  std::vector<fs::path> files;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    spdlog::warn("plugins.dir {} is not a folder: no modules loaded", dir.string());
  } else {
    for (const auto& e : fs::directory_iterator(dir, ec)) {
      if (e.path().extension() == ".so") files.push_back(e.path());
    }
    std::sort(files.begin(), files.end());
  }

  auto new_table = std::make_shared<MethodTable>();
  register_builtins(*new_table);
  auto cfg = current_config();
  std::vector<PluginInfo> infos;
  std::vector<std::shared_ptr<ModuleInstance>> loaded;
  for (const auto& path : files) {
    PluginInfo info;
    auto inst = load_module(path, cfg->extension(path.stem().string()), *new_table, info, true);
    if (inst) {
      for (const auto& m : inst->file->methods()) (*new_table)[m.name] = method_entry(inst, m);
      loaded.push_back(inst);
    }
    infos.push_back(std::move(info));
  }
  std::lock_guard<std::mutex> lock(plugins_mu);
  plugin_infos = std::move(infos);
  instances = std::move(loaded);
  table = std::move(new_table);
}

std::string DrainStatus::summary() const {
  if (stuck) {
    return std::to_string(cancelled) +
           " call(s) ignored cancellation after host.drainTimeout; the instance stays loaded";
  }
  if (cancelled > 0) {
    return std::to_string(cancelled) + " call(s) cancelled after host.drainTimeout";
  }
  return "drained";
}

void Node::Impl::drain_and_shutdown(const std::shared_ptr<ModuleInstance>& inst,
                                    std::chrono::steady_clock::time_point deadline,
                                    const std::string& why, DrainStatus* status) {
  auto report = [status](int cancelled, bool stuck) {
    if (status == nullptr) return;
    std::lock_guard<std::mutex> lock(status->mu);
    status->cancelled = cancelled;
    status->stuck = stuck;
    status->done = true;
    status->cv.notify_all();
  };
  inst->cancel_timers();
  std::unique_lock<std::mutex> lock(inst->inflight_mu);
  inst->retired = true;
  int cancelled = 0;
  if (!inst->inflight_cv.wait_until(lock, deadline, [&] { return inst->inflight == 0; })) {
    cancelled = inst->inflight;
    spdlog::warn("module {} {}: {} call(s) still running after the drain deadline; cancelling",
                 inst->name(), inst->file->version(), inst->inflight);
    std::string reason = "module " + inst->name() + " " + inst->file->version() + " " + why +
                         ", and the call outlasted host.drainTimeout";
    {
      std::lock_guard<std::mutex> calls_lock(calls_mu);
      for (auto& [id, call] : running) {
        if (call->entry.module != inst) continue;
        {
          std::lock_guard<std::mutex> call_lock(call->mu);
          call->cancel_reason = reason;
        }
        call->cancelled = true;
      }
    }
    // A handler that ignores cancellation keeps the module mapped: never
    // unmap code that is still running.
    if (!inst->inflight_cv.wait_for(lock, std::chrono::seconds(2),
                                    [&] { return inst->inflight == 0; })) {
      spdlog::error("module {}: handlers ignore cancellation; leaving it loaded", inst->name());
      lock.unlock();
      report(cancelled, true);
      return;
    }
  }
  lock.unlock();
  inst->cancel_timers();  // any a handler started while it drained
  if (inst->file->descriptor().on_shutdown != nullptr && inst->instance != nullptr) {
    inst->file->descriptor().on_shutdown(inst->instance);
  }
  inst->instance = nullptr;
  report(cancelled, false);
}

std::shared_ptr<DrainStatus> Node::Impl::start_drain(std::shared_ptr<ModuleInstance> inst,
                                                     const std::string& why) {
  auto deadline = std::chrono::steady_clock::now() +
                  std::chrono::milliseconds(current_config()->host.drain_timeout_ms);
  auto status = std::make_shared<DrainStatus>();
  std::lock_guard<std::mutex> lock(drains_mu);
  // Join the drains that are over, so a hundred updates keep no threads.
  for (auto it = drains.begin(); it != drains.end();) {
    bool over;
    {
      std::lock_guard<std::mutex> s(it->status->mu);
      over = it->status->done;
    }
    if (over) {
      it->thread.join();
      it = drains.erase(it);
    } else {
      ++it;
    }
  }
  drains.push_back({std::thread([this, inst = std::move(inst), deadline, why, status] {
                      drain_and_shutdown(inst, deadline, why, status.get());
                    }),
                    status});
  return status;
}

void Node::Impl::unload_all() {
  std::vector<std::shared_ptr<ModuleInstance>> all;
  {
    std::lock_guard<std::mutex> lock(plugins_mu);
    all.swap(instances);
    auto t = std::make_shared<MethodTable>();
    register_builtins(*t);
    table = std::move(t);
  }
  auto deadline = std::chrono::steady_clock::now() +
                  std::chrono::milliseconds(current_config()->host.drain_timeout_ms);
  for (auto& inst : all) inst->cancel_timers();
  for (auto& inst : all) drain_and_shutdown(inst, deadline, "is being unloaded: the node stops");
}

std::shared_ptr<const Config> Node::Impl::current_config() const {
  std::lock_guard<std::mutex> lock(config_mu);
  return running_config;
}

std::shared_ptr<const MethodTable> Node::Impl::methods() const {
  std::lock_guard<std::mutex> lock(plugins_mu);
  return table;
}

}  // namespace bosun::host
