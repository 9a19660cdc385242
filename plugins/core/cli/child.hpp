// A command run in its own process group with its stdout and stderr on
// pipes, so that the whole group (grandchildren included) can be killed.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

namespace bosun_cli {

// How a child ended.
struct ExitStatus {
  std::optional<int> code;    // set when it exited
  std::optional<int> signal;  // set when a signal killed it
};

class Child {
 public:
  // Runs argv[0] (looked up in PATH) with exactly `env`, stdin from
  // /dev/null, no inherited descriptor but 0-2, in a new process group.
  // Throws std::runtime_error `cannot run "<argv[0]>": <reason>` when the
  // command cannot be executed (missing, not executable, a folder, ...).
  Child(const std::vector<std::string>& argv, const std::vector<std::string>& env);
  // Kills the group and reaps the child if that has not happened yet.
  ~Child();
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  pid_t pid() const { return pid_; }
  // The read ends of the child's stdout (0) and stderr (1), non-blocking;
  // -1 once closed.
  int fd(int stream) const { return fds_[stream]; }
  void close_fd(int stream);

  // True once the child has exited; does not reap it, so its pid (the
  // group's id) cannot be reused and signal_group() stays safe.
  bool exited() const;
  // Reaps the child if it has exited.
  std::optional<ExitStatus> try_reap();
  // Waits for the child and reaps it.
  ExitStatus reap();
  // Sends `sig` to every process of the group. No-op once reaped.
  void signal_group(int sig) const;

 private:
  pid_t pid_ = -1;
  bool reaped_ = false;
  int fds_[2] = {-1, -1};
};

}  // namespace bosun_cli
