// The module loader (DESIGN §3): one fixture module per failure mode, each
// refused with a sentence that says what is wrong; then the same modules in
// one plugins folder of a running node, where the broken ones are listed with
// their state and reason while the good ones serve.
#include "bosun/host/module.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <string>

#include "node_harness.hpp"

namespace bosun::host {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using test::copy_module;
using test::fixture_module;
using test::NodeSetup;
using test::RunningNode;
using test::TempDir;

// Copies fixture `name` into a private 0755 folder, so its permissions are
// the test's, not the build tree's.
class Loader : public ::testing::Test {
 protected:
  void SetUp() override {
    fs::create_directories(dir_ / "mods");
    fs::permissions(dir_ / "mods", fs::perms(0755), fs::perm_options::replace);
  }

  fs::path copy(const std::string& name) {
    fs::path to = dir_ / "mods" / (name + ".so");
    copy_module(fixture_module(name), to);
    return to;
  }

  // The ModuleLoadError text of opening `path`; fails the test if it loads.
  static std::string error_of(const fs::path& path, const std::string& expected_name = "") {
    try {
      ModuleFile::open(path, expected_name);
    } catch (const ModuleLoadError& e) {
      std::string what = e.what();
      EXPECT_NE(what.find(path.string()), std::string::npos) << "names the file: " << what;
      return what;
    }
    ADD_FAILURE() << path << " loaded, but it should have been refused";
    return "";
  }

  TempDir dir_;
};

TEST_F(Loader, NoEntrySymbolIsRefused) {
  std::string e = error_of(copy("fx_no_entry"));
  EXPECT_NE(e.find("no symbol bosun_plugin_entry"), std::string::npos) << e;
}

TEST_F(Loader, AbiMajorMismatchNamesBothVersions) {
  std::string e = error_of(copy("fx_abi_major"));
  EXPECT_NE(e.find("ABI 99"), std::string::npos) << e;
  EXPECT_NE(e.find("host speaks ABI " + std::to_string(BOSUN_ABI_MAJOR) + "."), std::string::npos)
      << e;
}

TEST_F(Loader, NullNameIsRefused) {
  std::string e = error_of(copy("fx_null_name"));
  EXPECT_NE(e.find("no name"), std::string::npos) << e;
}

TEST_F(Loader, GarbageFileIsNotAnElf) {
  std::string e = error_of(copy("fx_garbage"));
  EXPECT_NE(e.find("not an ELF"), std::string::npos) << e;
}

TEST_F(Loader, TruncatedElfCannotLoad) {
  std::string e = error_of(copy("fx_truncated"));
  EXPECT_NE(e.find("cannot load"), std::string::npos) << e;
}

TEST_F(Loader, FileWritableByOthersIsRefused) {
  fs::path p = copy("fx_c_echo");
  fs::permissions(p, fs::perms(0666), fs::perm_options::replace);
  std::string e = error_of(p);
  EXPECT_NE(e.find("writable by others"), std::string::npos) << e;
  EXPECT_NE(e.find("0666"), std::string::npos) << e;

  fs::permissions(p, fs::perms(0775), fs::perm_options::replace);  // group-writable alone
  e = error_of(p);
  EXPECT_NE(e.find("writable by others"), std::string::npos) << e;
}

TEST_F(Loader, FolderWritableByOthersIsRefused) {
  fs::path p = copy("fx_c_echo");
  fs::permissions(p.parent_path(), fs::perms(0777), fs::perm_options::replace);
  std::string e = error_of(p);
  EXPECT_NE(e.find("folder"), std::string::npos) << e;
  EXPECT_NE(e.find("writable by others"), std::string::npos) << e;
}

TEST_F(Loader, ExpectedNameMismatchIsRefused) {
  std::string e = error_of(copy("fx_c_echo"), "other_name");
  EXPECT_NE(e.find("\"fx_c_echo\""), std::string::npos) << e;
  EXPECT_NE(e.find("expected \"other_name\""), std::string::npos) << e;
}

TEST_F(Loader, WorkingModuleLoads) {
  auto m = ModuleFile::open(copy("fx_c_echo"), "fx_c_echo");
  EXPECT_EQ(m->name(), "fx_c_echo");
  EXPECT_EQ(m->version(), "1.0.0");
  ASSERT_EQ(m->methods().size(), 2u);
  EXPECT_EQ(m->methods()[0].name, "c_echo");
  EXPECT_EQ(m->methods()[1].name, "c_stream");
}

TEST_F(Loader, LargerStructSizeLoads) {
  auto m = ModuleFile::open(copy("fx_struct_big"));
  EXPECT_EQ(m->name(), "fx_struct_big");
  EXPECT_EQ(m->abi_version(), BOSUN_ABI_VERSION + 1u);
  ASSERT_EQ(m->methods().size(), 2u);
  EXPECT_EQ(m->methods()[0].name, "big_ping");
  EXPECT_EQ(m->methods()[0].help, "reply \"big ok\"");
  EXPECT_EQ(m->methods()[1].name, "big_pong");
  EXPECT_NE(m->methods()[1].on_call, nullptr);
}

TEST_F(Loader, SmallerStructSizeLoads) {
  auto m = ModuleFile::open(copy("fx_struct_small"));
  EXPECT_EQ(m->name(), "fx_struct_small");
  // Fields past the module's struct_size read as zero, never past the object.
  EXPECT_EQ(m->descriptor().on_settings, nullptr);
  ASSERT_EQ(m->methods().size(), 1u);
  EXPECT_EQ(m->methods()[0].name, "small_ping");
}

// ------------------------------------------------------- through a node ---

class LoaderNode : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* name :
         {"fx_c_echo", "fx_init_fails", "fx_not_applicable", "fx_throw_init", "fx_counter",
          "fx_struct_big", "fx_struct_small", "fx_garbage", "fx_abi_major"}) {
      setup_.add_fixture(name);
    }
    setup_.extension("fx_counter")["enabled"] = false;
    node_ = std::make_unique<RunningNode>(setup_.config());
  }

  PluginInfo plugin(const std::string& name) {
    for (const auto& p : node_->node().plugins()) {
      if (p.name == name) return p;
    }
    ADD_FAILURE() << "plugin " << name << " is not listed";
    return {};
  }

  std::string call(const std::string& method) {
    auto out = test::submit_and_wait(node_->node(), {{"toNode", "n1"}, {"method", method}});
    EXPECT_TRUE(out.result.errors.empty()) << out.result.to_json().dump();
    const Message* r = out.final_reply();
    if (r == nullptr) return "<no reply>";
    return r->status == "ok" ? r->data : "error: " + r->error;
  }

  NodeSetup setup_;
  std::unique_ptr<RunningNode> node_;
};

