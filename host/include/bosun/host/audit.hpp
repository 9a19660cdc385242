// The audit log: one JSON line per message event, with the whole message,
// so any message can be recreated from it (DESIGN §5).
#pragma once

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <mutex>
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
  void flush();

 private:
  std::mutex mu_;
  std::FILE* out_ = nullptr;
  std::chrono::steady_clock::time_point last_flush_{};
};

}  // namespace bosun::host
