#include "logging.hpp"

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <memory>

namespace bosun::host {
namespace {

// The "%*" flag: the line's syslog priority digit, for "<%*>".
class SyslogPriorityFlag : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&,
              spdlog::memory_buf_t& dest) override {
    dest.push_back(static_cast<char>('0' + syslog_priority(msg.level)));
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<SyslogPriorityFlag>();
  }
};

}  // namespace

bool stderr_is_journal() {
  const char* stream = std::getenv("JOURNAL_STREAM");
  if (stream == nullptr || *stream == '\0') return false;
  unsigned long long device = 0;
  unsigned long long inode = 0;
  char rest = 0;
  if (std::sscanf(stream, "%llu:%llu%c", &device, &inode, &rest) != 2) return false;
  struct stat st {};
  if (::fstat(2, &st) != 0) return false;
  return static_cast<unsigned long long>(st.st_dev) == device &&
         static_cast<unsigned long long>(st.st_ino) == inode;
}

int syslog_priority(int spdlog_level) {
  switch (spdlog_level) {
    case spdlog::level::trace:
    case spdlog::level::debug: return 7;     // LOG_DEBUG
    case spdlog::level::warn: return 4;      // LOG_WARNING
    case spdlog::level::err: return 3;       // LOG_ERR
    case spdlog::level::critical: return 2;  // LOG_CRIT
    default: return 6;                       // LOG_INFO
  }
}

void setup_logging(const std::string& level, const std::string& node,
                   const std::filesystem::path& file) {
  std::shared_ptr<spdlog::logger> logger;
  auto formatter = std::make_unique<spdlog::pattern_formatter>();
  if (!file.empty()) {
    logger = std::make_shared<spdlog::logger>(
        "bosun", std::make_shared<spdlog::sinks::basic_file_sink_mt>(file.string(), false));
    formatter->set_pattern("%Y-%m-%dT%H:%M:%S.%e %-5l [" + node + "] %v");
  } else if (stderr_is_journal()) {
    // journald stamps the time and the unit; the prefix carries the level.
    logger = std::make_shared<spdlog::logger>("bosun",
                                              std::make_shared<spdlog::sinks::stderr_sink_mt>());
    formatter->add_flag<SyslogPriorityFlag>('*').set_pattern("<%*>[" + node + "] %v");
  } else {
    logger = std::make_shared<spdlog::logger>(
        "bosun", std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
    formatter->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%-5l%$ [" + node + "] %v");
  }
  logger->set_formatter(std::move(formatter));
  if (!file.empty()) logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(logger);
  spdlog::set_level(spdlog::level::from_str(level));
}

}  // namespace bosun::host
