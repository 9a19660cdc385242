#include "bosun/host/audit.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <stdexcept>

#include "bosun/host/message.hpp"

namespace bosun::host {

namespace {
// Lines are written out every 200 ms or when this much is buffered, in one
// write(2): one per line cost as much as the rest of a message's handling.
constexpr size_t kBufferBytes = size_t{1} << 18;
}  // namespace

AuditLog::AuditLog(const std::filesystem::path& file) : path_(file.string()) {
  fd_ = ::open(file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (fd_ < 0) {
    throw std::runtime_error("cannot open audit log " + file.string() + ": " +
                             std::strerror(errno));
  }
  buf_.reserve(kBufferBytes + 4096);
  spare_.reserve(kBufferBytes + 4096);
}

AuditLog::~AuditLog() {
  flush();
  ::close(fd_);
}

void AuditLog::append(std::string_view kind, const nlohmann::json& message) {
  append_text(kind, message.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}

void AuditLog::append_text(std::string_view kind, std::string_view message_json) {
  char tail[40] = ",\"t\":";
  auto [end, ec] = std::to_chars(tail + 5, tail + sizeof tail - 2, now_ms());
  *end++ = '}';
  *end++ = '\n';
  const auto now = std::chrono::steady_clock::now();
  std::unique_lock<std::mutex> lock(mu_);
  buf_ += "{\"kind\":";
  append_json_string(buf_, kind);
  buf_ += ",\"message\":";
  buf_ += message_json;
  buf_.append(tail, static_cast<size_t>(end - tail));
  if (buf_.size() >= kBufferBytes || now - last_flush_ >= std::chrono::milliseconds(200)) {
    last_flush_ = now;
    write_out(lock);
  }
}

void AuditLog::flush() {
  std::unique_lock<std::mutex> lock(mu_);
  last_flush_ = std::chrono::steady_clock::now();
  write_out(lock);
}

void AuditLog::write_out(std::unique_lock<std::mutex>& lock) {
  if (buf_.empty()) return;
  std::unique_lock<std::mutex> writing(write_mu_);
  spare_.clear();
  buf_.swap(spare_);
  lock.unlock();
  size_t done = 0;
  while (done < spare_.size()) {
    ssize_t n = ::write(fd_, spare_.data() + done, spare_.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      // Said once per stretch of failures (a full disk would say it for
      // every block); the lines of this block are lost, the node goes on.
      if (!failing_) {
        spdlog::error("audit log {}: write failed ({}); {} bytes of audit lines lost", path_,
                      n < 0 ? std::strerror(errno) : "no progress", spare_.size() - done);
      }
      failing_ = true;
      return;
    }
    done += static_cast<size_t>(n);
  }
  if (failing_) spdlog::warn("audit log {}: writing again", path_);
  failing_ = false;
}

}  // namespace bosun::host
