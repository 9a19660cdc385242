// DeadlineQueue (host/src/deadlines.hpp): the one timer behind every ACK
// timeout and methodTimeout, against a real io_context on its own thread.
#include "../host/src/deadlines.hpp"

#include <gtest/gtest.h>

#include <boost/asio/executor_work_guard.hpp>

#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>
#include <vector>

#include "test_util.hpp"

namespace {

using namespace std::chrono_literals;
using bosun::host::DeadlineQueue;
using bosun::test::wait_until;

class DeadlinesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    loop_ = std::thread([this] { io_.run(); });
  }
  void TearDown() override {
    q_.clear();
    work_.reset();
    io_.stop();
    loop_.join();
  }
  void record(int n) {
    std::lock_guard<std::mutex> lock(mu_);
    fired_.push_back(n);
  }
  std::vector<int> fired() {
    std::lock_guard<std::mutex> lock(mu_);
    return fired_;
  }

  boost::asio::io_context io_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_{
      io_.get_executor()};
  DeadlineQueue q_{io_};
  std::thread loop_;
  std::mutex mu_;
  std::vector<int> fired_;
};

TEST_F(DeadlinesTest, FiresInDeadlineOrderWhateverTheOrderAdded) {
  // Added latest-first, so each new one is earlier than all before it.
  q_.add_after(300ms, [this] { record(3); });
  q_.add_after(200ms, [this] { record(2); });
  q_.add_after(100ms, [this] { record(1); });
  ASSERT_TRUE(wait_until([&] { return fired().size() == 3; }, 5s));
  EXPECT_EQ(fired(), (std::vector<int>{1, 2, 3}));
  EXPECT_EQ(q_.size(), 0u);
}

TEST_F(DeadlinesTest, ACancelledDeadlineNeverRunsAndTheNextStillDoes) {
  auto start = DeadlineQueue::Clock::now();
  auto first = q_.add_after(50ms, [this] { record(1); });
  q_.add_after(150ms, [this] { record(2); });
  EXPECT_TRUE(q_.cancel(first));
  EXPECT_FALSE(q_.cancel(first));  // already gone
  ASSERT_TRUE(wait_until([&] { return fired().size() == 1; }, 5s));
  EXPECT_EQ(fired(), (std::vector<int>{2}));
  EXPECT_GE(DeadlineQueue::Clock::now() - start, 150ms);
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(fired(), (std::vector<int>{2}));
}

TEST_F(DeadlinesTest, ManyThreadsAddAndCancelAndOnlyTheKeptOnesRun) {
  // Each deadline counts its own runs. A cancel can lose the race to a
  // deadline only a millisecond away (on a loaded machine the io thread may
  // fire it first); cancel() says which happened, and that answer is what is
  // checked: a deadline it cancelled never runs, every other one runs once.
  constexpr int kThreads = 4, kEach = 500;
  std::vector<std::atomic<int>> runs(kThreads * kEach);
  std::vector<char> cancelled(kThreads * kEach, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        const int slot = t * kEach + i;
        auto key = q_.add_after(std::chrono::milliseconds(1 + (i * 7 + t) % 40),
                                [&runs, slot] { ++runs[slot]; });
        if (i % 2 == 0) cancelled[slot] = q_.cancel(key) ? 1 : 0;
      }
    });
  }
  for (auto& th : threads) th.join();
  int expected = 0, won = 0;
  for (size_t s = 0; s < cancelled.size(); ++s) {
    if (cancelled[s]) {
      ++won;
    } else {
      ++expected;
    }
  }
  auto total = [&] {
    int n = 0;
    for (auto& r : runs) n += r.load();
    return n;
  };
  ASSERT_TRUE(wait_until([&] { return total() >= expected; }, 10s))
      << total() << " of " << expected;
  std::this_thread::sleep_for(100ms);
  for (size_t s = 0; s < runs.size(); ++s) {
    ASSERT_EQ(runs[s].load(), cancelled[s] ? 0 : 1) << "deadline " << s;
  }
  // Most cancels come well before a 1..40 ms deadline; if none won, cancel()
  // would not be cancelling anything.
  EXPECT_GT(won, kThreads * kEach / 4);
  EXPECT_EQ(q_.size(), 0u);
}

TEST_F(DeadlinesTest, ClearDropsEverythingAndRefusesMore) {
  q_.add_after(50ms, [this] { record(1); });
  q_.clear();
  EXPECT_EQ(q_.add_after(10ms, [this] { record(2); }), 0u);
  std::this_thread::sleep_for(200ms);
  EXPECT_TRUE(fired().empty());
}

}  // namespace
