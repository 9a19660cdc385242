// The LMDB store: typed helpers, group commit, async completion, and that a
// write reported done survives the process being killed.
#include "bosun/host/store.hpp"

#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <future>
#include <mutex>
#include <thread>

#include "test_util.hpp"

namespace {

using bosun::host::Db;
using bosun::host::InboxResult;
using bosun::host::measure_fsync_p50_us;
using bosun::host::Store;
using bosun::host::StoreError;
using bosun::host::StoreOptions;
using bosun::host::SyncMode;
using bosun::host::WriteTxn;
using bosun::test::TempDir;
using bosun::test::wait_until;
using namespace std::chrono_literals;

StoreOptions always() {
  return StoreOptions{SyncMode::always, 100, 64};
}
StoreOptions interval() {
  return StoreOptions{SyncMode::interval, 20, 64};
}

std::string seq_id(int i) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "id-%08d", i);
  return buf;
}

// Runs `fn` and returns the StoreError text it threw ("" if none).
template <typename F>
std::string error_of(F&& fn) {
  try {
    fn();
  } catch (const StoreError& e) {
    return e.what();
  }
  return "";
}

TEST(Store, KvRoundTripAndOverwrite) {
  TempDir tmp;
  Store s(tmp / "state", interval());
  EXPECT_EQ(s.kv_get("beat", "count"), std::nullopt);
  s.kv_put("beat", "count", "1");
  EXPECT_EQ(s.kv_get("beat", "count"), "1");
  s.kv_put("beat", "count", std::string("2\0x", 3));
  EXPECT_EQ(s.kv_get("beat", "count"), std::string("2\0x", 3));
  s.kv_put("beat", "empty", "");
  EXPECT_EQ(s.kv_get("beat", "empty"), "");
}

TEST(Store, KvIsScopedPerPlugin) {
  TempDir tmp;
  Store s(tmp / "state", interval());
  s.kv_put("a", "k", "from a");
  s.kv_put("b", "k", "from b");
  s.kv_put("ab", "c", "ab/c");
  EXPECT_EQ(s.kv_get("a", "k"), "from a");
  EXPECT_EQ(s.kv_get("b", "k"), "from b");
  EXPECT_EQ(s.kv_get("a", "bc"), std::nullopt);  // the separator keeps "ab"+"c" apart
  EXPECT_EQ(s.kv_get("c", "k"), std::nullopt);
}

TEST(Store, KvDeleteReportsWhetherTheKeyExisted) {
  TempDir tmp;
  Store s(tmp / "state", interval());
  s.kv_put("p", "k", "v");
  s.kv_put("q", "k", "other");
  EXPECT_TRUE(s.kv_delete("p", "k"));
  EXPECT_FALSE(s.kv_delete("p", "k"));
  EXPECT_EQ(s.kv_get("p", "k"), std::nullopt);
  EXPECT_EQ(s.kv_get("q", "k"), "other");
}

TEST(Store, KvRejectsBadKeysWithAClearError) {
  TempDir tmp;
  Store s(tmp / "state", interval());
  EXPECT_EQ(error_of([&] { s.kv_put("", "k", "v"); }), "kv: empty plugin name");
  EXPECT_EQ(error_of([&] { s.kv_get("p", ""); }), "kv: empty key for plugin 'p'");
  EXPECT_EQ(error_of([&] { s.kv_put(std::string("p\0q", 3), "k", "v"); }),
            "kv: plugin name contains a NUL byte");
  std::string fits(511 - 2, 'k');  // "p" + '\0' + key = 511 bytes
  s.kv_put("p", fits, "ok");
  EXPECT_EQ(s.kv_get("p", fits), "ok");
  EXPECT_EQ(error_of([&] { s.kv_put("p", fits + "k", "v"); }),
            "kv: key for plugin 'p' is 512 bytes with the plugin name, over the 511-byte limit");
  EXPECT_EQ(error_of([&] { s.outbox_put("", "x"); }), "outbox_put: empty message id");
  EXPECT_EQ(error_of([&] { s.inbox_record(std::string(600, 'i'), "x"); }),
            "inbox_record: message id of 600 bytes is over the 511-byte limit");
}

