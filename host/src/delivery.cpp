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

#include <cmath>
#include <map>
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

bool Node::Impl::send_remote(Message m, const std::string& done_id) {
  std::string bytes = to_text(m);
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
  return !done_id.empty();
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
  out->subject = subject;
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
  if (auto t = bus())
    t->publish(out->subject, seal_request(out->subject, out->bytes, out->sign),
               ack_inbox + "." + id);
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
    if (auto t = bus()) {
      t->publish(out->subject, seal_request(out->subject, out->bytes, out->sign),
                 ack_inbox + "." + out->msg.id);
    }
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
  std::vector<std::string> ids;
  if (text == "ACK") {
    ids.push_back(in.subject.substr(dot + 1));
  } else if (text.rfind("ACK ", 0) == 0) {
    std::string_view rest(text);
    rest.remove_prefix(4);
    while (!rest.empty() && ids.size() < kMaxAckBatch) {
      size_t sp = rest.find(' ');
      std::string_view id = rest.substr(0, sp);
      if (!id.empty() && is_valid_token(std::string(id))) ids.emplace_back(id);
      if (sp == std::string_view::npos) break;
      rest.remove_prefix(sp + 1);
    }
  } else if (text.rfind("NAK ", 0) == 0) {
    ids.push_back(in.subject.substr(dot + 1));
  } else {
    return;
  }
  const bool nak = text.rfind("NAK ", 0) == 0;
  for (const auto& id : ids) {
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
      give_up(out->msg, "refused by " + out->msg.to_node + ": " + std::string(text.substr(4)),
              true);
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
  counters.received++;
  if (in.data.size() > static_cast<size_t>(config.host.max_message_bytes)) {
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
    return drop_incoming(in.subject, in.reply, why, {});
  }
  nlohmann::json doc = nlohmann::json::parse(body, nullptr, false);
  if (doc.is_discarded()) return drop_incoming(in.subject, in.reply, "not valid JSON", "bad_json");
  Message m;
  try {
    m = parse_message(doc, "message");
  } catch (const MessageError& e) {
    return drop_incoming(in.subject, in.reply, e.what());
  }
  if (m.to_node != config.node.name) {
    return drop_incoming(in.subject, in.reply,
                         "addressed to node \"" + m.to_node + "\", not " + config.node.name,
                         "wrong_node");
  }
  if (m.id.empty() || !is_valid_token(m.id)) {
    return drop_incoming(in.subject, in.reply, "no valid \"id\"", "bad_id");
  }
  if (m.id.size() > kMaxIdBytes) {
    return drop_incoming(in.subject, in.reply,
                         "\"id\" of " + std::to_string(m.id.size()) + " bytes is over the " +
                             std::to_string(kMaxIdBytes) + "-byte limit",
                         "bad_id");
  }
  if (m.from_node.empty()) return drop_incoming(in.subject, in.reply, "no \"fromNode\"");
  if (identity && m.from_node != signer) {
    return drop_incoming(in.subject, in.reply,
                         "\"fromNode\" " + m.from_node + " is not the signer " + signer,
                         "impersonation");
  }
  std::string expected_subject =
      config.broker.subject_prefix + ".req." + m.to_node + "." + m.method;
  if (in.subject != expected_subject) {
    return drop_incoming(in.subject, in.reply,
                         "method \"" + m.method + "\" does not match the subject",
                         "subject_mismatch");
  }
  if (!authorized(m, &why) && !authorized_by_cause(m, &why)) {
    return drop_incoming(in.subject, in.reply, "not allowed: " + why, "not_allowed");
  }
  // A carried cause was checked (and kept) above, or is not this host's to
  // act on; the request itself is the cause of its call's messages when it
  // came signed.
  m.extra.erase("cause");
  if (m.cause.is_null()) m.cause = cause_of(in, m);
  count_message(MessageEvent::received, m, m.from_node);
  // The inbox keeps the message itself; the envelope has done its work.
  received_batch.push_back(Received{std::move(m), std::move(in.reply), std::string(body)});
}

void Node::Impl::record_received(std::vector<Received> batch) {
  // One transaction for all, then one ACK per sender for all of its
  // messages (the ACK goes to the first one's reply subject).
  auto fresh = std::make_shared<std::vector<char>>(batch.size(), 0);
  auto items = std::make_shared<std::vector<Received>>(std::move(batch));
  store->write_async(
      [items, fresh](WriteTxn& t) {
        for (size_t i = 0; i < items->size(); ++i) {
          const Message& m = (*items)[i].msg;
          // A reply with no reply method to run is finished once it is here:
          // what remains (telling an in-memory waiter) cannot outlive a restart.
          bool finished = m.is_reply && m.method == "none";
          (*fresh)[i] = Store::inbox_record_in(t, m.id, (*items)[i].bytes,
                                               finished ? kStateDone : kStateReceived)
                            ? 1
                            : 0;
        }
      },
      [this, items, fresh](std::exception_ptr err) {
        if (err) {
          // Not durable, so no ACK: the senders will resend.
          try {
            std::rethrow_exception(err);
          } catch (const std::exception& e) {
            spdlog::error("inbox: cannot record {} message(s): {}", items->size(), e.what());
          }
          return;
        }
        if (stopping) return;  // not ACKed: they are in the inbox and run after the restart
        auto t = bus();
        // A bosun sender asks for the ACK on <its ACK inbox>.<id>: those of
        // one sender share one "ACK <id> <id> ..." (on the first one's
        // subject). Any other reply subject gets the plain "ACK" of its own.
        std::map<std::string, std::pair<std::string, std::vector<std::string>>> acks;
        for (auto& item : *items) {
          const std::string& reply = item.reply;
          if (reply.empty()) continue;
          const std::string& id = item.msg.id;
          size_t dot = reply.rfind('.');
          bool bosun_form =
              dot != std::string::npos && reply.compare(dot + 1, std::string::npos, id) == 0;
          if (!bosun_form) {
            if (t) t->publish(reply, seal(reply, "ACK"));
            continue;
          }
          auto& a = acks[reply.substr(0, dot)];
          if (a.first.empty()) a.first = reply;
          a.second.push_back(id);
        }
        if (t) {
          for (const auto& [prefix, a] : acks) {
            if (a.second.size() == 1) {
              t->publish(a.first, seal(a.first, "ACK"));
              continue;
            }
            std::string body = "ACK";
            for (const auto& id : a.second) body += " " + id;
            t->publish(a.first, seal(a.first, body));
          }
        }
        for (size_t i = 0; i < items->size(); ++i) {
          if (!(*fresh)[i]) {
            counters.duplicates++;
            spdlog::debug("message {} seen before: ACKed again, not run again", (*items)[i].msg.id);
            continue;
          }
          Message& m = (*items)[i].msg;
          if (m.is_reply && m.method == "none") {
            // Nothing to run, only a waiter to tell: not worth a hand-off,
            // and already recorded done.
            deliver_local(std::move(m), false);
            continue;
          }
          asio::post(*pool,
                     [this, m = std::move(m)]() mutable { deliver_local(std::move(m), true); });
        }
      });
}

void Node::Impl::mark_running(const std::string& id) {
  store->inbox_set_state(id, kStateRunning);
}

void Node::Impl::mark_done(const std::string& id) {
  store->inbox_set_state(id, kStateDone);
}

}  // namespace bosun::host
