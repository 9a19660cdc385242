#include "child.hpp"

#include <fcntl.h>
#include <linux/close_range.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace bosun_cli {

namespace {

ExitStatus decode(int status) {
  ExitStatus out;
  if (WIFEXITED(status)) out.code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) out.signal = WTERMSIG(status);
  return out;
}

// A descriptor closed on scope exit unless released.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
  int release() {
    int f = fd;
    fd = -1;
    return f;
  }
};

// Moves `fd` above 2 (a daemon may run with 0-2 closed, and then a pipe
// could land on a stdio number that dup2 in the child would clobber).
int above_stdio(int fd) {
  if (fd < 0 || fd > 2) return fd;
  int moved = ::fcntl(fd, F_DUPFD_CLOEXEC, 3);
  int saved = errno;
  ::close(fd);
  errno = saved;
  return moved;
}

void make_pipe(Fd& read_end, Fd& write_end) {
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) {
    throw std::runtime_error(std::string("cannot create a pipe: ") + std::strerror(errno));
  }
  read_end.fd = above_stdio(p[0]);
  write_end.fd = above_stdio(p[1]);
  if (read_end.fd < 0 || write_end.fd < 0) {
    throw std::runtime_error(std::string("cannot create a pipe: ") + std::strerror(errno));
  }
}

// Runs in the forked child of a threaded process: async-signal-safe calls
// only, no allocation.
[[noreturn]] void exec_child(char* const argv[], char* const envp[], int null_fd, int out_fd,
                             int err_fd, int report_fd) {
  ::setpgid(0, 0);
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  // Ignored signals stay ignored across exec (the host ignores SIGPIPE).
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sig != SIGKILL && sig != SIGSTOP) ::sigaction(sig, &dfl, nullptr);
  }
  if (::dup2(null_fd, 0) < 0 || ::dup2(out_fd, 1) < 0 || ::dup2(err_fd, 2) < 0) {
    int e = errno;
    (void)!::write(report_fd, &e, sizeof e);
    ::_exit(127);
  }
  // Every other descriptor the host holds (sockets, LMDB) closes at exec;
  // the report pipe too, which tells the parent that exec succeeded.
  if (::syscall(SYS_close_range, 3u, ~0u, CLOSE_RANGE_CLOEXEC) != 0) {
    struct rlimit lim {};
    rlim_t max = ::getrlimit(RLIMIT_NOFILE, &lim) == 0 ? lim.rlim_cur : 1024;
    if (max > 65536) max = 65536;
    for (int fd = 3; fd < static_cast<int>(max); ++fd) ::fcntl(fd, F_SETFD, FD_CLOEXEC);
  }
  ::execvpe(argv[0], argv, envp);
  int e = errno;
  (void)!::write(report_fd, &e, sizeof e);
  ::_exit(127);
}

}  // namespace

Child::Child(const std::vector<std::string>& argv, const std::vector<std::string>& env) {
  if (argv.empty()) throw std::runtime_error("no command given");
  std::vector<char*> c_argv;
  for (const auto& a : argv) c_argv.push_back(const_cast<char*>(a.c_str()));
  c_argv.push_back(nullptr);
  std::vector<char*> c_env;
  for (const auto& e : env) c_env.push_back(const_cast<char*>(e.c_str()));
  c_env.push_back(nullptr);

  Fd null_fd{above_stdio(::open("/dev/null", O_RDONLY | O_CLOEXEC))};
  if (null_fd.fd < 0) {
    throw std::runtime_error(std::string("cannot open /dev/null: ") + std::strerror(errno));
  }
  Fd out_r, out_w, err_r, err_w, report_r, report_w;
  make_pipe(out_r, out_w);
  make_pipe(err_r, err_w);
  make_pipe(report_r, report_w);

  pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error(std::string("cannot fork: ") + std::strerror(errno));
  if (pid == 0) {
    exec_child(c_argv.data(), c_env.data(), null_fd.fd, out_w.fd, err_w.fd, report_w.fd);
  }
  pid_ = pid;
  // Also from this side, so that a kill of the group can never miss it.
  ::setpgid(pid, pid);
  ::close(report_w.release());
  ::close(out_w.release());
  ::close(err_w.release());

  int child_errno = 0;
  ssize_t n;
  do {
    n = ::read(report_r.fd, &child_errno, sizeof child_errno);
  } while (n < 0 && errno == EINTR);
  if (n == static_cast<ssize_t>(sizeof child_errno)) {
    reap();
    throw std::runtime_error("cannot run \"" + argv[0] + "\": " + std::strerror(child_errno));
  }
  fds_[0] = out_r.release();
  fds_[1] = err_r.release();
  for (int f : fds_) ::fcntl(f, F_SETFL, ::fcntl(f, F_GETFL) | O_NONBLOCK);
}

Child::~Child() {
  close_fd(0);
  close_fd(1);
  if (pid_ > 0 && !reaped_) {
    signal_group(SIGKILL);
    reap();
  }
}

void Child::close_fd(int stream) {
  if (fds_[stream] >= 0) ::close(fds_[stream]);
  fds_[stream] = -1;
}

bool Child::exited() const {
  if (reaped_) return true;
  siginfo_t info{};
  if (::waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED | WNOHANG | WNOWAIT) != 0) {
    return errno == ECHILD;  // someone else reaped it
  }
  return info.si_pid != 0;
}

std::optional<ExitStatus> Child::try_reap() {
  if (reaped_) return std::nullopt;
  int status = 0;
  pid_t r = ::waitpid(pid_, &status, WNOHANG);
  if (r == 0) return std::nullopt;
  reaped_ = true;
  if (r < 0) return ExitStatus{};  // reaped elsewhere: status unknown
  return decode(status);
}

ExitStatus Child::reap() {
  int status = 0;
  pid_t r;
  do {
    r = ::waitpid(pid_, &status, 0);
  } while (r < 0 && errno == EINTR);
  reaped_ = true;
  if (r < 0) return ExitStatus{};
  return decode(status);
}

void Child::signal_group(int sig) const {
  if (pid_ > 0 && !reaped_) ::kill(-pid_, sig);
}

}  // namespace bosun_cli