TEST(Store, OutboxListsInIdOrderAndRemoves) {
  TempDir tmp;
  Store s(tmp / "state", interval());
  for (int i : {3, 1, 2, 10}) s.outbox_put(seq_id(i), "msg" + std::to_string(i));
  auto list = s.outbox_list();
  ASSERT_EQ(list.size(), 4u);
  EXPECT_EQ(list[0], std::make_pair(seq_id(1), std::string("msg1")));
  EXPECT_EQ(list[1].first, seq_id(2));
  EXPECT_EQ(list[2].first, seq_id(3));
  EXPECT_EQ(list[3], std::make_pair(seq_id(10), std::string("msg10")));
  EXPECT_TRUE(s.outbox_remove(seq_id(2)));
  EXPECT_FALSE(s.outbox_remove(seq_id(2)));
  list = s.outbox_list();
  ASSERT_EQ(list.size(), 3u);
  EXPECT_EQ(list[1].first, seq_id(3));
}

TEST(Store, InboxDetectsResentCopies) {
  TempDir tmp;
  Store s(tmp / "state", interval());
  InboxResult first = s.inbox_record("m1", "original");
  EXPECT_TRUE(first.fresh);
  EXPECT_EQ(first.state, "received");
  InboxResult again = s.inbox_record("m1", "resent copy");
  EXPECT_FALSE(again.fresh);
  EXPECT_EQ(again.state, "received");
  EXPECT_EQ(s.inbox_get("m1")->bytes, "original");
  EXPECT_TRUE(s.inbox_record("m2", "other").fresh);
}

TEST(Store, InboxStatePendingAndPrune) {
  TempDir tmp;
  Store s(tmp / "state", interval());
  for (const char* id : {"a", "b", "c"}) s.inbox_record(id, std::string("body of ") + id);
  s.inbox_set_state("a", "running");
  s.inbox_set_state("b", "done");
  EXPECT_EQ(s.inbox_pending(), (std::vector<std::string>{"a", "c"}));
  auto a = s.inbox_get("a");
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(a->state, "running");
  EXPECT_EQ(a->bytes, "body of a");
  EXPECT_FALSE(s.inbox_record("b", "again").fresh);
  EXPECT_EQ(s.inbox_record("b", "again").state, "done");
  EXPECT_EQ(s.inbox_get("b")->bytes, "") << "a finished message keeps only its id and state";

  EXPECT_EQ(error_of([&] { s.inbox_set_state("nope", "done"); }),
            "inbox_set_state: no message 'nope' in the inbox");
  EXPECT_EQ(error_of([&] { s.inbox_set_state("a", ""); }),
            "inbox state must be 1 to 255 bytes, got 0");

  const int64_t b_done = s.inbox_get("b")->updated_ms;
  EXPECT_EQ(s.inbox_prune(b_done), 0u);  // not older than its own time
  EXPECT_EQ(s.inbox_prune(b_done + 1), 1u);
  EXPECT_EQ(s.inbox_get("b"), std::nullopt);
  EXPECT_EQ(s.inbox_pending(), (std::vector<std::string>{"a", "c"}));  // not done: kept
  EXPECT_TRUE(s.inbox_record("b", "after prune").fresh);
}

TEST(Store, MetaRoundTrip) {
  TempDir tmp;
  Store s(tmp / "state", interval());
  EXPECT_EQ(s.meta_get("active/beat"), std::nullopt);
  s.meta_put("active/beat", "1.2.0");
  EXPECT_EQ(s.meta_get("active/beat"), "1.2.0");
  EXPECT_NE(error_of([&] { s.meta_put("", "x"); }).find("empty key in 'meta'"), std::string::npos);
}

TEST(Store, SurvivesCloseAndReopen) {
  TempDir tmp;
  {
    Store s(tmp / "state", always());
    s.kv_put("p", "k", "v");
    s.outbox_put("o1", "out");
    s.inbox_record("i1", "in");
    s.inbox_set_state("i1", "running");
    s.meta_put("m", "meta");
  }
  Store s(tmp / "state", interval());
  EXPECT_EQ(s.kv_get("p", "k"), "v");
  EXPECT_EQ(s.outbox_list(), (std::vector<std::pair<std::string, std::string>>{{"o1", "out"}}));
  EXPECT_EQ(s.inbox_pending(), std::vector<std::string>{"i1"});
  EXPECT_EQ(s.inbox_get("i1")->state, "running");
  EXPECT_EQ(s.meta_get("m"), "meta");
}

