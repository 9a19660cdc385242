#include "receiver.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <nlohmann/json.hpp>
#include <vector>

#include "codec.hpp"
#include "paths.hpp"

namespace filecopy {

using bosun::Error;
using nlohmann::json;

namespace {

constexpr const char* kIndexKey = "rx-index";
constexpr size_t kHashBuffer = 1 << 20;

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string state_key(const std::string& key) {
  return "rx/" + key;
}

Error invalid(const char* who, const std::string& text) {
  return Error(std::string(who) + ": " + text, BOSUN_ERR_INVALID_ARGUMENT);
}

Error io_error(const char* who, const std::string& what, const std::string& path) {
  return Error(
      std::string(who) + ": cannot " + what + " " + in_quotes(path) + ": " + std::strerror(errno),
      BOSUN_ERR_IO);
}

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  int close() {
    int rc = ::close(fd_);
    fd_ = -1;
    return rc;
  }

 private:
  int fd_;
};

json parse_object(const char* who, std::string_view text) {
  json j = json::parse(text, nullptr, false);
  if (!j.is_object()) throw invalid(who, "the message's data must be a JSON object");
  return j;
}

std::string string_of(const char* who, const json& j, const char* field) {
  auto it = j.find(field);
  if (it == j.end() || !it->is_string()) {
    throw invalid(who, std::string("\"") + field + "\" must be a string");
  }
  return it->get<std::string>();
}

uint64_t number_of(const char* who, const json& j, const char* field) {
  auto it = j.find(field);
  if (it == j.end() || !it->is_number_unsigned()) {
    throw invalid(who, std::string("\"") + field + "\" must be a non-negative integer");
  }
  return it->get<uint64_t>();
}

std::string key_arg(const char* who, const bosun::Call& call) {
  if (call.arg_count() < 1) throw invalid(who, "methodArgs must start with the transfer key");
  std::string key(call.arg(0));
  if (!is_hex(key, 32)) throw invalid(who, "the transfer key must be 32 lowercase hex digits");
  return key;
}

std::string no_transfer(const char* who, const std::string& key, const bosun::Host& host) {
  return std::string(who) + ": no copy in progress for transfer " + key + " on node " +
         std::string(host.node_name()) + " (it finished, expired or was aborted)";
}

// Writes all of `data` at `offset`.
void write_at(const char* who, int fd, std::string_view data, uint64_t offset,
              const std::string& path) {
  while (!data.empty()) {
    ssize_t n = ::pwrite(fd, data.data(), data.size(), static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw io_error(who, "write", path);
    }
    data.remove_prefix(static_cast<size_t>(n));
    offset += static_cast<uint64_t>(n);
  }
}

// SHA-256 and length of what is in `fd` from its start.
std::pair<std::string, uint64_t> hash_file(const char* who, int fd, const std::string& path) {
  Sha256 sha;
  std::vector<char> buf(kHashBuffer);
  uint64_t total = 0;
  while (true) {
    ssize_t n = ::pread(fd, buf.data(), buf.size(), static_cast<off_t>(total));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw io_error(who, "read back", path);
    }
    if (n == 0) break;
    sha.update(buf.data(), static_cast<size_t>(n));
    total += static_cast<uint64_t>(n);
  }
  return {sha.hex(), total};
}

void sync_folder(const std::string& folder) {
  int fd = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

}  // namespace

// ------------------------------------------------------------- RxState ---

void RxState::add(uint64_t index) {
  if (has(index)) return;
  beyond.insert(index);
  while (!beyond.empty() && *beyond.begin() == next) {
    beyond.erase(beyond.begin());
    ++next;
  }
}

std::string RxState::to_json() const {
  return json{{"v", 1},
              {"key", key},
              {"from", from},
              {"src", src},
              {"dst", dst},
              {"tmp", tmp},
              {"size", size},
              {"chunk", chunk},
              {"mode", mode},
              {"next", next},
              {"beyond", beyond},
              {"written", written},
              {"duplicates", duplicates},
              {"created", created_ms},
              {"updated", updated_ms}}
      .dump();
}

