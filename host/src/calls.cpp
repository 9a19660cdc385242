// Running calls: worker pool, methodTimeout, cancellation, streaming
// replies; and the bosun_host_api table modules call into.
#include <spdlog/spdlog.h>

#include <unistd.h>
#include <cmath>
#include <cstring>

#include "node_impl.hpp"

namespace bosun::host {

namespace {

// A streamed chunk waits this long for the next one (or the end of the call)
// so that a single-reply call sends one message, not a chunk and an end.
constexpr auto kFlushDelay = std::chrono::milliseconds(30);

std::string_view sv(const char* p, size_t n) {
  return p == nullptr ? std::string_view{} : std::string_view{p, n};
}

void flush_pending(const std::shared_ptr<bosun_call>& call) {
  std::optional<std::string> data;
  uint32_t seq = 0;
  {
    std::lock_guard<std::mutex> lock(call->mu);
    call->flush_armed = false;
    call->flush_deadline = 0;
    if (call->finished || !call->pending) return;
    data = std::move(call->pending);
    call->pending.reset();
    seq = call->next_seq++;
  }
  call->node->send_reply(call->msg, std::move(*data), false, seq, "");
}

}  // namespace

double effective_timeout_s(const Config& config, const Message& m) {
  if (m.method_timeout) return *m.method_timeout;
  return m.is_reply ? config.defaults.reply_method_timeout_s : config.defaults.method_timeout_s;
}

bool Node::Impl::enter_module(MethodEntry& entry, std::string* error) {
  // A dispatcher may hold a table taken just before a swap: a retired
  // module is never entered, the method is looked up again instead.
  for (int attempt = 0; attempt < 8; ++attempt) {
    if (!entry.module) return true;
    {
      std::lock_guard<std::mutex> lock(entry.module->inflight_mu);
      if (!entry.module->retired) {
        ++entry.module->inflight;
        return true;
      }
    }
    if (!find_method(entry.name, &entry, error)) return false;
  }
  *error = entry.name + ": its module was replaced again and again while the call started";
  return false;
}

void Node::Impl::start_call(Message m, const MethodEntry& found, bool inline_run, bool tracked,
                            bool marked_running, std::string text) {
  auto call = std::make_shared<bosun_call>();
  call->entry = found;
  if (std::string error; !enter_module(call->entry, &error)) {
    spdlog::warn("message {} from {}: {}", m.id, m.from_node, error);
    if (tracked) mark_done(m.id);
    send_reply(m, "", true, 0, error);
    return;
  }
  const MethodEntry& entry = call->entry;
  call->node = this;
  call->tracked = tracked;
  call->marked_running = marked_running;
  call->msg = std::move(m);
  call->started_ms = now_ms();
  call->message_json = text.empty() ? to_text(call->msg) : std::move(text);
  const Message& msg = call->msg;
  call->args.reserve(msg.method_args.size());
  for (const auto& a : msg.method_args) call->args.push_back(bosun_str{a.data(), a.size()});
  double timeout_s = effective_timeout_s(*current_config(), msg);
  bosun_request& r = call->request;
  r.struct_size = sizeof(bosun_request);
  r.id = {msg.id.data(), msg.id.size()};
  r.from_node = {msg.from_node.data(), msg.from_node.size()};
  r.to_node = {msg.to_node.data(), msg.to_node.size()};
  r.method = {msg.method.data(), msg.method.size()};
  r.args = call->args.empty() ? nullptr : call->args.data();
  r.arg_count = static_cast<uint32_t>(call->args.size());
  r.is_reply = msg.is_reply ? 1 : 0;
  r.data = {msg.data.data(), msg.data.size()};
  r.message_json = {call->message_json.data(), call->message_json.size()};
  r.timeout_ms = timeout_s < 0 ? 0 : static_cast<int64_t>(std::llround(timeout_s * 1000));

  // A quick built-in is over before op_process_list could see it, and
  // nothing could stop it: not listed.
  if (!entry.quick) {
    std::lock_guard<std::mutex> lock(calls_mu);
    running[msg.id] = call;
  }
  if (timeout_s > 0 && !entry.quick) {
    // Set before the call can finish (it has not started), read after.
    // (A quick built-in cannot outlast it.)
    call->timeout_deadline =
        deadlines.add_after(std::chrono::milliseconds(std::llround(timeout_s * 1000)),
                            [this, call] { expire_call(call); });
  }
  if (inline_run) {
    run_call(call);
  } else if (entry.serial) {
    asio::post(*entry.serial, [this, call] { run_call(call); });
  } else {
    asio::post(*pool, [this, call] { run_call(call); });
  }
}

void Node::Impl::run_call(const std::shared_ptr<bosun_call>& call) {
  bosun_status status = BOSUN_OK;
  if (call->tracked && !call->marked_running && !call->cancelled.load()) {
    try {
      mark_running(call->msg.id);
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> lock(call->mu);
      call->error = std::string("cannot record the call as running: ") + e.what();
      call->cancelled = true;
    }
  }
  if (call->cancelled.load()) {
    status = BOSUN_ERR_CANCELLED;  // timed out or stopped while queued
  } else {
    const auto t0 =
        metrics ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point{};
    try {
      if (call->entry.builtin) {
        status = call->entry.builtin(call.get());
      } else {
        status = call->entry.on_call(call->entry.module->instance, call.get(), &call->request);
      }
    } catch (const std::exception& e) {
      // Only a module that ignores the ABI's no-exceptions rule gets here.
      std::lock_guard<std::mutex> lock(call->mu);
      call->error = std::string("handler threw across the ABI: ") + e.what();
      status = BOSUN_ERR_HANDLER;
    } catch (...) {
      std::lock_guard<std::mutex> lock(call->mu);
      call->error = "handler threw an unknown exception across the ABI";
      status = BOSUN_ERR_HANDLER;
    }
    if (metrics) {
      metrics->observe_handler(
          call->entry.name,
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
  }
  finish_call(call, status);
}

void Node::Impl::finish_call(const std::shared_ptr<bosun_call>& call, bosun_status status) {
  std::optional<std::string> data;
  std::string error;
  uint32_t seq = 0;
  bool send = false;
  {
    std::lock_guard<std::mutex> lock(call->mu);
    if (!call->finished) {
      call->finished = true;
      send = true;
      if (status != BOSUN_OK && !call->cancel_reason.empty()) {
        // The host cancelled it: say why, after what the handler said.
        call->error = (call->error.empty() ? call->msg.method + " was cancelled" : call->error) +
                      " (" + call->cancel_reason + ")";
      } else if (status == BOSUN_ERR_CANCELLED && call->error.empty()) {
        call->error = call->msg.method + " was cancelled (op_process_stop or node shutdown)";
      } else if (status != BOSUN_OK && call->error.empty()) {
        call->error = call->msg.method + " failed: " + bosun_status_name(status);
      }
      if (status == BOSUN_OK) call->error.clear();
      error = call->error;
      data = std::move(call->pending);
      call->pending.reset();
      seq = call->next_seq++;
    }
  }
  // A deferred method answers later, through send(): no reply of its own
  // unless it failed.
  if (send && status == BOSUN_OK && (call->entry.flags & BOSUN_METHOD_DEFERRED)) send = false;
  bool marked = false;
  if (send) {
    if (!error.empty()) {
      spdlog::warn("call {} ({} from {}) failed: {}", call->msg.id, call->msg.method,
                   call->msg.from_node, error);
    }
    // Recorded done in the same write that puts the reply in the outbox.
    marked = send_reply(call->msg, data.value_or(""), true, seq, error,
                        call->tracked ? call->msg.id : std::string());
  }
  // After the reply is in the outbox: a crash in between leaves "running",
  // which answers "interrupted" at the next start instead of losing the reply.
  if (call->tracked && !marked) {
    try {
      mark_done(call->msg.id);
    } catch (const std::exception& e) {
      spdlog::error("call {}: cannot record it as done: {}", call->msg.id, e.what());
    }
  }
  if (call->timeout_deadline != 0) deadlines.cancel(call->timeout_deadline);
  {
    std::lock_guard<std::mutex> lock(call->mu);
    if (call->flush_deadline != 0) deadlines.cancel(std::exchange(call->flush_deadline, 0));
  }
  if (!call->entry.quick) {
    std::lock_guard<std::mutex> lock(calls_mu);
    running.erase(call->msg.id);
  }
  if (auto& mod = call->entry.module) {
    std::lock_guard<std::mutex> lock(mod->inflight_mu);
    if (--mod->inflight == 0) mod->inflight_cv.notify_all();
  }
}

void Node::Impl::expire_call(const std::shared_ptr<bosun_call>& call) {
  std::optional<std::string> data;
  uint32_t seq = 0;
  std::string error;
  {
    std::lock_guard<std::mutex> lock(call->mu);
    if (call->finished) return;
    call->finished = true;
    call->cancelled = true;
    double t = effective_timeout_s(*current_config(), call->msg);
    char buf[64];
    std::snprintf(buf, sizeof buf, "%g", t);
    error =
        call->msg.method + " timed out after " + buf + " s (methodTimeout); the call was cancelled";
    call->error = error;
    data = std::move(call->pending);
    call->pending.reset();
    seq = call->next_seq++;
  }
  spdlog::warn("call {} ({} from {}): {}", call->msg.id, call->msg.method, call->msg.from_node,
               error);
  send_reply(call->msg, data.value_or(""), true, seq, error);
}

bool Node::Impl::cancel_call(const std::string& id) {
  std::shared_ptr<bosun_call> call;
  {
    std::lock_guard<std::mutex> lock(calls_mu);
    auto it = running.find(id);
    if (it == running.end()) return false;
    call = it->second;
  }
  call->cancelled = true;
  return true;
}

bool Node::Impl::send_reply(const Message& req, std::string data, bool final, uint32_t seq,
                            const std::string& error, const std::string& done_id) {
  // A reply method's own output goes nowhere: replies never get replies.
  // Nor do the host's own key messages: the envelope is their answer.
  if (req.is_reply || req.method == "announce_key" || req.method == "key_set") {
    if (!error.empty()) {
      spdlog::error("reply method {} for {} (reply to {}) failed: {}", req.method, req.from_node,
                    req.in_reply_to, error);
    }
    return false;
  }
  Message r;
  r.id = new_message_id();
  r.to_node = req.from_node;
  r.from_node = config.node.name;
  r.sent_at_ms = now_ms();
  r.method = req.reply_method.empty() ? "none" : req.reply_method;
  r.method_args = req.reply_method_args;
  r.ack_timeout = req.reply_ack_timeout;
  r.retries = req.reply_retries;
  r.method_timeout = req.reply_method_timeout;
  r.directory = req.directory;
  r.file_name = req.file_name;
  r.data = std::move(data);
  r.is_reply = true;
  r.in_reply_to = req.id;
  r.request_method = req.method;
  r.final_reply = final;
  r.seq = seq;
  r.status = error.empty() ? "ok" : "error";
  r.error = error;
  // The replies to a call that acts for a signed request carry it too (the
  // node they go to may allow the reply method only to that request's sender).
  if (!req.cause.is_null()) r.extra["cause"] = req.cause;
  return route(std::move(r), done_id);
}

nlohmann::json Node::running_calls() const {
  nlohmann::json out = nlohmann::json::array();
  int64_t now = now_ms();
  std::lock_guard<std::mutex> lock(impl_->calls_mu);
  for (const auto& [id, call] : impl_->running) {
    out.push_back({{"id", id},
                   {"method", call->msg.method},
                   {"fromNode", call->msg.from_node},
                   {"module", call->entry.module ? call->entry.module->name() : "host"},
                   {"startedAt", call->started_ms},
                   {"elapsedMs", now - call->started_ms},
                   {"cancelled", call->cancelled.load()}});
  }
  return out;
}

void Node::Impl::register_builtins(MethodTable& t) {
  auto add = [&](const std::string& name, const std::string& help,
                 std::function<bosun_status(bosun_call*)> fn) {
    MethodEntry e;
    e.name = name;
    e.builtin = std::move(fn);
    t[name] = std::move(e);
  };
  const bosun_host_api* api = host_api_table();
  auto reply = [api](bosun_call* c, const std::string& s) { api->reply(c, s.data(), s.size()); };
  auto fail = [api](bosun_call* c, const std::string& s) {
    api->set_error(c, s.data(), s.size());
    return BOSUN_ERR_INVALID_ARGUMENT;
  };
  add("ping", "answer with pong", [reply](bosun_call* c) {
    reply(c, "pong");
    return BOSUN_OK;
  });

  add("announce_key", "a node's key announcement (the key travels in the envelope)",
      [reply](bosun_call* c) {
        reply(c, "noted");
        return BOSUN_OK;
      });
  add("key_set", "the keys the central node accepted: data {node: Ed25519 key}",
      [this, reply, fail](bosun_call* c) {
        if (!trust) return fail(c, "key_set: this node keeps no keys (security.sign is off)");
        nlohmann::json set = nlohmann::json::parse(c->msg.data, nullptr, false);
        if (!set.is_object()) return fail(c, "key_set: data must be a JSON object {node: key}");
        std::vector<std::string> ignored;
        int changed = trust->apply_key_set(set, &ignored);
        for (const auto& i : ignored)
          spdlog::warn("key_set from {}: ignored {}", c->msg.from_node, i);
        if (changed > 0)
          spdlog::info("key_set from {}: {} key(s) changed", c->msg.from_node, changed);
        reply(c, std::to_string(changed) + " key(s) changed");
        return BOSUN_OK;
      });
  add("plugin_list", "every plugin with its version, state and methods",
      [this, reply](bosun_call* c) {
        nlohmann::json out = nlohmann::json::array();
        {
          std::lock_guard<std::mutex> lock(plugins_mu);
          for (const auto& p : plugin_infos) out.push_back(p.to_json());
        }
        reply(c, out.dump());
        return BOSUN_OK;
      });
  add("op_process_list", "the calls running on this node", [this, reply](bosun_call* c) {
    nlohmann::json out = nlohmann::json::array();
    int64_t now = now_ms();
    {
      // Not held across reply(): it takes calls_mu itself.
      std::lock_guard<std::mutex> lock(calls_mu);
      for (const auto& [id, call] : running) {
        if (call.get() == c) continue;
        out.push_back({{"id", id},
                       {"method", call->msg.method},
                       {"fromNode", call->msg.from_node},
                       {"startedAt", call->started_ms},
                       {"elapsedMs", now - call->started_ms}});
      }
    }
    reply(c, out.dump());
    return BOSUN_OK;
  });
  add("op_process_stop", "cancel a running call: methodArgs [id]",
      [this, reply, fail](bosun_call* c) {
        if (c->msg.method_args.size() != 1) {
          return fail(c, "op_process_stop: methodArgs must be [\"<message id>\"], got " +
                             std::to_string(c->msg.method_args.size()) + " arguments");
        }
        const std::string& id = c->msg.method_args[0];
        if (!cancel_call(id))
          return fail(c, "op_process_stop: no running call with id \"" + id + "\"");
        reply(c, "cancelled " + id);
        return BOSUN_OK;
      });
  // These answer from memory at once: run where they arrive (MethodEntry::quick).
  for (const char* quick : {"ping", "plugin_list", "op_process_list", "op_process_stop"}) {
    t[quick].quick = true;
  }
  for (const char* pure : {"ping", "plugin_list", "op_process_list"}) t[pure].pure = true;
}

// ------------------------------------------------------------ host API ----

namespace {

ModuleInstance* mod(bosun_host* h) {
  return h == nullptr ? nullptr : h->module;
}

void api_log(bosun_host* host, bosun_log_level level, const char* msg, size_t len) {
  auto* m = mod(host);
  if (m == nullptr) return;
  auto lvl = level <= BOSUN_LOG_TRACE   ? spdlog::level::trace
             : level == BOSUN_LOG_DEBUG ? spdlog::level::debug
             : level == BOSUN_LOG_INFO  ? spdlog::level::info
             : level == BOSUN_LOG_WARN  ? spdlog::level::warn
                                        : spdlog::level::err;
  spdlog::log(lvl, "[{}] {}", m->name(), sv(msg, len));
}

bosun_status api_reply(bosun_call* call, const char* data, size_t len) {
  if (call == nullptr) return BOSUN_ERR_INVALID_ARGUMENT;
  // A quick built-in returns right after its reply, which then goes as the
  // final one: no timer to send it should the call linger.
  auto self = std::shared_ptr<bosun_call>();
  if (!call->entry.quick) {
    std::lock_guard<std::mutex> lock(call->node->calls_mu);
    auto it = call->node->running.find(call->msg.id);
    if (it != call->node->running.end() && it->second.get() == call) self = it->second;
  }
  std::optional<std::string> previous;
  uint32_t seq = 0;
  bool arm = false;
  {
    std::lock_guard<std::mutex> lock(call->mu);
    if (call->finished) return BOSUN_ERR_CALL_FINISHED;
    if (call->pending) {
      previous = std::move(call->pending);
      seq = call->next_seq++;
    }
    call->pending = std::string(sv(data, len));
    if (!call->flush_armed && self) {
      call->flush_armed = true;
      arm = true;
    }
  }
  if (previous) call->node->send_reply(call->msg, std::move(*previous), false, seq, "");
  if (arm) {
    // Most handlers return well within the delay, their one reply then sent
    // as the final one and this deadline cancelled.
    auto key = call->node->deadlines.add_after(
        kFlushDelay, [self] { asio::post(*self->node->pool, [self] { flush_pending(self); }); });
    std::lock_guard<std::mutex> lock(call->mu);
    if (call->finished) {
      call->node->deadlines.cancel(key);
    } else {
      call->flush_deadline = key;
    }
  }
  return BOSUN_OK;
}

bosun_status api_set_error(bosun_call* call, const char* msg, size_t len) {
  if (call == nullptr) return BOSUN_ERR_INVALID_ARGUMENT;
  std::lock_guard<std::mutex> lock(call->mu);
  if (call->finished) return BOSUN_ERR_CALL_FINISHED;
  call->error.assign(sv(msg, len));
  return BOSUN_OK;
}

int32_t api_cancelled(bosun_call* call) {
  return call == nullptr || call->cancelled.load() || call->node->stopping.load() ? 1 : 0;
}

bosun_status submit_json(Node::Impl* node, const std::string& who, const char* json, size_t len,
                         const nlohmann::json& cause = nullptr) {
  nlohmann::json batch = nlohmann::json::parse(sv(json, len), nullptr, false);
  if (batch.is_discarded()) {
    spdlog::error("[{}] send: not valid JSON", who);
    return BOSUN_ERR_INVALID_ARGUMENT;
  }
  // Messages a call sends on its behalf carry the signed request it acts
  // for, which their receivers may authorize them as (DESIGN §7). A "cause"
  // the module wrote itself is replaced: only the host's is the call's.
  if (!cause.is_null()) {
    auto carry = [&](nlohmann::json& m) {
      if (m.is_object()) m["cause"] = cause;
    };
    if (batch.is_array()) {
      for (auto& m : batch) carry(m);
    } else {
      carry(batch);
    }
  }
  SubmitResult r = node->submit(batch, nullptr, "", true);
  for (const auto& e : r.errors) spdlog::error("[{}] send: {}", who, e.error);
  return r.errors.empty() ? BOSUN_OK : BOSUN_ERR_INVALID_ARGUMENT;
}

bosun_status api_send(bosun_host* host, const char* json, size_t len) {
  auto* m = mod(host);
  if (m == nullptr) return BOSUN_ERR_INVALID_ARGUMENT;
  return submit_json(m->node, m->name(), json, len);
}

bosun_status api_call_send(bosun_call* call, const char* json, size_t len) {
  if (call == nullptr) return BOSUN_ERR_INVALID_ARGUMENT;
  return submit_json(call->node, call->msg.method, json, len, call->msg.cause);
}

bosun_status api_emit_event(bosun_host* host, const char* event, size_t event_len,
                            const char* payload, size_t payload_len) {
  auto* m = mod(host);
  if (m == nullptr) return BOSUN_ERR_INVALID_ARGUMENT;
  std::string name(sv(event, event_len));
  if (!is_valid_token(name)) return BOSUN_ERR_INVALID_ARGUMENT;
  nlohmann::json body = payload_len == 0
                            ? nlohmann::json::object()
                            : nlohmann::json::parse(sv(payload, payload_len), nullptr, false);
  if (body.is_discarded()) return BOSUN_ERR_INVALID_ARGUMENT;
  m->node->emit_event(name, body);
  return BOSUN_OK;
}

bosun_status api_kv_put(bosun_host* host, const char* key, size_t key_len, const char* value,
                        size_t value_len) {
  auto* m = mod(host);
  if (m == nullptr || key_len == 0) return BOSUN_ERR_INVALID_ARGUMENT;
  try {
    m->node->store->kv_put(m->name(), sv(key, key_len), sv(value, value_len));
    return BOSUN_OK;
  } catch (const std::invalid_argument&) {
    return BOSUN_ERR_INVALID_ARGUMENT;
  } catch (const std::exception& e) {
    spdlog::error("[{}] kv_put: {}", m->name(), e.what());
    return BOSUN_ERR_STORAGE;
  }
}

bosun_status api_kv_get(bosun_host* host, const char* key, size_t key_len, bosun_on_value on_value,
                        void* user_data) {
  auto* m = mod(host);
  if (m == nullptr || key_len == 0 || on_value == nullptr) return BOSUN_ERR_INVALID_ARGUMENT;
  try {
    auto v = m->node->store->kv_get(m->name(), sv(key, key_len));
    if (!v) return BOSUN_ERR_NOT_FOUND;
    on_value(user_data, v->data(), v->size());
    return BOSUN_OK;
  } catch (const std::invalid_argument&) {
    return BOSUN_ERR_INVALID_ARGUMENT;
  } catch (const std::exception& e) {
    spdlog::error("[{}] kv_get: {}", m->name(), e.what());
    return BOSUN_ERR_STORAGE;
  }
}

bosun_status api_kv_delete(bosun_host* host, const char* key, size_t key_len) {
  auto* m = mod(host);
  if (m == nullptr || key_len == 0) return BOSUN_ERR_INVALID_ARGUMENT;
  try {
    return m->node->store->kv_delete(m->name(), sv(key, key_len)) ? BOSUN_OK : BOSUN_ERR_NOT_FOUND;
  } catch (const std::invalid_argument&) {
    return BOSUN_ERR_INVALID_ARGUMENT;
  } catch (const std::exception& e) {
    spdlog::error("[{}] kv_delete: {}", m->name(), e.what());
    return BOSUN_ERR_STORAGE;
  }
}

bosun_str api_node_name(bosun_host* host) {
  auto* m = mod(host);
  if (m == nullptr) return {nullptr, 0};
  const auto& n = m->node->config.node.name;
  return {n.data(), n.size()};
}

bosun_str api_data_dir(bosun_host* host) {
  auto* m = mod(host);
  if (m == nullptr) return {nullptr, 0};
  const auto& d = m->node->data_dir_text;
  return {d.data(), d.size()};
}

bosun_status api_settings_get(bosun_host* host, bosun_on_value on_value, void* user_data) {
  auto* m = mod(host);
  if (m == nullptr || on_value == nullptr) return BOSUN_ERR_INVALID_ARGUMENT;
  std::string copy;
  {
    std::lock_guard<std::mutex> lock(m->settings_mu);
    copy = m->settings_json;
  }
  on_value(user_data, copy.data(), copy.size());
  return BOSUN_OK;
}

void arm_timer(const std::shared_ptr<ModuleTimer>& t, uint64_t delay_ms, asio::thread_pool& pool) {
  t->timer.expires_after(std::chrono::milliseconds(delay_ms));
  t->timer.async_wait([t, &pool](const boost::system::error_code& ec) {
    if (ec || t->cancelled) return;
    asio::post(pool, [t, &pool] {
      {
        std::lock_guard<std::recursive_mutex> lock(t->run_mu);
        if (t->cancelled) return;
        t->fn(t->user_data);
      }
      if (t->interval_ms > 0 && !t->cancelled) {
        asio::post(t->timer.get_executor(), [t, &pool] {
          if (!t->cancelled) arm_timer(t, t->interval_ms, pool);
        });
      }
    });
  });
}

bosun_status api_timer_start(bosun_host* host, uint64_t delay_ms, uint64_t interval_ms,
                             bosun_on_timer fn, void* user_data, uint64_t* timer_id) {
  auto* m = mod(host);
  if (m == nullptr || fn == nullptr) return BOSUN_ERR_INVALID_ARGUMENT;
  auto t = std::make_shared<ModuleTimer>(m->node->io);
  t->interval_ms = interval_ms;
  t->fn = fn;
  t->user_data = user_data;
  uint64_t id;
  {
    std::lock_guard<std::mutex> lock(m->timers_mu);
    id = m->next_timer_id++;
    m->timers[id] = t;
  }
  if (timer_id != nullptr) *timer_id = id;
  auto& pool = *m->node->pool;
  asio::post(m->node->io, [t, delay_ms, &pool] {
    if (!t->cancelled) arm_timer(t, delay_ms, pool);
  });
  return BOSUN_OK;
}

void cancel_timer(const std::shared_ptr<ModuleTimer>& t) {
  t->cancelled = true;
  asio::post(t->timer.get_executor(), [t] { t->timer.cancel(); });
  // Wait out a callback that is running right now (unless it is ours).
  std::lock_guard<std::recursive_mutex> lock(t->run_mu);
}

bosun_status api_timer_cancel(bosun_host* host, uint64_t timer_id) {
  auto* m = mod(host);
  if (m == nullptr) return BOSUN_ERR_INVALID_ARGUMENT;
  std::shared_ptr<ModuleTimer> t;
  {
    std::lock_guard<std::mutex> lock(m->timers_mu);
    auto it = m->timers.find(timer_id);
    if (it == m->timers.end()) return BOSUN_ERR_NOT_FOUND;
    t = it->second;
    m->timers.erase(it);
  }
  cancel_timer(t);
  return BOSUN_OK;
}

bosun_status api_node_info(bosun_host* host, bosun_on_value on_value, void* user_data) {
  auto* m = mod(host);
  if (m == nullptr || on_value == nullptr) return BOSUN_ERR_INVALID_ARGUMENT;
  const Config& c = m->node->config;
  nlohmann::json info = {{"name", c.node.name},
                         {"central", c.node.central},
                         {"dataDir", m->node->data_dir_text},
                         {"version", BOSUN_VERSION},
                         {"pid", static_cast<int64_t>(::getpid())},
                         {"standalone", c.broker.standalone()},
                         {"workers", m->node->workers},
                         // The node module enforces these on update_plugin.
                         {"requireSignature", c.plugins.require_signature},
                         {"publisherKeys", c.plugins.publisher_keys}};
  std::string text = info.dump();
  on_value(user_data, text.data(), text.size());
  return BOSUN_OK;
}

bosun_status api_plugins_get(bosun_host* host, bosun_on_value on_value, void* user_data) {
  auto* m = mod(host);
  if (m == nullptr || on_value == nullptr) return BOSUN_ERR_INVALID_ARGUMENT;
  nlohmann::json out = nlohmann::json::array();
  {
    std::lock_guard<std::mutex> lock(m->node->plugins_mu);
    for (const auto& p : m->node->plugin_infos) {
      out.push_back({{"name", p.name},
                     {"version", p.version},
                     {"state", to_string(p.state)},
                     {"methods", p.methods}});
    }
  }
  std::string text = out.dump();
  on_value(user_data, text.data(), text.size());
  return BOSUN_OK;
}

bosun_status api_plugin_control(bosun_host* host, const char* req, size_t len,
                                bosun_on_value on_value, void* user_data) {
  auto* m = mod(host);
  if (m == nullptr || on_value == nullptr) return BOSUN_ERR_INVALID_ARGUMENT;
  nlohmann::json r = nlohmann::json::parse(sv(req, len), nullptr, false);
  if (!r.is_object() || !r.contains("op") || !r["op"].is_string() || !r.contains("name") ||
      !r["name"].is_string()) {
    return BOSUN_ERR_INVALID_ARGUMENT;
  }
  std::string op = r["op"];
  nlohmann::json result;
  if (op == "update" && r.contains("path") && r["path"].is_string()) {
    result = m->node->update_module(r["name"], std::string(r["path"]), r.value("version", ""));
  } else if (op == "settings" && r.contains("settings")) {
    result = m->node->update_settings(r["name"], r["settings"]);
  } else {
    return BOSUN_ERR_INVALID_ARGUMENT;
  }
  std::string text = result.dump();
  on_value(user_data, text.data(), text.size());
  return BOSUN_OK;
}

}  // namespace

void ModuleInstance::cancel_timers() {
  std::map<uint64_t, std::shared_ptr<ModuleTimer>> all;
  {
    std::lock_guard<std::mutex> lock(timers_mu);
    all.swap(timers);
  }
  for (auto& [id, t] : all) cancel_timer(t);
}

const bosun_host_api* host_api_table() {
  static const bosun_host_api api = {
      .abi_version = BOSUN_ABI_VERSION,
      .struct_size = sizeof(bosun_host_api),
      .log = &api_log,
      .reply = &api_reply,
      .set_error = &api_set_error,
      .cancelled = &api_cancelled,
      .send = &api_send,
      .emit_event = &api_emit_event,
      .kv_put = &api_kv_put,
      .kv_get = &api_kv_get,
      .kv_delete = &api_kv_delete,
      .node_name = &api_node_name,
      .data_dir = &api_data_dir,
      .settings_get = &api_settings_get,
      .timer_start = &api_timer_start,
      .timer_cancel = &api_timer_cancel,
      .call_send = &api_call_send,
      .node_info = &api_node_info,
      .plugins_get = &api_plugins_get,
      .plugin_control = &api_plugin_control,
      .peer_keys = &api_peer_keys,
      .encrypt_to_node = &api_encrypt_to_node,
      .decrypt_for_self = &api_decrypt_for_self,
      .cluster_secret_set = &api_cluster_secret_set,
      .cluster_secret_seal_for = &api_cluster_secret_seal_for,
      .cluster_secret_receive = &api_cluster_secret_receive,
      .key_control = &api_key_control,
  };
  return &api;
}

}  // namespace bosun::host