TEST(Store, CreatesItsFolderOwnerOnly) {
  TempDir tmp;
  Store s(tmp / "data" / "state", interval());
  struct stat st {};
  ASSERT_EQ(::stat((tmp / "data" / "state").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
}

TEST(Store, OpenErrorsNameThePath) {
  TempDir tmp;
  bosun::test::write_file(tmp / "file", "not a folder");
  std::string err = error_of([&] { Store s(tmp / "file", interval()); });
  EXPECT_NE(err.find((tmp / "file").string()), std::string::npos) << err;
  EXPECT_NE(err.find("cannot create the folder: Not a directory"), std::string::npos) << err;

  Store s(tmp / "state", interval());
  err = error_of([&] { Store again(tmp / "state", interval()); });
  EXPECT_NE(err.find("already open in this process"), std::string::npos) << err;

  err = error_of([&] { Store bad(tmp / "other", StoreOptions{SyncMode::interval, 0, 64}); });
  EXPECT_NE(err.find("sync interval must be > 0 ms, got 0"), std::string::npos) << err;
}

TEST(Store, MapFullIsAnErrorAndTheStoreKeepsWorking) {
  TempDir tmp;
  Store s(tmp / "state", StoreOptions{SyncMode::interval, 100, 1});
  std::string big(2 << 20, 'x');
  std::string err = error_of([&] { s.outbox_put("big", big); });
  EXPECT_NE(err.find("MDB_MAP_FULL"), std::string::npos) << err;
  EXPECT_NE(err.find((tmp / "state").string()), std::string::npos) << err;
  s.outbox_put("small", "fits");
  EXPECT_EQ(s.outbox_list().size(), 1u);
}

TEST(Store, GroupCommitSyncsLessOftenThanItWrites) {
  TempDir tmp;
  Store s(tmp / "state", always());
  constexpr int kThreads = 8;
  constexpr int kWritesEach = 25;
  std::atomic<int> started{0};
  // Holds the writer inside the first group until every thread has queued a
  // write, so at least one group surely holds many.
  std::thread gate([&] {
    s.write([&](WriteTxn& t) {
      wait_until([&] { return started.load() == kThreads; }, 5s);
      std::this_thread::sleep_for(100ms);
      t.put(Db::meta, "gate", "open");
    });
  });
  std::vector<std::thread> threads;
  std::atomic<int> done{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kWritesEach; ++i) {
        if (i == 0) ++started;
        s.kv_put("t" + std::to_string(t), std::to_string(i), "v");
        ++done;
      }
    });
  }
  gate.join();
  for (auto& th : threads) th.join();
  EXPECT_EQ(done.load(), kThreads * kWritesEach);
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_EQ(s.kv_get("t" + std::to_string(t), std::to_string(kWritesEach - 1)), "v");
  }
  const uint64_t writes = kThreads * kWritesEach + 1;
  EXPECT_GT(s.syncs(), 0u);
  EXPECT_LT(s.syncs(), writes) << "every write paid its own fsync";
  std::printf("group commit: %llu fsyncs for %llu writes\n",
              static_cast<unsigned long long>(s.syncs()), static_cast<unsigned long long>(writes));
}

TEST(Store, IntervalModeSyncsOnATimerOnlyAfterWrites) {
  TempDir tmp;
  Store s(tmp / "state", interval());
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(s.syncs(), 0u);  // nothing written, nothing to flush
  s.kv_put("p", "k", "v");
  EXPECT_TRUE(wait_until([&] { return s.syncs() >= 1; }, 5s));
  uint64_t after = s.syncs();
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(s.syncs(), after);
}

TEST(Store, AsyncCompletionIsCalled) {
  TempDir tmp;
  Store s(tmp / "state", always());
  std::promise<std::exception_ptr> put_done;
  s.outbox_put_async("o1", "bytes", [&](std::exception_ptr e) { put_done.set_value(e); });
  auto f = put_done.get_future();
  ASSERT_EQ(f.wait_for(10s), std::future_status::ready);
  EXPECT_EQ(f.get(), nullptr);
  EXPECT_EQ(s.outbox_list().size(), 1u);

  std::promise<InboxResult> rec1, rec2;
  s.inbox_record_async("m", "x", [&](std::exception_ptr e, InboxResult r) {
    EXPECT_EQ(e, nullptr);
    rec1.set_value(r);
  });
  s.inbox_record_async("m", "x", [&](std::exception_ptr e, InboxResult r) {
    EXPECT_EQ(e, nullptr);
    rec2.set_value(r);
  });
  auto f1 = rec1.get_future(), f2 = rec2.get_future();
  ASSERT_EQ(f2.wait_for(10s), std::future_status::ready);
  EXPECT_TRUE(f1.get().fresh);
  EXPECT_FALSE(f2.get().fresh);
}