std::optional<RxState> RxState::from_json(std::string_view text) {
  json j = json::parse(text, nullptr, false);
  if (!j.is_object() || j.value("v", 0) != 1) return std::nullopt;
  try {
    RxState s;
    s.key = j.at("key").get<std::string>();
    s.from = j.at("from").get<std::string>();
    s.src = j.at("src").get<std::string>();
    s.dst = j.at("dst").get<std::string>();
    s.tmp = j.at("tmp").get<std::string>();
    s.size = j.at("size").get<uint64_t>();
    s.chunk = j.at("chunk").get<uint64_t>();
    s.mode = j.at("mode").get<uint32_t>();
    s.next = j.at("next").get<uint64_t>();
    for (const auto& b : j.at("beyond")) s.beyond.insert(b.get<uint64_t>());
    s.written = j.at("written").get<uint64_t>();
    s.duplicates = j.at("duplicates").get<uint64_t>();
    s.created_ms = j.at("created").get<int64_t>();
    s.updated_ms = j.at("updated").get<int64_t>();
    if (s.chunk == 0) return std::nullopt;
    return s;
  } catch (const json::exception&) {
    return std::nullopt;
  }
}

// ------------------------------------------------------------ Receiver ---

Receiver::Receiver(bosun::Host host, std::string data_dir, SettingsFn settings)
    : host_(host), data_dir_(std::move(data_dir)), settings_(std::move(settings)) {}

std::shared_ptr<Receiver::Entry> Receiver::entry(const std::string& key) {
  std::lock_guard<std::mutex> lock(entries_mu_);
  if (entries_.size() > 64) {
    for (auto it = entries_.begin(); it != entries_.end();) {
      it = it->second.expired() ? entries_.erase(it) : std::next(it);
    }
  }
  auto& slot = entries_[key];
  auto e = slot.lock();
  if (!e) {
    e = std::make_shared<Entry>();
    slot = e;
  }
  return e;
}

std::optional<RxState> Receiver::load(const std::string& key) {
  auto text = host_.kv_get(state_key(key));
  if (!text) return std::nullopt;
  auto s = RxState::from_json(*text);
  if (!s) {
    host_.warn("transfer " + key + ": its saved state does not decode; starting it over");
    host_.kv_delete(state_key(key));
  }
  return s;
}

void Receiver::save(const RxState& s) {
  host_.kv_put(state_key(s.key), s.to_json());
}

void Receiver::drop(const RxState& s, bool remove_tmp) {
  if (remove_tmp) ::unlink(s.tmp.c_str());
  host_.kv_delete(state_key(s.key));
  index_update(s.key, false);
}

std::vector<std::string> Receiver::index() {
  auto text = host_.kv_get(kIndexKey);
  std::vector<std::string> out;
  if (!text) return out;
  json j = json::parse(*text, nullptr, false);
  if (!j.is_array()) return out;
  for (const auto& k : j) {
    if (k.is_string()) out.push_back(k.get<std::string>());
  }
  return out;
}

void Receiver::index_update(const std::string& key, bool add) {
  std::lock_guard<std::mutex> lock(index_mu_);
  std::vector<std::string> keys = index();
  auto it = std::find(keys.begin(), keys.end(), key);
  if (add == (it != keys.end())) return;
  if (add) {
    keys.push_back(key);
  } else {
    keys.erase(it);
  }
  host_.kv_put(kIndexKey, json(keys).dump());
}

