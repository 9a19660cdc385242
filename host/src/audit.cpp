#include "bosun/host/audit.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <stdexcept>

#include "bosun/host/message.hpp"

namespace bosun::host {

AuditLog::AuditLog(const std::filesystem::path& file) {
  int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (fd < 0) {
    throw std::runtime_error("cannot open audit log " + file.string() + ": " +
                             std::strerror(errno));
  }
  out_ = ::fdopen(fd, "a");
  if (out_ == nullptr) {
    const int err = errno;
    ::close(fd);
    throw std::runtime_error("cannot open audit log " + file.string() + ": " + std::strerror(err));
  }
  // Lines are written out every 200 ms (see append_text): a buffer that
  // holds that many of them, not stdio's 4 KiB (a write(2) every ~16 lines).
  std::setvbuf(out_, nullptr, _IOFBF, 1 << 18);
}

AuditLog::~AuditLog() {
  if (out_ != nullptr) std::fclose(out_);
}

void AuditLog::append(std::string_view kind, const nlohmann::json& message) {
  append_text(kind, message.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}

void AuditLog::append_text(std::string_view kind, std::string_view message_json) {
  std::string head = "{\"kind\":";
  append_json_string(head, kind);
  head += ",\"message\":";
  char tail[48];
  const int tail_len =
      std::snprintf(tail, sizeof tail, ",\"t\":%lld}\n", static_cast<long long>(now_ms()));
  // The line's pieces straight into the buffer (mu_ makes stdio's own lock
  // redundant).
  std::lock_guard<std::mutex> lock(mu_);
  fwrite_unlocked(head.data(), 1, head.size(), out_);
  fwrite_unlocked(message_json.data(), 1, message_json.size(), out_);
  fwrite_unlocked(tail, 1, static_cast<size_t>(tail_len), out_);
  // One write(2) per line cost as much as the rest of a message's handling;
  // flush at most every 200 ms (and at close) instead.
  auto now = std::chrono::steady_clock::now();
  if (now - last_flush_ >= std::chrono::milliseconds(200)) {
    std::fflush(out_);
    last_flush_ = now;
  }
}

void AuditLog::flush() {
  std::lock_guard<std::mutex> lock(mu_);
  std::fflush(out_);
  last_flush_ = std::chrono::steady_clock::now();
}

}  // namespace bosun::host