TEST(Store, AWriteLaterNeverCommitsOrCompletesOnTheCallersThread) {
  // The trust store saves keys while holding its lock, and completions seal
  // messages, which take that lock: a save that led a commit and ran the
  // completions of its group deadlocked a node. write_later only queues.
  TempDir tmp;
  Store s(tmp / "state", interval());
  std::mutex held;
  std::promise<std::thread::id> completed_on;
  std::atomic<bool> done{false};
  {
    std::lock_guard<std::mutex> lock(held);
    s.write_later([](WriteTxn& t) { t.put(Db::meta, "later", "1"); },
                  [&](std::exception_ptr e) {
                    std::lock_guard<std::mutex> again(held);  // waits for the caller's scope
                    EXPECT_EQ(e, nullptr);
                    completed_on.set_value(std::this_thread::get_id());
                    done = true;
                  });
    std::this_thread::sleep_for(50ms);
    EXPECT_FALSE(done.load()) << "completed while its caller still held the lock";
  }
  auto f = completed_on.get_future();
  ASSERT_EQ(f.wait_for(10s), std::future_status::ready);
  EXPECT_NE(f.get(), std::this_thread::get_id());
  EXPECT_EQ(s.meta_get("later"), std::optional<std::string>("1"));
}

TEST(Store, AFailingWriteFailsAloneInItsGroup) {
  TempDir tmp;
  Store s(tmp / "state", always());
  std::promise<void> hold, entered;
  std::shared_future<void> release = hold.get_future().share();
  std::promise<std::exception_ptr> blocker, good, bad;
  // The first write leads (on its own thread) and holds its commit open, so
  // the next two queue behind it and share the next group.
  std::thread first([&] {
    s.write_async(
        [&, release](WriteTxn&) {
          entered.set_value();
          release.wait();
        },
        [&](std::exception_ptr e) { blocker.set_value(e); });
  });
  entered.get_future().wait();
  s.write_async([](WriteTxn& t) { t.put(Db::meta, "good", "1"); },
                [&](std::exception_ptr e) { good.set_value(e); });
  s.write_async(
      [](WriteTxn& t) {
        t.put(Db::meta, "bad", "1");
        throw std::runtime_error("handler refused");
      },
      [&](std::exception_ptr e) { bad.set_value(e); });
  hold.set_value();
  first.join();
  EXPECT_EQ(blocker.get_future().get(), nullptr);
  EXPECT_EQ(good.get_future().get(), nullptr);
  std::exception_ptr e = bad.get_future().get();
  ASSERT_NE(e, nullptr);
  try {
    std::rethrow_exception(e);
  } catch (const std::runtime_error& err) {
    EXPECT_STREQ(err.what(), "handler refused");
  }
  EXPECT_EQ(s.meta_get("good"), "1");
  EXPECT_EQ(s.meta_get("bad"), std::nullopt);
  // The blocking form rethrows.
  EXPECT_EQ(error_of([&] { s.write([](WriteTxn&) { throw StoreError("nope"); }); }), "nope");
}

TEST(Store, ABlockingWriteFromACompletionCallbackWorks) {
  TempDir tmp;
  Store s(tmp / "state", interval());
  std::promise<std::string> err;
  s.write_async([](WriteTxn& t) { t.put(Db::meta, "first", "1"); },
                [&](std::exception_ptr) {
                  err.set_value(error_of([&] { s.kv_put("p", "k", "from the callback"); }));
                });
  auto f = err.get_future();
  ASSERT_EQ(f.wait_for(10s), std::future_status::ready);
  EXPECT_EQ(f.get(), "");
  EXPECT_EQ(s.kv_get("p", "k"), "from the callback");
  EXPECT_EQ(s.meta_get("first"), "1");
}

