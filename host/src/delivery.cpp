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

#include "bosun/host/transport.hpp"
#include "node_impl.hpp"

namespace bosun::host {

namespace {

constexpr std::string_view kStateRunning = "running";
constexpr std::string_view kStateDone = "done";
// Inbox entries of finished messages are kept this long to recognise resent
// copies; far beyond any ACKTimeout * retries budget.
constexpr int64_t kInboxKeepMs = 24LL * 3600 * 1000;

// Completion of a write nobody waits for: only a failure is worth a line.
DoneFn log_failure(std::string what) {
  return [what = std::move(what)](std::exception_ptr err) {
    if (!err) return;
    try {
      std::rethrow_exception(err);
    } catch (const std::exception& e) {
      spdlog::error("{}: {}", what, e.what());
    }
  };
}

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
  return m.is_reply ? config.defaults.reply_ack_timeout_s : config.defaults.ack_timeout_s;
}

int Node::Impl::retries_of(const Message& m) const {
  if (m.retries) return *m.retries;
  return m.is_reply ? config.defaults.reply_retries : config.defaults.retries;
}

void Node::Impl::send_remote(Message m) {
  std::string bytes = to_json(m).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  // Durable before it counts as accepted: a crash from here on resends it.
  store->outbox_put(m.id, bytes);
  counters.sent++;
  publish_attempt(std::move(m), std::move(bytes));
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
  if (ack_s <= 0) {
    // ACKTimeout 0: fire and forget.
    if (auto t = bus()) t->publish(subject, bytes);
    store->write_async([id = m.id](WriteTxn& t) { t.del(Db::outbox, id); },
                       log_failure("outbox: cannot remove " + m.id));
    return;
  }
  auto out = std::make_shared<Outgoing>(io);
  out->subject = subject;
  out->bytes = std::move(bytes);
  out->attempts_left = retries_of(m);
  out->ack_timeout = std::chrono::milliseconds(std::llround(ack_s * 1000));
  out->msg = std::move(m);
  const std::string id = out->msg.id;
  {
    std::lock_guard<std::mutex> lock(outgoing_mu);
    outgoing[id] = out;
  }
  if (auto t = bus()) t->publish(out->subject, out->bytes, ack_inbox + "." + id);
  asio::post(io, [this, out] {
    {
      // The ACK can beat this: a timer armed now would hold the message
      // (and its body) for a whole ACKTimeout after it was delivered.
      std::lock_guard<std::mutex> lock(outgoing_mu);
      auto it = outgoing.find(out->msg.id);
      if (it == outgoing.end() || it->second != out) return;
    }
    arm_ack_timer(out);
  });
}

void Node::Impl::arm_ack_timer(const std::shared_ptr<Outgoing>& out) {
  out->timer.expires_after(out->ack_timeout);
  out->timer.async_wait([this, out](const boost::system::error_code& ec) {
    if (ec) return;
    {
      std::lock_guard<std::mutex> lock(outgoing_mu);
      auto it = outgoing.find(out->msg.id);
      if (it == outgoing.end() || it->second != out) return;  // ACKed meanwhile
      if (out->attempts_left <= 0) outgoing.erase(it);
    }
    if (out->attempts_left > 0) {
      --out->attempts_left;
      counters.retried++;
      spdlog::debug("no ACK for {} ({}) from {}; resending", out->msg.id, out->msg.method,
                    out->msg.to_node);
      if (auto t = bus()) t->publish(out->subject, out->bytes, ack_inbox + "." + out->msg.id);
      arm_ack_timer(out);
      return;
    }
    give_up(out->msg, "no ACK from " + out->msg.to_node + " after " +
                          std::to_string(retries_of(out->msg) + 1) + " attempt(s), " +
                          std::to_string(out->ack_timeout.count()) + " ms apart");
  });
}

void Node::Impl::give_up(const Message& m, const std::string& why) {
  counters.failed++;
  store->write_async([id = m.id](WriteTxn& t) { t.del(Db::outbox, id); },
                     log_failure("outbox: cannot remove " + m.id));
  std::string text = "message " + m.id + " (" + m.method + ") from " + m.from_node + " to " +
                     m.to_node + " dropped: " + why +
                     "; check that the node is up and has the method";
  spdlog::error("{}", text);
  // Whoever waits for the answer (bosun send --wait) learns it now, not at
  // its own timeout.
  if (!m.is_reply) {
    bool waited;
    {
      std::lock_guard<std::mutex> lock(waiters_mu);
      waited = waiters.count(m.id) > 0;
    }
    if (waited) {
      Message failed;
      failed.id = new_message_id();
      failed.from_node = m.to_node;
      failed.to_node = config.node.name;
      failed.method = "none";
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
  size_t dot = in.subject.rfind('.');
  if (dot == std::string::npos) return;
  std::string id = in.subject.substr(dot + 1);
  // Only a receiver's word counts: nats-server answers a request nobody is
  // subscribed to with an empty "no responders" status on the same subject.
  if (in.data != "ACK" && in.data.rfind("NAK ", 0) != 0) return;
  std::shared_ptr<Outgoing> out;
  {
    std::lock_guard<std::mutex> lock(outgoing_mu);
    auto it = outgoing.find(id);
    if (it == outgoing.end()) return;  // a late duplicate ACK
    out = it->second;
    outgoing.erase(it);
  }
  counters.acked++;
  asio::post(io, [out] { out->timer.cancel(); });
  store->write_async([id](WriteTxn& t) { t.del(Db::outbox, id); },
                     log_failure("outbox: cannot remove " + id));
  if (in.data.rfind("NAK ", 0) == 0) {
    // The receiver will never take it: no point in resending.
    give_up(out->msg, "refused by " + out->msg.to_node + ": " + in.data.substr(4));
  }
}

void Node::Impl::drop_incoming(const std::string& subject, const std::string& reply,
                               const std::string& why) {
  counters.dropped++;
  spdlog::warn("dropped a message on {}: {}", subject, why);
  // Tell the sender when it asked for an ACK, so it stops resending.
  if (auto t = bus(); t && !reply.empty()) t->publish(reply, "NAK " + why);
}

void Node::Impl::on_incoming(Incoming&& in) {
  counters.received++;
  if (in.data.size() > static_cast<size_t>(config.host.max_message_bytes)) {
    return drop_incoming(
        in.subject, in.reply,
        "message of " + std::to_string(in.data.size()) + " bytes exceeds host.maxMessageBytes");
  }
  nlohmann::json doc = nlohmann::json::parse(in.data, nullptr, false);
  if (doc.is_discarded()) return drop_incoming(in.subject, in.reply, "not valid JSON");
  Message m;
  try {
    m = parse_message(doc, "message");
  } catch (const MessageError& e) {
    return drop_incoming(in.subject, in.reply, e.what());
  }
  if (m.to_node != config.node.name) {
    return drop_incoming(in.subject, in.reply,
                         "addressed to node \"" + m.to_node + "\", not " + config.node.name);
  }
  if (m.id.empty() || !is_valid_token(m.id)) {
    return drop_incoming(in.subject, in.reply, "no valid \"id\"");
  }
  if (m.from_node.empty()) return drop_incoming(in.subject, in.reply, "no \"fromNode\"");
  std::string expected_subject =
      config.broker.subject_prefix + ".req." + m.to_node + "." + m.method;
  if (in.subject != expected_subject) {
    return drop_incoming(in.subject, in.reply,
                         "method \"" + m.method + "\" does not match the subject");
  }
  std::string reply = std::move(in.reply);
  std::string id = m.id;
  store->inbox_record_async(
      id, in.data, [this, m = std::move(m), reply](std::exception_ptr err, InboxResult r) mutable {
        if (err) {
          // Not durable, so no ACK: the sender will resend.
          try {
            std::rethrow_exception(err);
          } catch (const std::exception& e) {
            spdlog::error("inbox: cannot record {}: {}", m.id, e.what());
          }
          return;
        }
        if (stopping) return;  // not ACKed: it is in the inbox and runs after the restart
        if (auto t = bus(); t && !reply.empty()) t->publish(reply, "ACK");
        if (!r.fresh) {
          counters.duplicates++;
          spdlog::debug("message {} seen before: ACKed again, not run again", m.id);
          return;
        }
        asio::post(*pool,
                   [this, m = std::move(m)]() mutable { deliver_local(std::move(m), true); });
      });
}

void Node::Impl::mark_running(const std::string& id) {
  store->inbox_set_state(id, kStateRunning);
}

void Node::Impl::mark_done(const std::string& id) {
  store->inbox_set_state(id, kStateDone);
}

}  // namespace bosun::host