std::string Receiver::begin(const bosun::Call& call) {
  const char* who = kBegin;
  json d = parse_object(who, call.data());
  std::string key = string_of(who, d, "key");
  if (!is_hex(key, 32)) throw invalid(who, "\"key\" must be 32 lowercase hex digits");
  std::string src = string_of(who, d, "src");
  std::string dst = string_of(who, d, "dst");
  uint64_t size = number_of(who, d, "size");
  uint64_t chunk = number_of(who, d, "chunk");
  uint64_t mode = number_of(who, d, "mode");
  if (chunk < 1024 || chunk > (1u << 20)) throw invalid(who, "\"chunk\" must be 1 KiB to 1 MiB");
  if (mode > 07777) throw invalid(who, "\"mode\" must be a permission mode (at most 07777)");

  Settings settings = settings_();
  std::vector<std::string> allowed = settings.allowed_dirs;
  if (allowed.empty()) allowed.push_back(data_dir_);
  Destination dest = resolve_destination(who, dst, data_dir_, allowed, true);

  auto e = entry(key);
  std::lock_guard<std::mutex> lock(e->mu);
  std::optional<RxState> state = load(key);
  struct stat st {};
  if (state && state->dst == dest.path && state->size == size && state->chunk == chunk &&
      ::stat(state->tmp.c_str(), &st) == 0) {
    // The same copy again (the sender was cut off and it was sent anew).
    state->updated_ms = now_ms();
    state->from = std::string(call.from_node());
    save(*state);
    host_.info("copy " + key + " to " + in_quotes(dest.path) + " resumes at chunk " +
               std::to_string(state->next) + " of " + std::to_string(state->chunks()));
  } else {
    if (state) drop(*state, true);
    std::string name = dest.path.substr(dest.path.rfind('/') + 1);
    RxState s;
    s.key = key;
    s.from = std::string(call.from_node());
    s.src = src;
    s.dst = dest.path;
    s.tmp = (dest.folder == "/" ? "" : dest.folder) + "/." + name + "." + key.substr(0, 12) +
            ".bosun-part";
    s.size = size;
    s.chunk = chunk;
    s.mode = static_cast<uint32_t>(mode & 0777);
    s.created_ms = s.updated_ms = now_ms();
    struct statvfs vfs {};
    if (::statvfs(dest.folder.c_str(), &vfs) == 0) {
      uint64_t free_bytes = static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize;
      if (free_bytes < size) {
        throw Error(std::string(who) + ": not enough free space in " + in_quotes(dest.folder) +
                        " for " + std::to_string(size) + " bytes (" + std::to_string(free_bytes) +
                        " available)",
                    BOSUN_ERR_IO);
      }
    }
    Fd fd(::open(s.tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600));
    if (fd.get() < 0) throw io_error(who, "create the partial file", s.tmp);
    index_update(key, true);
    save(s);
    state = std::move(s);
  }
  return json{{"key", key}, {"path", state->dst}, {"next", state->next}, {"beyond", state->beyond}}
      .dump();
}

std::string Receiver::chunk(const bosun::Call& call) {
  const char* who = kChunk;
  std::string key = key_arg(who, call);
  if (call.arg_count() != 2) throw invalid(who, "methodArgs must be [key, offset]");
  std::string off_text(call.arg(1));
  if (off_text.empty() || off_text.size() > 19 ||
      off_text.find_first_not_of("0123456789") != std::string::npos) {
    throw invalid(who, "the offset must be a decimal number of bytes");
  }
  uint64_t offset = std::stoull(off_text);

  auto e = entry(key);
  std::lock_guard<std::mutex> lock(e->mu);
  std::optional<RxState> state = load(key);
  if (!state) throw Error(no_transfer(who, key, host_), BOSUN_ERR_NOT_FOUND);
  if (offset % state->chunk != 0 || offset >= state->size) {
    throw invalid(who, "offset " + off_text + " is not the start of a chunk of the " +
                           std::to_string(state->size) + "-byte file");
  }
  uint64_t index = offset / state->chunk;
  state->updated_ms = now_ms();
  if (state->has(index)) {
    // A chunk sent again (its first answer was lost to a restart): it is
    // already in the file and is not written twice.
    ++state->duplicates;
    save(*state);
    return json{{"offset", offset}, {"duplicate", true}}.dump();
  }
  auto bytes = base64_decode(call.data());
  if (!bytes) throw invalid(who, "the chunk's data is not base64");
  uint64_t expected = std::min<uint64_t>(state->chunk, state->size - offset);
  if (bytes->size() != expected) {
    throw invalid(who, "the chunk at offset " + off_text + " holds " +
                           std::to_string(bytes->size()) + " bytes, expected " +
                           std::to_string(expected));
  }
  Fd fd(::open(state->tmp.c_str(), O_WRONLY | O_CLOEXEC | O_NOFOLLOW));
  if (fd.get() < 0) throw io_error(who, "open the partial file", state->tmp);
  write_at(who, fd.get(), *bytes, offset, state->tmp);
  if (fd.close() != 0) throw io_error(who, "write", state->tmp);
  state->add(index);
  ++state->written;
  save(*state);
  return json{{"offset", offset}}.dump();
}

