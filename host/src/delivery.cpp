// Delivery between nodes (DESIGN §5), Steward's way but exactly once:
//
// Sender: a message for another node is committed to the outbox before it
// counts as accepted, published on <prefix>.req.<to>.<method> with the reply
// subject <ackInbox>.<id>, and resent every ACKTimeout until the receiver
// ACKs, at most `retries` times. Past that budget it is dropped and reported
// to the central node's error_log. A restart resumes the outbox.
//
// Receiver: a message is recorded in the inbox (durable per storage.sync)
// before it is ACKed. The inbox knows every id seen: a resent copy is ACKed
// again and not run again. Its state goes received -> running -> done, with
// "running" durable before the handler starts, so after a crash a message
// that had not started runs, and one that had started is not run twice.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <thread>
#include <utility>

#include "bosun/host/transport.hpp"
#include "node_impl.hpp"

namespace bosun::host {

namespace {

constexpr std::string_view kStateReceived = "received";
constexpr std::string_view kStateRunning = "running";
constexpr std::string_view kStateDone = "done";
// Inbox entries of finished messages are kept this long to recognise resent
// copies; far beyond any ACKTimeout * retries budget.
constexpr int64_t kInboxKeepMs = 24LL * 3600 * 1000;
// At most this many messages (or ACKed ids) are held back for one write
// while more are queued on the subscription.
constexpr size_t kMaxAckBatch = 64;
// Far above the 26 characters of our own ids, far below LMDB's key limit.
constexpr size_t kMaxIdBytes = 128;
// A batch on the wire: at most this many messages (so that one ACK names
// them all) and this many bytes of them.
constexpr size_t kMaxBatchMessages = kMaxAckBatch;
constexpr size_t kMaxBatchBytes = 64 * 1024;
// What a batch's NATS payload may hold, envelope included, whatever
// host.maxMessageBytes says (which each of its messages must keep to).
constexpr size_t kMaxBatchPayload = 2 * kMaxBatchBytes + 4096;
// How many times a flush yields the CPU to submits on their way (see
// Node::Impl::submits_on_the_way): 2 and 5 measured alike.
constexpr int kJoinYields = 4;

}  // namespace

// The SendBatch open on this thread, if any (for one node: tests and
// benchmarks run several in one process).
struct Node::Impl::SendBatch {
  struct Item {
    Message msg;
    std::string bytes;
    std::string done_id;
  };
  Impl* node;
  SendBatch* outer;
  bool open = false;  // false: it joined an outer batch of the same node
  std::vector<Item> items;
  // Pure requests run before they were recorded: recorded done (sorted)
  // in the same write as their replies.
  std::vector<std::string> inbox_done;
  // Counted in node->submits_on_the_way (a submit's batch) until uncounted.
  bool counted = false;
  explicit SendBatch(Impl* n);
  ~SendBatch() {
    commit();
    uncount();
  }
  void uncount() {
    if (!counted) return;
    counted = false;
    node->submits_on_the_way.fetch_sub(1, std::memory_order_relaxed);
  }
  // Commits what was sent into it to the outbox and publishes it; returns
  // the ids that could not be put in the outbox (with why), or nothing.
  std::pair<std::vector<std::string>, std::string> commit();
  // The reply of a pure call recorded done in this batch (inbox_done).
  bool pure_reply(const Item& item) const {
    return item.msg.is_reply && !item.done_id.empty() &&
           std::binary_search(inbox_done.begin(), inbox_done.end(), item.done_id);
  }
  SendBatch(const SendBatch&) = delete;
  SendBatch& operator=(const SendBatch&) = delete;
};

namespace {
thread_local Node::Impl::SendBatch* t_send_batch = nullptr;

}  // namespace

void Node::Impl::start_transport() {
  if (config.broker.standalone()) return;
  TransportCallbacks cb;
  cb.on_connected = [this] { spdlog::info("connected to the broker"); };
  cb.on_disconnected = [this] { spdlog::warn("lost the broker; reconnecting"); };
  cb.on_reconnected = [this] {
    counters.reconnects++;
    spdlog::info("reconnected to the broker");
  };
  cb.on_error = [](std::string e) { spdlog::error("broker: {}", e); };
  auto t = std::make_shared<Transport>(config.broker, config.node.name, cb);
  {
    std::lock_guard<std::mutex> lock(transport_mu);
    transport = t;
  }
  t->connect(true);  // a node may start before its broker
  ack_inbox = t->new_inbox();
  const std::string& prefix = config.broker.subject_prefix;
  t->subscribe(prefix + ".req." + config.node.name + ".>",
               [this](Incoming&& in) { on_incoming(std::move(in)); });
  t->subscribe(ack_inbox + ".*", [this](Incoming&& in) { on_ack(std::move(in)); });
}

void Node::Impl::resume_delivery() {
  if (!store) return;
  // Messages received and ACKed but not finished before the last stop.
  for (const auto& id : store->inbox_pending()) {
    auto entry = store->inbox_get(id);
    if (!entry) continue;
    Message m;
    try {
      m = parse_message(nlohmann::json::parse(entry->bytes), "inbox message " + id);
    } catch (const std::exception& e) {
      spdlog::error("inbox message {} cannot be resumed: {}", id, e.what());
      store->inbox_set_state(id, kStateDone);
      continue;
    }
    if (entry->state == kStateRunning) {
      // It may have had its effect: at most once means not running it again.
      spdlog::warn("message {} ({} from {}) was running when the node stopped; not run again", id,
                   m.method, m.from_node);
      store->inbox_set_state(id, kStateDone);
      if (!m.is_reply) {
        send_reply(m, "", true, 0,
                   m.method + " was interrupted by a restart of node " + config.node.name +
                       " and is not run again (each message runs at most once)");
      }
      continue;
    }
    spdlog::info("resuming message {} ({} from {})", id, m.method, m.from_node);
    asio::post(*pool, [this, m = std::move(m)]() mutable { deliver_local(std::move(m), true); });
  }
  store->inbox_prune(now_ms() - kInboxKeepMs);
  if (config.broker.standalone()) return;
  for (auto& [id, bytes] : store->outbox_list()) {
    try {
      Message m = parse_message(nlohmann::json::parse(bytes), "outbox message " + id);
      spdlog::info("resuming delivery of {} ({}) to {}", id, m.method, m.to_node);
      publish_attempt(std::move(m), std::move(bytes));
    } catch (const std::exception& e) {
      spdlog::error("outbox message {} dropped: {}", id, e.what());
      store->outbox_remove(id);
    }
  }
  flush_publishes();
}

double Node::Impl::ack_timeout_s(const Message& m) const {
  if (m.ack_timeout) return *m.ack_timeout;
  const DefaultsConfig d = current_config()->defaults;
  return m.is_reply ? d.reply_ack_timeout_s : d.ack_timeout_s;
}

int Node::Impl::retries_of(const Message& m) const {
  if (m.retries) return *m.retries;
  const DefaultsConfig d = current_config()->defaults;
  return m.is_reply ? d.reply_retries : d.retries;
}

bool Node::Impl::send_remote(Message m, const std::string& done_id, std::string text) {
  std::string bytes = text.empty() ? to_text(m) : std::move(text);
  if (SendBatch* b = t_send_batch; b != nullptr && b->node == this) {
    // Committed and published with the rest of the batch when it closes.
    b->items.push_back(SendBatch::Item{std::move(m), std::move(bytes), done_id});
    return !done_id.empty();
  }
  // Durable before it counts as accepted: a crash from here on resends it.
  if (done_id.empty()) {
    store->outbox_put(m.id, bytes);
  } else {
    store->write([&](WriteTxn& t) {
      t.put(Db::outbox, m.id, bytes);
      try {
        Store::inbox_set_state_in(t, done_id, kStateDone);
      } catch (const StoreError& e) {
        // Not worth losing the reply over.
        spdlog::error("message {}: cannot record it as done: {}", done_id, e.what());
      }
    });
  }
  counters.sent++;
  count_message(MessageEvent::sent, m, m.to_node);
  publish_attempt(std::move(m), std::move(bytes));
  flush_publishes();
  return !done_id.empty();
}

Node::Impl::SendBatch::SendBatch(Impl* n) : node(n), outer(t_send_batch) {
  // An inner batch of the same node joins the outer one.
  if (outer != nullptr && outer->node == n) return;
  open = true;
  t_send_batch = this;
}

std::pair<std::vector<std::string>, std::string> Node::Impl::SendBatch::commit() {
  if (!open) return {};
  open = false;
  t_send_batch = outer;
  if (items.empty()) return {};
  try {
    node->store->write([this](WriteTxn& t) {
      for (const auto& id : inbox_done) {
        // A pure call keeps its reply, to answer a resent copy with it.
        std::string_view reply;
        for (const auto& item : items) {
          if (item.msg.is_reply && item.done_id == id) {
            reply = item.bytes;
            break;
          }
        }
        Store::inbox_record_answered_in(t, id, reply);
      }
      for (const auto& item : items) {
        if (pure_reply(item)) continue;  // kept above, sent once unACKed
        t.put(Db::outbox, item.msg.id, item.bytes);
        if (item.done_id.empty() ||
            std::binary_search(inbox_done.begin(), inbox_done.end(), item.done_id)) {
          continue;
        }
        try {
          Store::inbox_set_state_in(t, item.done_id, kStateDone);
        } catch (const StoreError& e) {
          // Not worth losing the reply over.
          spdlog::error("message {}: cannot record it as done: {}", item.done_id, e.what());
        }
      }
    });
  } catch (const std::exception& e) {
    // What asked for them from the bus stays "running" in the inbox and is
    // answered "interrupted" at the next start; a submitter is told.
    spdlog::error("{} message(s) for other nodes not sent: cannot put them in the outbox: {}",
                  items.size(), e.what());
    std::vector<std::string> ids;
    for (const auto& item : items) ids.push_back(item.msg.id);
    items.clear();
    return {std::move(ids), e.what()};
  }
  try {
    for (auto& item : items) {
      node->counters.sent++;
      node->count_message(MessageEvent::sent, item.msg, item.msg.to_node);
      if (pure_reply(item)) {
        node->publish_unacked(std::move(item.msg), std::move(item.bytes));
      } else {
        node->publish_attempt(std::move(item.msg), std::move(item.bytes));
      }
    }
    uncount();  // queued: a flush need not wait for these (this one least)
    node->flush_publishes();
  } catch (const std::exception& e) {
    // In the outbox: their ACK deadlines, or the next start, send them.
    spdlog::error("{} message(s) for other nodes not sent yet: {}", items.size(), e.what());
  }
  items.clear();
  return {};
}

Node::Impl::SendScope::SendScope(Impl* node) : batch_(std::make_unique<SendBatch>(node)) {}
Node::Impl::SendScope::~SendScope() = default;
std::pair<std::vector<std::string>, std::string> Node::Impl::SendScope::commit() {
  auto out = batch_->commit();
  batch_->uncount();
  return out;
}

void Node::Impl::SendScope::count_as_submit() {
  if (batch_->counted) return;
  batch_->counted = true;
  batch_->node->submits_on_the_way.fetch_add(1, std::memory_order_relaxed);
}

void Node::Impl::publish_unacked(Message m, std::string bytes) {
  auto out = std::make_shared<Outgoing>();
  try {
    out->subject = request_subject(config.broker.subject_prefix, m.to_node, m.method);
  } catch (const std::exception& e) {
    spdlog::error("reply {} cannot be sent: {}", m.id, e.what());
    return;
  }
  out->bytes = std::move(bytes);
  out->msg = std::move(m);
  out->unacked = true;
  queue_publish(Publish{std::move(out)});
}

void Node::Impl::publish_attempt(Message m, std::string bytes) {
  std::string subject;
  try {
    subject = request_subject(config.broker.subject_prefix, m.to_node, m.method);
  } catch (const std::exception& e) {
    spdlog::error("message {} cannot be sent: {}", m.id, e.what());
    store->outbox_remove(m.id);
    return;
  }
  double ack_s = ack_timeout_s(m);
  // A request whose call may send messages on its behalf goes signed, so
  // they can carry it (DESIGN §7).
  const bool sign = !m.is_reply && (method_flags(m.method) & BOSUN_METHOD_CARRIES) != 0;
  if (ack_s <= 0) {
    // ACKTimeout 0: fire and forget.
    if (auto t = bus()) t->publish(subject, seal_request(subject, bytes, sign));
    store->write_async([id = m.id](WriteTxn& t) { t.del(Db::outbox, id); },
                       log_write_failure("outbox: cannot remove " + m.id));
    return;
  }
  auto out = std::make_shared<Outgoing>();
  out->subject = std::move(subject);
  out->bytes = std::move(bytes);
  out->attempts_left = retries_of(m);
  out->sign = sign;
  out->ack_timeout = std::chrono::milliseconds(std::llround(ack_s * 1000));
  out->msg = std::move(m);
  const std::string id = out->msg.id;
  {
    std::lock_guard<std::mutex> lock(outgoing_mu);
    outgoing[id] = out;
    out->ack_deadline = deadlines.add_after(out->ack_timeout, [this, out] { on_ack_timeout(out); });
  }
  // Sent by the caller's flush_publishes() (or another thread's).
  queue_publish(Publish{std::move(out)});
}

void Node::Impl::queue_publish(Publish p) {
  std::lock_guard<std::mutex> lock(publish_mu);
  publish_queue.push_back(std::move(p));
}

void Node::Impl::flush_publishes() {
  for (int k = 0; k < kJoinYields && submits_on_the_way.load(std::memory_order_relaxed) > 0; ++k) {
    std::this_thread::yield();
  }
  std::vector<Publish> items;
  {
    std::lock_guard<std::mutex> lock(publish_mu);
    if (publishing || publish_queue.empty()) return;
    publishing = true;
    items.swap(publish_queue);
  }
  for (;;) {
    try {
      send_publishes(items);
    } catch (const std::exception& e) {
      // Their ACK deadlines resend them.
      spdlog::error("publishing {} message(s): {}", items.size(), e.what());
    }
    items.clear();
    std::lock_guard<std::mutex> lock(publish_mu);
    if (publish_queue.empty()) {
      publishing = false;
      return;
    }
    items.swap(publish_queue);
  }
}

void Node::Impl::send_publishes(std::vector<Publish>& items) {
  auto t = bus();
  if (!t) return;
  // Those for one subject, in the order they came, as few NATS messages as
  // the limits allow; a signed one always alone (what its call's messages
  // carry as their cause is exactly its own envelope).
  std::vector<char> sent(items.size(), 0);
  std::vector<size_t> group;
  for (size_t i = 0; i < items.size(); ++i) {
    if (sent[i]) continue;
    sent[i] = 1;
    const Outgoing& first = *items[i].out;
    group.assign(1, i);
    size_t bytes = first.bytes.size();
    for (size_t j = i + 1; !first.sign && j < items.size(); ++j) {
      const Outgoing& next = *items[j].out;
      if (sent[j] || next.sign || next.subject != first.subject || next.unacked != first.unacked) {
        continue;
      }
      if (group.size() >= kMaxBatchMessages || bytes + next.bytes.size() > kMaxBatchBytes) break;
      sent[j] = 1;
      group.push_back(j);
      bytes += next.bytes.size() + 1;
    }
    // No ACK subject for unACKed replies: nobody answers them.
    const std::string reply = first.unacked ? std::string() : ack_inbox + "." + first.msg.id;
    if (group.size() == 1) {
      t->publish(first.subject, seal_request(first.subject, first.bytes, first.sign), reply);
      continue;
    }
    std::string body;
    body.reserve(bytes + 2);
    body += '[';
    for (size_t k = 0; k < group.size(); ++k) {
      if (k > 0) body += ',';
      body += items[group[k]].out->bytes;
    }
    body += ']';
    t->publish(first.subject, seal_request(first.subject, body), reply);
  }
}

void Node::Impl::on_ack_timeout(const std::shared_ptr<Outgoing>& out) {
  bool resend = false;
  {
    std::lock_guard<std::mutex> lock(outgoing_mu);
    auto it = outgoing.find(out->msg.id);
    if (it == outgoing.end() || it->second != out) return;  // ACKed meanwhile
    if (out->attempts_left <= 0) {
      outgoing.erase(it);
    } else {
      resend = true;
      --out->attempts_left;
      out->ack_deadline =
          deadlines.add_after(out->ack_timeout, [this, out] { on_ack_timeout(out); });
    }
  }
  if (resend) {
    counters.retried++;
    count_message(MessageEvent::retried, out->msg, out->msg.to_node);
    spdlog::debug("no ACK for {} ({}) from {}; resending", out->msg.id, out->msg.method,
                  out->msg.to_node);
    queue_publish(Publish{out});
    flush_publishes();
    return;
  }
  give_up(out->msg, "no ACK from " + out->msg.to_node + " after " +
                        std::to_string(retries_of(out->msg) + 1) + " attempt(s), " +
                        std::to_string(out->ack_timeout.count()) + " ms apart");
}

void Node::Impl::give_up(const Message& m, const std::string& why, bool refused) {
  counters.failed++;
  count_message(MessageEvent::failed, m, m.to_node);
  store->write_async([id = m.id](WriteTxn& t) { t.del(Db::outbox, id); },
                     log_write_failure("outbox: cannot remove " + m.id));
  std::string text = "message " + m.id + " (" + m.method + ") from " + m.from_node + " to " +
                     m.to_node + " dropped: " + why +
                     "; check that the node is up and has the method";
  spdlog::error("{}", text);
  // Whoever waits for the answer (bosun send --wait) learns it now, not at
  // its own timeout. So does a module's reply method (a file copy's) when
  // the receiver refused the message: no answer can come. (Without an ACK
  // the message may still have arrived and be answered late.) Reply methods
  // that only record answers are not told: central's error log has it.
  if (!m.is_reply) {
    bool waited;
    {
      std::lock_guard<std::mutex> lock(waiters_mu);
      waited = waiters.count(m.id) > 0;
    }
    const bool module_waits = refused && !m.reply_method.empty() && !answer_only(m.reply_method) &&
                              (method_flags(m.reply_method) & BOSUN_METHOD_REPLY) != 0;
    if (waited || module_waits) {
      Message failed;
      failed.id = new_message_id();
      failed.from_node = m.to_node;
      failed.to_node = config.node.name;
      failed.method = module_waits ? m.reply_method : "none";
      if (module_waits) failed.method_args = m.reply_method_args;
      failed.is_reply = true;
      failed.in_reply_to = m.id;
      failed.request_method = m.method;
      failed.status = "error";
      failed.error = "not delivered: " + why;
      handle_reply(std::move(failed), false);
    }
  }
  // Report to central's error log, unless this is that report failing.
  if (m.method == "error_log") return;
  Message report;
  report.id = new_message_id();
  report.from_node = config.node.name;
  report.to_node = config.node.central;
  report.method = "error_log";
  report.data = text;
  report.sent_at_ms = now_ms();
  report.retries = 0;
  asio::post(*pool, [this, report = std::move(report)]() mutable { route(std::move(report)); });
}

void Node::Impl::on_ack(Incoming&& in) {
  // "ACK" or "NAK <why>" for the message named by the subject's last token;
  // or, from a receiver that took several of ours at once, one
  // "ACK <id> <id> ..." for all of them.
  size_t dot = in.subject.rfind('.');
  if (dot == std::string::npos) return;
  // Only a receiver's word counts: nats-server answers a request nobody is
  // subscribed to with an empty "no responders" status on the same subject.
  if (in.data.empty()) return;
  // And only the word of the node the message went to: an ACK is signed,
  // and its signer must be that node.
  std::string signer, why;
  std::string_view text;
  if (!open_envelope(in, false, false, signer, text, &why)) {
    spdlog::warn("ignored an ACK on {}: {}", in.subject, why);
    return;
  }
  // (id, why): why is empty for an ACK, the receiver's reason for a NAK.
  std::vector<std::pair<std::string, std::string>> verdicts;
  const std::string own_id = in.subject.substr(dot + 1);
  auto take_id = [&](std::string_view id, std::string why) {
    if (!id.empty() && id.size() <= kMaxIdBytes && is_valid_token(id)) {
      verdicts.emplace_back(std::string(id), std::move(why));
    }
  };
  if (text == "ACK") {
    verdicts.emplace_back(own_id, "");
  } else if (text.rfind("ACK ", 0) == 0) {
    std::string_view rest(text);
    rest.remove_prefix(4);
    while (!rest.empty() && verdicts.size() < kMaxAckBatch) {
      size_t sp = rest.find(' ');
      take_id(rest.substr(0, sp), "");
      if (sp == std::string_view::npos) break;
      rest.remove_prefix(sp + 1);
    }
  } else if (text.rfind("NAK ", 0) == 0) {
    std::string why(text.substr(4));
    verdicts.emplace_back(own_id, why.empty() ? "refused" : why);
  } else if (text.rfind("ACKS\n", 0) == 0) {
    // The answer to a batch some of whose messages were refused: a line
    // "ACK <id>" or "NAK <id> <why>" for each.
    std::string_view rest(text);
    rest.remove_prefix(5);
    while (!rest.empty() && verdicts.size() < kMaxAckBatch) {
      size_t nl = rest.find('\n');
      std::string_view line = rest.substr(0, nl);
      rest = nl == std::string_view::npos ? std::string_view{} : rest.substr(nl + 1);
      if (line.rfind("ACK ", 0) == 0) {
        take_id(line.substr(4), "");
      } else if (line.rfind("NAK ", 0) == 0) {
        line.remove_prefix(4);
        size_t sp = line.find(' ');
        if (sp == std::string_view::npos) continue;
        std::string why(line.substr(sp + 1));
        take_id(line.substr(0, sp), why.empty() ? "refused" : why);
      }
    }
  } else {
    return;
  }
  for (auto& [id, refusal] : verdicts) {
    const bool nak = !refusal.empty();
    std::shared_ptr<Outgoing> out;
    {
      std::lock_guard<std::mutex> lock(outgoing_mu);
      auto it = outgoing.find(id);
      if (it == outgoing.end()) continue;  // a late duplicate ACK
      if (identity && it->second->msg.to_node != signer) {
        count_refused("impersonation");
        spdlog::warn("ignored an ACK for {} from {}: the message went to {}", id, signer,
                     it->second->msg.to_node);
        continue;
      }
      out = it->second;
      outgoing.erase(it);
      deadlines.cancel(out->ack_deadline);
    }
    counters.acked++;
    count_message(MessageEvent::acked, out->msg, out->msg.to_node);
    acked_ids.push_back(id);
    if (nak) {
      // The receiver will never take it: no point in resending.
      give_up(out->msg, "refused by " + out->msg.to_node + ": " + refusal, true);
    }
  }
  // Forget the ACKed messages in one write once no more ACKs are queued.
  if (acked_ids.empty() || (in.pending > 0 && acked_ids.size() < kMaxAckBatch)) return;
  store->write_async(
      [ids = std::move(acked_ids)](WriteTxn& t) {
        for (const auto& id : ids) t.del(Db::outbox, id);
      },
      log_write_failure("outbox: cannot remove ACKed messages"));
  acked_ids.clear();
}

void Node::Impl::drop_incoming(const std::string& subject, const std::string& reply,
                               const std::string& why, std::string_view reason) {
  counters.dropped++;
  if (!reason.empty()) count_refused(reason);  // empty: counted already

  spdlog::warn("dropped a message on {}: {}", subject, why);
  // Tell the sender when it asked for an ACK, so it stops resending.
  if (auto t = bus(); t && !reply.empty()) t->publish(reply, seal(reply, "NAK " + why, true));
}

void Node::Impl::drop_batched(const std::string& subject, Message m, std::string reply,
                              const std::string& why, std::string_view reason) {
  // Counted and logged now; NAKed with the ACKs of its batch, in the one
  // answer a batch gets (NATS permissions may allow a node one answer to
  // each message it received, allow_responses).
  counters.dropped++;
  if (!reason.empty()) count_refused(reason);
  spdlog::warn("dropped a message on {}: {}", subject, why);
  received_batch.push_back(Received{std::move(m), std::move(reply), {}, why});
}

void Node::Impl::on_incoming(Incoming&& in) {
  // Whatever becomes of this one, what is held back goes out once nothing
  // more is queued.
  struct Flush {
    Impl* self;
    int pending;
    ~Flush() {
      if (self->received_batch.empty()) return;
      if (pending > 0 && self->received_batch.size() < kMaxAckBatch) return;
      self->record_received(std::exchange(self->received_batch, {}));
    }
  } flush{this, in.pending};
  // A batch (a JSON array of messages for this subject) may exceed
  // host.maxMessageBytes as a whole; each of its messages may not.
  const size_t limit = static_cast<size_t>(config.host.max_message_bytes);
  if (in.data.size() > std::max(limit, kMaxBatchPayload)) {
    counters.received++;
    return drop_incoming(
        in.subject, in.reply,
        "message of " + std::to_string(in.data.size()) + " bytes exceeds host.maxMessageBytes",
        "too_large");
  }
  // The signature first: nothing else is believed or even parsed before it.
  // (open_envelope counts its refusals by reason itself.)
  std::string signer, why, plain;
  std::string_view body;
  if (!open_envelope(in, true, false, signer, body, &why, &plain)) {
    counters.received++;
    return drop_incoming(in.subject, in.reply, why, {});
  }
  // What this NATS message adds to received_batch: its first is marked
  // with how many (Received::from_message), whatever returns below.
  struct Mark {
    std::vector<Received>& batch;
    size_t before;
    ~Mark() {
      if (batch.size() > before)
        batch[before].from_message = static_cast<uint32_t>(batch.size() - before);
    }
  } mark{received_batch, received_batch.size()};
  // Bosun's own messages are read straight into Message; anything else
  // (and whatever is wrong) the general way, which names the problem.
  bool is_batch = false;
  std::vector<Candidate> items;
  if (auto read = read_messages(body, &is_batch)) {
    items.reserve(read->size());
    for (auto& r : *read) items.push_back(Candidate{std::move(r.msg), {}, std::string(r.text)});
  } else {
    nlohmann::json doc = nlohmann::json::parse(body, nullptr, false);
    if (doc.is_discarded()) {
      counters.received++;
      return drop_incoming(in.subject, in.reply, "not valid JSON", "bad_json");
    }
    is_batch = doc.is_array();
    if (!is_batch) {
      items.push_back(parse_candidate(doc, std::string(body)));
    } else if (!doc.empty() && doc.size() <= kMaxBatchMessages) {
      // Not a batch of messages at all: refused whole, as one message would be.
      for (size_t i = 0; i < doc.size(); ++i) {
        if (doc[i].is_object()) continue;
        counters.received++;
        return drop_incoming(in.subject, in.reply,
                             "batch message " + std::to_string(i) +
                                 ": expected a JSON object, got " + std::string(doc[i].type_name()),
                             "bad_message");
      }
      for (const auto& one : doc) {
        items.push_back(parse_candidate(
            one, one.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)));
      }
    } else {
      items.resize(doc.size());  // only counted: refused whole below
    }
  }
  if (!is_batch) {
    if (body.size() > limit) {
      counters.received++;
      return drop_incoming(
          in.subject, in.reply,
          "message of " + std::to_string(body.size()) + " bytes exceeds host.maxMessageBytes",
          "too_large");
    }
    return accept_incoming(in, std::move(items[0]), signer, std::move(in.reply), false);
  }
  // A batch: each message as if it had come alone, with the ACK subject
  // <ACK inbox>.<its id> when the batch's is <ACK inbox>.<first id>.
  if (items.empty() || items.size() > kMaxBatchMessages || body.size() > kMaxBatchPayload) {
    counters.received++;
    return drop_incoming(in.subject, in.reply,
                         "a batch must hold 1 to " + std::to_string(kMaxBatchMessages) +
                             " messages in at most " + std::to_string(kMaxBatchPayload) +
                             " bytes; this one holds " + std::to_string(items.size()) + " in " +
                             std::to_string(body.size()),
                         "bad_message");
  }
  std::string prefix;
  if (const std::string& id = items[0].msg.id;
      !id.empty() && in.reply.size() > id.size() &&
      in.reply.compare(in.reply.size() - id.size(), id.size(), id) == 0 &&
      in.reply[in.reply.size() - id.size() - 1] == '.') {
    prefix = in.reply.substr(0, in.reply.size() - id.size());
  }
  for (auto& item : items) {
    const std::string& id = item.msg.id;
    const bool nameable =
        !prefix.empty() && !id.empty() && id.size() <= kMaxIdBytes && is_valid_token(id);
    std::string reply = nameable ? prefix + id : in.reply;
    if (item.bytes.size() > limit) {
      counters.received++;
      const std::string why =
          "message of " + std::to_string(item.bytes.size()) + " bytes exceeds host.maxMessageBytes";
      if (nameable) {
        drop_batched(in.subject, std::move(item.msg), std::move(reply), why, "too_large");
      } else {
        drop_incoming(in.subject, reply, why, "too_large");
      }
      continue;
    }
    accept_incoming(in, std::move(item), signer, std::move(reply), true);
  }
}

