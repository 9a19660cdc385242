// Where `bosun run` logs: stderr with timestamps; the file log.file names;
// or, under systemd, the journal through stderr with the sd-daemon(3)
// "<N>" priority prefix on every line (journald records the level and adds
// its own timestamp), without linking libsystemd.
#pragma once

#include <filesystem>
#include <string>

namespace bosun::host {

// True when stderr is the journal stream systemd announces in
// $JOURNAL_STREAM ("<device>:<inode>"), as systemd.exec(5) asks programs to
// check: a child that inherits the variable but not the stream (a shell
// started by cli_command, a terminal) keeps the plain format.
bool stderr_is_journal();

// The syslog priority of an spdlog level: 7 debug/trace, 6 info, 4 warn,
// 3 error, 2 critical.
int syslog_priority(int spdlog_level);

// Installs spdlog's default logger for a running node. `file` empty: stderr
// (the journal format when stderr_is_journal()). Throws spdlog::spdlog_ex
// when the file cannot be opened.
void setup_logging(const std::string& level, const std::string& node,
                   const std::filesystem::path& file);

}  // namespace bosun::host
