#include "bosun/host/module.hpp"

#include <dlfcn.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <set>

#include "bosun/host/config.hpp"

namespace bosun::host {

namespace fs = std::filesystem;

namespace {

[[noreturn]] void fail(const fs::path& path, const std::string& what) {
  throw ModuleLoadError(path.string() + ": " + what);
}

std::string mode_text(mode_t mode) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(mode & 07777));
  return buf;
}

void check_owner_and_mode(const fs::path& shown, const fs::path& p, const char* what) {
  struct stat st {};
  if (::stat(p.c_str(), &st) != 0) {
    fail(shown,
         std::string("cannot stat ") + what + " " + p.string() + ": " + std::strerror(errno));
  }
  if (st.st_uid != ::geteuid() && st.st_uid != 0) {
    fail(shown, std::string("refusing to load: ") + what + " " + p.string() + " is owned by uid " +
                    std::to_string(st.st_uid) + ", neither this user nor root");
  }
  if (st.st_mode & (S_IWGRP | S_IWOTH)) {
    fail(shown, std::string("refusing to load: ") + what + " " + p.string() +
                    " is writable by others than its owner (mode " + mode_text(st.st_mode) +
                    "); fix with: chmod go-w " + p.string());
  }
}

// Offsets past which a descriptor or method entry must reach to be usable.
constexpr size_t kMinPluginSize = offsetof(bosun_plugin, on_shutdown) + sizeof(void*);
constexpr size_t kMinMethodSize = offsetof(bosun_method, on_call) + sizeof(void*);

}  // namespace

void check_module_permissions(const fs::path& path) {
  check_owner_and_mode(path, path, "file");
  fs::path dir = path.parent_path().empty() ? fs::path(".") : path.parent_path();
  check_owner_and_mode(path, dir, "folder");
}

namespace {
std::mutex g_loader_mu;
bool g_forked_child = false;  // set once, in a single-threaded child
}  // namespace

std::unique_lock<std::mutex> ModuleFile::loader_lock() {
  if (g_forked_child) return {};
  return std::unique_lock<std::mutex>(g_loader_mu);
}

void ModuleFile::in_forked_child() {
  g_forked_child = true;
}

ModuleFile::~ModuleFile() {
#ifndef BOSUN_SANITIZED
  if (handle_ != nullptr) {
    auto lock = loader_lock();
    ::dlclose(handle_);
  }
#endif
}

std::unique_ptr<ModuleFile> ModuleFile::open(const fs::path& path,
                                             const std::string& expected_name) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) fail(path, "not a regular file");
  check_module_permissions(path);

  {
    // dlopen's text for a non-ELF file is cryptic ("invalid ELF header" at
    // best); say plainly what the file is not.
    std::ifstream in(path, std::ios::binary);
    char magic[4] = {};
    in.read(magic, 4);
    if (in.gcount() != 4 || std::memcmp(magic,
                                        "\x7f"
                                        "ELF",
                                        4) != 0) {
      fail(path, "not an ELF shared object (is it a module built with bosun_add_plugin?)");
    }
  }

  std::unique_ptr<ModuleFile> m(new ModuleFile());
  m->path_ = path;
  auto lock = loader_lock();
  ::dlerror();
  m->handle_ = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (m->handle_ == nullptr) {
    const char* err = ::dlerror();
    fail(path, std::string("cannot load: ") + (err ? err : "dlopen failed"));
  }
  void* sym = ::dlsym(m->handle_, BOSUN_PLUGIN_ENTRY_SYMBOL);
  if (sym == nullptr) {
    fail(path, "no symbol " BOSUN_PLUGIN_ENTRY_SYMBOL
               ": not a bosun module (export it with BOSUN_PLUGIN or by hand)");
  }
  auto entry = reinterpret_cast<bosun_plugin_entry_fn>(sym);
  const bosun_plugin* d = entry();
  if (d == nullptr) fail(path, BOSUN_PLUGIN_ENTRY_SYMBOL " returned NULL");

  if (BOSUN_ABI_MAJOR_OF(d->abi_version) != BOSUN_ABI_MAJOR) {
    fail(path, "built for bosun ABI " + std::to_string(BOSUN_ABI_MAJOR_OF(d->abi_version)) + "." +
                   std::to_string(BOSUN_ABI_MINOR_OF(d->abi_version)) + ", this host speaks ABI " +
                   std::to_string(BOSUN_ABI_MAJOR) + "." + std::to_string(BOSUN_ABI_MINOR) +
                   ": rebuild it against bosun-sdk " + std::to_string(BOSUN_ABI_MAJOR) + ".x");
  }
  if (d->struct_size < kMinPluginSize) {
    fail(path, "descriptor struct_size " + std::to_string(d->struct_size) +
                   " is smaller than the smallest ABI " + std::to_string(BOSUN_ABI_MAJOR) +
                   " descriptor (" + std::to_string(kMinPluginSize) + " bytes)");
  }
  // OBS's rule: copy what both sides know into a zeroed struct of ours.
  std::memcpy(&m->descriptor_, d, std::min<size_t>(d->struct_size, sizeof(bosun_plugin)));
  const bosun_plugin& desc = m->descriptor_;

  if (desc.name == nullptr || !is_valid_token(desc.name)) {
    fail(path, desc.name == nullptr ? std::string("descriptor has no name")
                                    : "module name \"" + std::string(desc.name) +
                                          "\" is not a valid name (letters, digits, '_', '-')");
  }
  m->name_ = desc.name;
  if (!expected_name.empty() && m->name_ != expected_name) {
    fail(path, "module declares the name \"" + m->name_ + "\", expected \"" + expected_name + "\"");
  }
  if (desc.version == nullptr || desc.version[0] == '\0') fail(path, "descriptor has no version");
  m->version_ = desc.version;
  m->description_ = desc.description ? desc.description : "";
  if (desc.on_init == nullptr) fail(path, "descriptor has no on_init");

  if (desc.method_count > 0 && desc.methods == nullptr) {
    fail(path,
         "descriptor declares " + std::to_string(desc.method_count) + " methods but no table");
  }
  if (desc.method_count > 0 && desc.method_struct_size < kMinMethodSize) {
    fail(path, "method_struct_size " + std::to_string(desc.method_struct_size) + " is too small");
  }
  std::set<std::string> seen;
  const auto* base = reinterpret_cast<const unsigned char*>(desc.methods);
  for (uint32_t i = 0; i < desc.method_count; ++i) {
    bosun_method me{};
    const auto* src =
        reinterpret_cast<const bosun_method*>(base + size_t{i} * desc.method_struct_size);
    std::memcpy(&me, src, std::min<size_t>(desc.method_struct_size, sizeof(bosun_method)));
    std::string where = "method " + std::to_string(i);
    if (me.name == nullptr || !is_valid_token(me.name)) {
      fail(path, where + (me.name ? " name \"" + std::string(me.name) + "\" is not a valid name"
                                  : " has no name"));
    }
    if (me.on_call == nullptr) fail(path, "method \"" + std::string(me.name) + "\" has no handler");
    if (!seen.insert(me.name).second) {
      fail(path, "method \"" + std::string(me.name) + "\" is declared twice");
    }
    m->methods_.push_back(MethodSpec{me.name, me.help ? me.help : "", me.flags, me.on_call});
  }
  return m;
}

}  // namespace bosun::host
