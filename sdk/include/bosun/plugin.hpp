// bosun plugin SDK — header-only C++17 wrapper over plugin.h.
//
// Write a class derived from bosun::Plugin, give it handler members of the
// form `void name(bosun::Call&)`, and export it with one macro:
//
//   class Hello : public bosun::Plugin {
//    public:
//     using Plugin::Plugin;                       // (Host, settings JSON)
//     void greet(bosun::Call& call) { call.reply("hello from " + std::string(node_name())); }
//   };
//   BOSUN_PLUGIN(Hello, "hello", "1.0.0", "Says hello",
//                BOSUN_METHOD(Hello, greet, "reply with a greeting"))
//
// Every exception is caught at the boundary: thrown from a handler it becomes
// the call's error reply; thrown from the constructor it fails init (throw
// bosun::NotApplicable to decline activating on this host instead).
#ifndef BOSUN_PLUGIN_HPP
#define BOSUN_PLUGIN_HPP

#include <bosun/plugin.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace bosun {

inline std::string_view view(bosun_str s) noexcept {
  return s.data == nullptr ? std::string_view{} : std::string_view{s.data, s.len};
}

// Thrown by a handler: the text becomes the call's error reply.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what, bosun_status status = BOSUN_ERR_HANDLER)
      : std::runtime_error(what), status_(status) {}
  bosun_status status() const noexcept { return status_; }

 private:
  bosun_status status_;
};

// Thrown from a plugin's constructor: the module declines to activate on this
// host (listed as inactive with the reason, not failed).
class NotApplicable : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The host as a module sees it. Cheap to copy; valid until shutdown.
class Host {
 public:
  Host() = default;
  Host(bosun_host* host, const bosun_host_api* api) : host_(host), api_(api) {}

  bosun_host* handle() const noexcept { return host_; }
  const bosun_host_api* api() const noexcept { return api_; }

  void log(bosun_log_level level, std::string_view msg) const {
    api_->log(host_, level, msg.data(), msg.size());
  }
  void debug(std::string_view msg) const { log(BOSUN_LOG_DEBUG, msg); }
  void info(std::string_view msg) const { log(BOSUN_LOG_INFO, msg); }
  void warn(std::string_view msg) const { log(BOSUN_LOG_WARN, msg); }
  void error(std::string_view msg) const { log(BOSUN_LOG_ERROR, msg); }

  std::string_view node_name() const { return view(api_->node_name(host_)); }
  std::string_view data_dir() const { return view(api_->data_dir(host_)); }

  std::string settings() const {
    std::string out;
    check(api_->settings_get(host_, &assign, &out), "settings_get");
    return out;
  }

  // The node as JSON ({"name","central","dataDir","version","pid","standalone","workers"});
  // "{}" on a host older than ABI 1.1.
  std::string node_info() const {
    if (!BOSUN_HOST_HAS(api_, node_info)) return "{}";
    std::string out;
    check(api_->node_info(host_, &assign, &out), "node_info");
    return out;
  }
  // The node's plugins as a JSON array; "[]" on a host older than ABI 1.1.
  std::string plugins() const {
    if (!BOSUN_HOST_HAS(api_, plugins_get)) return "[]";
    std::string out;
    check(api_->plugins_get(host_, &assign, &out), "plugins_get");
    return out;
  }

  // A plugin_control request (see plugin.h); returns the UpdateResult JSON.
  std::string plugin_control(std::string_view request_json) const {
    if (!BOSUN_HOST_HAS(api_, plugin_control)) {
      throw Error("this host has no plugin_control (ABI < 1.1)", BOSUN_ERR_UNSUPPORTED);
    }
    std::string out;
    check(api_->plugin_control(host_, request_json.data(), request_json.size(), &assign, &out),
          "plugin_control");
    return out;
  }

