// Private to the host: the state behind bosun::host::Node, shared by
// node.cpp (lifecycle, routing), calls.cpp (calls and the host API table),
// modules.cpp (loading and unloading modules) and socket_server.cpp.
#pragma once

#include <bosun/plugin.h>

#include <atomic>
#include <boost/asio.hpp>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "bosun/host/audit.hpp"
#include "bosun/host/module.hpp"
#include "bosun/host/node.hpp"
#include "bosun/host/store.hpp"
#include "crypt.hpp"
#include "deadlines.hpp"
#include "metrics.hpp"
#include "security.hpp"

namespace bosun::host {
class ModuleInstance;
}

// The C handles of plugin.h, defined by the host.
struct bosun_host {
  bosun::host::ModuleInstance* module;
};

namespace bosun::host {

namespace asio = boost::asio;
using Executor = asio::thread_pool::executor_type;
using Strand = asio::strand<Executor>;

class SocketServer;
class Transport;
struct Incoming;

// A message sent to another node and not yet ACKed.
struct Outgoing {
  Message msg;
  std::string subject;
  std::string bytes;  // the message itself; sealed afresh for each attempt
  int attempts_left = 0;
  bool sign = false;  // an Ed25519 signature, not a pair-key tag (BOSUN_METHOD_CARRIES)
  std::chrono::milliseconds ack_timeout{0};
  DeadlineQueue::Key ack_deadline = 0;  // guarded by outgoing_mu
  // The reply of a pure call: published once, with no ACK asked for (the
  // request, unACKed until a reply comes, is resent instead).
  bool unacked = false;
};

struct Counters {
  std::atomic<uint64_t> sent{0}, acked{0}, retried{0}, failed{0};
  std::atomic<uint64_t> received{0}, dropped{0}, duplicates{0}, reconnects{0};
  // Messages refused by the security checks, by reason (bad_envelope,
  // bad_signature, unknown_key, pending_key, rejected_key, impersonation,
  // stale, not_allowed, ...).
  mutable std::mutex refused_mu;
  std::map<std::string, uint64_t> refused;
  void count_refused(const std::string& reason) {
    std::lock_guard<std::mutex> lock(refused_mu);
    ++refused[reason];
  }
  nlohmann::json to_json() const {
    nlohmann::json by_reason = nlohmann::json::object();
    {
      std::lock_guard<std::mutex> lock(refused_mu);
      for (const auto& [r, n] : refused) by_reason[r] = n;
    }
    return {{"refused", by_reason},           {"sent", sent.load()},
            {"acked", acked.load()},          {"retried", retried.load()},
            {"failed", failed.load()},        {"received", received.load()},
            {"dropped", dropped.load()},      {"duplicates", duplicates.load()},
            {"reconnects", reconnects.load()}};
  }
};

// One module timer; `run_mu` lets timer_cancel wait out a running callback.
struct ModuleTimer {
  explicit ModuleTimer(asio::io_context& io) : timer(io) {}
  asio::steady_timer timer;
  uint64_t interval_ms = 0;
  bosun_on_timer fn = nullptr;
  void* user_data = nullptr;
  std::recursive_mutex run_mu;
  std::atomic<bool> cancelled{false};
};

// One initialised module. Everything it registered (timers, running calls)
// is owned here, so unloading it leaves nothing behind.
class ModuleInstance : public std::enable_shared_from_this<ModuleInstance> {
 public:
  Node::Impl* node = nullptr;
  std::unique_ptr<ModuleFile> file;
  bosun_host handle{this};
  void* instance = nullptr;

  std::mutex settings_mu;
  std::string settings_json = "{}";

  std::mutex timers_mu;
  std::map<uint64_t, std::shared_ptr<ModuleTimer>> timers;
  uint64_t next_timer_id = 1;

  // Calls that have entered the module and not yet returned. Once retired
  // (it is being drained) no call enters: new ones look the method up again.
  std::mutex inflight_mu;
  std::condition_variable inflight_cv;
  int inflight = 0;
  bool retired = false;

