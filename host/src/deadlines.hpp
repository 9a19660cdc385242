// Many deadlines on one asio timer. Delivery arms a deadline per message
// sent (its ACK timeout) and the host one per call (its methodTimeout); most
// are cancelled long before they expire. An asio timer each would cost a
// post to the io thread to arm it, another to cancel it, and a timerfd
// syscall for each; here adding and cancelling only take a mutex, and the
// io thread is woken only when a new deadline is earlier than every other.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <set>
#include <unordered_map>
#include <utility>

namespace bosun::host {

class DeadlineQueue {
 public:
  using Clock = std::chrono::steady_clock;
  using Key = uint64_t;

  explicit DeadlineQueue(boost::asio::io_context& io);
  DeadlineQueue(const DeadlineQueue&) = delete;
  DeadlineQueue& operator=(const DeadlineQueue&) = delete;

  // `fn` runs on the io thread at `at` (or soon after) unless cancelled first.
  Key add(Clock::time_point at, std::function<void()> fn);
  Key add_after(Clock::duration d, std::function<void()> fn) {
    return add(Clock::now() + d, std::move(fn));
  }
  // True when it was still pending (so `fn` will not run).
  bool cancel(Key key);
  // Drops every pending deadline without running it; later adds are ignored.
  void clear();
  size_t size() const;

 private:
  void arm(Clock::time_point at);  // on the io thread
  void fire();                     // on the io thread

  boost::asio::io_context& io_;
  boost::asio::steady_timer timer_;
  mutable std::mutex mu_;
  std::set<std::pair<Clock::time_point, Key>> order_;
  std::unordered_map<Key, std::pair<Clock::time_point, std::function<void()>>> entries_;
  Key next_ = 1;
  // The earliest time the timer is (or is about to be) set for.
  Clock::time_point armed_ = Clock::time_point::max();
  bool closed_ = false;
};

}  // namespace bosun::host