  // ---- ABI 1.3: keys and the cluster secret (plugin.h). Each throws
  // Error with the host's text when it refuses; BOSUN_ERR_UNSUPPORTED on an
  // older host.
  std::string peer_keys() const {
    need(BOSUN_HOST_HAS(api_, peer_keys), "peer_keys");
    std::string out;
    check_text(api_->peer_keys(host_, &assign, &out), "peer_keys", out);
    return out;
  }
  // Base64 of `data` encrypted to the RSA key this node accepted for `node`.
  std::string encrypt_to_node(std::string_view node, std::string_view data) const {
    need(BOSUN_HOST_HAS(api_, encrypt_to_node), "encrypt_to_node");
    std::string out;
    check_text(api_->encrypt_to_node(host_, node.data(), node.size(), data.data(), data.size(),
                                     &assign, &out),
               "encrypt_to_node", out);
    return out;
  }
  std::string decrypt_for_self(std::string_view base64) const {
    need(BOSUN_HOST_HAS(api_, decrypt_for_self), "decrypt_for_self");
    std::string out;
    check_text(api_->decrypt_for_self(host_, base64.data(), base64.size(), &assign, &out),
               "decrypt_for_self", out);
    return out;
  }
  // A fresh random cluster secret when `secret` is empty.
  void cluster_secret_set(std::string_view secret = {}) const {
    need(BOSUN_HOST_HAS(api_, cluster_secret_set), "cluster_secret_set");
    check(api_->cluster_secret_set(host_, secret.empty() ? nullptr : secret.data(), secret.size()),
          "cluster_secret_set");
  }
  std::string cluster_secret_seal_for(std::string_view node) const {
    need(BOSUN_HOST_HAS(api_, cluster_secret_seal_for), "cluster_secret_seal_for");
    std::string out;
    check_text(api_->cluster_secret_seal_for(host_, node.data(), node.size(), &assign, &out),
               "cluster_secret_seal_for", out);
    return out;
  }

  // Send a JSON array (or one object) of messages.
  void send(std::string_view messages_json) const {
    check(api_->send(host_, messages_json.data(), messages_json.size()), "send");
  }
  void emit(std::string_view event, std::string_view payload_json) const {
    check(api_->emit_event(host_, event.data(), event.size(), payload_json.data(),
                           payload_json.size()),
          "emit_event");
  }

  void kv_put(std::string_view key, std::string_view value) const {
    check(api_->kv_put(host_, key.data(), key.size(), value.data(), value.size()), "kv_put");
  }
  std::optional<std::string> kv_get(std::string_view key) const {
    std::string out;
    bosun_status st = api_->kv_get(host_, key.data(), key.size(), &assign, &out);
    if (st == BOSUN_ERR_NOT_FOUND) return std::nullopt;
    check(st, "kv_get");
    return out;
  }
  bool kv_delete(std::string_view key) const {
    bosun_status st = api_->kv_delete(host_, key.data(), key.size());
    if (st == BOSUN_ERR_NOT_FOUND) return false;
    check(st, "kv_delete");
    return true;
  }

  static void check(bosun_status st, const char* what) {
    if (st != BOSUN_OK) throw Error(std::string(what) + " failed: " + bosun_status_name(st), st);
  }
  // The same where the host delivered its reason as the value.
  static void check_text(bosun_status st, const char* what, const std::string& text) {
    if (st == BOSUN_OK) return;
    throw Error(std::string(what) + ": " + (text.empty() ? bosun_status_name(st) : text), st);
  }
  static void need(bool has, const char* what) {
    if (!has) {
      throw Error(std::string("this host has no ") + what + " (ABI < 1.3)", BOSUN_ERR_UNSUPPORTED);
    }
  }
  static void assign(void* user_data, const char* value, size_t len) {
    static_cast<std::string*>(user_data)->assign(value == nullptr ? "" : value, len);
  }

 private:
  bosun_host* host_ = nullptr;
  const bosun_host_api* api_ = nullptr;
};

// One running call, as a handler sees it. Valid for the handler call only.
class Call {
 public:
  Call(const bosun_host_api* api, bosun_call* call, const bosun_request* request)
      : api_(api), call_(call), request_(request) {}

  const bosun_request& request() const noexcept { return *request_; }
  std::string_view id() const noexcept { return view(request_->id); }
  std::string_view from_node() const noexcept { return view(request_->from_node); }
  std::string_view method() const noexcept { return view(request_->method); }
  std::string_view data() const noexcept { return view(request_->data); }
  std::string_view message_json() const noexcept { return view(request_->message_json); }
  bool is_reply() const noexcept { return request_->is_reply != 0; }
  std::chrono::milliseconds timeout() const noexcept {
    return std::chrono::milliseconds(request_->timeout_ms);
  }