  const std::string& name() const { return file->name(); }
  void cancel_timers();
};

struct MethodEntry {
  std::string name;
  uint32_t flags = 0;
  std::shared_ptr<ModuleInstance> module;  // null for the host's built-ins
  bosun_on_call on_call = nullptr;
  std::function<bosun_status(bosun_call*)> builtin;
  std::shared_ptr<Strand> serial;  // set for BOSUN_METHOD_SERIAL
  // A built-in that answers at once and never blocks (ping, plugin_list,
  // ...): a request for it from the bus runs on the thread that took it
  // off the bus, right after the inbox has it, instead of queueing for a
  // worker.
  bool quick = false;
  // A quick built-in with no effect but its reply (ping, plugin_list,
  // op_process_list): run before anything is recorded, and recorded done
  // together with its reply, in one write. Run again, should the node die
  // before that write, it changes nothing.
  bool pure = false;
};
using MethodTable = std::unordered_map<std::string, MethodEntry>;

}  // namespace bosun::host

// One running call.
struct bosun_call {
  bosun::host::Node::Impl* node = nullptr;
  bosun::host::MethodEntry entry;
  bosun::host::Message msg;

  // What the handler sees (bosun_request points into these).
  std::string message_json;
  std::vector<bosun_str> args;
  bosun_request request{};

  std::atomic<bool> cancelled{false};
  std::mutex mu;
  bool finished = false;
  std::string error;
  std::optional<std::string> pending;  // the newest chunk, not yet sent
  bool flush_armed = false;
  uint32_t next_seq = 0;
  bosun::host::DeadlineQueue::Key timeout_deadline = 0;  // 0: none
  bosun::host::DeadlineQueue::Key flush_deadline = 0;    // guarded by mu
  std::string cancel_reason;  // why the host cancelled it (a module unloaded), for the reply
  int64_t started_ms = 0;
  bool tracked = false;         // came through the inbox: its state is kept there
  bool marked_running = false;  // the inbox recorded it "running" on arrival
};

namespace bosun::host {

// How draining one instance of a module ended (modules.cpp).
struct DrainStatus {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  int cancelled = 0;   // calls still running at the deadline, asked to cancel
  bool stuck = false;  // some ignored it: the instance stays loaded
  std::string summary() const;
};

struct Node::Impl {
  explicit Impl(Config cfg);

  // The config the node started with. Its live fields (see Config) may be
  // stale after a reload: read those through current_config().
  Config config;
  mutable std::mutex config_mu;
  std::shared_ptr<const Config> running_config;
  std::shared_ptr<const Config> current_config() const;
  std::string data_dir_text;
  int workers = 0;  // threads of `pool`
  // The pool outlives the io_context: handlers still queued on io when it is
  // destroyed may hold strands of the pool.
  std::unique_ptr<asio::thread_pool> pool;
  asio::io_context io;
  // ACK timeouts and methodTimeouts; after io, so it is destroyed first.
  DeadlineQueue deadlines{io};
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  bool shut_down = false;
  std::unique_ptr<Store> store;
  std::unique_ptr<AuditLog> audit;
  std::unique_ptr<SocketServer> socket;
  std::unique_ptr<asio::signal_set> signals;
  std::unique_ptr<asio::signal_set> hangup;  // SIGHUP: reload the config
  std::unique_ptr<asio::steady_timer> audit_flush;
  void schedule_audit_flush();
  std::atomic<bool> stopping{false};
  std::mutex shutdown_mu;
  Counters counters;

  // Delivery between nodes (delivery.cpp); null when standalone.
  // Shared so that a callback still publishing keeps it alive through a
  // shutdown; read it through bus() from any thread.
  std::shared_ptr<Transport> transport;
  mutable std::mutex transport_mu;
  std::shared_ptr<Transport> bus() const {
    std::lock_guard<std::mutex> lock(transport_mu);
    return transport;
  }
  std::string ack_inbox;
  std::mutex outgoing_mu;
  std::unordered_map<std::string, std::shared_ptr<Outgoing>> outgoing;

  // Modules and the method table (copy-on-write: dispatch takes a snapshot).
  mutable std::mutex plugins_mu;
  std::vector<PluginInfo> plugin_infos;
  std::vector<std::shared_ptr<ModuleInstance>> instances;
  std::shared_ptr<const MethodTable> table = std::make_shared<MethodTable>();
  std::shared_ptr<const MethodTable> methods() const;

