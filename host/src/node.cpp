// Node lifecycle, the local message API (submit), routing and dispatch.
#include "bosun/host/node.hpp"

#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <thread>

#include "bosun/host/transport.hpp"
#include "node_impl.hpp"
#include "socket_server.hpp"

namespace bosun::host {

namespace fs = std::filesystem;

Node::Impl::Impl(Config cfg) : config(std::move(cfg)) {
  data_dir_text = config.node.data_dir.string();
  running_config = std::make_shared<const Config>(config);
  workers = config.host.workers;
  if (workers <= 0)
    workers = std::max(4, 2 * static_cast<int>(std::thread::hardware_concurrency()));
  pool = std::make_unique<asio::thread_pool>(static_cast<size_t>(workers));
  work.emplace(io.get_executor());
}

Node::Node(Config config) : impl_(std::make_unique<Impl>(std::move(config))) {}

Node::~Node() {
  impl_->stopping = true;
  impl_->io.stop();
  impl_->shutdown();
}

Config Node::config() const {
  return *impl_->current_config();
}
const std::string& Node::name() const {
  return impl_->config.node.name;
}

void Node::start() {
  Impl& d = *impl_;
  std::error_code ec;
  fs::create_directories(d.config.node.data_dir, ec);
  if (ec) {
    throw std::runtime_error("cannot create node.dataDir " + d.data_dir_text + ": " + ec.message());
  }
  ::chmod(d.config.node.data_dir.c_str(), 0700);
  d.start_metrics();
  StoreOptions so;
  so.sync = d.config.storage.sync;
  so.sync_interval_ms = d.config.storage.sync_interval_ms;
  so.map_size_mb = d.config.storage.map_size_mb;
  d.store = std::make_unique<Store>(d.config.node.data_dir / "state", so);
  d.audit = std::make_unique<AuditLog>(d.config.node.data_dir / "audit.log");
  if (d.config.security.sign) {
    d.identity = Identity::load_or_create(d.config.node.data_dir);
    d.trust = std::make_unique<TrustStore>(*d.store, d.config.node.name,
                                           d.identity->public_key_b64(), d.config.node.central);
    d.trust->configure(d.config.security);
    d.start_crypt();
  }
  d.load_modules();
  d.start_transport();
  d.resume_delivery();
  d.announce_key();
  d.audit_flush = std::make_unique<asio::steady_timer>(d.io);
  d.schedule_audit_flush();
  for (const auto& r : d.pending_update_results) {
    d.count_update(r);
    d.emit_event("update_result", r);
  }
  d.pending_update_results.clear();
  // Signals before the socket: once the socket answers, a SIGHUP reloads.
  d.signals = std::make_unique<asio::signal_set>(d.io, SIGINT, SIGTERM);
  d.signals->async_wait([this](const boost::system::error_code& ec, int sig) {
    if (ec) return;
    spdlog::info("signal {}: stopping", sig);
    stop();
  });
  d.hangup = std::make_unique<asio::signal_set>(d.io, SIGHUP);
  d.on_sighup();
  d.socket = std::make_unique<SocketServer>(*this, d.io, d.config.socket_path());
  spdlog::info("node {} serving on {} ({})", d.config.node.name, d.config.socket_path().string(),
               d.config.broker.standalone() ? "standalone" : "broker");
}

void Node::Impl::start_metrics() {
  const std::string& listen = config.metrics.listen;
  if (listen.empty()) return;
  metrics = std::make_unique<Metrics>(listen, [this] {
    MetricsState s;
    {
      std::lock_guard<std::mutex> lock(calls_mu);
      s.inflight_calls = running.size();
    }
    {
      std::lock_guard<std::mutex> lock(outgoing_mu);
      s.outbox_depth = outgoing.size();
    }
    s.reconnects = counters.reconnects.load();
    s.duplicates = counters.duplicates.load();
    std::lock_guard<std::mutex> lock(plugins_mu);
    for (const auto& p : plugin_infos) s.plugins.push_back({p.name, p.version, to_string(p.state)});
    return s;
  });
  spdlog::info("metrics on http://{}/metrics", listen);
}

void Node::Impl::schedule_audit_flush() {
  audit_flush->expires_after(std::chrono::milliseconds(200));
  audit_flush->async_wait([this](const boost::system::error_code& ec) {
    if (ec || !audit) return;
    audit->flush();
    schedule_audit_flush();
  });
}

void Node::run() {
  impl_->io.run();
  impl_->stopping = true;
  impl_->shutdown();
}

void Node::stop() {
  asio::post(impl_->io, [d = impl_.get()] {
    if (d->socket) d->socket->close();
    if (d->signals) d->signals->cancel();
    if (d->hangup) d->hangup->cancel();
    if (d->audit_flush) d->audit_flush->cancel();
    d->work.reset();
    d->io.stop();
  });
}

void Node::Impl::shutdown() {
  std::lock_guard<std::mutex> once(shutdown_mu);
  if (shut_down) return;
  shut_down = true;
  stopping = true;
  {
    std::lock_guard<std::mutex> lock(calls_mu);
    for (auto& [id, call] : running) call->cancelled = true;
  }
  // No new messages from the bus; wait out callbacks still holding it, so
  // the connection closes here and not on one of nats.c's own threads.
  if (auto t = bus()) {
    {
      std::lock_guard<std::mutex> lock(transport_mu);
      transport.reset();
    }
    for (int i = 0; i < 500 && t.use_count() > 1; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    t.reset();
  }
  {
    std::lock_guard<std::mutex> lock(drains_mu);
    for (auto& d : drains) d.thread.join();
    drains.clear();
  }
  // A clean stop is no crash: versions on probation stay.
  if (store) {
    std::vector<std::string> names;
    {
      std::lock_guard<std::mutex> lock(plugins_mu);
      for (const auto& i : instances) names.push_back(i->name());
    }
    for (const auto& n : names) {
      try {
        end_probation(n);
      } catch (const std::exception& e) {
        spdlog::error("module {}: {}", n, e.what());
      }
    }
  }
  // An update or reload in progress ends first; later ones see `stopping`.
  { std::lock_guard<std::mutex> barrier(update_mu); }
  unload_all();
  if (rsa_maker.joinable()) rsa_maker.join();  // a first start's RSA key, being made
  pool->join();                                // destroyed with the node, after io
  deadlines.clear();
  socket.reset();
  store.reset();
  audit.reset();
  spdlog::info("node {} stopped", config.node.name);
}

SubmitResult Node::submit(const nlohmann::json& batch, std::shared_ptr<ReplyWaiter> waiter,
                          const std::string& from_node) {
  return impl_->submit(batch, std::move(waiter), from_node);
}

nlohmann::json SubmitResult::to_json() const {
  nlohmann::json a = nlohmann::json::array();
  for (const auto& x : accepted) {
    a.push_back({{"index", x.index}, {"id", x.id}, {"toNode", x.to_node}, {"method", x.method}});
  }
  nlohmann::json e = nlohmann::json::array();
  for (const auto& x : errors) e.push_back({{"index", x.index}, {"error", x.error}});
  return {{"accepted", a}, {"errors", e}};
}

bool Node::Impl::find_method(const std::string& method, MethodEntry* entry,
                             std::string* error) const {
  // One lock for the table and the plugins, so that what a caller is told
  // about a missing method matches the table it was missing from.
  std::lock_guard<std::mutex> lock(plugins_mu);
  if (auto it = table->find(method); it != table->end()) {
    if (entry) *entry = it->second;
    return true;
  }
  if (error == nullptr) return false;
  *error = "unknown method \"" + method + "\" on node " + config.node.name;
  for (const auto& p : plugin_infos) {
    // A method of a plugin that is not active says which and why.
    if (std::find(p.methods.begin(), p.methods.end(), method) != p.methods.end()) {
      *error += ": plugin " + p.name + ", which provides it, is " + to_string(p.state) +
                (p.reason.empty() ? std::string() : ": " + p.reason);
      return false;
    }
  }
  std::vector<std::string> names;
  for (const auto& [n, e] : *table) names.push_back(n);
  if (std::string near = closest_match(method, names); !near.empty()) {
    *error += " (did you mean \"" + near + "\"?)";
  }
  return false;
}

namespace {

// Steward's relay, step 1 (DESIGN §9, core/relay): a request naming
// relayViaNode travels to that node as a `relay` message that carries the
// original whole in `data`; the relay module there sends it on in its own
// name and routes the replies back. The envelope's replies are therefore the
// relayed message's replies, handled here by relayReplyMethod or, when that
// is empty, by replyMethod, as in Steward.
Message relay_envelope(const Message& original) {
  Message e;
  e.to_node = original.relay_via_node;
  e.from_node = original.from_node;
  e.method = "relay";
  e.ack_timeout = original.ack_timeout;
  e.retries = original.retries;
  e.reply_method =
      original.relay_reply_method.empty() ? original.reply_method : original.relay_reply_method;
  e.reply_method_args = original.reply_method_args;
  e.reply_ack_timeout = original.reply_ack_timeout;
  e.reply_retries = original.reply_retries;
  e.reply_method_timeout = original.reply_method_timeout;
  e.directory = original.directory;
  e.file_name = original.file_name;
  e.data = to_json(original).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  return e;
}

// What makes a message unfit for relaying, or "".
std::string relay_error(const Message& m, const std::string& self, const std::string& where) {
  if (m.relay_via_node.empty()) return "";
  if (m.relay_via_node == self) {
    return where + ": field \"relayViaNode\": \"" + self +
           "\" is this node, and relaying a message through the node that sends it loops; "
           "leave relayViaNode out to send it directly";
  }
  if (m.method == "relay") {
    return where +
           ": field \"relayViaNode\": a relay message cannot itself be relayed (no relay "
           "chains: a message is relayed through one node)";
  }
  return "";
}

}  // namespace

SubmitResult Node::Impl::submit(const nlohmann::json& batch, std::shared_ptr<ReplyWaiter> waiter,
                                const std::string& from_node, bool from_module) {
  SubmitResult result;
  if (!batch.is_object() && !batch.is_array()) {
    result.errors.push_back({0, "expected a JSON array of messages (or one message object)"});
    return result;
  }
  // One object is a batch of one (not copied into an array).
  const size_t count = batch.is_object() ? 1 : batch.size();
  auto entry = [&](size_t i) -> const nlohmann::json& {
    return batch.is_object() ? batch : batch[i];
  };
  const std::string& self = config.node.name;
  auto reject = [&](size_t i, const std::string& error) {
    result.errors.push_back({i, error});
    if (audit) audit->append("rejected", {{"error", error}, {"input", entry(i)}});
  };
  // What goes to other nodes is put in the outbox in one write and
  // published together (one NATS message per node and method).
  SendScope sends(this);
  sends.count_as_submit();
  for (size_t i = 0; i < count; ++i) {
    std::string where = "message " + std::to_string(i);
    Message m;
    try {
      m = parse_message(entry(i), where);
    } catch (const MessageError& e) {
      reject(i, e.what());
      continue;
    }
    m.from_node = from_node.empty() ? self : from_node;
    if (m.is_reply && from_module) {
      submit_reply(std::move(m), i, where, result);
      continue;
    }
    m.is_reply = false;
    if (std::string error = relay_error(m, self, where); !error.empty()) {
      reject(i, error);
      continue;
    }
    std::vector<std::string> targets = m.to_nodes;
    if (!m.to_node.empty() &&
        std::find(targets.begin(), targets.end(), m.to_node) == targets.end()) {
      targets.insert(targets.begin(), m.to_node);
    }
    const std::string method = m.method;  // what was asked (a relay carries it)
    for (const auto& target : targets) {
      // The first hop: the relay node for a relayed message.
      const std::string& hop = m.relay_via_node.empty() ? target : m.relay_via_node;
      std::string error;
      if (target == self) {
        if (std::string missing; !find_method(m.method, nullptr, &missing)) {
          error = where + ": " + missing;
        }
      }
      if (error.empty() && hop != self && config.broker.standalone()) {
        error = where + ": node \"" + hop + "\" is unreachable: node " + self +
                " is standalone (no broker.servers in its config)";
      }
      if (!error.empty()) {
        reject(i, error);
        continue;
      }
      // The last target takes the message itself, the others a copy.
      Message one = &target == &targets.back() ? std::move(m) : m;
      one.to_node = target;
      one.to_nodes.clear();
      if (!one.relay_via_node.empty()) one = relay_envelope(one);
      one.id = new_message_id();
      one.sent_at_ms = now_ms();
      if (waiter) {
        std::lock_guard<std::mutex> lock(waiters_mu);
        waiters[one.id] = waiter;
      }
      std::string id = one.id;
      // Its text once, for the audit log and the outbox.
      std::string text = to_text(one);
      if (audit) audit->append_text("accepted", text);
      try {
        route(std::move(one), {}, std::move(text));
      } catch (const std::exception& e) {
        result.errors.push_back(
            {i, where + ": not accepted for node \"" + target + "\": " + e.what()});
        std::lock_guard<std::mutex> lock(waiters_mu);
        waiters.erase(id);
        continue;
      }
      result.accepted.push_back({i, id, target, method});
    }
  }
  auto [failed, why] = sends.commit();
  if (!failed.empty()) {
    std::vector<SubmitResult::Accepted> kept;
    for (auto& a : result.accepted) {
      if (std::find(failed.begin(), failed.end(), a.id) == failed.end()) {
        kept.push_back(std::move(a));
        continue;
      }
      result.errors.push_back({a.index, "message " + std::to_string(a.index) +
                                            ": not accepted for node \"" + a.to_node +
                                            "\": " + why});
      std::lock_guard<std::mutex> lock(waiters_mu);
      waiters.erase(a.id);
    }
    result.accepted = std::move(kept);
  }
  return result;
}

void Node::Impl::submit_reply(Message m, size_t index, const std::string& where,
                              SubmitResult& result) {
  std::string error;
  if (m.in_reply_to.empty()) {
    error = where + ": a reply needs \"inReplyTo\" (the id of the request it answers)";
  } else if (!m.to_nodes.empty() || m.to_node.empty()) {
    error = where + ": a reply goes to one node: give \"toNode\" and no \"toNodes\"";
  } else if (m.to_node != config.node.name && config.broker.standalone()) {
    error = where + ": node \"" + m.to_node + "\" is unreachable: node " + config.node.name +
            " is standalone (no broker.servers in its config)";
  }
  if (!error.empty()) {
    result.errors.push_back({index, error});
    if (audit) audit->append("rejected", {{"error", error}, {"input", to_json(m)}});
    return;
  }
  m.relay_via_node.clear();
  m.relay_reply_method.clear();
  if (m.status.empty()) m.status = m.error.empty() ? "ok" : "error";
  m.id = new_message_id();
  m.sent_at_ms = now_ms();
  std::string id = m.id;
  std::string to = m.to_node;
  std::string method = m.method;
  if (audit) audit->append_text("accepted", to_text(m));
  try {
    route(std::move(m));
  } catch (const std::exception& e) {
    result.errors.push_back({index, where + ": not accepted for node \"" + to + "\": " + e.what()});
    return;
  }
  result.accepted.push_back({index, id, to, method});
}

bool Node::Impl::route(Message m, const std::string& done_id, std::string text) {
  if (m.to_node == config.node.name) {
    deliver_local(std::move(m));
    return false;
  }
  if (!bus()) {
    spdlog::error("message {} ({}) for node {} dropped: no broker configured", m.id, m.method,
                  m.to_node);
    return false;
  }
  try {
    return send_remote(std::move(m), done_id, std::move(text));
  } catch (const std::exception& e) {
    spdlog::error("message {} ({}) for node {} not accepted: {}", m.id, m.method, m.to_node,
                  e.what());
    throw;
  }
}

void Node::Impl::deliver_local(Message m, bool tracked, bool running) {
  if (stopping) {
    // Still "received" in the inbox when tracked: it runs after the restart.
    spdlog::warn("message {} ({}) not run: node is stopping", m.id, m.method);
    return;
  }
  if (m.is_reply) {
    handle_reply(std::move(m), tracked);
  } else {
    // Its text once, for the audit log and the handler's view.
    std::string text = to_text(m);
    if (audit) audit->append_text("received", text);
    dispatch_request(std::move(m), tracked, running, std::move(text));
  }
}

void Node::Impl::dispatch_request(Message m, bool tracked, bool running, std::string text) {
  MethodEntry entry;
  if (std::string error; !find_method(m.method, &entry, &error)) {
    spdlog::warn("message {} from {}: {}", m.id, m.from_node, error);
    if (tracked) mark_done(m.id);
    send_reply(m, "", true, 0, error);
    return;
  }
  // A message from the bus is already on a worker thread: run it right here
  // rather than queueing it again (serial methods keep their strand).
  bool here = tracked && !entry.serial;
  start_call(std::move(m), entry, here, tracked, running, std::move(text));
}

void Node::Impl::handle_reply(Message m, bool tracked) {
  // Put the stream back in order: chunks may arrive out of order, and a
  // reply method like to_file_append must see them in order.
  std::vector<std::pair<Message, bool>> ready;
  std::shared_ptr<Strand> strand;
  {
    std::lock_guard<std::mutex> lock(streams_mu);
    auto found = streams.find(m.in_reply_to);
    if (found == streams.end() && m.seq == 0 && m.final_reply && (tracked || m.method == "none")) {
      // A whole reply in one message, on a worker thread or with no reply
      // method to run: nothing to order it against, so no strand.
      ready.emplace_back(std::move(m), tracked);
    } else {
      Stream& s = found != streams.end() ? found->second : streams[m.in_reply_to];
      if (!s.strand) s.strand = std::make_shared<Strand>(pool->get_executor());
      strand = s.strand;
      if (m.seq < s.next) return;  // a duplicate of one already handled
      uint32_t seq = m.seq;
      s.held.emplace(seq, std::make_pair(std::move(m), tracked));
      while (!s.held.empty() && s.held.begin()->first == s.next) {
        ready.push_back(std::move(s.held.begin()->second));
        s.held.erase(s.held.begin());
        ++s.next;
      }
      if (!ready.empty() && ready.back().first.final_reply) {
        streams.erase(ready.back().first.in_reply_to);
      }
    }
  }
  if (ready.empty()) return;
  if (!strand) return process_replies(ready);
  asio::post(*strand, [this, ready = std::move(ready)] { process_replies(ready); });
}

void Node::Impl::process_replies(const std::vector<std::pair<Message, bool>>& ready) {
  for (const auto& [r, was_tracked] : ready) {
    if (audit) audit->append_text("reply", to_text(r));
    std::shared_ptr<ReplyWaiter> w;
    {
      std::lock_guard<std::mutex> lock(waiters_mu);
      auto it = waiters.find(r.in_reply_to);
      if (it != waiters.end()) {
        w = it->second;
        if (r.final_reply) waiters.erase(it);
      }
    }
    if (w) w->on_reply(r);
    run_reply_method(r);
    if (was_tracked) {
      try {
        mark_done(r.id);
      } catch (const std::exception& e) {
        spdlog::error("reply {}: cannot record it as done: {}", r.id, e.what());
      }
    }
  }
}

void Node::Impl::run_reply_method(const Message& m) {
  if (m.method == "none") return;
  // A bare end-of-stream marker carries nothing for a reply method, unless
  // it asked to see the ends of streams (relay forwards them).
  bool marker = m.data.empty() && m.error.empty();
  MethodEntry entry;
  if (std::string error; !find_method(m.method, &entry, &error)) {
    if (!marker)
      spdlog::error("reply {} from {} to {}: {}", m.id, m.from_node, m.in_reply_to, error);
    return;
  }
  if (marker && !(entry.flags & BOSUN_METHOD_END_MARKERS)) return;
  Message copy = m;
  if (!m.error.empty() && copy.data.empty()) copy.data = "error: " + m.error;
  start_call(std::move(copy), entry, true);
}

void Node::Impl::emit_event(const std::string& event, const nlohmann::json& payload) {
  nlohmann::json body = {
      {"event", event}, {"node", config.node.name}, {"time", now_ms()}, {"payload", payload}};
  std::vector<EventListener> ls;
  {
    std::lock_guard<std::mutex> lock(events_mu);
    for (const auto& [id, l] : listeners) ls.push_back(l);
  }
  for (const auto& l : ls) l(event, body);
  if (auto t = bus()) {
    std::string subject = event_subject(config.broker.subject_prefix, config.node.name, event);
    t->publish(subject,
               seal(subject, body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)));
  }
}

void Node::Impl::on_remote_event(Incoming&& in) {
  std::string signer, why;
  std::string_view text;
  if (!open_envelope(in, false, true, signer, text, &why)) {
    spdlog::debug("ignored an event on {}: {}", in.subject, why);
    return;
  }
  if (signer == config.node.name) return;  // ours, delivered locally
  nlohmann::json body = nlohmann::json::parse(text, nullptr, false);
  if (!body.is_object() || !body.contains("event") || !body["event"].is_string()) {
    spdlog::debug("ignored an event on {} that does not decode", in.subject);
    return;
  }
  if (body.value("node", "") == config.node.name) return;  // ours, delivered locally
  if (identity && body.value("node", "") != signer) {
    spdlog::debug("ignored an event on {}: it names node {} but {} signed it", in.subject,
                  body.value("node", ""), signer);
    return;
  }
  std::string event = body["event"].get<std::string>();
  std::vector<EventListener> ls;
  {
    std::lock_guard<std::mutex> lock(events_mu);
    for (const auto& [id, l] : listeners) ls.push_back(l);
  }
  for (const auto& l : ls) l(event, body);
}

nlohmann::json Node::reload() {
  return impl_->reload();
}

nlohmann::json Node::update_plugin(const std::string& name, const fs::path& module,
                                   const std::string& expect_version, UpdateTimings* timings) {
  return impl_->update_module(name, module, expect_version, timings);
}

uint64_t Node::add_event_listener(EventListener listener) {
  Impl& d = *impl_;
  std::lock_guard<std::mutex> lock(d.events_mu);
  uint64_t id = d.next_listener++;
  d.listeners[id] = std::move(listener);
  // Follow the whole cluster's events only while somebody watches.
  if (auto t = d.bus(); t && d.listeners.size() == 1) {
    d.event_subscription = t->subscribe(d.config.broker.subject_prefix + ".evt.>",
                                        [&d](Incoming&& in) { d.on_remote_event(std::move(in)); });
  }
  return id;
}

void Node::remove_event_listener(uint64_t id) {
  Impl& d = *impl_;
  uint64_t sub = 0;
  {
    std::lock_guard<std::mutex> lock(d.events_mu);
    if (d.listeners.erase(id) == 0 || !d.listeners.empty()) return;
    sub = d.event_subscription;
    d.event_subscription = 0;
  }
  if (auto t = d.bus(); t && sub != 0) t->unsubscribe(sub);
}

void Node::post(std::function<void()> work) {
  if (impl_->pool) asio::post(*impl_->pool, std::move(work));
}

nlohmann::json Node::counters() const {
  return impl_->counters.to_json();
}

std::vector<PluginInfo> Node::plugins() const {
  std::lock_guard<std::mutex> lock(impl_->plugins_mu);
  return impl_->plugin_infos;
}

}  // namespace bosun::host
