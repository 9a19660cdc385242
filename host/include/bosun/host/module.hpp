// Loading one module file: the checks of DESIGN §3 before any of its code
// beyond bosun_plugin_entry runs. Initialising it is the registry's job.
#pragma once

#include <bosun/plugin.h>

#include <filesystem>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

namespace bosun::host {

class ModuleLoadError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A method as the host keeps it: the module's entry copied into a zeroed
// struct of the host's size (fields the module did not know stay zero).
struct MethodSpec {
  std::string name;
  std::string help;
  uint32_t flags = 0;
  bosun_on_call on_call = nullptr;
};

// An opened module: the library stays mapped while this lives (and forever
// in sanitizer builds, where dlclose would lose leak-report stack frames).
class ModuleFile {
 public:
  ~ModuleFile();
  ModuleFile(const ModuleFile&) = delete;
  ModuleFile& operator=(const ModuleFile&) = delete;

  const std::filesystem::path& path() const { return path_; }
  const bosun_plugin& descriptor() const { return descriptor_; }  // host-sized copy
  const std::string& name() const { return name_; }
  const std::string& version() const { return version_; }
  const std::string& description() const { return description_; }
  uint32_t abi_version() const { return descriptor_.abi_version; }
  const std::vector<MethodSpec>& methods() const { return methods_; }

  // Opens `path` RTLD_NOW | RTLD_LOCAL after checking ownership, mode and
  // ELF magic, then validates the descriptor. `expected_name`, when set,
  // must equal the module's declared name. Throws ModuleLoadError with a
  // sentence that names the file and what is wrong.
  static std::unique_ptr<ModuleFile> open(const std::filesystem::path& path,
                                          const std::string& expected_name = "");

  // Held around every dlopen and dlclose of a module. The update probe
  // forks the host while other threads may be loading or unloading modules;
  // forking under this lock means the child never inherits a dynamic loader
  // lock that some other thread held (its own dlopen would wait forever).
  static std::unique_lock<std::mutex> loader_lock();
  // In the forked probe child: the lock above stays with the parent.
  static void in_forked_child();

 private:
  ModuleFile() = default;
  std::filesystem::path path_;
  void* handle_ = nullptr;
  bosun_plugin descriptor_{};
  std::string name_, version_, description_;
  std::vector<MethodSpec> methods_;
};

// Checks that `path` and its folder are writable by no one but their owner
// (this user or root). Throws ModuleLoadError naming the offender.
void check_module_permissions(const std::filesystem::path& path);

// The update probe's work (DESIGN §6 step 2), run in a process of its own
// (`bosun probe-module`): opens `path`, inits the module with a stand-in host
// API (KV in memory, nothing sent), shuts it down. Returns "" or why not.
std::string run_module_probe(const std::filesystem::path& path, const std::string& name,
                             const std::string& settings, const std::string& node,
                             const std::string& data_dir);

}  // namespace bosun::host
