// core/cli: run an argv on the node (Steward's REQCliCommand and
// REQCliCommandCont). cli_command replies once with the output when the
// command ends; cli_command_cont streams it as it comes. Cancellation
// (methodTimeout, op_process_stop) kills the command's whole process group.
#include <bosun/plugin.hpp>

#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "child.hpp"

extern char** environ;

namespace {

using bosun::Error;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// How long output is still collected after the command exited, for
// grandchildren that hold its pipes open (a `daemon &` would otherwise keep
// the call running until methodTimeout).
constexpr milliseconds kDrainAfterExit{200};
constexpr milliseconds kCancelPoll{50};
constexpr size_t kStderrTail = 512;

struct Settings {
  bool json = false;
  size_t max_output = size_t{1} << 20;
  milliseconds kill_grace{2000};
};

Settings parse_settings(std::string_view text) {
  Settings s;
  if (text.empty()) return s;
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    throw std::runtime_error("cli settings must be a JSON object, not: " + std::string(text));
  }
  for (const auto& [key, value] : j.items()) {
    if (key == "format") {
      if (value != "text" && value != "json") {
        throw std::runtime_error("cli settings: \"format\" must be \"text\" or \"json\", not " +
                                 value.dump());
      }
      s.json = value == "json";
    } else if (key == "maxOutputBytes") {
      if (!value.is_number_integer() || value.get<int64_t>() <= 0) {
        throw std::runtime_error(
            "cli settings: \"maxOutputBytes\" must be a positive integer, not " + value.dump());
      }
      s.max_output = value.get<size_t>();
    } else if (key == "killGrace") {
      if (!value.is_number_integer() || value.get<int64_t>() < 0) {
        throw std::runtime_error(
            "cli settings: \"killGrace\" must be a number of milliseconds >= 0, not " +
            value.dump());
      }
      s.kill_grace = milliseconds(value.get<int64_t>());
    } else {
      throw std::runtime_error("cli settings: unknown key \"" + key +
                               "\" (known: format, maxOutputBytes, killGrace)");
    }
  }
  return s;
}

// Keeps at most `max` bytes of one output stream; the rest is read and
// dropped, so the child never blocks on a full pipe and memory stays bounded.
class Limit {
 public:
  explicit Limit(size_t max) : max_(max) {}
  // The part of `chunk` to keep, with the truncation marker appended the
  // first time the limit is crossed.
  std::string take(std::string_view chunk) {
    if (kept_ >= max_) {
      if (!marked_ && !chunk.empty()) return mark();
      return {};
    }
    size_t room = max_ - kept_;
    if (chunk.size() <= room) {
      kept_ += chunk.size();
      return std::string(chunk);
    }
    kept_ = max_;
    return std::string(chunk.substr(0, room)) + mark();
  }
  bool truncated() const { return marked_; }

 private:
  std::string mark() {
    marked_ = true;
    return "\n[bosun: output truncated after " + std::to_string(max_) + " bytes]\n";
  }
  size_t max_;
  size_t kept_ = 0;
  bool marked_ = false;
};

struct RunResult {
  bosun_cli::ExitStatus status;
  bool killed = false;     // the group was killed on cancellation
  bool timed_out = false;  // ... because methodTimeout passed
  bool truncated = false;
  int64_t duration_ms = 0;
  std::string stderr_tail;  // the last bytes written to stderr, for the error text
};

std::string method_of(const bosun::Call& call) {
  return std::string(call.method());
}

std::vector<std::string> child_env(const bosun::Call& call) {
  static constexpr std::string_view kOurs[] = {
      "BOSUN_FROM_NODE=", "BOSUN_MESSAGE_ID=", "BOSUN_METHOD="};
  std::vector<std::string> env;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    std::string_view entry(*e);
    bool ours = false;
    for (auto prefix : kOurs) ours = ours || entry.substr(0, prefix.size()) == prefix;
    if (!ours) env.emplace_back(entry);
  }
  env.push_back("BOSUN_FROM_NODE=" + std::string(call.from_node()));
  env.push_back("BOSUN_MESSAGE_ID=" + std::string(call.id()));
  env.push_back("BOSUN_METHOD=" + method_of(call));
  return env;
}

void replace_all(std::string& s, std::string_view from, std::string_view to) {
  for (size_t pos = s.find(from); pos != std::string::npos; pos = s.find(from, pos + to.size())) {
    s.replace(pos, from.size(), to);
  }
}

