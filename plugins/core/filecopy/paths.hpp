// Where a copy may write (the destination's allowed folders) and where it
// reads from. Every refusal is a bosun::Error whose text names the path and
// the rule it broke.
#pragma once

#include <sys/stat.h>

#include <string>
#include <string_view>
#include <vector>

namespace filecopy {

// A relative path counts from the node's data folder.
std::string absolute_from(std::string_view path, const std::string& data_dir);

struct Destination {
  std::string path;    // absolute, its folder resolved (no symbolic links)
  std::string folder;  // the folder it is written in
};

// Checks `given` against `allowed` (absolute folders): no "..", no NUL, a
// file name (not a folder), inside one of the folders also once symbolic
// links are resolved. With `create`, makes the missing folders (0755) below
// the allowed one. `who` prefixes the error texts ("filecopy_begin").
Destination resolve_destination(std::string_view who, std::string_view given,
                                const std::string& data_dir,
                                const std::vector<std::string>& allowed, bool create);

// A source file opened for reading; its stat. Refuses a missing, unreadable
// or non-regular file (a folder, a FIFO, a device) with a clear error.
struct Source {
  int fd = -1;
  std::string path;
  struct stat st {};
};
Source open_source(std::string_view who, std::string_view given, const std::string& data_dir);

std::string in_quotes(std::string_view s);

}  // namespace filecopy
