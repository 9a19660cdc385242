// The sending side of a copy: copy_file_from runs on the node that has the
// file and drives the transfer to its end.
//
// Flow control is a window with acknowledgements from the receiver: at most
// `window` chunks are sent and not yet written there (each chunk's reply,
// run here as the reply method filecopy_ack, is its acknowledgement). So the
// sender holds one chunk it reads, and the host's outbox at most `window`
// chunk messages, whatever the file's size. The source is read once, in
// order, hashing as it goes; the receiver hashes what it wrote and only then
// renames the temp file into place.
#pragma once

#include <bosun/plugin.hpp>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "settings.hpp"

namespace filecopy {

// What came back for a message a copy sent (a reply, ok or error).
struct Answer {
  std::string kind;  // "begin", "chunk", "commit"
  uint64_t offset = 0;
  bool ok = false;
  bool final = true;  // false on a streamed (progress) reply
  std::string data;
  std::string error;
};

// The answers of one running copy, from the reply method to its handler.
class Inbox {
 public:
  void deliver(Answer a);
  // Moves what has arrived into `out`, waiting up to `max` for the first.
  void take(std::vector<Answer>& out, std::chrono::milliseconds max);

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Answer> queue_;
};

// Running copies by id (the copy_file_from message's id).
class Inboxes {
 public:
  std::shared_ptr<Inbox> open(const std::string& id);
  void close(const std::string& id);
  std::shared_ptr<Inbox> find(const std::string& id);
  size_t size();

 private:
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<Inbox>> open_;
};

// copy_file_from's handler: validates its methodArgs [source path,
// destination node, destination path], copies, and returns the final
// reply's data (JSON). Streams progress replies meanwhile. Throws
// bosun::Error for everything that goes wrong, naming it.
std::string run_copy(const bosun::Call& call, const bosun::Host& host, const Settings& settings,
                     Inboxes& inboxes);

// The delivery parameters of the messages a copy sends: the request's own
// ACKTimeout / retries when it has them, the module's settings otherwise.
struct Delivery {
  double ack_timeout_s = 5;
  int retries = 10;
  std::chrono::milliseconds budget() const;  // how long a receiver may be away
};
Delivery delivery_of(const bosun::Call& call, const Settings& settings);

bool is_node_name(std::string_view s);

}  // namespace filecopy
