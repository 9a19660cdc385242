// The receiving side of a copy: filecopy_begin / _chunk / _commit / _abort.
//
// The state of each copy in progress lives in the module's KV store under
// "rx/<key>" (and the list of keys under "rx-index"), so a receiver that was
// killed resumes where it was: which chunks are written (a contiguous prefix
// plus the few beyond it), the temp file, the expected size and mode. A
// chunk already written is acknowledged again and not written again. The
// key names the transfer: the sender derives it from its node, the source's
// path, size and mtime and the destination, so the same copy issued again
// after a cut resumes the partial file instead of starting over.
#pragma once

#include <bosun/plugin.hpp>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>

#include "settings.hpp"

namespace filecopy {

struct RxState {
  std::string key;
  std::string from;  // the sending node
  std::string src;   // the source path on the sending node (for messages)
  std::string dst;   // the destination, resolved
  std::string tmp;   // the partial file beside it
  uint64_t size = 0;
  uint64_t chunk = 0;
  uint32_t mode = 0644;
  uint64_t next = 0;          // chunks [0, next) are written
  std::set<uint64_t> beyond;  // chunks written past `next` (at most a window's worth)
  uint64_t written = 0;       // chunk writes, over every run of the node
  uint64_t duplicates = 0;    // chunks received again and not written again
  int64_t created_ms = 0;
  int64_t updated_ms = 0;

  uint64_t chunks() const { return size == 0 ? 0 : (size + chunk - 1) / chunk; }
  bool has(uint64_t index) const { return index < next || beyond.count(index) > 0; }
  void add(uint64_t index);
  std::string to_json() const;
  static std::optional<RxState> from_json(std::string_view text);
};

class Receiver {
 public:
  using SettingsFn = std::function<Settings()>;
  Receiver(bosun::Host host, std::string data_dir, SettingsFn settings);

  // Each returns the reply's data (JSON) or throws bosun::Error.
  std::string begin(const bosun::Call& call);
  std::string chunk(const bosun::Call& call);
  std::string commit(const bosun::Call& call);
  std::string abort(const bosun::Call& call);

  // Removes partial copies idle for longer than the partialTtl setting.
  void sweep();

 private:
  struct Entry {
    std::mutex mu;  // one operation on a transfer at a time
  };
  std::shared_ptr<Entry> entry(const std::string& key);
  std::optional<RxState> load(const std::string& key);
  void save(const RxState& s);
  void drop(const RxState& s, bool remove_tmp);
  void index_update(const std::string& key, bool add);
  std::vector<std::string> index();

  bosun::Host host_;
  std::string data_dir_;
  SettingsFn settings_;
  std::mutex entries_mu_;
  std::map<std::string, std::weak_ptr<Entry>> entries_;
  std::mutex index_mu_;
};

}  // namespace filecopy
