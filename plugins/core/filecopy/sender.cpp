#include "sender.hpp"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <optional>

#include "codec.hpp"
#include "paths.hpp"

namespace filecopy {

using bosun::Error;
using Clock = std::chrono::steady_clock;
using nlohmann::json;
using std::chrono::milliseconds;

namespace {

constexpr const char* kWho = "copy_file_from";
// How often one message is sent again after an answer that says the
// receiver was interrupted (restarted, shut down) while handling it.
constexpr int kMaxAttempts = 5;
constexpr milliseconds kPoll{100};

// Errors this module's own handlers raise start with their method's name;
// anything else came from the receiving host around the handler (the call
// was interrupted by a restart, cancelled at shutdown, timed out) and is
// worth another try. A missing method is not.
// Worth sending again: not the receiver's own refusal of the message's
// content ("<method>: ..."), nor a method it lacks, nor a message its host
// refused to run at all (security.allow), which the host reports as
// "not delivered: refused by <node>: ...".
bool transient(const std::string& method, const std::string& error) {
  return error.rfind(method + ": ", 0) != 0 && error.find("unknown method") == std::string::npos &&
         error.rfind("not delivered: refused by ", 0) != 0;
}

std::string mib(uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(bytes) / (1 << 20));
  return buf;
}

class Copy {
 public:
  Copy(const bosun::Call& call, const bosun::Host& host, const Settings& settings,
       std::shared_ptr<Inbox> inbox)
      : call_(call),
        host_(host),
        settings_(settings),
        inbox_(std::move(inbox)),
        delivery_(delivery_of(call, settings)),
        stall_(delivery_.budget() + milliseconds(5000)) {}

  std::string run();

 private:
  struct InFlight {
    uint64_t len = 0;
    int attempts = 1;
  };

  void send(const char* method, json args, std::string data, json reply_args,
            double method_timeout_s);
  void send_begin();
  void send_chunk(uint64_t offset, std::string_view bytes);
  void resend_chunk(uint64_t offset);
  void send_commit();
  void read_at(uint64_t offset, uint64_t len);
  // Handles what has arrived (waiting up to kPoll), checks cancellation,
  // the stall bound and progress.
  void pump();
  void handle(Answer a);
  Answer await(std::optional<Answer>& slot, const char* method, void (Copy::*resend)());
  void progress(bool force);

  const bosun::Call& call_;
  const bosun::Host& host_;
  Settings settings_;
  std::shared_ptr<Inbox> inbox_;
  Delivery delivery_;
  milliseconds stall_;

  std::string id_;
  Source src_;
  std::string dst_node_, dst_given_, dst_path_, key_;
  uint64_t size_ = 0;
  std::string buf_;
  std::string sha_;
  bool relayed_ = false;  // asked for by copy_file_to on the destination

