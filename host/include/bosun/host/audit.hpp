// The audit log: one JSON line per message event, with the whole message,
// so any message can be recreated from it (DESIGN §5).
#pragma once

#include <nlohmann/json.hpp>

#include <chrono>
#include <filesystem>
#include <mutex>
#include <string>
#include <string_view>

namespace bosun::host {

class AuditLog {
 public:
  explicit AuditLog(const std::filesystem::path& file);  // appends; created 0600
  ~AuditLog();
  AuditLog(const AuditLog&) = delete;
  AuditLog& operator=(const AuditLog&) = delete;

  // `kind`: "accepted", "received", "reply", "rejected", ...
  void append(std::string_view kind, const nlohmann::json& message);
  // The same with the message already JSON text (to_text).
  void append_text(std::string_view kind, std::string_view message_json);
  // Writes out what is buffered (the node calls it every 200 ms; append
  // does too when 200 ms have passed or the buffer is full).
  void flush();

 private:
  // With mu_ held: takes the buffer and writes it, taking write_mu_ before
  // letting mu_ go, so that blocks reach the file in order while appends
  // go on into the emptied buffer.
  void write_out(std::unique_lock<std::mutex>& lock);

  std::string path_;
  int fd_ = -1;
  std::mutex mu_;  // buf_, last_flush_
  std::string buf_;
  std::chrono::steady_clock::time_point last_flush_{};
  std::mutex write_mu_;  // the write(2)s, spare_, failing_
  std::string spare_;
  bool failing_ = false;
};

}  // namespace bosun::host
