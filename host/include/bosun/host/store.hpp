// The node's durable state (DESIGN §3 KV store, §5 delivery): one LMDB
// environment at <dataDir>/state holding the plugins' KV entries, the outbox,
// the inbox (exactly-once) and small host metadata.
//
// Writes are group-committed, leader style: a write that finds no commit in
// progress commits right away on the caller's thread (no hand-off to another
// thread); writes that arrive meanwhile queue up and the next leader commits
// them all in one transaction. A background thread leads when nobody else
// does (asynchronous writes queued behind a commit). A write completes when it
// is durable per the sync mode: `always` waits for one fsync per group,
// `interval` completes at commit (safe against the process being killed) and
// a timer flushes the environment every sync_interval_ms.
#pragma once

#include "bosun/host/config.hpp"

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <filesystem>
#include <functional>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

struct MDB_env;
struct MDB_txn;

namespace bosun::host {

class Store;

class StoreError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct StoreOptions {
  SyncMode sync = SyncMode::interval;
  int64_t sync_interval_ms = 100;
  int64_t map_size_mb = 1024;
};

// The named databases of the environment.
enum class Db { kv, outbox, inbox, meta };

// LMDB's key limit (default build); the KV key is plugin + '\0' + key.
inline constexpr size_t kMaxKeyBytes = 511;

// Visits one entry; the views are valid for the call only. Return false to stop.
using EntryVisitor = std::function<bool(std::string_view key, std::string_view value)>;

// The write transaction a submitted write runs in. Only valid inside that
// write function; a write function may run more than once (it is replayed
// alone when another write of its group throws), so it must only touch the
// transaction and its own captures.
class WriteTxn {
 public:
  std::optional<std::string> get(Db db, std::string_view key) const;
  void put(Db db, std::string_view key, std::string_view value);
  bool del(Db db, std::string_view key);  // true if the key existed
  void for_each(Db db, std::string_view prefix, const EntryVisitor& fn) const;

 private:
  friend class Store;
  WriteTxn(MDB_txn* txn, const Store& store) : txn_(txn), store_(store) {}
  MDB_txn* txn_;
  const Store& store_;
};

struct InboxResult {
  bool fresh = false;  // false: the id was seen before (a resent copy)
  std::string state;   // the entry's state after the call
};

struct InboxEntry {
  std::string state;
  int64_t updated_ms = 0;  // epoch ms of the last state change
  std::string bytes;       // the message; empty once its state is "done", but
                           // for a pure call recorded answered: its reply
};

using WriteFn = std::function<void(WriteTxn&)>;
using DoneFn = std::function<void(std::exception_ptr)>;  // nullptr = durable
// The completion of a write nobody waits for: logs "<what>: <error>" when it
// failed (only a failure is worth a line).
DoneFn log_write_failure(std::string what);

class Store {
 public:
  Store(const std::filesystem::path& dir, StoreOptions opts);
  ~Store();  // drains queued writes, syncs, closes
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  const std::filesystem::path& dir() const { return dir_; }

  // Blocks until the write is durable per the sync mode; rethrows what `fn`
  // or LMDB threw. Must not be called from a completion callback.
  void write(WriteFn fn);
  // `done` runs on the writer thread once the write is durable (or failed):
  // keep it short and never block in it.
  void write_async(WriteFn fn, DoneFn done);
  // Queued for the background writer thread, which commits it in order with
  // the other writes: never committed, and no other write's completion run,
  // on the caller's thread. For callers that hold a lock which completions
  // may take (a blocking write that leads a commit runs every completion
  // of its group).
  void write_later(WriteFn fn, DoneFn done);

  std::optional<std::string> get(Db db, std::string_view key) const;
  void for_each(Db db, std::string_view prefix, const EntryVisitor& fn) const;
  // Whether each of `keys` is in `db`, read in one transaction.
  std::vector<char> contains(Db db, const std::vector<std::string_view>& keys) const;