  // Running calls by message id (op_process_list / op_process_stop).
  mutable std::mutex calls_mu;
  std::map<std::string, std::shared_ptr<bosun_call>> running;

  // Submitters waiting for replies, by request id.
  std::mutex waiters_mu;
  std::unordered_map<std::string, std::shared_ptr<ReplyWaiter>> waiters;

  // Reply streams, put back in seq order and handled one at a time.
  struct Stream {
    uint32_t next = 0;
    std::map<uint32_t, std::pair<Message, bool>> held;  // seq -> (reply, tracked)
    std::shared_ptr<Strand> strand;
  };
  std::mutex streams_mu;
  std::unordered_map<std::string, Stream> streams;

  std::mutex events_mu;
  std::map<uint64_t, EventListener> listeners;
  uint64_t next_listener = 1;
  uint64_t event_subscription = 0;  // <prefix>.evt.> while anyone listens
  void on_remote_event(Incoming&& in);

  // node.cpp
  // `from_module`: sent through the host API, where a module may also send
  // replies (BOSUN_METHOD_DEFERRED).
  SubmitResult submit(const nlohmann::json& batch, std::shared_ptr<ReplyWaiter> waiter,
                      const std::string& from_node, bool from_module = false);
  void submit_reply(Message m, size_t index, const std::string& where, SubmitResult& result);
  // `done_id`: an inbox message to record "done" in the same write that puts
  // `m` in the outbox; returns whether that happened (only when `m` leaves
  // for another node).
  // `text`: to_text(m), when the caller has it already.
  bool route(Message m, const std::string& done_id = {}, std::string text = {});
  // `running`: the inbox already holds it as "running" (a quick request
  // recorded so on arrival).
  void deliver_local(Message m, bool tracked = false, bool running = false);
  // `text`: to_text(m), when the caller has it already.
  void dispatch_request(Message m, bool tracked, bool running = false, std::string text = {});
  void handle_reply(Message m, bool tracked);
  void process_replies(const std::vector<std::pair<Message, bool>>& ready);
  void run_reply_method(const Message& m);
  void emit_event(const std::string& event, const nlohmann::json& payload);
  // The method's current entry; when there is none, says why in `error`.
  bool find_method(const std::string& method, MethodEntry* entry, std::string* error) const;
  void shutdown();

  // calls.cpp
  void start_call(Message m, const MethodEntry& entry, bool inline_run, bool tracked = false,
                  bool marked_running = false, std::string text = {});
  bool enter_module(MethodEntry& entry, std::string* error);
  void run_call(const std::shared_ptr<bosun_call>& call);
  void finish_call(const std::shared_ptr<bosun_call>& call, bosun_status status);
  void expire_call(const std::shared_ptr<bosun_call>& call);
  bool send_reply(const Message& request, std::string data, bool final, uint32_t seq,
                  const std::string& error, const std::string& done_id = {});
  bool cancel_call(const std::string& id);
  void register_builtins(MethodTable& table);

  // delivery.cpp
  void start_transport();
  void resume_delivery();
  double ack_timeout_s(const Message& m) const;
  int retries_of(const Message& m) const;
  bool send_remote(Message m, const std::string& done_id = {}, std::string text = {});
  void publish_attempt(Message m, std::string bytes);
  // Queues the reply of a pure call to be published once, unACKed.
  void publish_unacked(Message m, std::string bytes);