  std::optional<Answer> begin_, commit_;
  int begin_attempts_ = 0, commit_attempts_ = 0;
  std::map<uint64_t, InFlight> in_flight_;
  uint64_t done_ = 0, skipped_ = 0, resent_ = 0, duplicates_ = 0;
  Clock::time_point started_ = Clock::now(), last_heard_ = Clock::now(), last_progress_{};
};

void Copy::send(const char* method, json args, std::string data, json reply_args,
                double method_timeout_s) {
  json m = {{"toNode", dst_node_},
            {"method", method},
            {"methodArgs", std::move(args)},
            {"replyMethod", kAck},
            {"replyMethodArgs", std::move(reply_args)},
            {"ACKTimeout", delivery_.ack_timeout_s},
            {"retries", delivery_.retries},
            {"replyACKTimeout", delivery_.ack_timeout_s},
            {"replyRetries", delivery_.retries},
            {"methodTimeout", method_timeout_s},
            {"replyMethodTimeout", 30}};
  std::string text = m.dump();
  if (!data.empty()) {
    // Spliced in rather than set in `m`: the chunk (base64, nothing to
    // escape) is copied once instead of escaped into a second JSON text.
    text.pop_back();                                  // the closing '}'
    bool plain = std::string_view(method) == kChunk;  // base64
    std::string value = plain ? std::string() : json(data).dump();
    text.reserve(text.size() + (plain ? data.size() + 2 : value.size()) + 10);
    text += ",\"data\":";
    if (plain) {
      text += '"';
      text += data;
      text += '"';
    } else {
      text += value;
    }
    text += '}';
  }
  try {
    call_.send(text);
  } catch (const Error& e) {
    throw Error(std::string(kWho) + ": cannot send " + method + " to node " + dst_node_ + ": " +
                    e.what() + " (see the node's log)",
                e.status());
  }
}

void Copy::send_begin() {
  ++begin_attempts_;
  json d = {{"key", key_},
            {"src", src_.path},
            {"dst", dst_given_},
            {"size", size_},
            {"chunk", settings_.chunk_size},
            {"mode", static_cast<uint32_t>(src_.st.st_mode & 07777)}};
  send(kBegin, json::array({key_}), d.dump(), json::array({id_, "begin"}), 60);
}

void Copy::send_chunk(uint64_t offset, std::string_view bytes) {
  send(kChunk, json::array({key_, std::to_string(offset)}), base64_encode(bytes),
       json::array({id_, "chunk", std::to_string(offset)}), 60);
}

void Copy::resend_chunk(uint64_t offset) {
  uint64_t len = in_flight_.at(offset).len;
  read_at(offset, len);
  ++resent_;
  send_chunk(offset, std::string_view(buf_.data(), len));
}

void Copy::send_commit() {
  ++commit_attempts_;
  json d = {{"sha256", sha_}, {"size", size_}, {"path", dst_path_}};
  // Hashing the file again there takes time: about 20 MiB/s at worst.
  double timeout = 60 + static_cast<double>(size_) / (20 << 20);
  send(kCommit, json::array({key_}), d.dump(), json::array({id_, "commit"}),
       std::min(timeout, 7 * 24 * 3600.0));
}

void Copy::read_at(uint64_t offset, uint64_t len) {
  size_t got = 0;
  while (got < len) {
    ssize_t n = ::pread(src_.fd, buf_.data() + got, len - got, static_cast<off_t>(offset + got));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      throw Error(std::string(kWho) + ": cannot read the source file " + in_quotes(src_.path) +
                      ": " + std::strerror(errno),
                  BOSUN_ERR_IO);
    }
    if (n == 0) {
      throw Error(std::string(kWho) + ": the source file " + in_quotes(src_.path) +
                      " shrank during the copy (" + std::to_string(offset + got) +
                      " bytes left of " + std::to_string(size_) + ")",
                  BOSUN_ERR_IO);
    }
    got += static_cast<size_t>(n);
  }
}

void Copy::handle(Answer a) {
  last_heard_ = Clock::now();
  if (a.kind == "begin") {
    begin_ = std::move(a);
  } else if (a.kind == "commit") {
    commit_ = std::move(a);
  } else if (a.kind == "chunk") {
    auto it = in_flight_.find(a.offset);
    if (it == in_flight_.end()) return;  // an answer to a copy already answered
    if (a.ok) {
      json d = json::parse(a.data, nullptr, false);
      if (d.is_object() && d.value("duplicate", false)) ++duplicates_;
      done_ += it->second.len;
      in_flight_.erase(it);
      return;
    }
    if (transient(kChunk, a.error) && it->second.attempts < kMaxAttempts) {
      ++it->second.attempts;
      host_.info("copy " + id_ + ": chunk at " + std::to_string(a.offset) + " again (" + a.error +
                 ")");
      resend_chunk(a.offset);
      return;
    }
    throw Error(std::string(kWho) + ": node " + dst_node_ + " did not write the chunk at offset " +
                    std::to_string(a.offset) + ": " + a.error,
                BOSUN_ERR_IO);
  }
}

void Copy::pump() {
  std::vector<Answer> answers;
  inbox_->take(answers, kPoll);
  for (auto& a : answers) handle(std::move(a));
  if (call_.cancelled()) {
    throw Error(std::string(kWho) + ": cancelled after " + std::to_string(done_) + " of " +
                    std::to_string(size_) + " bytes; the same copy sent again resumes there",
                BOSUN_ERR_CANCELLED);
  }
  auto quiet = Clock::now() - last_heard_;
  if (quiet > stall_) {
    throw Error(std::string(kWho) + ": no answer from node " + dst_node_ + " for " +
                    std::to_string(std::chrono::duration_cast<milliseconds>(quiet).count() / 1000) +
                    " s (ACKTimeout " + std::to_string(delivery_.ack_timeout_s) + " s x " +
                    std::to_string(delivery_.retries + 1) + " attempts); " + std::to_string(done_) +
                    " of " + std::to_string(size_) +
                    " bytes are there, and the same copy sent again resumes from them",
                BOSUN_ERR_TIMEOUT);
  }
  progress(false);
}