TEST_F(LoaderNode, InitFailureIsFailedWithItsReason) {
  PluginInfo p = plugin("fx_init_fails");
  EXPECT_EQ(p.state, PluginState::failed);
  EXPECT_NE(p.reason.find("fixture: database unreachable"), std::string::npos) << p.reason;
  EXPECT_EQ(p.version, "1.0.0");
}

TEST_F(LoaderNode, NotApplicableIsInactiveNotFailed) {
  PluginInfo p = plugin("fx_not_applicable");
  EXPECT_EQ(p.state, PluginState::inactive);
  EXPECT_NE(p.reason.find("fixture: requires systemd"), std::string::npos) << p.reason;
}

TEST_F(LoaderNode, ThrowingConstructorIsFailedWithTheExceptionText) {
  PluginInfo p = plugin("fx_throw_init");
  EXPECT_EQ(p.state, PluginState::failed);
  EXPECT_NE(p.reason.find("fixture: bad settings"), std::string::npos) << p.reason;
}

TEST_F(LoaderNode, DisabledExtensionIsDisabled) {
  PluginInfo p = plugin("fx_counter");
  EXPECT_EQ(p.state, PluginState::disabled);
  EXPECT_NE(p.reason.find("extensions.fx_counter.enabled"), std::string::npos) << p.reason;
}

TEST_F(LoaderNode, UnloadableFilesAreFailedWithTheLoaderText) {
  PluginInfo garbage = plugin("fx_garbage");
  EXPECT_EQ(garbage.state, PluginState::failed);
  EXPECT_NE(garbage.reason.find("not an ELF"), std::string::npos) << garbage.reason;
  PluginInfo abi = plugin("fx_abi_major");
  EXPECT_EQ(abi.state, PluginState::failed);
  EXPECT_NE(abi.reason.find("ABI 99"), std::string::npos) << abi.reason;
}

TEST_F(LoaderNode, MethodsOfModulesThatDidNotStartAreUnknown) {
  for (const char* method :
       {"init_fails_never", "not_applicable_never", "throw_init_never", "count"}) {
    auto r = node_->node().submit({{"toNode", "n1"}, {"method", method}});
    EXPECT_TRUE(r.accepted.empty()) << method;
    ASSERT_EQ(r.errors.size(), 1u) << method;
    EXPECT_NE(r.errors[0].error.find("unknown method"), std::string::npos) << r.errors[0].error;
  }
}

TEST_F(LoaderNode, GoodModulesBesideBrokenOnesServe) {
  EXPECT_EQ(plugin("fx_c_echo").state, PluginState::active);
  auto out = test::submit_and_wait(
      node_->node(), {{"toNode", "n1"}, {"method", "c_echo"}, {"methodArgs", {"a", "b"}}});
  const Message* r = out.final_reply();
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->status, "ok") << r->error;
  EXPECT_EQ(r->data, "a b");
}

TEST_F(LoaderNode, OtherStructSizesServe) {
  EXPECT_EQ(plugin("fx_struct_big").state, PluginState::active) << plugin("fx_struct_big").reason;
  EXPECT_EQ(plugin("fx_struct_small").state, PluginState::active)
      << plugin("fx_struct_small").reason;
  EXPECT_EQ(call("big_ping"), "big ok");
  EXPECT_EQ(call("big_pong"), "big pong");
  EXPECT_EQ(call("small_ping"), "small ok");
}

TEST_F(LoaderNode, PluginListShowsEveryStateAndReason) {
  std::string data = call("plugin_list");
  json list = json::parse(data, nullptr, false);
  ASSERT_TRUE(list.is_array()) << data;
  std::map<std::string, json> by_name;
  for (const auto& p : list) by_name[p.value("name", "")] = p;
  EXPECT_EQ(by_name["fx_c_echo"].value("state", ""), "active");
  EXPECT_EQ(by_name["fx_init_fails"].value("state", ""), "failed");
  EXPECT_NE(by_name["fx_init_fails"].value("reason", "").find("database unreachable"),
            std::string::npos);
  EXPECT_EQ(by_name["fx_not_applicable"].value("state", ""), "inactive");
  EXPECT_EQ(by_name["fx_counter"].value("state", ""), "disabled");
}

}  // namespace
}  // namespace bosun::host