Node::Impl::Candidate Node::Impl::parse_candidate(const nlohmann::json& doc, std::string bytes) {
  Candidate c;
  c.bytes = std::move(bytes);
  try {
    c.msg = parse_message(doc, "message");
  } catch (const MessageError& e) {
    c.error = e.what();
    // Its id, if it has one, to NAK it by (in a batch).
    if (auto id = doc.find("id"); id != doc.end() && id->is_string()) {
      c.msg.id = id->get<std::string>();
    }
  }
  return c;
}

void Node::Impl::accept_incoming(const Incoming& in, Candidate item, const std::string& signer,
                                 std::string reply, bool in_batch) {
  counters.received++;
  Message m = std::move(item.msg);
  // A message of a batch is NAKed with the batch's ACKs when it has an id
  // to name it by; otherwise (and alone) at once.
  auto refuse = [&](const std::string& why, std::string_view reason = "bad_message") {
    if (in_batch && !m.id.empty() && m.id.size() <= kMaxIdBytes && is_valid_token(m.id)) {
      return drop_batched(in.subject, std::move(m), std::move(reply), why, reason);
    }
    drop_incoming(in.subject, reply, why, reason);
  };
  if (!item.error.empty()) return refuse(item.error);
  if (m.to_node != config.node.name) {
    return refuse("addressed to node \"" + m.to_node + "\", not " + config.node.name, "wrong_node");
  }
  if (m.id.empty() || !is_valid_token(m.id)) return refuse("no valid \"id\"", "bad_id");
  if (m.id.size() > kMaxIdBytes) {
    return refuse("\"id\" of " + std::to_string(m.id.size()) + " bytes is over the " +
                      std::to_string(kMaxIdBytes) + "-byte limit",
                  "bad_id");
  }
  if (m.from_node.empty()) return refuse("no \"fromNode\"");
  if (identity && m.from_node != signer) {
    return refuse("\"fromNode\" " + m.from_node + " is not the signer " + signer, "impersonation");
  }
  const std::string& prefix = config.broker.subject_prefix;
  if (in.subject.size() != prefix.size() + 5 + m.to_node.size() + 1 + m.method.size() ||
      in.subject.compare(0, prefix.size(), prefix) != 0 ||
      in.subject.compare(prefix.size(), 5, ".req.") != 0 ||
      in.subject.compare(prefix.size() + 5, m.to_node.size(), m.to_node) != 0 ||
      in.subject[prefix.size() + 5 + m.to_node.size()] != '.' ||
      in.subject.compare(prefix.size() + 6 + m.to_node.size(), std::string::npos, m.method) != 0) {
    return refuse("method \"" + m.method + "\" does not match the subject", "subject_mismatch");
  }
  std::string why;
  if (!authorized(m, &why) && !authorized_by_cause(m, &why)) {
    return refuse("not allowed: " + why, "not_allowed");
  }
  // A carried cause was checked (and kept) above, or is not this host's to
  // act on; the request itself is the cause of its call's messages when it
  // came signed, alone (a batch's envelope is no one request's).
  if (m.extra.is_object()) m.extra.erase("cause");
  if (m.cause.is_null() && !in_batch) m.cause = cause_of(in, m);
  count_message(MessageEvent::received, m, m.from_node);
  // A reply is the word of the node its request went to that it has the
  // request: as good as its ACK (which a quick call's receiver leaves out).
  if (m.is_reply) implied_acks.push_back({m.in_reply_to, m.from_node});
  // The inbox keeps the message itself; the envelope has done its work.
  received_batch.push_back(Received{std::move(m), std::move(reply), std::move(item.bytes), {}});
}

