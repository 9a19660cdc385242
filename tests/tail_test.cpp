// core/tail end to end (DESIGN §9): a standalone node with the real tail.so
// follows real files; lines appended after the call, batching, both kinds of
// rotation, a file that goes away and comes back, methodTimeout and
// op_process_stop ending the call, long lines, bad input and bad settings.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "node_harness.hpp"

namespace bosun::host {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace std::chrono_literals;
using test::NodeSetup;
using test::RunningNode;
using Clock = std::chrono::steady_clock;

constexpr char kSync[] = "sync\n";

json msg(const std::string& method, json args, json extra = json::object()) {
  json m = {{"toNode", "n1"}, {"method", method}, {"methodArgs", std::move(args)}};
  m.update(extra);
  return m;
}

long long ms_since(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t).count();
}

void append(const fs::path& p, const std::string& text) {
  std::ofstream out(p, std::ios::binary | std::ios::app);
  out << text;
}

// One running tail_file call and the replies it has sent so far.
struct Tailing {
  std::string id;
  std::shared_ptr<test::CollectingWaiter> waiter = std::make_shared<test::CollectingWaiter>();

  std::vector<Message> replies() const { return waiter->replies_to(id); }

  // Everything streamed, without the sync lines that opened it.
  std::string text() const {
    std::string all;
    for (const auto& r : replies()) all += r.data;
    while (all.rfind(kSync, 0) == 0) all.erase(0, sizeof kSync - 1);
    return all;
  }
};

class TailTest : public ::testing::Test {
 protected:
  void SetUp() override {
    setup_.add_plugin("tail");
    log_ = setup_.root() / "app.log";
    test::write_file(log_, "written before the call\n");
  }

  void start() { node_ = std::make_unique<RunningNode>(setup_.config()); }
  Node& node() { return node_->node(); }

  Tailing submit(const json& args, double timeout_s = 30) {
    Tailing t;
    SubmitResult sent =
        node().submit(msg("tail_file", args, {{"methodTimeout", timeout_s}}), t.waiter);
    EXPECT_EQ(sent.accepted.size(), 1u) << sent.to_json().dump();
    if (!sent.accepted.empty()) t.id = sent.accepted[0].id;
    return t;
  }

  // The call starts at the end of the file, whenever its handler gets to
  // run: append sync lines until one comes back, so the test knows that
  // what it appends next is followed.
  Tailing follow(const fs::path& file, double timeout_s = 30) {
    Tailing t = submit({file.string()}, timeout_s);
    for (int i = 0; i < 50 && t.replies().empty(); ++i) {
      append(file, kSync);
      test::wait_until([&] { return !t.replies().empty(); }, 200ms);
    }
    EXPECT_FALSE(t.replies().empty()) << "tail_file never replied to the sync lines";
    return t;
  }

  bool wait_text(const Tailing& t, const std::string& expected,
                 std::chrono::milliseconds timeout = 10s) {
    return test::wait_until([&] { return t.text() == expected; }, timeout);
  }

  // Ends the call with op_process_stop; returns its final reply.
  Message stop(const Tailing& t) {
    auto out = test::submit_and_wait(node(), msg("op_process_stop", {t.id}));
    const Message* r = out.final_reply();
    EXPECT_TRUE(r != nullptr && r->status == "ok") << (r ? r->error : "no reply");
    EXPECT_TRUE(t.waiter->wait_finals(1, 5s)) << "tail_file did not end after op_process_stop";
    auto all = t.replies();
    return all.empty() ? Message{} : all.back();
  }

  // A call that ends at once: its one (final) reply.
  Message call(const json& args) {
    auto out = test::submit_and_wait(node(), msg("tail_file", args, {{"methodTimeout", 10}}), 10s);
    const Message* r = out.final_reply();
    EXPECT_NE(r, nullptr);
    return r ? *r : Message{};
  }

  NodeSetup setup_;
  fs::path log_;
  std::unique_ptr<RunningNode> node_;
};

