// Follows one file by polling, like `tail -F -n0`: hands out the complete
// lines appended to it, and follows it when it is rotated.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <filesystem>
#include <string>
#include <string_view>

namespace bosun_tail {

struct FollowOptions {
  bool from_start = false;                  // read what the file holds already, too
  size_t max_line_bytes = size_t{1} << 16;  // a longer line is cut with a marker
};

class Follower {
 public:
  // Opens `path` (a regular file). Throws std::runtime_error naming the path
  // and the reason when it cannot.
  Follower(std::filesystem::path path, FollowOptions options);
  ~Follower();
  Follower(const Follower&) = delete;
  Follower& operator=(const Follower&) = delete;

  // Appends to `out` the lines written since the last poll, reading at most
  // `budget` bytes of the file, and switches files when the path was
  // rotated. Each line ends with '\n'. Returns true when more may be waiting
  // right now (poll again without sleeping).
  bool poll(std::string& out, size_t budget);

 private:
  enum class Read { kEnd, kBudgetSpent };
  Read read_some(std::string& out, size_t& budget);
  void consume(std::string_view data, std::string& out);
  void end_partial_line(std::string& out);
  bool switch_to_new_file(std::string& out);

  std::filesystem::path path_;
  FollowOptions options_;
  int fd_ = -1;
  dev_t dev_ = 0;
  ino_t ino_ = 0;
  off_t offset_ = 0;
  std::string partial_;      // the last line so far, without its newline
  bool discarding_ = false;  // inside a line already cut: skip to its newline
  std::string buf_;
};

}  // namespace bosun_tail