Answer Copy::await(std::optional<Answer>& slot, const char* method, void (Copy::*resend)()) {
  while (true) {
    while (!slot) pump();
    Answer a = std::move(*slot);
    slot.reset();
    if (a.ok) return a;
    int attempts = method == std::string(kBegin) ? begin_attempts_ : commit_attempts_;
    if (!transient(method, a.error) || attempts >= kMaxAttempts) {
      throw Error(std::string(kWho) + ": node " + dst_node_ + ": " + a.error, BOSUN_ERR_HANDLER);
    }
    host_.info("copy " + id_ + ": " + method + " again (" + a.error + ")");
    (this->*resend)();
  }
}

void Copy::progress(bool force) {
  if (settings_.progress_interval.count() <= 0) return;
  auto now = Clock::now();
  if (!force && now - last_progress_ < settings_.progress_interval) return;
  if (!force && now - started_ < settings_.progress_interval) return;
  last_progress_ = now;
  json p = {{"progress",
             {{"done", done_ + skipped_},
              {"total", size_},
              {"unit", "bytes"},
              {"what", "copy " + src_.path + " to " + dst_node_ + ":" + dst_given_}}}};
  call_.reply(p.dump());
}

std::string Copy::run() {
  id_ = std::string(call_.id());
  const std::string data_dir(host_.data_dir());
  src_ = open_source(kWho, call_.arg(0), data_dir);
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{src_.fd};
  size_ = static_cast<uint64_t>(src_.st.st_size);
  dst_node_ = std::string(call_.arg(1));
  dst_given_ = std::string(call_.arg(2));
  const std::string self(host_.node_name());
  {
    // The same file, unchanged, to the same place: the same key, so a copy
    // sent again after a cut resumes the partial file.
    std::string identity = self + '\0' + src_.path + '\0' + std::to_string(size_) + '\0' +
                           std::to_string(src_.st.st_mtim.tv_sec) + '.' +
                           std::to_string(src_.st.st_mtim.tv_nsec) + '\0' + dst_node_ + '\0' +
                           dst_given_;
    key_ = sha256_hex(identity).substr(0, 32);
  }
  buf_.resize(settings_.chunk_size);
  json request = json::parse(call_.message_json(), nullptr, false);
  relayed_ = request.is_object() && request.value("replyMethod", "") == kRelay;

  send_begin();
  Answer begun = await(begin_, kBegin, &Copy::send_begin);
  if (relayed_) {
    // copy_file_to waits on the destination: tell it early that the copy runs.
    json p = {{"progress", {{"done", 0}, {"total", size_}, {"unit", "bytes"}}}};
    call_.reply(p.dump());
  }
  json b = json::parse(begun.data, nullptr, false);
  if (!b.is_object() || !b.contains("next") || !b["next"].is_number_unsigned()) {
    throw Error(std::string(kWho) + ": node " + dst_node_ + " answered " + kBegin +
                    " with something else than its state: " + begun.data,
                BOSUN_ERR_HANDLER);
  }
  dst_path_ = b.value("path", dst_given_);
  const uint64_t have_prefix = b["next"].get<uint64_t>();
  std::vector<uint64_t> have_beyond;
  if (b.contains("beyond") && b["beyond"].is_array()) {
    for (const auto& x : b["beyond"]) {
      if (x.is_number_unsigned()) have_beyond.push_back(x.get<uint64_t>());
    }
  }
  auto has = [&](uint64_t index) {
    return index < have_prefix ||
           std::find(have_beyond.begin(), have_beyond.end(), index) != have_beyond.end();
  };

  Sha256 sha;
  const uint64_t chunk = settings_.chunk_size;
  for (uint64_t offset = 0; offset < size_; offset += chunk) {
    uint64_t len = std::min(chunk, size_ - offset);
    while (in_flight_.size() >= settings_.window) pump();
    read_at(offset, len);
    sha.update(buf_.data(), len);
    if (has(offset / chunk)) {
      skipped_ += len;
      continue;
    }
    in_flight_[offset] = InFlight{len, 1};
    send_chunk(offset, std::string_view(buf_.data(), len));
    progress(false);
  }
  while (!in_flight_.empty()) pump();
  sha_ = sha.hex();

  struct stat now {};
  if (::fstat(src_.fd, &now) != 0 || static_cast<uint64_t>(now.st_size) != size_ ||
      now.st_mtim.tv_sec != src_.st.st_mtim.tv_sec ||
      now.st_mtim.tv_nsec != src_.st.st_mtim.tv_nsec) {
    try {
      send(kAbort, json::array({key_}), "", json::array({id_, "abort"}), 30);
    } catch (const Error&) {
    }
    throw Error(std::string(kWho) + ": the source file " + in_quotes(src_.path) +
                    " changed during the copy; the partial copy on node " + dst_node_ +
                    " is dropped. Copy it again",
                BOSUN_ERR_IO);
  }
  send_commit();
  Answer committed = await(commit_, kCommit, &Copy::send_commit);
  json c = json::parse(committed.data, nullptr, false);
  if (!c.is_object() || c.value("sha256", "") != sha_) {
    throw Error(std::string(kWho) + ": node " + dst_node_ + " answered " + kCommit +
                    " without the SHA-256 it was sent: " + committed.data,
                BOSUN_ERR_HANDLER);
  }
  auto ms = std::chrono::duration_cast<milliseconds>(Clock::now() - started_).count();
  progress(true);
  host_.info("copied " + in_quotes(src_.path) + " to " + dst_node_ + ":" +
             in_quotes(c.value("path", dst_path_)) + " (" + mib(size_) + " in " +
             std::to_string(ms) + " ms, sha256 " + sha_ + ")");
  return json{{"source", src_.path},
              {"node", dst_node_},
              {"destination", c.value("path", dst_path_)},
              {"bytes", size_},
              {"sha256", sha_},
              {"mode", src_.st.st_mode & 0777},
              {"durationMs", ms},
              {"resumedBytes", skipped_},
              {"resentChunks", resent_},
              {"chunksWritten", c.value("chunksWritten", 0)},
              {"duplicateChunks", c.value("duplicateChunks", duplicates_)}}
      .dump();
}

}  // namespace