TEST_F(TailTest, LinesAppendedAfterTheCallArriveInOrder) {
  start();
  Tailing t = follow(log_);
  for (const char* line : {"one\n", "two\n", "three\n"}) {
    append(log_, line);
    std::this_thread::sleep_for(30ms);
  }
  EXPECT_TRUE(wait_text(t, "one\ntwo\nthree\n")) << t.text();
  for (const auto& r : t.replies()) {
    EXPECT_EQ(r.data.find("before the call"), std::string::npos) << "sent old content: " << r.data;
    if (!r.data.empty()) {
      EXPECT_EQ(r.data.back(), '\n') << "a reply carries whole lines";
    }
  }
  Message last = stop(t);
  EXPECT_EQ(last.status, "ok") << last.error;
  EXPECT_TRUE(last.final_reply);
}

TEST_F(TailTest, APartialLineWaitsForItsNewline) {
  start();
  Tailing t = follow(log_);
  append(log_, "par");
  std::this_thread::sleep_for(400ms);
  EXPECT_EQ(t.text(), "");
  append(log_, "tial\n");
  EXPECT_TRUE(wait_text(t, "partial\n")) << t.text();
  stop(t);
}

TEST_F(TailTest, ManyLinesGoOutInFewRepliesAndInOrder) {
  start();
  Tailing t = follow(log_);
  size_t before = t.replies().size();
  std::string expected;
  {
    std::ofstream out(log_, std::ios::binary | std::ios::app);
    for (int i = 0; i < 5000; ++i) {
      std::string line = "line " + std::to_string(i) + "\n";
      out << line << std::flush;
      expected += line;
    }
  }
  ASSERT_TRUE(wait_text(t, expected)) << t.text().size() << " of " << expected.size() << " bytes";
  auto all = t.replies();
  EXPECT_LT(all.size() - before, 20u) << "5000 lines written at once were not batched";
  for (const auto& r : all) {
    if (!r.data.empty()) {
      EXPECT_EQ(r.data.back(), '\n');
    }
  }
  stop(t);
}

TEST_F(TailTest, LinesArrivingWithinTheBatchWindowShareAReply) {
  // Polling every 5 ms would see nearly every line on its own; the 50 ms
  // batch window is what groups them.
  setup_.extension("tail")["settings"] = {{"pollMs", 5}};
  start();
  Tailing t = follow(log_);
  size_t before = t.replies().size();
  std::string expected;
  for (int i = 0; i < 40; ++i) {
    std::string line = "tick " + std::to_string(i) + "\n";
    append(log_, line);
    expected += line;
    std::this_thread::sleep_for(10ms);
  }
  ASSERT_TRUE(wait_text(t, expected)) << t.text();
  size_t sent = t.replies().size() - before;
  EXPECT_LE(sent, 15u) << "40 lines 10 ms apart went out in " << sent << " replies";
  EXPECT_GE(sent, 3u) << "lines 400 ms apart should not wait for each other";
  stop(t);
}

TEST_F(TailTest, FollowsRenameAndRecreate) {
  start();
  Tailing t = follow(log_);
  std::ofstream old_writer(log_, std::ios::binary | std::ios::app);
  old_writer << "a1\n" << std::flush;
  ASSERT_TRUE(wait_text(t, "a1\n")) << t.text();

  fs::rename(log_, setup_.root() / "app.log.1");
  // The logger still holds the old file and writes to it until it reopens.
  old_writer << "a2\n" << std::flush;
  test::write_file(log_, "b1\n");
  append(log_, "b2\n");
  EXPECT_TRUE(wait_text(t, "a1\na2\nb1\nb2\n")) << t.text();

  // Only the new file is followed now.
  old_writer << "a3\n" << std::flush;
  append(log_, "b3\n");
  EXPECT_TRUE(wait_text(t, "a1\na2\nb1\nb2\nb3\n")) << t.text();
  stop(t);
}