std::string Receiver::commit(const bosun::Call& call) {
  const char* who = kCommit;
  std::string key = key_arg(who, call);
  json d = parse_object(who, call.data());
  std::string sha = string_of(who, d, "sha256");
  uint64_t size = number_of(who, d, "size");
  if (!is_hex(sha, 64)) throw invalid(who, "\"sha256\" must be 64 lowercase hex digits");

  auto e = entry(key);
  std::lock_guard<std::mutex> lock(e->mu);
  std::optional<RxState> state = load(key);
  if (!state) {
    // Committed before and its answer lost to a restart: the file says so.
    std::string dst = d.value("path", "");
    if (!dst.empty() && dst[0] == '/') {
      Fd fd(::open(dst.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
      if (fd.get() >= 0) {
        auto [have, len] = hash_file(who, fd.get(), dst);
        if (have == sha && len == size) {
          return json{{"path", dst}, {"bytes", size}, {"sha256", sha}, {"already", true}}.dump();
        }
      }
    }
    throw Error(no_transfer(who, key, host_), BOSUN_ERR_NOT_FOUND);
  }
  if (size != state->size) {
    throw invalid(who, "the copy was begun for " + std::to_string(state->size) +
                           " bytes, committed for " + std::to_string(size));
  }
  if (state->next < state->chunks()) {
    throw Error(std::string(who) + ": chunk " + std::to_string(state->next) + " of " +
                    std::to_string(state->chunks()) + " never arrived",
                BOSUN_ERR_INVALID_ARGUMENT);
  }
  Fd fd(::open(state->tmp.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW));
  if (fd.get() < 0) throw io_error(who, "open the partial file", state->tmp);
  if (::fdatasync(fd.get()) != 0) throw io_error(who, "flush", state->tmp);
  auto [have, len] = hash_file(who, fd.get(), state->tmp);
  if (have != sha || len != size) {
    drop(*state, true);
    throw Error(std::string(who) + ": SHA-256 mismatch for " + in_quotes(state->dst) +
                    ": the source " + "has " + sha + " (" + std::to_string(size) +
                    " bytes), what arrived has " + have + " (" + std::to_string(len) +
                    " bytes); the partial copy was removed",
                BOSUN_ERR_IO);
  }
  if (::fchmod(fd.get(), state->mode) != 0) throw io_error(who, "set the mode of", state->tmp);
  if (fd.close() != 0) throw io_error(who, "close", state->tmp);
  if (::rename(state->tmp.c_str(), state->dst.c_str()) != 0) {
    throw io_error(who, "rename the partial file to", state->dst);
  }
  sync_folder(state->dst.substr(0, std::max<size_t>(1, state->dst.rfind('/'))));
  drop(*state, false);
  host_.info("copy " + key + " from " + state->from + ":" + in_quotes(state->src) + " written to " +
             in_quotes(state->dst) + " (" + std::to_string(size) + " bytes, sha256 " + sha + ")");
  return json{{"path", state->dst},
              {"bytes", size},
              {"sha256", sha},
              {"chunksWritten", state->written},
              {"duplicateChunks", state->duplicates}}
      .dump();
}

std::string Receiver::abort(const bosun::Call& call) {
  std::string key = key_arg(kAbort, call);
  auto e = entry(key);
  std::lock_guard<std::mutex> lock(e->mu);
  std::optional<RxState> state = load(key);
  if (!state) return json{{"aborted", false}}.dump();
  drop(*state, true);
  return json{{"aborted", true}, {"path", state->dst}}.dump();
}

void Receiver::sweep() {
  const int64_t ttl_ms = settings_().partial_ttl.count() * 1000;
  const int64_t now = now_ms();
  std::vector<std::string> keys;
  {
    std::lock_guard<std::mutex> lock(index_mu_);
    keys = index();
  }
  for (const auto& key : keys) {
    auto e = entry(key);
    std::lock_guard<std::mutex> lock(e->mu);
    std::optional<RxState> state = load(key);
    if (!state) {
      index_update(key, false);
    } else if (now - state->updated_ms > ttl_ms) {
      host_.info("removing the partial copy " + in_quotes(state->tmp) + " (idle since " +
                 std::to_string((now - state->updated_ms) / 1000) + " s)");
      drop(*state, true);
    }
  }
}

}  // namespace filecopy