  // KV scoped to a plugin.
  void kv_put(std::string_view plugin, std::string_view key, std::string_view value);
  std::optional<std::string> kv_get(std::string_view plugin, std::string_view key) const;
  bool kv_delete(std::string_view plugin, std::string_view key);

  // Outbox: messages this node has accepted and not yet delivered.
  void outbox_put(std::string_view id, std::string_view bytes);
  void outbox_put_async(std::string_view id, std::string_view bytes, DoneFn done);
  bool outbox_remove(std::string_view id);
  std::vector<std::pair<std::string, std::string>> outbox_list() const;  // in id order

  // Inbox: every message id received, so each runs at most once.
  InboxResult inbox_record(std::string_view id, std::string_view bytes);
  void inbox_record_async(std::string_view id, std::string_view bytes,
                          std::function<void(std::exception_ptr, InboxResult)> done);
  // The same inside a write of one's own (several messages in one
  // transaction): true when the id is new and was recorded (in `state`).
  static bool inbox_record_in(WriteTxn& t, std::string_view id, std::string_view bytes,
                              std::string_view state = "received");
  // A pure call (no effect but its reply) recorded "done" on arrival with
  // its reply kept, to answer a resent copy with the same reply: true when
  // the id was new.
  static bool inbox_record_answered_in(WriteTxn& t, std::string_view id, std::string_view reply);
  // The same inside a write of one's own.
  static void inbox_set_state_in(WriteTxn& t, std::string_view id, std::string_view state);
  void inbox_set_state(std::string_view id, std::string_view state);
  void inbox_set_state_async(std::string_view id, std::string_view state, DoneFn done);
  std::optional<InboxEntry> inbox_get(std::string_view id) const;
  std::vector<std::string> inbox_pending() const;  // ids not "done", in id order
  size_t inbox_prune(int64_t older_than_ms);       // forgets "done" entries; returns count

  void meta_put(std::string_view key, std::string_view value);
  std::optional<std::string> meta_get(std::string_view key) const;

  uint64_t syncs() const { return syncs_.load(); }  // mdb_env_sync calls so far

 private:
  friend class WriteTxn;
  // A thread blocked in write(): woken when its write is done, or to take
  // the lead for the writes queued with it.
  struct Waiter {
    std::condition_variable cv;
    bool done = false;
    std::exception_ptr error;
  };
  struct Pending {
    WriteFn fn;
    DoneFn done;
    Waiter* waiter = nullptr;  // set for write(), alive while queued
  };

  void writer_loop();
  // Called with mu_ held and leader_ set; commits everything queued, then
  // gives up the lead and runs the completions (with mu_ released meanwhile).
  void lead(std::unique_lock<std::mutex>& lock);
  std::vector<std::exception_ptr> commit_group(std::vector<Pending>& group,
                                               std::exception_ptr& group_error);
  void sync_loop();
  void sync_now();

  std::filesystem::path dir_;
  StoreOptions opts_;
  MDB_env* env_ = nullptr;
  std::array<unsigned, 4> dbis_{};

  std::mutex mu_;
  std::condition_variable writer_cv_;  // the background leader: work is queued, nobody leads
  std::condition_variable idle_cv_;    // the destructor: no thread is inside lead() any more
  std::deque<Pending> queue_;
  bool leader_ = false;
  int busy_ = 0;  // threads inside lead(), completions included
  bool stopping_ = false;
  std::thread writer_;

  std::mutex sync_mu_;
  std::condition_variable sync_cv_;
  bool sync_stopping_ = false;
  std::thread syncer_;

  std::atomic<uint64_t> commits_{0};
  std::atomic<uint64_t> synced_commits_{0};
  std::atomic<uint64_t> syncs_{0};
};

// Writes and fdatasyncs a small file `samples` times in `dir`; returns the
// median in microseconds.
double measure_fsync_p50_us(const std::filesystem::path& dir, int samples);

}  // namespace bosun::host
