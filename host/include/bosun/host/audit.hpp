// The audit log: one JSON line per message event, with the whole message,
// so any message can be recreated from it (DESIGN §5).
#pragma once

#include <nlohmann/json.hpp>

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

 private:
  std::mutex mu_;
  std::FILE* out_ = nullptr;
};

}  // namespace bosun::host