  // Publishing (delivery.cpp). A request or reply whose attempt is due goes
  // to `publish_queue`; whichever thread finds nobody publishing sends
  // everything queued, those for one subject together as one NATS message
  // carrying a JSON array (a "batch", at most kMaxBatchMessages and
  // kMaxBatchBytes), under one envelope. Threads that queue while another
  // publishes return at once: that one sends theirs too. A flush while
  // other submits of this node are on their way (`submits_on_the_way`:
  // begun, their messages not yet queued) first yields the CPU a few times
  // (kJoinYields), so that theirs can join it: measured, that made the
  // messaging benchmark's requests cheaper per round trip by about a
  // seventh. Nothing else waits for company: a message alone goes alone.
  // A message due: its subject, text and signing are its Outgoing's; the
  // ACK comes on <ack_inbox>.<its id> (a batch's: its first one's).
  struct Publish {
    std::shared_ptr<const Outgoing> out;
  };
  std::mutex publish_mu;
  std::vector<Publish> publish_queue;
  bool publishing = false;  // guarded by publish_mu
  std::atomic<int> submits_on_the_way{0};
  void queue_publish(Publish p);
  void flush_publishes();
  void send_publishes(std::vector<Publish>& items);
  // The messages this thread sends to other nodes while a SendBatch of this
  // node is open (record_received running quick calls): committed to the
  // outbox in one write and published together when it closes.
  struct SendBatch;
  friend struct SendBatch;
  // A SendBatch for callers outside delivery.cpp (submit): opens one on
  // this thread; commit() returns the ids it could not accept and why.
  class SendScope {
   public:
    explicit SendScope(Impl* node);
    ~SendScope();
    std::pair<std::vector<std::string>, std::string> commit();
    // This scope is a submit's: counted in submits_on_the_way until its
    // messages are queued to publish (or it ends without).
    void count_as_submit();
    SendScope(const SendScope&) = delete;
    SendScope& operator=(const SendScope&) = delete;

   private:
    std::unique_ptr<SendBatch> batch_;
  };
  void on_ack_timeout(const std::shared_ptr<Outgoing>& out);
  // `refused`: the receiver NAKed it (it will never run it), not just no ACK.
  void give_up(const Message& m, const std::string& why, bool refused = false);
  void on_ack(Incoming&& in);
  void on_incoming(Incoming&& in);
  // A message taken from the bus, not yet in the inbox.
  struct Received {
    Message msg;
    std::string reply;
    std::string bytes;
    std::string refusal;  // set: refused (only its id is known), to be NAKed with the ACKs
    // >0 on the first message taken from one NATS message, whose `reply` is
    // that NATS message's own reply subject (a batch's others have theirs
    // derived): how many were taken from it. NATS permissions may allow one
    // answer to each NATS message, on its own reply subject only.
    uint32_t from_message = 0;
  };
  // One message of what came off the bus, parsed (or why not: `error`,
  // with the id it gave, if any) and its JSON text.
  struct Candidate {
    Message msg;
    std::string error;
    std::string bytes;
  };
  static Candidate parse_candidate(const nlohmann::json& doc, std::string bytes);
  // One message of what came off the bus (alone, or one of a batch, each
  // with its own ACK subject): checked, and queued for the inbox or NAKed.
  void accept_incoming(const Incoming& in, Candidate item, const std::string& signer,
                       std::string reply, bool in_batch);
  // The signed request `in` as a cause its call's messages can carry, when
  // its method carries here (BOSUN_METHOD_CARRIES) and it came signed.
  nlohmann::json cause_of(const Incoming& in, const Message& m) const;
  // Held back while more are queued on the subscription; touched only on
  // its delivery thread (on_incoming), as acked_ids is on the ACK one's.
  std::vector<Received> received_batch;
  std::vector<std::string> acked_ids;
  void record_received(std::vector<Received> batch);
  // ACKs for what `batch` holds, but for those `unlisted` (their reply went
  // out: that is their ACK; or they are to be sent again).
  void send_acks(const std::vector<Received>& batch, const std::vector<char>& unlisted);
  // Replies taken off the bus (on the subscription's thread) name requests
  // of ours they answer: (request id, replying node). take_implied_acks()
  // ACKs those still outstanding and returns them.
  std::vector<std::pair<std::string, std::string>> implied_acks;
  std::vector<std::shared_ptr<Outgoing>> take_implied_acks();
  void drop_incoming(const std::string& subject, const std::string& reply, const std::string& why,
                     std::string_view reason = "bad_message");
  // The same for a message of a batch (`m` holds at least its id): its NAK
  // goes with the batch's ACKs.
  void drop_batched(const std::string& subject, Message m, std::string reply,
                    const std::string& why, std::string_view reason);
  void mark_running(const std::string& id);
  void mark_done(const std::string& id);

