#include "deadlines.hpp"

#include <boost/asio/post.hpp>

#include <vector>

namespace bosun::host {

DeadlineQueue::DeadlineQueue(boost::asio::io_context& io) : io_(io), timer_(io) {}

DeadlineQueue::Key DeadlineQueue::add(Clock::time_point at, std::function<void()> fn) {
  std::lock_guard<std::mutex> lock(mu_);
  if (closed_) return 0;
  Key key = next_++;
  order_.emplace(at, key);
  entries_.emplace(key, std::make_pair(at, std::move(fn)));
  if (at < armed_) {
    armed_ = at;
    boost::asio::post(io_, [this, at] { arm(at); });
  }
  return key;
}

bool DeadlineQueue::cancel(Key key) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(key);
  if (it == entries_.end()) return false;
  order_.erase({it->second.first, key});
  entries_.erase(it);
  // The timer may still fire for it: fire() finds nothing due and re-arms.
  return true;
}

void DeadlineQueue::clear() {
  std::lock_guard<std::mutex> lock(mu_);
  closed_ = true;
  order_.clear();
  entries_.clear();
}

size_t DeadlineQueue::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return entries_.size();
}

void DeadlineQueue::arm(Clock::time_point at) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    // A later post for an earlier deadline, or a fire() since, decides.
    if (at != armed_) return;
  }
  timer_.expires_at(at);
  timer_.async_wait([this](const boost::system::error_code& ec) {
    if (!ec) fire();
  });
}

void DeadlineQueue::fire() {
  std::vector<std::function<void()>> due;
  Clock::time_point next = Clock::time_point::max();
  {
    std::lock_guard<std::mutex> lock(mu_);
    const auto now = Clock::now();
    while (!order_.empty() && order_.begin()->first <= now) {
      auto it = entries_.find(order_.begin()->second);
      due.push_back(std::move(it->second.second));
      entries_.erase(it);
      order_.erase(order_.begin());
    }
    if (!order_.empty()) next = order_.begin()->first;
    armed_ = next;
  }
  if (next != Clock::time_point::max()) {
    timer_.expires_at(next);
    timer_.async_wait([this](const boost::system::error_code& ec) {
      if (!ec) fire();
    });
  }
  for (auto& fn : due) fn();
}

}  // namespace bosun::host
