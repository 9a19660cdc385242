// Small helpers shared by the tests: temp folders, free loopback ports,
// child processes, polling with a deadline.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace bosun::test {

// A fresh folder under the system temp dir, removed on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& rel) const { return path_ / rel; }

 private:
  std::filesystem::path path_;
};

// A TCP port on 127.0.0.1 that nothing listens on right now.
int free_port();

std::string read_file(const std::filesystem::path& p);
void write_file(const std::filesystem::path& p, const std::string& text);

// Polls `pred` until it holds or `timeout` passes; returns its last value.
bool wait_until(const std::function<bool()>& pred,
                std::chrono::milliseconds timeout = std::chrono::seconds(10),
                std::chrono::milliseconds step = std::chrono::milliseconds(10));

// GET `path` from 127.0.0.1:port over HTTP/1.0 (5 s timeouts, at most
// 80 MB read): the body of a 200 answer, or "" for anything else.
std::string http_get(int port, const std::string& path);

// A child process (fork + exec), its stdout and stderr sent to files.
class Process {
 public:
  Process(const std::vector<std::string>& argv, const std::filesystem::path& log_file,
          const std::vector<std::string>& extra_env = {});
  ~Process();  // SIGTERM, then SIGKILL after 5 s
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  pid_t pid() const { return pid_; }
  bool running();
  void signal(int sig);
  // Waits for exit; returns the exit code, 128+signal when killed, -1 on timeout.
  int wait(std::chrono::milliseconds timeout = std::chrono::seconds(10));
  void kill9();
  void stop();  // SIGTERM and wait

 private:
  pid_t pid_ = -1;
  int status_ = -1;
  bool reaped_ = false;
};

// Runs argv to completion; returns exit code, stdout in *out (stderr merged if merge_err).
int run_command(const std::vector<std::string>& argv, std::string* out, bool merge_err = true,
                const std::string& stdin_text = "",
                std::chrono::milliseconds timeout = std::chrono::seconds(60));

}  // namespace bosun::test