void Node::Impl::record_received(std::vector<Received> batch) {
  // One transaction for all, on this thread (the subscription's: it takes
  // the next messages off the bus once these are in), then one answer per
  // sender for all of its messages (on the first one's reply subject).
  // A quick built-in runs right here and its reply, sent before the ACKs,
  // is its ACK. A pure one (no effect but its reply) runs before anything
  // is written and is recorded done with its reply, in one write; another
  // quick one is recorded "running" first.
  const size_t n = batch.size();
  std::vector<char> fresh(n, 0), quick(n, 0), pure(n, 0);
  std::vector<std::string_view> pure_ids;
  std::vector<size_t> pure_at;
  bool write_needed = false;
  for (size_t i = 0; i < n; ++i) {
    const Message& m = batch[i].msg;
    if (!batch[i].refusal.empty()) continue;
    bool p = false;
    quick[i] = !m.is_reply && is_quick(m.method, &p) ? 1 : 0;
    pure[i] = quick[i] && p ? 1 : 0;
    if (pure[i]) {
      pure_ids.push_back(m.id);
      pure_at.push_back(i);
    } else {
      write_needed = true;
    }
  }
  if (!pure_ids.empty()) {
    // New: not in the inbox, and not already earlier in this batch.
    std::vector<char> seen;
    try {
      seen = store->contains(Db::inbox, pure_ids);
    } catch (const std::exception& e) {
      spdlog::error("inbox: cannot look up {} message(s): {}", pure_ids.size(), e.what());
      return;  // not ACKed: the senders will resend
    }
    std::vector<std::string_view> taken;
    for (size_t k = 0; k < pure_ids.size(); ++k) {
      if (seen[k] || std::find(taken.begin(), taken.end(), pure_ids[k]) != taken.end()) continue;
      taken.push_back(pure_ids[k]);
      fresh[pure_at[k]] = 1;
    }
  }
  // The requests of ours that these replies answer, ACKed by them: out of
  // the outbox in the same write.
  std::vector<std::shared_ptr<Outgoing>> answered = take_implied_acks();
  if (write_needed || !answered.empty()) {
    try {
      store->write([&](WriteTxn& t) {
        for (size_t i = 0; i < n; ++i) {
          if (!batch[i].refusal.empty() || pure[i]) continue;
          const Message& m = batch[i].msg;
          // A reply with no reply method to run is finished once it is
          // here: what remains (telling an in-memory waiter) cannot
          // outlive a restart.
          bool finished = m.is_reply && m.method == "none";
          std::string_view state =
              finished ? kStateDone : (quick[i] ? kStateRunning : kStateReceived);
          fresh[i] = Store::inbox_record_in(t, m.id, batch[i].bytes, state) ? 1 : 0;
        }
        for (const auto& out : answered) t.del(Db::outbox, out->msg.id);
      });
    } catch (const std::exception& e) {
      // Not durable, so no ACK: the senders will resend.
      spdlog::error("inbox: cannot record {} message(s): {}", n, e.what());
      return;
    }
  }
  if (stopping) return;  // not ACKed: they are in the inbox and run after the restart
  // What the quick calls send is committed and published in one go.
  SendBatch sends(this);
  for (size_t i = 0; i < n; ++i) {
    if (!batch[i].refusal.empty()) continue;
    if (!fresh[i]) {
      counters.duplicates++;
      spdlog::debug("message {} seen before: ACKed again, not run again", batch[i].msg.id);
      continue;
    }
    // Handed on; its id stays, for the ACKs.
    Message m = std::move(batch[i].msg);
    batch[i].msg.id = m.id;
    if (quick[i]) {
      deliver_local(std::move(m), true, true);
    } else if (m.is_reply && m.method == "none") {
      // Nothing to run, only a waiter to tell: not worth a hand-off, and
      // already recorded done.
      deliver_local(std::move(m), false);
    } else {
      asio::post(*pool, [this, m = std::move(m)]() mutable { deliver_local(std::move(m), true); });
    }
  }
  // A quick call's reply, once out, is its ACK (a sender of bosun's takes
  // a reply for the ACK of its request). A resent copy, or a quick call
  // whose reply could not be sent, is ACKed as usual; a pure one whose
  // reply did not go out is neither recorded nor ACKed: sent again, it runs.
  std::vector<std::string> answering;  // copies: commit() moves the messages on
  for (const auto& item : sends.items) {
    if (item.msg.is_reply) answering.push_back(item.msg.in_reply_to);
  }
  std::sort(answering.begin(), answering.end());
  auto answered_here = [&](size_t i) {
    return std::binary_search(answering.begin(), answering.end(), batch[i].msg.id);
  };
  for (size_t i = 0; i < n; ++i) {
    if (pure[i] && fresh[i] && answered_here(i)) sends.inbox_done.push_back(batch[i].msg.id);
  }
  std::sort(sends.inbox_done.begin(), sends.inbox_done.end());
  const bool sent = sends.commit().first.empty();
  // A resent copy of a pure call answered before: its reply may be what was
  // lost (a pure call's reply is not ACKed; its request is resent instead),
  // so the kept reply goes again, the same message (its receiver drops a
  // second copy by its id). The copy is ACKed as well, as any duplicate.
  bool resent_replies = false;
  for (size_t i = 0; i < n; ++i) {
    if (!pure[i] || fresh[i] || !batch[i].refusal.empty() || answered_here(i)) continue;
    try {
      auto kept = store->inbox_get(batch[i].msg.id);
      if (!kept || kept->state != kStateDone || kept->bytes.empty()) continue;
      // Read as the outbox is at start: rare, so the general way.
      Message reply = parse_message(nlohmann::json::parse(kept->bytes), "kept reply");
      if (!reply.is_reply) continue;
      publish_unacked(std::move(reply), std::move(kept->bytes));
      resent_replies = true;
    } catch (const std::exception& e) {
      spdlog::error("message {}: cannot send its reply again: {}", batch[i].msg.id, e.what());
    }
  }
  if (resent_replies) flush_publishes();
  std::vector<char> unlisted(n, 0);
  for (size_t i = 0; i < n; ++i) {
    unlisted[i] = quick[i] && fresh[i] && ((sent && answered_here(i)) || pure[i]);
  }
  send_acks(batch, unlisted);
}

