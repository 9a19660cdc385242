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
  e.help = m.help;
  e.flags = m.flags;
  e.module = inst;
  e.on_call = m.on_call;
  if (m.flags & BOSUN_METHOD_SERIAL) e.serial = std::make_shared<Strand>(pool->get_executor());
  return e;
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
  std::map<std::string, std::string> owner;  // method -> module
  for (const auto& [name, e] : *new_table) owner[name] = "host";

  std::vector<PluginInfo> infos;
  std::vector<std::shared_ptr<ModuleInstance>> loaded;
  for (const auto& path : files) {
    PluginInfo info;
    info.name = path.stem().string();
    info.path = path.string();
    ExtensionConfig ext = config.extension(info.name);
    if (!ext.enabled) {
      info.state = PluginState::disabled;
      info.reason = "disabled in the config ($.extensions." + info.name + ".enabled)";
      spdlog::info("module {}: disabled in the config", info.name);
      infos.push_back(std::move(info));
      continue;
    }
    std::unique_ptr<ModuleFile> file;
    fs::path chosen = path;
    std::string rollback;
    if (auto recorded = recorded_module_path(info.name, &rollback)) {
      chosen = *recorded;  // the version last activated by an update (or rolled back to)
      info.path = chosen.string();
      if (!rollback.empty()) spdlog::warn("module {}: rolled back: {}", info.name, rollback);
    }
    try {
      file = ModuleFile::open(chosen, info.name);
    } catch (const ModuleLoadError& e) {
      info.state = PluginState::failed;
      info.reason = e.what();
      spdlog::error("module {} failed to load: {}", info.name, e.what());
      infos.push_back(std::move(info));
      continue;
    }
    info.version = file->version();
    info.description = file->description();
    for (const auto& m : file->methods()) info.methods.push_back(m.name);
    std::string clash;
    for (const auto& m : file->methods()) {
      if (auto it = owner.find(m.name); it != owner.end()) {
        clash = "method \"" + m.name + "\" is already provided by " +
                (it->second == "host" ? std::string("the host") : "module " + it->second);
        break;
      }
    }
    if (!clash.empty()) {
      info.state = PluginState::failed;
      info.reason = clash;
      spdlog::error("module {} not loaded: {}", info.name, clash);
      infos.push_back(std::move(info));
      continue;
    }
    auto inst = init_module(std::move(file), ext, info);
    if (!inst) {
      if (info.state == PluginState::inactive) {
        spdlog::info("module {} inactive: {}", info.name, info.reason);
      } else {
        spdlog::error("module {} failed: {}", info.name, info.reason);
      }
      infos.push_back(std::move(info));
      continue;
    }
    for (const auto& m : inst->file->methods()) {
      owner[m.name] = info.name;
      (*new_table)[m.name] = method_entry(inst, m);
    }
    spdlog::info("module {} {} active: {} method(s)", info.name, info.version, info.methods.size());
    loaded.push_back(inst);
    infos.push_back(std::move(info));
  }
  std::lock_guard<std::mutex> lock(plugins_mu);
  plugin_infos = std::move(infos);
  instances = std::move(loaded);
  table = std::move(new_table);
}

void Node::Impl::drain_and_shutdown(const std::shared_ptr<ModuleInstance>& inst,
                                    std::chrono::steady_clock::time_point deadline) {
  inst->cancel_timers();
  std::unique_lock<std::mutex> lock(inst->inflight_mu);
  if (!inst->inflight_cv.wait_until(lock, deadline, [&] { return inst->inflight == 0; })) {
    spdlog::warn("module {} {}: {} call(s) still running after the drain deadline; cancelling",
                 inst->name(), inst->file->version(), inst->inflight);
    {
      std::lock_guard<std::mutex> calls_lock(calls_mu);
      for (auto& [id, call] : running) {
        if (call->entry.module == inst) call->cancelled = true;
      }
    }
    // A handler that ignores cancellation keeps the module mapped: never
    // unmap code that is still running.
    if (!inst->inflight_cv.wait_for(lock, std::chrono::seconds(2),
                                    [&] { return inst->inflight == 0; })) {
      spdlog::error("module {}: handlers ignore cancellation; leaving it loaded", inst->name());
      return;
    }
  }
  lock.unlock();
  if (inst->file->descriptor().on_shutdown != nullptr && inst->instance != nullptr) {
    inst->file->descriptor().on_shutdown(inst->instance);
  }
  inst->instance = nullptr;
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
  auto deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(config.host.drain_timeout_ms);
  for (auto& inst : all) inst->cancel_timers();
  for (auto& inst : all) drain_and_shutdown(inst, deadline);
}

std::shared_ptr<const MethodTable> Node::Impl::methods() const {
  std::lock_guard<std::mutex> lock(plugins_mu);
  return table;
}

}  // namespace bosun::host
