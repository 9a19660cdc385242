#include "bosun/host/audit.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
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
}

AuditLog::~AuditLog() {
  if (out_ != nullptr) std::fclose(out_);
}

void AuditLog::append(std::string_view kind, const nlohmann::json& message) {
  append_text(kind, message.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}

void AuditLog::append_text(std::string_view kind, std::string_view message_json) {
  std::string text = "{\"kind\":";
  append_json_string(text, kind);
  text += ",\"message\":";
  text += message_json;
  text += ",\"t\":" + std::to_string(now_ms()) + "}\n";
  std::lock_guard<std::mutex> lock(mu_);
  std::fwrite(text.data(), 1, text.size(), out_);
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