std::vector<std::shared_ptr<Outgoing>> Node::Impl::take_implied_acks() {
  std::vector<std::shared_ptr<Outgoing>> answered;
  if (implied_acks.empty()) return answered;
  std::lock_guard<std::mutex> lock(outgoing_mu);
  for (const auto& [id, from] : implied_acks) {
    auto it = outgoing.find(id);
    if (it == outgoing.end() || it->second->msg.to_node != from) continue;
    answered.push_back(it->second);
    deadlines.cancel(it->second->ack_deadline);
    outgoing.erase(it);
  }
  implied_acks.clear();
  for (const auto& out : answered) {
    counters.acked++;
    count_message(MessageEvent::acked, out->msg, out->msg.to_node);
  }
  return answered;
}

void Node::Impl::send_acks(const std::vector<Received>& batch, const std::vector<char>& unlisted) {
  auto t = bus();
  if (!t) return;
  // A bosun sender asks for the ACK on <its ACK inbox>.<id>. Those of one
  // sender go together, at most kMaxAckBatch to an answer, on the reply
  // subject of the first NATS message they came in (one answer to a NATS
  // message at most, on its own reply subject: what NATS allow_responses
  // permits): "ACK <id> <id> ...", or, when one of them was refused, "ACKS"
  // and a line "ACK <id>" or "NAK <id> <why>" for each. Messages whose
  // reply went out are not listed: the reply is their ACK. Any other reply
  // subject gets an answer of its own.
  struct Answer {
    std::string subject;
    std::vector<const Received*> items;
  };
  // By sender (its ACK inbox): most batches come from one.
  std::vector<std::pair<std::string_view, std::vector<Answer>>> by_sender;
  for (size_t i = 0; i < batch.size(); ++i) {
    const Received& item = batch[i];
    const std::string& reply = item.reply;
    if (reply.empty()) continue;
    const std::string& id = item.msg.id;
    size_t dot = reply.rfind('.');
    bool bosun_form =
        dot != std::string::npos && reply.compare(dot + 1, std::string::npos, id) == 0;
    if (!bosun_form) {
      if (unlisted[i]) continue;
      if (item.refusal.empty()) {
        t->publish(reply, seal(reply, "ACK"));
      } else {
        t->publish(reply, seal(reply, "NAK " + item.refusal, true));
      }
      continue;
    }
    const std::string_view sender = std::string_view(reply).substr(0, dot);
    auto found = std::find_if(by_sender.begin(), by_sender.end(),
                              [&](const auto& s) { return s.first == sender; });
    if (found == by_sender.end())
      found = by_sender.emplace(by_sender.end(), sender, std::vector<Answer>{});
    auto& answers = found->second;
    // A new answer starts with a NATS message of their own that would not
    // fit in the current one.
    if (answers.empty() ||
        (item.from_message > 0 && answers.back().items.size() + item.from_message > kMaxAckBatch)) {
      answers.push_back(Answer{reply, {}});
    }
    if (!unlisted[i]) answers.back().items.push_back(&item);
  }
  for (const auto& [sender, answers] : by_sender) {
    for (const auto& a : answers) {
      if (a.items.empty()) continue;  // all answered by their replies
      bool refused = false;
      for (const Received* r : a.items) refused = refused || !r->refusal.empty();
      if (a.items.size() == 1 && a.subject == a.items[0]->reply) {
        const Received& r = *a.items[0];
        t->publish(a.subject,
                   refused ? seal(a.subject, "NAK " + r.refusal, true) : seal(a.subject, "ACK"));
        continue;
      }
      std::string body = refused ? "ACKS" : "ACK";
      for (const Received* r : a.items) {
        if (!refused) {
          body += " " + r->msg.id;
        } else if (r->refusal.empty()) {
          body += "\nACK " + r->msg.id;
        } else {
          // One line each: a reason never breaks it.
          std::string why = r->refusal;
          std::replace(why.begin(), why.end(), '\n', ' ');
          body += "\nNAK " + r->msg.id + " " + why;
        }
      }
      t->publish(a.subject, seal(a.subject, body, refused));
    }
  }
}

void Node::Impl::mark_running(const std::string& id) {
  store->inbox_set_state(id, kStateRunning);
}

void Node::Impl::mark_done(const std::string& id) {
  store->inbox_set_state(id, kStateDone);
}

}  // namespace bosun::host
