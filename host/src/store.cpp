#include "bosun/host/store.hpp"

#include <fcntl.h>
#include <lmdb.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <future>
#include <memory>
#include <set>

namespace bosun::host {

namespace fs = std::filesystem;

namespace {

constexpr std::array<const char*, 4> kDbNames = {"kv", "outbox", "inbox", "meta"};
constexpr unsigned kMaxReaders = 1024;
constexpr std::string_view kInboxReceived = "received";
constexpr std::string_view kInboxDone = "done";

const char* db_name(Db db) {
  return kDbNames[static_cast<size_t>(db)];
}

[[noreturn]] void fail(const fs::path& dir, std::string_view op, int rc) {
  throw StoreError("store " + dir.string() + ": " + std::string(op) +
                   " failed: " + mdb_strerror(rc));
}

// The text of what failed is made only when it failed: these run for every
// read and write.
void check(const fs::path& dir, std::string_view op, int rc) {
  if (rc != MDB_SUCCESS) fail(dir, op, rc);
}
void check(const fs::path& dir, std::string_view op, Db db, int rc);

MDB_val to_val(std::string_view s) {
  return MDB_val{s.size(), const_cast<char*>(s.data())};
}
std::string_view to_view(const MDB_val& v) {
  return std::string_view(static_cast<const char*>(v.mv_data), v.mv_size);
}

void check(const fs::path& dir, std::string_view op, Db db, int rc) {
  if (rc != MDB_SUCCESS) fail(dir, std::string(op) + " '" + db_name(db) + "'", rc);
}

void check_key(const fs::path& dir, Db db, std::string_view key) {
  if (key.empty())
    throw StoreError("store " + dir.string() + ": empty key in '" + db_name(db) + "'");
  if (key.size() > kMaxKeyBytes) {
    throw StoreError("store " + dir.string() + ": key of " + std::to_string(key.size()) +
                     " bytes in '" + db_name(db) + "' is over the " + std::to_string(kMaxKeyBytes) +
                     "-byte limit");
  }
}

// Aborts the transaction unless it was committed.
class Txn {
 public:
  Txn(MDB_env* env, unsigned flags, const fs::path& dir) : dir_(dir) {
    check(dir, flags & MDB_RDONLY ? "begin read transaction" : "begin write transaction",
          mdb_txn_begin(env, nullptr, flags, &txn_));
  }
  ~Txn() {
    if (txn_ != nullptr) mdb_txn_abort(txn_);
  }
  Txn(const Txn&) = delete;
  Txn& operator=(const Txn&) = delete;
  MDB_txn* get() const { return txn_; }
  void commit() {
    MDB_txn* t = std::exchange(txn_, nullptr);
    check(dir_, "commit", mdb_txn_commit(t));
  }