// The argv to run; as a reply method, with the reply's data put in place of
// {{BOSUN_DATA}} (or Steward's {{STEWARD_DATA}}).
std::vector<std::string> command_of(const bosun::Call& call) {
  const std::string method = method_of(call);
  if (call.arg_count() == 0) {
    throw Error(method + ": methodArgs must hold the command to run, e.g. [\"uname\",\"-a\"]",
                BOSUN_ERR_INVALID_ARGUMENT);
  }
  std::vector<std::string> argv;
  for (auto arg : call.args()) {
    std::string a(arg);
    if (call.is_reply()) {
      replace_all(a, "{{BOSUN_DATA}}", call.data());
      replace_all(a, "{{STEWARD_DATA}}", call.data());
    }
    if (a.find('\0') != std::string::npos) {
      throw Error(method + ": methodArgs[" + std::to_string(argv.size()) +
                      "] contains a NUL byte, which no command can be given",
                  BOSUN_ERR_INVALID_ARGUMENT);
    }
    argv.push_back(std::move(a));
  }
  if (argv[0].empty()) {
    throw Error(method + ": methodArgs[0] must name the command to run, not be empty",
                BOSUN_ERR_INVALID_ARGUMENT);
  }
  return argv;
}

// Runs the call's command to its end (or until the call is cancelled),
// handing each piece of output, already limited, to on_output(stream, text)
// with stream 0 = stdout, 1 = stderr, in the order it was read.
RunResult run(const bosun::Call& call, const Settings& settings,
              const std::function<void(int, std::string_view)>& on_output) {
  const auto entered = Clock::now();
  std::vector<std::string> argv = command_of(call);
  if (call.cancelled()) {
    throw Error(method_of(call) + ": cancelled before the command started", BOSUN_ERR_CANCELLED);
  }
  std::unique_ptr<bosun_cli::Child> child;
  try {
    child = std::make_unique<bosun_cli::Child>(argv, child_env(call));
  } catch (const std::runtime_error& e) {
    throw Error(method_of(call) + ": " + e.what(), BOSUN_ERR_HANDLER);
  }
  const auto started = Clock::now();
  RunResult result;
  Limit limits[2] = {Limit(settings.max_output), Limit(settings.max_output)};
  std::vector<char> buf(64 * 1024);
  std::optional<bosun_cli::ExitStatus> status;
  bool stopping = false;
  Clock::time_point kill_at{};
  Clock::time_point drain_until{};

  while (true) {
    auto now = Clock::now();
    if (!status) {
      if (!stopping && call.cancelled()) {
        stopping = true;
        result.killed = true;
        auto timeout = milliseconds(call.request().timeout_ms);
        result.timed_out = timeout.count() > 0 && now - entered >= timeout - kCancelPoll;
        child->signal_group(SIGTERM);
        kill_at = now + settings.kill_grace;
      }
      if (stopping) {
        if (child->exited() || now >= kill_at) {
          // Whatever of the group outlived the child, or ignores SIGTERM, goes too.
          child->signal_group(SIGKILL);
          status = child->reap();
          break;
        }
      } else if ((status = child->try_reap())) {
        drain_until = now + kDrainAfterExit;
      }
    } else if (call.cancelled() || now >= drain_until) {
      break;
    }
    if (status && child->fd(0) < 0 && child->fd(1) < 0) break;

    pollfd pfds[2];
    int streams[2];
    nfds_t n = 0;
    for (int s = 0; s < 2; ++s) {
      if (child->fd(s) < 0) continue;
      pfds[n] = {child->fd(s), POLLIN, 0};
      streams[n++] = s;
    }
    int wait_ms = stopping ? 10 : static_cast<int>(kCancelPoll.count());
    if (n == 0) wait_ms = 10;  // only the exit is left to wait for
    if (::poll(pfds, n, wait_ms) < 0 && errno != EINTR) {
      throw Error(method_of(call) + ": poll failed: " + std::strerror(errno), BOSUN_ERR_IO);
    }
    for (nfds_t i = 0; i < n; ++i) {
      if (pfds[i].revents == 0) continue;
      int s = streams[i];
      ssize_t got = ::read(child->fd(s), buf.data(), buf.size());
      if (got < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      if (got <= 0) {
        child->close_fd(s);
        continue;
      }
      std::string_view chunk(buf.data(), static_cast<size_t>(got));
      if (s == 1) {
        result.stderr_tail.append(chunk);
        if (result.stderr_tail.size() > kStderrTail) {
          result.stderr_tail.erase(0, result.stderr_tail.size() - kStderrTail);
        }
      }
      std::string kept = limits[s].take(chunk);
      if (!kept.empty()) on_output(s, kept);
    }
  }
  result.status = *status;
  result.truncated = limits[0].truncated() || limits[1].truncated();
  result.duration_ms = std::chrono::duration_cast<milliseconds>(Clock::now() - started).count();
  return result;
}

std::string last_line(std::string text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
  size_t nl = text.rfind('\n');
  return nl == std::string::npos ? text : text.substr(nl + 1);
}

std::string signal_text(int sig) {
  const char* abbrev = sigabbrev_np(sig);
  return std::to_string(sig) + (abbrev ? std::string(" (SIG") + abbrev + ")" : "");
}

// Fails the call (after its output was replied) unless the command exited 0.
void finish(const bosun::Call& call, const RunResult& r) {
  const std::string method = method_of(call);
  if (r.killed) {
    if (r.timed_out) {
      char secs[32];
      std::snprintf(secs, sizeof secs, "%g", static_cast<double>(call.request().timeout_ms) / 1000);
      throw Error(method + ": killed after methodTimeout (" + secs +
                      " s): the command's process group was killed",
                  BOSUN_ERR_TIMEOUT);
    }
    throw Error(method + ": cancelled: the command's process group was killed",
                BOSUN_ERR_CANCELLED);
  }
  std::string why = last_line(r.stderr_tail);
  std::string suffix = why.empty() ? "" : ": " + why;
  if (r.status.signal) {
    throw Error(method + ": killed by signal " + signal_text(*r.status.signal) + suffix);
  }
  if (r.status.code && *r.status.code != 0) {
    throw Error(method + ": exit code " + std::to_string(*r.status.code) + suffix);
  }
}

std::string as_json(const std::string (&out)[2], const RunResult& r) {
  nlohmann::json j = {
      {"stdout", out[0]},
      {"stderr", out[1]},
      {"exitCode", r.status.code ? nlohmann::json(*r.status.code) : nlohmann::json(nullptr)},
      {"signal", r.status.signal ? nlohmann::json(*r.status.signal) : nlohmann::json(nullptr)},
      {"timedOut", r.timed_out},
      {"truncated", r.truncated},
      {"durationMs", r.duration_ms}};
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// Steward's form: the plain stdout, then stderr after a separator line.
std::string as_text(const std::string (&out)[2]) {
  std::string text = out[0];
  if (out[1].empty()) return text;
  if (!text.empty() && text.back() != '\n') text += '\n';
  return text + "--- stderr ---\n" + out[1];
}

class Cli : public bosun::Plugin {
 public:
  Cli(bosun::Host host, std::string_view settings)
      : Plugin(host, settings), settings_(parse_settings(settings)) {}

  void on_settings(std::string_view settings) override {
    Settings parsed = parse_settings(settings);
    std::lock_guard<std::mutex> lock(mu_);
    settings_ = parsed;
  }

  void cli_command(bosun::Call& call) {
    Settings s = settings();
    std::string out[2];
    RunResult r = run(call, s, [&](int stream, std::string_view text) { out[stream] += text; });
    // The output goes back even when the command failed.
    call.reply(s.json ? as_json(out, r) : as_text(out));
    finish(call, r);
  }

  void cli_command_cont(bosun::Call& call) {
    RunResult r = run(call, settings(), [&](int, std::string_view text) { call.reply(text); });
    finish(call, r);
  }

 private:
  Settings settings() {
    std::lock_guard<std::mutex> lock(mu_);
    return settings_;
  }

  std::mutex mu_;
  Settings settings_;
};

}  // namespace

BOSUN_PLUGIN(Cli, "cli", "1.0.0", "Run commands on the node and reply with their output",
             BOSUN_METHOD(Cli, cli_command,
                          "run methodArgs as an argv; reply with its output when it ends"),
             BOSUN_METHOD(Cli, cli_command_cont,
                          "run methodArgs as an argv; stream its output as it comes"))