void Inbox::deliver(Answer a) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back(std::move(a));
  }
  cv_.notify_one();
}

void Inbox::take(std::vector<Answer>& out, milliseconds max) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, max, [this] { return !queue_.empty(); });
  while (!queue_.empty()) {
    out.push_back(std::move(queue_.front()));
    queue_.pop_front();
  }
}

std::shared_ptr<Inbox> Inboxes::open(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto inbox = std::make_shared<Inbox>();
  open_[id] = inbox;
  return inbox;
}

void Inboxes::close(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  open_.erase(id);
}

std::shared_ptr<Inbox> Inboxes::find(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = open_.find(id);
  return it == open_.end() ? nullptr : it->second;
}

size_t Inboxes::size() {
  std::lock_guard<std::mutex> lock(mu_);
  return open_.size();
}

milliseconds Delivery::budget() const {
  return milliseconds(std::llround(ack_timeout_s * 1000 * (retries + 1)));
}

Delivery delivery_of(const bosun::Call& call, const Settings& settings) {
  Delivery d{settings.ack_timeout_s, settings.retries};
  json m = json::parse(call.message_json(), nullptr, false);
  if (m.is_object()) {
    if (auto it = m.find("ACKTimeout"); it != m.end() && it->is_number() && *it > 0) {
      d.ack_timeout_s = it->get<double>();
    }
    if (auto it = m.find("retries"); it != m.end() && it->is_number_unsigned()) {
      d.retries = it->get<int>();
    }
  }
  return d;
}

bool is_node_name(std::string_view s) {
  if (s.empty() || s.size() > 128) return false;
  for (char c : s) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

std::string run_copy(const bosun::Call& call, const bosun::Host& host, const Settings& settings,
                     Inboxes& inboxes) {
  std::string id(call.id());
  auto inbox = inboxes.open(id);
  struct Closer {
    Inboxes& inboxes;
    std::string id;
    ~Closer() { inboxes.close(id); }
  } closer{inboxes, id};
  Copy copy(call, host, settings, inbox);
  return copy.run();
}

}  // namespace filecopy