  size_t arg_count() const noexcept { return request_->arg_count; }
  std::string_view arg(size_t i) const {
    if (i >= request_->arg_count) {
      throw Error("missing methodArgs[" + std::to_string(i) + "]", BOSUN_ERR_INVALID_ARGUMENT);
    }
    return view(request_->args[i]);
  }
  std::vector<std::string_view> args() const {
    std::vector<std::string_view> out;
    out.reserve(request_->arg_count);
    for (uint32_t i = 0; i < request_->arg_count; ++i) out.push_back(view(request_->args[i]));
    return out;
  }

  // Send one reply (streams when called repeatedly). False once the call has
  // ended (timed out or cancelled): stop working then.
  bool reply(std::string_view data) const {
    bosun_status st = api_->reply(call_, data.data(), data.size());
    if (st == BOSUN_ERR_CALL_FINISHED) return false;
    Host::check(st, "reply");
    return true;
  }
  void set_error(std::string_view msg) const { api_->set_error(call_, msg.data(), msg.size()); }
  bool cancelled() const noexcept { return api_->cancelled(call_) != 0; }

  // Send messages on behalf of this call (authorized as its sender).
  void send(std::string_view messages_json) const {
    Host::check(api_->call_send(call_, messages_json.data(), messages_json.size()), "call_send");
  }

  // ABI 1.3: install the cluster secret this call brought (only from the
  // central node); returns its key id.
  std::string cluster_secret_receive(std::string_view base64) const {
    Host::need(BOSUN_HOST_HAS(api_, cluster_secret_receive), "cluster_secret_receive");
    std::string out;
    Host::check_text(
        api_->cluster_secret_receive(call_, base64.data(), base64.size(), &Host::assign, &out),
        "cluster_secret_receive", out);
    return out;
  }
  // ABI 1.3: a key_control request (plugin.h); returns what the host delivered.
  std::string key_control(std::string_view request_json) const {
    Host::need(BOSUN_HOST_HAS(api_, key_control), "key_control");
    std::string out;
    Host::check_text(
        api_->key_control(call_, request_json.data(), request_json.size(), &Host::assign, &out),
        "key_control", out);
    return out;
  }

  bosun_call* handle() const noexcept { return call_; }

 private:
  const bosun_host_api* api_;
  bosun_call* call_;
  const bosun_request* request_;
};

// Base class of a C++ module. The derived class's constructor takes
// (bosun::Host, std::string_view settings_json) and does the module's init.
class Plugin {
 public:
  Plugin(Host host, std::string_view /*settings_json*/) : host_(host) {}
  virtual ~Plugin() = default;
  Plugin(const Plugin&) = delete;
  Plugin& operator=(const Plugin&) = delete;

  // New settings while running. The default refuses, so the host reports
  // that the module must be restarted for them.
  virtual void on_settings(std::string_view /*settings_json*/) {
    throw Error("this module does not take new settings while running", BOSUN_ERR_UNSUPPORTED);
  }

  const Host& host() const noexcept { return host_; }
  std::string_view node_name() const { return host_.node_name(); }

  // Run `fn` on a worker thread after `delay`, then every `interval` (zero:
  // once). Exceptions are caught and logged. The host cancels every timer
  // before the module shuts down.
  uint64_t start_timer(std::chrono::milliseconds delay, std::chrono::milliseconds interval,
                       std::function<void()> fn) {
    auto entry = std::make_unique<TimerEntry>(TimerEntry{this, std::move(fn)});
    uint64_t id = 0;
    Host::check(host_.api()->timer_start(host_.handle(), static_cast<uint64_t>(delay.count()),
                                         static_cast<uint64_t>(interval.count()), &on_timer,
                                         entry.get(), &id),
                "timer_start");
    std::lock_guard<std::mutex> lock(timers_mutex_);
    timers_[id] = std::move(entry);
    return id;
  }
  void cancel_timer(uint64_t id) {
    host_.api()->timer_cancel(host_.handle(), id);
    std::lock_guard<std::mutex> lock(timers_mutex_);
    timers_.erase(id);
  }

 private:
  struct TimerEntry {
    Plugin* self;
    std::function<void()> fn;
  };
  static void on_timer(void* user_data) noexcept {
    auto* entry = static_cast<TimerEntry*>(user_data);
    try {
      entry->fn();
    } catch (const std::exception& e) {
      entry->self->host_.error(std::string("timer failed: ") + e.what());
    } catch (...) {
      entry->self->host_.error("timer failed: unknown exception");
    }
  }

  Host host_;
  std::mutex timers_mutex_;
  std::map<uint64_t, std::unique_ptr<TimerEntry>> timers_;
};