TEST_F(TailTest, AFileThatGoesAwayIsAwaitedUntilItComesBack) {
  start();
  Tailing t = follow(log_);
  fs::rename(log_, setup_.root() / "app.log.1");
  std::this_thread::sleep_for(500ms);
  EXPECT_FALSE(node().running_calls().empty()) << "the call ended when its file went away";
  ASSERT_FALSE(t.replies().empty());
  EXPECT_FALSE(t.replies().back().final_reply);
  test::write_file(log_, "back again\n");
  EXPECT_TRUE(wait_text(t, "back again\n")) << t.text();
  stop(t);
}

TEST_F(TailTest, FollowsCopyTruncate) {
  start();
  Tailing t = follow(log_);
  append(log_, "before truncate\n");
  ASSERT_TRUE(wait_text(t, "before truncate\n")) << t.text();
  fs::resize_file(log_, 0);
  append(log_, "after\n");
  EXPECT_TRUE(wait_text(t, "before truncate\nafter\n")) << t.text();
  stop(t);
}

TEST_F(TailTest, FromStartSendsWhatTheFileHoldsAlready) {
  setup_.extension("tail")["settings"] = {{"fromStart", true}, {"pollMs", 20}};
  start();
  Tailing t = submit({log_.string()});
  EXPECT_TRUE(wait_text(t, "written before the call\n")) << t.text();
  stop(t);
}

TEST_F(TailTest, RelativePathIsUnderTheDataDir) {
  start();
  fs::path in_data = setup_.data_dir() / "relative.log";
  test::write_file(in_data, "");
  Tailing t = submit({"relative.log"});
  for (int i = 0; i < 50 && t.replies().empty(); ++i) {
    append(in_data, kSync);
    test::wait_until([&] { return !t.replies().empty(); }, 200ms);
  }
  append(in_data, "from the data dir\n");
  EXPECT_TRUE(wait_text(t, "from the data dir\n")) << t.text();
  stop(t);
}

TEST_F(TailTest, MissingFileIsAnErrorNamingIt) {
  start();
  fs::path missing = setup_.root() / "nope.log";
  Message r = call({missing.string()});
  EXPECT_EQ(r.status, "error");
  EXPECT_EQ(r.error,
            "tail_file: cannot open \"" + missing.string() + "\": No such file or directory");

  Message rel = call({"nope.log"});
  EXPECT_EQ(rel.status, "error");
  EXPECT_EQ(rel.error, "tail_file: cannot open \"" + (setup_.data_dir() / "nope.log").string() +
                           "\": No such file or directory");
}

TEST_F(TailTest, AFolderIsAnError) {
  start();
  Message r = call({setup_.root().string()});
  EXPECT_EQ(r.status, "error");
  EXPECT_EQ(r.error, "tail_file: \"" + setup_.root().string() + "\" is a folder, not a file");
}

TEST_F(TailTest, MissingOrEmptyMethodArgsIsAnError) {
  start();
  Message none = call(json::array());
  EXPECT_EQ(none.status, "error");
  EXPECT_EQ(none.error,
            "tail_file: methodArgs must hold the file to follow, e.g. [\"/var/log/syslog\"]");
  Message empty = call({""});
  EXPECT_EQ(empty.status, "error");
  EXPECT_EQ(empty.error, "tail_file: methodArgs[0] must name the file to follow, not be empty");
  Message two = call({log_.string(), "extra"});
  EXPECT_EQ(two.status, "error");
  EXPECT_EQ(two.error, "tail_file: methodArgs must hold one file to follow, got 2");
}

TEST_F(TailTest, StewardAliasFollowsTheFile) {
  start();
  Tailing t;
  SubmitResult sent =
      node().submit(msg("REQTailFile", {log_.string()}, {{"methodTimeout", 30}}), t.waiter);
  ASSERT_EQ(sent.accepted.size(), 1u) << sent.to_json().dump();
  t.id = sent.accepted[0].id;
  for (int i = 0; i < 50 && t.replies().empty(); ++i) {
    append(log_, kSync);
    test::wait_until([&] { return !t.replies().empty(); }, 200ms);
  }
  ASSERT_FALSE(t.replies().empty());
  EXPECT_EQ(t.replies()[0].request_method, "tail_file");
  stop(t);
}

