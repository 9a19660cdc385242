// The filecopy module's settings (extensions.filecopy.settings) and the
// names of its protocol methods.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace filecopy {

// Methods a copy's two nodes send each other (internal; listed by plugin_list).
inline constexpr const char* kBegin = "filecopy_begin";    // sender -> receiver
inline constexpr const char* kChunk = "filecopy_chunk";    // sender -> receiver
inline constexpr const char* kCommit = "filecopy_commit";  // sender -> receiver
inline constexpr const char* kAbort = "filecopy_abort";    // sender -> receiver
inline constexpr const char* kAck = "filecopy_ack";        // reply method on the sender
inline constexpr const char* kRelay = "filecopy_relay";    // reply method for copy_file_to

struct Settings {
  // Folders a copy may write into; relative ones count from the data folder.
  // Empty: the node's data folder.
  std::vector<std::string> allowed_dirs;
  size_t chunk_size = 256 * 1024;  // raw bytes per chunk message (base64 in JSON)
  size_t window = 8;               // chunks sent and not yet written by the receiver
  double ack_timeout_s = 5;        // ACKTimeout of protocol messages (unless the request sets one)
  int retries = 10;                // retries of protocol messages (unless the request sets them)
  std::chrono::milliseconds progress_interval{1000};  // 0: no progress replies
  // copy_file_from / copy_file_to calls running at once on this node; each
  // holds a worker thread, and the copy's answers need others. 0: half the
  // node's workers.
  int max_concurrent = 0;
  std::chrono::seconds partial_ttl{24 * 3600};  // an idle partial copy is removed after this
};

// Throws std::runtime_error naming the bad key. `data_dir` resolves
// relative folders.
Settings parse_settings(std::string_view json, const std::string& data_dir);

}  // namespace filecopy