  // modules.cpp
  void load_modules();
  std::shared_ptr<ModuleInstance> load_module(const std::filesystem::path& path,
                                              const ExtensionConfig& ext, const MethodTable& taken,
                                              PluginInfo& info, bool at_start);
  MethodEntry method_entry(const std::shared_ptr<ModuleInstance>& inst, const MethodSpec& m);
  void unload_all();
  // Waits for the instance's calls (cancelling them at `deadline`, `why`
  // saying what unloads it), then shuts it down; fills `status` if given.
  void drain_and_shutdown(const std::shared_ptr<ModuleInstance>& inst,
                          std::chrono::steady_clock::time_point deadline, const std::string& why,
                          DrainStatus* status = nullptr);
  // The same on a thread of its own, joined later (by the next drain or shutdown).
  std::shared_ptr<DrainStatus> start_drain(std::shared_ptr<ModuleInstance> inst,
                                           const std::string& why);

  // update.cpp
  std::mutex update_mu;  // one update, settings change or reload at a time
  struct Drain {
    std::thread thread;
    std::shared_ptr<DrainStatus> status;
  };
  std::vector<Drain> drains;  // old versions being drained
  std::mutex drains_mu;
  nlohmann::json update_module(const std::string& name, const std::filesystem::path& path,
                               const std::string& expect_version, UpdateTimings* timings = nullptr);
  // Hands `settings` (a JSON object's text) to the module's on_settings;
  // returns why it did not take them, or "" when it did.
  std::string apply_settings(const std::shared_ptr<ModuleInstance>& inst,
                             const std::string& settings);
  std::string probe_module(const std::filesystem::path& path, const std::string& name);
  // The file an update last activated. At start, a version still on
  // probation means the host died with it: that rolls back.
  std::optional<std::filesystem::path> recorded_module_path(const std::string& name,
                                                            std::string* rollback_note,
                                                            bool at_start);
  void end_probation(const std::string& name, int64_t started_ms = 0);
  nlohmann::json update_settings(const std::string& name, const nlohmann::json& patch);
  std::vector<nlohmann::json> pending_update_results;  // rollbacks found at start
  std::shared_ptr<ModuleInstance> init_module(std::unique_ptr<ModuleFile> file,
                                              const ExtensionConfig& ext, PluginInfo& info);

  // reload.cpp
  nlohmann::json reload();
  void on_sighup();

  // Security (DESIGN §7; security.hpp, delivery.cpp).
  std::optional<Identity> identity;
  std::unique_ptr<TrustStore> trust;
  // `body` in an envelope signed for `subject` (as is when security.sign is off).
  // The raw Ed25519 key of the one node a message on `subject` goes to, when
  // its envelope is to carry a pair-key tag (security.pairKeys, the node's
  // key accepted here); "" to sign it.
  std::string pair_peer(std::string_view subject) const;
  // `signature`: signed whatever pairKeys says (a NAK, an announcement:
  // what the receiver must be able to check even when the sender holds a
  // wrong key for it).
  std::string seal(std::string_view subject, std::string_view body, bool signature = false) const;
  // On the central node with a cluster secret and the crypt module: sends
  // the secret to `node`, just accepted (push_cluster_secret to itself).
  void offer_cluster_secret(const std::string& node);
  // Checks the envelope of a message taken from the bus. On success sets
  // `signer` (empty when security.sign is off) and `body`; otherwise counts
  // the refusal and says why. `record`: an unknown key becomes pending.
  // A message of this node's own comes back as signer == its name only when
  // `own_ok` (its events).
  // `plain` holds the body when it travelled encrypted: only requests and
  // replies may be (without `plain` an encrypted envelope is refused).
  bool open_envelope(const Incoming& in, bool record, bool own_ok, std::string& signer,
                     std::string_view& body, std::string* why, std::string* plain = nullptr);
  // Whether `m`, from an authenticated peer, may run here (security.allow).
  bool authorized(const Message& m, std::string* why) const;
  // Whether `m`, which its sender may not invoke here, may run as the
  // signed request it carries ("cause") asked: the request verifies, was
  // sent to m's sender or to this node, is recent, and its sender may invoke
  // m's method, a method of the module that handles the request's method
  // here (DESIGN §7). On success sets m.cause; otherwise says why not.
  bool authorized_by_cause(Message& m, std::string* why);
  // The BOSUN_METHOD_* flags of a method here; 0 when there is none.
  uint32_t method_flags(const std::string& method) const;
  // Whether `method` is a quick built-in (MethodEntry::quick), and pure.
  bool is_quick(const std::string& method, bool* pure = nullptr) const;
  // Central: hand the accepted keys to every accepted node (soon, once).
  void distribute_keys();
  std::unique_ptr<asio::steady_timer> key_set_timer;
  std::atomic<bool> key_set_due{false};
  void announce_key();
  nlohmann::json keys_op(const std::string& action, const std::string& node);