TEST_F(TailTest, MethodTimeoutEndsTheCall) {
  start();
  auto t0 = Clock::now();
  Tailing t = submit({log_.string()}, 1);
  append(log_, "during\n");
  ASSERT_TRUE(t.waiter->wait_finals(1, 10s));
  long long took = ms_since(t0);
  EXPECT_GE(took, 900);
  EXPECT_LT(took, 3000);
  Message last = t.replies().back();
  EXPECT_TRUE(last.final_reply);
  EXPECT_EQ(last.status, "error");
  EXPECT_EQ(last.error.rfind("tail_file timed out after 1 s (methodTimeout)", 0), 0u) << last.error;
  EXPECT_TRUE(test::wait_until([&] { return node().running_calls().empty(); }, 2s))
      << "the handler kept running after its methodTimeout: " << node().running_calls().dump();
}

TEST_F(TailTest, ProcessStopEndsTheCallPromptly) {
  start();
  Tailing t = follow(log_);
  auto t0 = Clock::now();
  Message last = stop(t);
  EXPECT_LT(ms_since(t0), 2000);
  EXPECT_EQ(last.status, "ok") << last.error;
  EXPECT_TRUE(test::wait_until([&] { return node().running_calls().empty(); }, 2s))
      << node().running_calls().dump();
}

TEST_F(TailTest, ALongLineIsCutWithAMarker) {
  setup_.extension("tail")["settings"] = {{"maxLineBytes", 1000}};
  start();
  Tailing t = follow(log_);
  append(log_, std::string(5000, 'x') + "\nnext\n" + std::string(1000, 'y') + "\n");
  EXPECT_TRUE(wait_text(t, std::string(1000, 'x') + " [bosun: line cut after 1000 bytes]\nnext\n" +
                               std::string(1000, 'y') + "\n"))
      << t.text().substr(0, 200);
  stop(t);
}

TEST_F(TailTest, AFiveMegabyteLineDoesNotMakeAFiveMegabyteReply) {
  start();
  Tailing t = follow(log_);
  {
    std::ofstream out(log_, std::ios::binary | std::ios::app);
    std::string chunk(1 << 20, 'z');
    for (int i = 0; i < 5; ++i) out << chunk << std::flush;
    out << "\nafter\n";
  }
  const size_t max = size_t{64} << 10;
  EXPECT_TRUE(wait_text(t, std::string(max, 'z') + " [bosun: line cut after 65536 bytes]\nafter\n"))
      << t.text().size() << " bytes: " << t.text().substr(0, 100);
  for (const auto& r : t.replies()) EXPECT_LT(r.data.size(), 2 * max);
  stop(t);
}

TEST_F(TailTest, BadSettingsFailTheModuleNamingTheKey) {
  setup_.extension("tail")["settings"] = {{"follow", true}};
  start();
  bool found = false;
  for (const auto& p : node().plugins()) {
    if (p.name != "tail") continue;
    found = true;
    EXPECT_EQ(p.state, PluginState::failed);
    EXPECT_NE(p.reason.find("tail settings: unknown key \"follow\" (known: fromStart, "
                            "maxLineBytes, pollMs)"),
              std::string::npos)
        << p.reason;
  }
  EXPECT_TRUE(found);
}

TEST_F(TailTest, BadSettingValuesAreNamed) {
  setup_.extension("tail")["settings"] = {{"maxLineBytes", 0}};
  start();
  bool found = false;
  for (const auto& p : node().plugins()) {
    if (p.name != "tail") continue;
    found = true;
    EXPECT_EQ(p.state, PluginState::failed);
    EXPECT_NE(p.reason.find("\"maxLineBytes\" must be an integer from 1 to 16777216, not 0"),
              std::string::npos)
        << p.reason;
  }
  EXPECT_TRUE(found);
}

}  // namespace
}  // namespace bosun::host