 private:
  const fs::path& dir_;
  MDB_txn* txn_ = nullptr;
};

std::optional<std::string> get_in(MDB_txn* txn, MDB_dbi dbi, const fs::path& dir, Db db,
                                  std::string_view key) {
  check_key(dir, db, key);
  MDB_val k = to_val(key), v;
  int rc = mdb_get(txn, dbi, &k, &v);
  if (rc == MDB_NOTFOUND) return std::nullopt;
  check(dir, "get from", db, rc);
  return std::string(to_view(v));
}

void for_each_in(MDB_txn* txn, MDB_dbi dbi, const fs::path& dir, Db db, std::string_view prefix,
                 const EntryVisitor& fn) {
  const std::string op = std::string("iterate '") + db_name(db) + "'";
  MDB_cursor* raw = nullptr;
  check(dir, op, mdb_cursor_open(txn, dbi, &raw));
  std::unique_ptr<MDB_cursor, void (*)(MDB_cursor*)> cursor(raw, mdb_cursor_close);
  MDB_val k = to_val(prefix), v;
  int rc = mdb_cursor_get(raw, &k, &v, prefix.empty() ? MDB_FIRST : MDB_SET_RANGE);
  for (; rc == MDB_SUCCESS; rc = mdb_cursor_get(raw, &k, &v, MDB_NEXT)) {
    std::string_view key = to_view(k);
    if (!key.starts_with(prefix)) return;
    if (!fn(key, to_view(v))) return;
  }
  if (rc != MDB_NOTFOUND) fail(dir, op, rc);
}

// Two Store objects on one environment in one process would break LMDB's locks.
std::mutex open_dirs_mu;
std::set<fs::path> open_dirs;

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Inbox value: 8-byte big-endian updated_ms, 1-byte state length, state, message bytes.
std::string encode_inbox(std::string_view state, int64_t updated_ms, std::string_view bytes) {
  std::string out;
  out.reserve(9 + state.size() + bytes.size());
  for (int shift = 56; shift >= 0; shift -= 8) {
    out.push_back(static_cast<char>((static_cast<uint64_t>(updated_ms) >> shift) & 0xff));
  }
  out.push_back(static_cast<char>(state.size()));
  out.append(state);
  out.append(bytes);
  return out;
}

InboxEntry decode_inbox(std::string_view value, std::string_view id) {
  if (value.size() < 9 || value.size() < 9 + size_t{static_cast<unsigned char>(value[8])}) {
    throw StoreError("inbox entry '" + std::string(id) + "' is corrupt (" +
                     std::to_string(value.size()) + " bytes)");
  }
  uint64_t ts = 0;
  for (int i = 0; i < 8; ++i) ts = (ts << 8) | static_cast<unsigned char>(value[i]);
  size_t state_len = static_cast<unsigned char>(value[8]);
  return InboxEntry{std::string(value.substr(9, state_len)), static_cast<int64_t>(ts),
                    std::string(value.substr(9 + state_len))};
}

void check_inbox_state(std::string_view state) {
  if (state.empty() || state.size() > 255) {
    throw StoreError("inbox state must be 1 to 255 bytes, got " + std::to_string(state.size()));
  }
}

}  // namespace

// ---- WriteTxn ---------------------------------------------------------------

std::optional<std::string> WriteTxn::get(Db db, std::string_view key) const {
  return get_in(txn_, store_.dbis_[static_cast<size_t>(db)], store_.dir_, db, key);
}

void WriteTxn::put(Db db, std::string_view key, std::string_view value) {
  check_key(store_.dir_, db, key);
  MDB_val k = to_val(key), v = to_val(value);
  check(store_.dir_, "put into", db,
        mdb_put(txn_, store_.dbis_[static_cast<size_t>(db)], &k, &v, 0));
}

bool WriteTxn::del(Db db, std::string_view key) {
  check_key(store_.dir_, db, key);
  MDB_val k = to_val(key);
  int rc = mdb_del(txn_, store_.dbis_[static_cast<size_t>(db)], &k, nullptr);
  if (rc == MDB_NOTFOUND) return false;
  check(store_.dir_, "delete from", db, rc);
  return true;
}

void WriteTxn::for_each(Db db, std::string_view prefix, const EntryVisitor& fn) const {
  for_each_in(txn_, store_.dbis_[static_cast<size_t>(db)], store_.dir_, db, prefix, fn);
}

// ---- Store: open and close --------------------------------------------------

Store::Store(const fs::path& dir, StoreOptions opts) : dir_(dir), opts_(opts) {
  if (opts_.sync_interval_ms <= 0) {
    throw StoreError("store " + dir_.string() + ": sync interval must be > 0 ms, got " +
                     std::to_string(opts_.sync_interval_ms));
  }
  if (opts_.map_size_mb <= 0 || opts_.map_size_mb > (int64_t{1} << 30)) {
    throw StoreError("store " + dir_.string() + ": map size must be 1 MiB to 1 PiB, got " +
                     std::to_string(opts_.map_size_mb) + " MiB");
  }
  try {
    if (fs::create_directories(dir_)) fs::permissions(dir_, fs::perms::owner_all);
    if (!fs::is_directory(dir_)) throw StoreError("store " + dir_.string() + ": not a folder");
    dir_ = fs::canonical(dir_);
  } catch (const fs::filesystem_error& e) {
    throw StoreError("store " + dir_.string() +
                     ": cannot create the folder: " + e.code().message());
  }

  {
    std::lock_guard lk(open_dirs_mu);
    if (!open_dirs.insert(dir_).second) {
      throw StoreError("store " + dir_.string() + ": already open in this process");
    }
  }
  try {
    MDB_env* raw = nullptr;
    check(dir_, "create environment", mdb_env_create(&raw));
    std::unique_ptr<MDB_env, void (*)(MDB_env*)> env(raw, mdb_env_close);
    check(dir_, "set max readers", mdb_env_set_maxreaders(raw, kMaxReaders));
    check(dir_, "set max databases", mdb_env_set_maxdbs(raw, kDbNames.size()));
    check(dir_, "set map size",
          mdb_env_set_mapsize(raw, static_cast<size_t>(opts_.map_size_mb) << 20));
    // We flush ourselves: once per group in `always` mode, on a timer otherwise.
    // MDB_WRITEMAP: a commit writes its pages into the shared file mapping
    // instead of one pwrite() per page; they are in the page cache all the
    // same, so a killed process loses nothing it committed.
    check(dir_, "open environment",
          mdb_env_open(raw, dir_.c_str(), MDB_NOSYNC | MDB_NOTLS | MDB_WRITEMAP, 0600));
    // Reader slots left behind by a killed process would pin old pages forever.
    int dead = 0;
    check(dir_, "check readers", mdb_reader_check(raw, &dead));
    {
      Txn txn(raw, 0, dir_);
      for (size_t i = 0; i < kDbNames.size(); ++i) {
        check(dir_, std::string("open database '") + kDbNames[i] + "'",
              mdb_dbi_open(txn.get(), kDbNames[i], MDB_CREATE, &dbis_[i]));
      }
      txn.commit();
    }
    env_ = env.release();
    writer_ = std::thread([this] { writer_loop(); });
    if (opts_.sync == SyncMode::interval) syncer_ = std::thread([this] { sync_loop(); });
  } catch (...) {
    if (writer_.joinable()) {
      {
        std::lock_guard lk(mu_);
        stopping_ = true;
      }
      writer_cv_.notify_all();
      writer_.join();
    }
    if (env_ != nullptr) mdb_env_close(env_);
    std::lock_guard lk(open_dirs_mu);
    open_dirs.erase(dir_);
    throw;
  }
}

Store::~Store() {
  {
    std::lock_guard lk(mu_);
    stopping_ = true;
  }
  // The background leader drains what is queued and waits out a commit in
  // progress on another thread before it returns.
  writer_cv_.notify_all();
  writer_.join();
  {
    // Completions still running on other threads' leads.
    std::unique_lock lk(mu_);
    idle_cv_.wait(lk, [this] { return busy_ == 0; });
  }
  if (syncer_.joinable()) {
    {
      std::lock_guard lk(sync_mu_);
      sync_stopping_ = true;
    }
    sync_cv_.notify_all();
    syncer_.join();
  }
  if (commits_.load() != synced_commits_.load()) {
    try {
      sync_now();
    } catch (const std::exception& e) {
      spdlog::error("{}", e.what());
    }
  }
  mdb_env_close(env_);
  std::lock_guard lk(open_dirs_mu);
  open_dirs.erase(dir_);
}

// ---- Store: writes ----------------------------------------------------------

namespace {
// The store whose write function runs on this thread, if any: a blocking
// write from inside one would wait for itself.
thread_local const Store* in_write_fn = nullptr;
}  // namespace

void Store::write(WriteFn fn) {
  if (in_write_fn == this) {
    throw StoreError("store " + dir_.string() +
                     ": blocking write from inside a write function would deadlock; put it "
                     "in the same write, or use write_async");
  }
  if (!fn) throw StoreError("store " + dir_.string() + ": write without a function");
  auto w = std::make_shared<Waiter>();
  std::unique_lock lk(mu_);
  if (stopping_) throw StoreError("store " + dir_.string() + ": closing, write refused");
  queue_.push_back(Pending{std::move(fn),
                           [this, w](std::exception_ptr e) {
                             std::lock_guard g(mu_);
                             w->error = e;
                             w->done = true;
                             w->cv.notify_one();
                           },
                           w.get()});
  while (!w->done) {
    if (!leader_ && !queue_.empty()) {
      leader_ = true;
      lead(lk);
      continue;
    }
    w->cv.wait(lk);
  }
  if (w->error) std::rethrow_exception(w->error);
}

void Store::write_async(WriteFn fn, DoneFn done) {
  if (!fn || !done) throw StoreError("store " + dir_.string() + ": write without a function");
  std::unique_lock lk(mu_);
  if (stopping_) throw StoreError("store " + dir_.string() + ": closing, write refused");
  queue_.push_back(Pending{std::move(fn), std::move(done)});
  // Inside a write function the current commit cannot take it: the
  // background leader will. Otherwise, if nobody leads, commit it now.
  if (leader_ || in_write_fn == this) {
    lk.unlock();
    writer_cv_.notify_one();
    return;
  }
  leader_ = true;
  lead(lk);
}

DoneFn log_write_failure(std::string what) {
  return [what = std::move(what)](std::exception_ptr err) {
    if (!err) return;
    try {
      std::rethrow_exception(err);
    } catch (const std::exception& e) {
      spdlog::error("{}: {}", what, e.what());
    }
  };
}

void Store::write_later(WriteFn fn, DoneFn done) {
  if (!fn || !done) throw StoreError("store " + dir_.string() + ": write without a function");
  {
    std::lock_guard lk(mu_);
    if (stopping_) throw StoreError("store " + dir_.string() + ": closing, write refused");
    queue_.push_back(Pending{std::move(fn), std::move(done)});
  }
  writer_cv_.notify_one();
}

void Store::lead(std::unique_lock<std::mutex>& lock) {
  std::vector<Pending> group(std::make_move_iterator(queue_.begin()),
                             std::make_move_iterator(queue_.end()));
  queue_.clear();
  ++busy_;
  lock.unlock();
  std::exception_ptr group_error;
  std::vector<std::exception_ptr> errors = commit_group(group, group_error);
  lock.lock();
  leader_ = false;
  // Writes that queued behind this commit: the first blocking writer among
  // them takes the lead (woken alone, not every waiter), or else the
  // background thread does.
  Waiter* next = nullptr;
  for (const auto& p : queue_) {
    if (p.waiter != nullptr) {
      next = p.waiter;
      break;
    }
  }
  if (next != nullptr) {
    next->cv.notify_one();
  } else if (!queue_.empty() || stopping_) {
    writer_cv_.notify_one();
  }
  lock.unlock();
  for (size_t i = 0; i < group.size(); ++i) {
    try {
      group[i].done(errors[i] ? errors[i] : group_error);
    } catch (const std::exception& e) {
      spdlog::error("store {}: a write completion callback threw: {}", dir_.string(), e.what());
    } catch (...) {
      spdlog::error("store {}: a write completion callback threw", dir_.string());
    }
  }
  lock.lock();
  if (--busy_ == 0 && stopping_) idle_cv_.notify_all();
}

void Store::writer_loop() {
  std::unique_lock lk(mu_);
  for (;;) {
    writer_cv_.wait(lk,
                    [this] { return (stopping_ && !leader_) || (!queue_.empty() && !leader_); });
    if (queue_.empty()) return;  // stopping, nothing queued, nobody committing
    leader_ = true;
    lead(lk);
  }
}

std::vector<std::exception_ptr> Store::commit_group(std::vector<Pending>& group,
                                                    std::exception_ptr& group_error) {
  std::vector<std::exception_ptr> errors(group.size());
  bool committed = false;
  in_write_fn = this;
  try {
    size_t failed = group.size();
    {
      Txn txn(env_, 0, dir_);
      WriteTxn w(txn.get(), *this);
      for (size_t i = 0; i < group.size() && failed == group.size(); ++i) {
        try {
          group[i].fn(w);
        } catch (...) {
          failed = i;
          errors[i] = std::current_exception();
        }
      }
      if (failed == group.size()) {
        txn.commit();
        committed = true;
      }
    }
    // One write threw, so the shared transaction was dropped: replay each write
    // alone so only the faulty one fails.
    if (failed != group.size() && group.size() > 1) {
      for (size_t i = 0; i < group.size(); ++i) {
        errors[i] = nullptr;
        try {
          Txn txn(env_, 0, dir_);
          WriteTxn w(txn.get(), *this);
          group[i].fn(w);
          txn.commit();
          committed = true;
        } catch (...) {
          errors[i] = std::current_exception();
        }
      }
    }
    in_write_fn = nullptr;
    if (committed) {
      ++commits_;
      if (opts_.sync == SyncMode::always) sync_now();
    }
  } catch (...) {
    in_write_fn = nullptr;
    group_error = std::current_exception();
  }
  return errors;
}

void Store::sync_now() {
  uint64_t upto = commits_.load();
  int rc = mdb_env_sync(env_, 1);
  ++syncs_;
  check(dir_, "sync", rc);
  synced_commits_.store(upto);
}

void Store::sync_loop() {
  std::unique_lock lk(sync_mu_);
  const auto interval = std::chrono::milliseconds(opts_.sync_interval_ms);
  while (!sync_cv_.wait_for(lk, interval, [this] { return sync_stopping_; })) {
    if (commits_.load() == synced_commits_.load()) continue;
    lk.unlock();
    try {
      sync_now();
    } catch (const std::exception& e) {
      spdlog::error("{}", e.what());
    }
    lk.lock();
  }
}

// ---- Store: reads -----------------------------------------------------------

std::optional<std::string> Store::get(Db db, std::string_view key) const {
  Txn txn(env_, MDB_RDONLY, dir_);
  return get_in(txn.get(), dbis_[static_cast<size_t>(db)], dir_, db, key);
}

std::vector<char> Store::contains(Db db, const std::vector<std::string_view>& keys) const {
  std::vector<char> out(keys.size(), 0);
  if (keys.empty()) return out;
  Txn txn(env_, MDB_RDONLY, dir_);
  for (size_t i = 0; i < keys.size(); ++i) {
    check_key(dir_, db, keys[i]);
    MDB_val k = to_val(keys[i]), v;
    int rc = mdb_get(txn.get(), dbis_[static_cast<size_t>(db)], &k, &v);
    if (rc != MDB_NOTFOUND) check(dir_, "get from", db, rc);
    out[i] = rc == MDB_SUCCESS ? 1 : 0;
  }
  return out;
}

void Store::for_each(Db db, std::string_view prefix, const EntryVisitor& fn) const {
  Txn txn(env_, MDB_RDONLY, dir_);
  for_each_in(txn.get(), dbis_[static_cast<size_t>(db)], dir_, db, prefix, fn);
}

// ---- Typed helpers ----------------------------------------------------------

namespace {

std::string kv_key(std::string_view plugin, std::string_view key) {
  if (plugin.empty()) throw StoreError("kv: empty plugin name");
  if (plugin.find('\0') != std::string_view::npos) {
    throw StoreError("kv: plugin name contains a NUL byte");
  }
  if (key.empty()) throw StoreError("kv: empty key for plugin '" + std::string(plugin) + "'");
  size_t total = plugin.size() + 1 + key.size();
  if (total > kMaxKeyBytes) {
    throw StoreError("kv: key for plugin '" + std::string(plugin) + "' is " +
                     std::to_string(total) + " bytes with the plugin name, over the " +
                     std::to_string(kMaxKeyBytes) + "-byte limit");
  }
  std::string out(plugin);
  out.push_back('\0');
  out.append(key);
  return out;
}

void check_id(const char* what, std::string_view id) {
  if (id.empty()) throw StoreError(std::string(what) + ": empty message id");
  if (id.size() > kMaxKeyBytes) {
    throw StoreError(std::string(what) + ": message id of " + std::to_string(id.size()) +
                     " bytes is over the " + std::to_string(kMaxKeyBytes) + "-byte limit");
  }
}

}  // namespace

void Store::kv_put(std::string_view plugin, std::string_view key, std::string_view value) {
  write([k = kv_key(plugin, key), v = std::string(value)](WriteTxn& t) { t.put(Db::kv, k, v); });
}

std::optional<std::string> Store::kv_get(std::string_view plugin, std::string_view key) const {
  return get(Db::kv, kv_key(plugin, key));
}

bool Store::kv_delete(std::string_view plugin, std::string_view key) {
  bool existed = false;
  write([k = kv_key(plugin, key), &existed](WriteTxn& t) { existed = t.del(Db::kv, k); });
  return existed;
}

void Store::outbox_put(std::string_view id, std::string_view bytes) {
  check_id("outbox_put", id);
  write([k = std::string(id), v = std::string(bytes)](WriteTxn& t) { t.put(Db::outbox, k, v); });
}

void Store::outbox_put_async(std::string_view id, std::string_view bytes, DoneFn done) {
  check_id("outbox_put", id);
  write_async(
      [k = std::string(id), v = std::string(bytes)](WriteTxn& t) { t.put(Db::outbox, k, v); },
      std::move(done));
}

bool Store::outbox_remove(std::string_view id) {
  check_id("outbox_remove", id);
  bool existed = false;
  write([k = std::string(id), &existed](WriteTxn& t) { existed = t.del(Db::outbox, k); });
  return existed;
}

std::vector<std::pair<std::string, std::string>> Store::outbox_list() const {
  std::vector<std::pair<std::string, std::string>> out;
  for_each(Db::outbox, "", [&out](std::string_view k, std::string_view v) {
    out.emplace_back(k, v);
    return true;
  });
  return out;
}

namespace {

WriteFn inbox_record_fn(std::string_view id, std::string_view bytes,
                        std::shared_ptr<InboxResult> result) {
  return [k = std::string(id), v = std::string(bytes), result](WriteTxn& t) {
    if (auto existing = t.get(Db::inbox, k)) {
      *result = InboxResult{false, decode_inbox(*existing, k).state};
    } else {
      t.put(Db::inbox, k, encode_inbox(kInboxReceived, now_ms(), v));
      *result = InboxResult{true, std::string(kInboxReceived)};
    }
  };
}

}  // namespace

bool Store::inbox_record_in(WriteTxn& t, std::string_view id, std::string_view bytes,
                            std::string_view state) {
  check_id("inbox_record", id);
  check_inbox_state(state);
  if (t.get(Db::inbox, id)) return false;
  // Finished on arrival: as in inbox_set_state, only the id and state stay.
  t.put(Db::inbox, id, encode_inbox(state, now_ms(), state == kInboxDone ? "" : bytes));
  return true;
}

bool Store::inbox_record_answered_in(WriteTxn& t, std::string_view id, std::string_view reply) {
  check_id("inbox_record", id);
  if (t.get(Db::inbox, id)) return false;
  t.put(Db::inbox, id, encode_inbox(kInboxDone, now_ms(), reply));
  return true;
}

InboxResult Store::inbox_record(std::string_view id, std::string_view bytes) {
  check_id("inbox_record", id);
  auto result = std::make_shared<InboxResult>();
  write(inbox_record_fn(id, bytes, result));
  return *result;
}

void Store::inbox_record_async(std::string_view id, std::string_view bytes,
                               std::function<void(std::exception_ptr, InboxResult)> done) {
  check_id("inbox_record", id);
  if (!done) throw StoreError("inbox_record: no completion callback");
  auto result = std::make_shared<InboxResult>();
  write_async(inbox_record_fn(id, bytes, result),
              [result, done = std::move(done)](std::exception_ptr e) { done(e, *result); });
}

static WriteFn inbox_state_fn(std::string_view id, std::string_view state) {
  return [k = std::string(id), s = std::string(state)](WriteTxn& t) {
    auto existing = t.get(Db::inbox, k);
    if (!existing) throw StoreError("inbox_set_state: no message '" + k + "' in the inbox");
    // A finished message is kept only to recognise resent copies: its body
    // goes, or a stream of large messages (a file copy's chunks) would stay
    // in the inbox for a day.
    std::string bytes = s == kInboxDone ? std::string() : decode_inbox(*existing, k).bytes;
    t.put(Db::inbox, k, encode_inbox(s, now_ms(), bytes));
  };
}

void Store::inbox_set_state_in(WriteTxn& t, std::string_view id, std::string_view state) {
  check_id("inbox_set_state", id);
  check_inbox_state(state);
  inbox_state_fn(id, state)(t);
}

void Store::inbox_set_state(std::string_view id, std::string_view state) {
  check_id("inbox_set_state", id);
  check_inbox_state(state);
  write(inbox_state_fn(id, state));
}

void Store::inbox_set_state_async(std::string_view id, std::string_view state, DoneFn done) {
  check_id("inbox_set_state", id);
  check_inbox_state(state);
  write_async(inbox_state_fn(id, state), std::move(done));
}

std::optional<InboxEntry> Store::inbox_get(std::string_view id) const {
  check_id("inbox_get", id);
  auto value = get(Db::inbox, id);
  if (!value) return std::nullopt;
  return decode_inbox(*value, id);
}

std::vector<std::string> Store::inbox_pending() const {
  std::vector<std::string> out;
  for_each(Db::inbox, "", [&out](std::string_view k, std::string_view v) {
    if (decode_inbox(v, k).state != kInboxDone) out.emplace_back(k);
    return true;
  });
  return out;
}

size_t Store::inbox_prune(int64_t older_than_ms) {
  size_t removed = 0;
  write([older_than_ms, &removed](WriteTxn& t) {
    std::vector<std::string> old;
    t.for_each(Db::inbox, "", [&](std::string_view k, std::string_view v) {
      InboxEntry e = decode_inbox(v, k);
      if (e.state == kInboxDone && e.updated_ms < older_than_ms) old.emplace_back(k);
      return true;
    });
    for (const auto& k : old) t.del(Db::inbox, k);
    removed = old.size();
  });
  return removed;
}

void Store::meta_put(std::string_view key, std::string_view value) {
  check_key(dir_, Db::meta, key);
  write([k = std::string(key), v = std::string(value)](WriteTxn& t) { t.put(Db::meta, k, v); });
}

std::optional<std::string> Store::meta_get(std::string_view key) const {
  return get(Db::meta, key);
}

// ---- fsync probe ------------------------------------------------------------

double measure_fsync_p50_us(const fs::path& dir, int samples) {
  if (samples <= 0) {
    throw StoreError("measure_fsync_p50_us: samples must be > 0, got " + std::to_string(samples));
  }
  const fs::path probe = dir / ".bosun-fsync-probe";
  int fd = ::open(probe.c_str(), O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    throw StoreError("measure_fsync_p50_us: cannot open " + probe.string() + ": " +
                     std::strerror(errno));
  }
  std::unique_ptr<int, void (*)(int*)> guard(&fd, [](int* f) { ::close(*f); });
  char block[512];
  std::vector<double> us;
  us.reserve(static_cast<size_t>(samples));
  for (int i = 0; i < samples; ++i) {
    std::memset(block, 'a' + i % 26, sizeof block);
    auto t0 = std::chrono::steady_clock::now();
    if (::pwrite(fd, block, sizeof block, 0) != static_cast<ssize_t>(sizeof block) ||
        ::fdatasync(fd) != 0) {
      int err = errno;
      ::unlink(probe.c_str());
      throw StoreError("measure_fsync_p50_us: write+fdatasync of " + probe.string() +
                       " failed: " + std::strerror(err));
    }
    us.push_back(
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
  }
  ::unlink(probe.c_str());
  std::sort(us.begin(), us.end());
  size_t mid = us.size() / 2;
  return us.size() % 2 == 1 ? us[mid] : (us[mid - 1] + us[mid]) / 2;
}

}  // namespace bosun::host
