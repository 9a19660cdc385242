#include "follower.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <utility>

namespace bosun_tail {

namespace {

constexpr size_t kReadChunk = size_t{64} << 10;

// O_NONBLOCK so that a FIFO at the path cannot block the open; such a file
// is refused right after.
int open_file(const std::filesystem::path& path, struct stat& st, std::string* why) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    if (why) *why = "cannot open \"" + path.string() + "\": " + std::strerror(errno);
    return -1;
  }
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    if (why) {
      *why = "\"" + path.string() + "\" is " +
             (S_ISDIR(st.st_mode) ? "a folder, not a file" : "not a regular file");
    }
    ::close(fd);
    return -1;
  }
  return fd;
}

}  // namespace

Follower::Follower(std::filesystem::path path, FollowOptions options)
    : path_(std::move(path)), options_(options) {
  struct stat st {};
  std::string why;
  fd_ = open_file(path_, st, &why);
  if (fd_ < 0) throw std::runtime_error(why);
  dev_ = st.st_dev;
  ino_ = st.st_ino;
  offset_ = options_.from_start ? 0 : st.st_size;
  buf_.resize(kReadChunk);
}

Follower::~Follower() {
  if (fd_ >= 0) ::close(fd_);
}

bool Follower::poll(std::string& out, size_t budget) {
  if (read_some(out, budget) == Read::kBudgetSpent) return true;

  struct stat st {};
  if (::fstat(fd_, &st) == 0 && st.st_size < offset_) {
    // Copy-truncate: the file was emptied in place; what is in it now is new.
    end_partial_line(out);
    offset_ = 0;
    return true;
  }
  if (::stat(path_.c_str(), &st) != 0) {
    // Renamed or deleted and not (yet) recreated: keep reading the old file,
    // which a writer may still hold, until a new one appears at the path.
    return false;
  }
  if (st.st_dev == dev_ && st.st_ino == ino_) return false;
  return switch_to_new_file(out);
}

// Rename-and-recreate: first whatever the writer appended to the old file
// before it let go of it, then the new file from its start.
bool Follower::switch_to_new_file(std::string& out) {
  size_t budget = buf_.size() * 4;
  if (read_some(out, budget) == Read::kBudgetSpent) return true;
  struct stat st {};
  int fd = open_file(path_, st, nullptr);
  if (fd < 0) return false;  // a folder or unreadable for now: try again next poll
  end_partial_line(out);
  ::close(fd_);
  fd_ = fd;
  dev_ = st.st_dev;
  ino_ = st.st_ino;
  offset_ = 0;
  return true;
}

Follower::Read Follower::read_some(std::string& out, size_t& budget) {
  while (budget > 0) {
    ssize_t n = ::pread(fd_, buf_.data(), std::min(buf_.size(), budget), offset_);
    if (n < 0 && errno == EINTR) continue;
    // A read error looks like a file that stopped growing; rotation can
    // still move us on.
    if (n <= 0) return Read::kEnd;
    offset_ += n;
    budget -= static_cast<size_t>(n);
    consume(std::string_view(buf_.data(), static_cast<size_t>(n)), out);
  }
  return Read::kBudgetSpent;
}

void Follower::consume(std::string_view data, std::string& out) {
  const size_t max = options_.max_line_bytes;
  while (!data.empty()) {
    size_t nl = data.find('\n');
    if (discarding_) {
      if (nl == std::string_view::npos) return;
      data.remove_prefix(nl + 1);
      discarding_ = false;
      continue;
    }
    size_t line_bytes = nl == std::string_view::npos ? data.size() : nl;
    size_t room = max - partial_.size();
    if (line_bytes > room) {
      // Memory stays bounded by max_line_bytes whatever the line's length.
      out += partial_;
      out.append(data.substr(0, room));
      out += " [bosun: line cut after " + std::to_string(max) + " bytes]\n";
      partial_.clear();
      data.remove_prefix(room);
      discarding_ = true;
      continue;
    }
    partial_.append(data.substr(0, line_bytes));
    if (nl == std::string_view::npos) return;
    out += partial_;
    out += '\n';
    partial_.clear();
    data.remove_prefix(nl + 1);
  }
}

// The file this line was in has ended (rotated or truncated): its last line
// will never get a newline, so it goes out as it is.
void Follower::end_partial_line(std::string& out) {
  if (!partial_.empty()) {
    out += partial_;
    out += '\n';
    partial_.clear();
  }
  discarding_ = false;
}

}  // namespace bosun_tail