namespace detail {

inline void copy_reason(char* buf, size_t cap, const char* text) noexcept {
  if (buf == nullptr || cap == 0) return;
  size_t n = std::strlen(text);
  if (n >= cap) n = cap - 1;
  std::memcpy(buf, text, n);
  buf[n] = '\0';
}

template <class P>
bosun_status on_init(bosun_host* host, const bosun_host_api* api, bosun_str settings,
                     void** instance, char* reason_buf, size_t reason_cap) noexcept {
  try {
    *instance = new P(Host(host, api), view(settings));
    return BOSUN_OK;
  } catch (const NotApplicable& e) {
    copy_reason(reason_buf, reason_cap, e.what());
    return BOSUN_ERR_NOT_APPLICABLE;
  } catch (const std::exception& e) {
    copy_reason(reason_buf, reason_cap, e.what());
    return BOSUN_ERR_INIT_FAILED;
  } catch (...) {
    copy_reason(reason_buf, reason_cap, "unknown exception in plugin constructor");
    return BOSUN_ERR_INIT_FAILED;
  }
}

template <class P>
void on_shutdown(void* instance) noexcept {
  try {
    delete static_cast<P*>(instance);
  } catch (...) {
  }
}

template <class P>
bosun_status on_settings(void* instance, bosun_str settings) noexcept {
  auto* self = static_cast<P*>(instance);
  try {
    self->on_settings(view(settings));
    return BOSUN_OK;
  } catch (const Error& e) {
    self->host().warn(std::string("new settings refused: ") + e.what());
    return e.status();
  } catch (const std::exception& e) {
    self->host().warn(std::string("new settings refused: ") + e.what());
    return BOSUN_ERR_INVALID_ARGUMENT;
  } catch (...) {
    return BOSUN_ERR_INVALID_ARGUMENT;
  }
}

template <class P, void (P::*Handler)(Call&)>
bosun_status on_call(void* instance, bosun_call* call, const bosun_request* request) noexcept {
  auto* self = static_cast<P*>(instance);
  const bosun_host_api* api = self->host().api();
  try {
    Call c(api, call, request);
    (self->*Handler)(c);
    return BOSUN_OK;
  } catch (const Error& e) {
    api->set_error(call, e.what(), std::strlen(e.what()));
    return e.status();
  } catch (const std::exception& e) {
    api->set_error(call, e.what(), std::strlen(e.what()));
    return BOSUN_ERR_HANDLER;
  } catch (...) {
    static const char msg[] = "unknown exception in handler";
    api->set_error(call, msg, sizeof(msg) - 1);
    return BOSUN_ERR_HANDLER;
  }
}

template <class P>
constexpr bosun_plugin make_descriptor(const char* name, const char* version,
                                       const char* description, const bosun_method* methods,
                                       uint32_t count) noexcept {
  return bosun_plugin{BOSUN_ABI_VERSION,
                      sizeof(bosun_plugin),
                      name,
                      version,
                      description,
                      methods,
                      count,
                      sizeof(bosun_method),
                      &on_init<P>,
                      &on_shutdown<P>,
                      &on_settings<P>};
}

}  // namespace detail
}  // namespace bosun

// A method entry named after the member function.
#define BOSUN_METHOD(Class, member, help) BOSUN_METHOD_EX(Class, member, #member, 0u, help)

// A method entry with its own name and BOSUN_METHOD_* flags.
#define BOSUN_METHOD_EX(Class, member, name, flags, help)                                    \
  bosun_method {                                                                             \
    sizeof(bosun_method), (flags), (name), &::bosun::detail::on_call<Class, &Class::member>, \
        (help)                                                                               \
  }

// Exports the module: its class, name, version, description and methods.
#define BOSUN_PLUGIN(Class, name, version, description, ...)                               \
  extern "C" BOSUN_EXPORT const bosun_plugin* bosun_plugin_entry(void) {                   \
    static const bosun_method bosun_methods_[] = {__VA_ARGS__};                            \
    static const bosun_plugin bosun_descriptor_ = ::bosun::detail::make_descriptor<Class>( \
        (name), (version), (description), bosun_methods_,                                  \
        static_cast<uint32_t>(sizeof(bosun_methods_) / sizeof(bosun_methods_[0])));        \
    return &bosun_descriptor_;                                                             \
  }

#endif  // BOSUN_PLUGIN_HPP