  // Key exchange and the cluster secret (crypt.hpp, node_crypt.cpp).
  mutable std::mutex crypt_mu;
  std::shared_ptr<RsaKey> rsa;  // null until loaded or made (in the background)
  std::thread rsa_maker;        // makes it at first start; joined at shutdown
  std::shared_ptr<const ClusterKey> cluster_key, previous_cluster_key;
  void start_crypt();
  std::shared_ptr<RsaKey> rsa_key() const;
  std::string rsa_public_pem() const;  // "" while it is being made
  std::shared_ptr<const ClusterKey> current_cluster_key() const;
  // Makes `secret` the cluster secret (kept in the store, never logged);
  // "" or why not.
  std::string install_cluster_secret(std::string secret, const std::string& from);
  // seal() of a request or reply: encrypted once a cluster secret is set,
  // unless its method is one that delivers keys or the secret.
  // `sign`: an Ed25519 signature even to a node with a pair key, so that a
  // third node can check it (a request whose call may carry it).
  std::string seal_request(std::string_view subject, std::string_view body,
                           bool sign = false) const;
  bool open_payload(const Incoming& in, const Envelope& env, std::string* plain,
                    std::string_view& body, std::string* why);
  // The RSA key a peer announced (in the body of announce_key), recorded
  // when the envelope verified with the peer's pending or accepted key.
  void note_announced_rsa(const Incoming& in, const Envelope& env);

  // metrics.cpp's Metrics when metrics.listen is set (started first in
  // Node::start, never reset: it is the last member, so it is destroyed
  // first and no scrape reads what has gone). Null: metrics off.
  std::unique_ptr<Metrics> metrics;
  void start_metrics();
  void count_message(MessageEvent event, const Message& m, const std::string& peer) {
    if (metrics) metrics->count(event, m.method, peer);
  }
  // A message from the bus refused before the inbox; `reason` is one of
  // kRefusedReasons (metrics.hpp).
  // Counted in the status counters and, with metrics on, in Prometheus.
  void count_refused(std::string_view reason) {
    counters.count_refused(std::string(reason));
    if (metrics) metrics->count_refused(reason);
  }
  void count_update(const nlohmann::json& result) {
    if (metrics) metrics->count_update(result.value("plugin", ""), result.value("status", ""));
  }
};

// The host API of ABI 1.3 (node_crypt.cpp).
bosun_status api_peer_keys(bosun_host* host, bosun_on_value on_value, void* user_data);
bosun_status api_encrypt_to_node(bosun_host* host, const char* node, size_t node_len,
                                 const char* data, size_t len, bosun_on_value on_value,
                                 void* user_data);
bosun_status api_decrypt_for_self(bosun_host* host, const char* data, size_t len,
                                  bosun_on_value on_value, void* user_data);
bosun_status api_cluster_secret_set(bosun_host* host, const char* secret, size_t len);
bosun_status api_cluster_secret_seal_for(bosun_host* host, const char* node, size_t node_len,
                                         bosun_on_value on_value, void* user_data);
bosun_status api_cluster_secret_receive(bosun_call* call, const char* data, size_t len,
                                        bosun_on_value on_value, void* user_data);
bosun_status api_key_control(bosun_call* call, const char* request_json, size_t len,
                             bosun_on_value on_value, void* user_data);

const bosun_host_api* host_api_table();
double effective_timeout_s(const Config& config, const Message& m);
// Reply methods that only record an answer (DESIGN §9's sinks, relay's
// forwarding of a reply): any peer may answer a node with these.
bool answer_only(const std::string& method);

}  // namespace bosun::host