TEST(Store, ABlockingWriteInsideAWriteFunctionIsRefused) {
  TempDir tmp;
  Store s(tmp / "state", interval());
  std::string inner;
  s.write([&](WriteTxn& t) {
    inner = error_of([&] { s.kv_put("p", "k", "v"); });
    t.put(Db::meta, "outer", "1");
  });
  EXPECT_NE(inner.find("would deadlock"), std::string::npos) << inner;
  EXPECT_EQ(s.meta_get("outer"), "1");
  EXPECT_EQ(s.kv_get("p", "k"), std::nullopt);
  // An asynchronous write queued from inside one is committed after it.
  std::promise<std::exception_ptr> later;
  s.write([&](WriteTxn&) {
    s.write_async([](WriteTxn& t) { t.put(Db::meta, "later", "1"); },
                  [&](std::exception_ptr e) { later.set_value(e); });
  });
  auto f = later.get_future();
  ASSERT_EQ(f.wait_for(10s), std::future_status::ready);
  EXPECT_EQ(f.get(), nullptr);
  EXPECT_EQ(s.meta_get("later"), "1");
}

TEST(Store, DestructorDrainsQueuedWrites) {
  TempDir tmp;
  constexpr int kWrites = 200;
  std::atomic<int> ok{0};
  {
    Store s(tmp / "state", always());
    // A commit held open on another thread, so the writes below queue up
    // and are still queued when the destructor starts.
    std::promise<void> hold, entered;
    std::shared_future<void> release = hold.get_future().share();
    std::thread first([&] {
      s.write([&, release](WriteTxn&) {
        entered.set_value();
        release.wait();
      });
    });
    entered.get_future().wait();
    for (int i = 0; i < kWrites; ++i) {
      s.outbox_put_async(seq_id(i), "x", [&](std::exception_ptr e) {
        if (!e) ++ok;
      });
    }
    EXPECT_EQ(ok.load(), 0);
    hold.set_value();
    first.join();
  }
  EXPECT_EQ(ok.load(), kWrites);
  Store s(tmp / "state", interval());
  EXPECT_EQ(s.outbox_list().size(), static_cast<size_t>(kWrites));
}

// A child writes with the blocking API and reports each completed write on a
// pipe; SIGKILL lands mid-way; every reported write must be there afterwards.
TEST(Store, EveryReportedWriteSurvivesKillNine) {
  TempDir tmp;
  const auto dir = tmp / "state";
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::close(fds[0]);
    try {
      Store s(dir, StoreOptions{SyncMode::interval, 100, 64});
      for (int i = 0; i < 1000000; ++i) {
        s.outbox_put(seq_id(i), "payload " + std::to_string(i));
        if (::write(fds[1], &i, sizeof i) != sizeof i) ::_exit(3);
      }
    } catch (...) {
      ::_exit(2);
    }
    ::_exit(0);
  }
  ::close(fds[1]);
  int last = -1;
  auto read_one = [&](int timeout_ms) {
    pollfd p{fds[0], POLLIN, 0};
    if (::poll(&p, 1, timeout_ms) <= 0) return false;
    int v = 0;
    if (::read(fds[0], &v, sizeof v) != sizeof v) return false;
    last = v;
    return true;
  };
  while (last < 300 && read_one(10000)) {
  }
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  while (read_one(1000)) {  // reports already in the pipe when it died
  }
  ::close(fds[0]);
  ASSERT_TRUE(WIFSIGNALED(status)) << "child exited with " << WEXITSTATUS(status);
  ASSERT_GE(last, 300) << "the child reported too few writes";

  Store s(dir, interval());
  auto list = s.outbox_list();
  ASSERT_GE(list.size(), static_cast<size_t>(last + 1));
  for (int i = 0; i <= last; ++i) {
    ASSERT_EQ(list[i].first, seq_id(i));
    ASSERT_EQ(list[i].second, "payload " + std::to_string(i));
  }
  s.outbox_put("after", "the store still takes writes");
}

TEST(Store, MeasuresFsyncLatency) {
  TempDir tmp;
  double p50 = measure_fsync_p50_us(tmp.path(), 5);
  EXPECT_GT(p50, 0.0);
  EXPECT_FALSE(std::filesystem::exists(tmp / ".bosun-fsync-probe"));
  EXPECT_EQ(error_of([&] { measure_fsync_p50_us(tmp.path(), 0); }),
            "measure_fsync_p50_us: samples must be > 0, got 0");
  std::string err = error_of([&] { measure_fsync_p50_us(tmp / "missing", 3); });
  EXPECT_NE(err.find((tmp / "missing").string()), std::string::npos) << err;
}

}  // namespace
