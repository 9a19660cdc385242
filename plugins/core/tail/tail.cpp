// core/tail: stream the lines appended to a file (Steward's REQTailFile).
//
// tail_file follows its file like `tail -F -n0` until the call ends: the
// caller's methodTimeout says how long to follow. When it passes, the host
// itself ends the call with the error "tail_file timed out after N s
// (methodTimeout)..."; for tail that is the normal end, not a failure of the
// module. op_process_stop ends it early with status ok. Lines read in the
// last batch window before the timeout may be lost, since replies after it
// are refused.
#include <bosun/plugin.hpp>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>

#include "follower.hpp"

namespace {

using bosun::Error;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// Lines arriving this close together go out as one reply.
constexpr milliseconds kBatchWindow{50};
// Cancellation is noticed at least this often.
constexpr milliseconds kCancelPoll{100};
// File bytes read per poll, and the reply size that is sent at once: these
// bound the memory a call holds, with maxLineBytes.
constexpr size_t kReadBudget = size_t{256} << 10;
constexpr size_t kBatchCap = size_t{256} << 10;
constexpr int64_t kMaxLineBytesLimit = int64_t{16} << 20;
constexpr int64_t kMaxPollMs = 10000;

struct Settings {
  bosun_tail::FollowOptions follow;
  milliseconds poll{100};
};

Settings parse_settings(std::string_view text) {
  Settings s;
  if (text.empty()) return s;
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    throw std::runtime_error("tail settings must be a JSON object, not: " + std::string(text));
  }
  auto integer_in = [](const nlohmann::json& v, int64_t lo, int64_t hi) {
    return v.is_number_integer() && v.get<int64_t>() >= lo && v.get<int64_t>() <= hi;
  };
  for (const auto& [key, value] : j.items()) {
    if (key == "fromStart") {
      if (!value.is_boolean()) {
        throw std::runtime_error("tail settings: \"fromStart\" must be true or false, not " +
                                 value.dump());
      }
      s.follow.from_start = value.get<bool>();
    } else if (key == "maxLineBytes") {
      if (!integer_in(value, 1, kMaxLineBytesLimit)) {
        throw std::runtime_error("tail settings: \"maxLineBytes\" must be an integer from 1 to " +
                                 std::to_string(kMaxLineBytesLimit) + ", not " + value.dump());
      }
      s.follow.max_line_bytes = value.get<size_t>();
    } else if (key == "pollMs") {
      if (!integer_in(value, 1, kMaxPollMs)) {
        throw std::runtime_error("tail settings: \"pollMs\" must be an integer from 1 to " +
                                 std::to_string(kMaxPollMs) + ", not " + value.dump());
      }
      s.poll = milliseconds(value.get<int64_t>());
    } else {
      throw std::runtime_error("tail settings: unknown key \"" + key +
                               "\" (known: fromStart, maxLineBytes, pollMs)");
    }
  }
  return s;
}

class Tail : public bosun::Plugin {
 public:
  Tail(bosun::Host host, std::string_view settings)
      : Plugin(host, settings), settings_(parse_settings(settings)) {}

  void on_settings(std::string_view settings) override {
    Settings parsed = parse_settings(settings);
    std::lock_guard<std::mutex> lock(mu_);
    settings_ = parsed;
  }

  void tail_file(bosun::Call& call) {
    const Settings s = settings();
    const std::filesystem::path path = file_of(call);
    std::optional<bosun_tail::Follower> file;
    try {
      file.emplace(path, s.follow);
    } catch (const std::runtime_error& e) {
      throw Error(std::string("tail_file: ") + e.what(), BOSUN_ERR_IO);
    }

    std::string batch;
    Clock::time_point batch_started;
    Clock::time_point next_poll = Clock::now();
    while (!call.cancelled()) {
      auto now = Clock::now();
      if (now >= next_poll) {
        bool was_empty = batch.empty();
        bool more = file->poll(batch, kReadBudget);
        if (was_empty && !batch.empty()) batch_started = now;
        next_poll = more ? now : now + s.poll;
      }
      if (!batch.empty() && (batch.size() >= kBatchCap || now - batch_started >= kBatchWindow)) {
        if (!call.reply(batch)) return;  // the host timed the call out
        batch.clear();
      }
      auto wake = std::min(next_poll, now + kCancelPoll);
      if (!batch.empty()) wake = std::min(wake, batch_started + kBatchWindow);
      std::this_thread::sleep_until(wake);
    }
    if (!batch.empty()) call.reply(batch);
  }

 private:
  Settings settings() {
    std::lock_guard<std::mutex> lock(mu_);
    return settings_;
  }

  // methodArgs[0], absolute or relative to the node's dataDir.
  std::filesystem::path file_of(const bosun::Call& call) const {
    if (call.arg_count() == 0) {
      throw Error("tail_file: methodArgs must hold the file to follow, e.g. [\"/var/log/syslog\"]",
                  BOSUN_ERR_INVALID_ARGUMENT);
    }
    if (call.arg_count() > 1) {
      throw Error("tail_file: methodArgs must hold one file to follow, got " +
                      std::to_string(call.arg_count()),
                  BOSUN_ERR_INVALID_ARGUMENT);
    }
    std::filesystem::path path(call.arg(0));
    if (path.empty()) {
      throw Error("tail_file: methodArgs[0] must name the file to follow, not be empty",
                  BOSUN_ERR_INVALID_ARGUMENT);
    }
    if (path.is_relative()) path = std::filesystem::path(host().data_dir()) / path;
    return path.lexically_normal();
  }

  std::mutex mu_;
  Settings settings_;
};

}  // namespace

BOSUN_PLUGIN(Tail, "tail", "1.0.0", "Follow a file and stream the lines appended to it",
             BOSUN_METHOD(Tail, tail_file,
                          "follow methodArgs[0] (a file) and stream the lines appended to it "
                          "until methodTimeout"))
