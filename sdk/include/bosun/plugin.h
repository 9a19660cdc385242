/*
 * bosun plugin ABI — the one contract between the bosun host and a module.
 *
 * Pure C11 (also valid C++17). A module is a shared object that exports
 * exactly one symbol:
 *
 *     BOSUN_EXPORT const bosun_plugin* bosun_plugin_entry(void);
 *
 * returning a pointer to a static descriptor. The host checks the ABI major,
 * calls `init` with its host-API table, routes calls to the method handlers,
 * and calls `shutdown` before it unloads the module.
 *
 * Three families of names:
 *   bosun_*            types and constants shared by both sides;
 *   on_* members       hooks the module implements (in bosun_plugin);
 *   bosun_host_api     functions the host implements (a table only ever
 *                      appended to; test `struct_size` before using a
 *                      function newer than your module's ABI minor, or use
 *                      BOSUN_HOST_HAS()).
 *
 * Rules of the boundary:
 *   - Only C types cross: pointers + lengths, fixed-width integers, opaque
 *     handles. No exception may leave a module (plugin.hpp catches them).
 *   - Whoever allocates frees. Memory handed to a module is BORROWED: valid
 *     for the duration of the call it is handed in, unless stated otherwise.
 *     Memory a module hands to the host is COPIED by the host before the
 *     function returns.
 *   - Strings are UTF-8, passed as pointer + length, and need not be
 *     NUL-terminated, unless the field says so.
 *   - Every struct that crosses the boundary starts with `struct_size`
 *     (and the descriptor also with `abi_version`) so that either side can
 *     tell which fields the other one knows.
 *   - Handlers may run concurrently on several host threads unless their
 *     method is flagged BOSUN_METHOD_SERIAL. A handler must not block
 *     forever: long handlers poll `cancelled()`.
 *   - Static constructors must do no work; all of it happens in `on_init`.
 */
#ifndef BOSUN_PLUGIN_H
#define BOSUN_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- ABI ---- */

/* A change that breaks existing modules bumps the major; the host refuses a
 * module built for another major. Appending a function to bosun_host_api or
 * a field to the end of a struct bumps the minor only. */
#define BOSUN_ABI_MAJOR 1
#define BOSUN_ABI_MINOR 4
#define BOSUN_ABI_VERSION (((uint32_t)BOSUN_ABI_MAJOR << 16) | (uint32_t)BOSUN_ABI_MINOR)
#define BOSUN_ABI_MAJOR_OF(v) ((uint32_t)(v) >> 16)
#define BOSUN_ABI_MINOR_OF(v) ((uint32_t)(v)&0xFFFFu)

/* The name of the one exported symbol, for loaders. */
#define BOSUN_PLUGIN_ENTRY_SYMBOL "bosun_plugin_entry"

#if defined(_WIN32)
#define BOSUN_EXPORT __declspec(dllexport)
#else
#define BOSUN_EXPORT __attribute__((visibility("default")))
#endif

/* ------------------------------------------------------------- status ---- */

/* 0 is success; bosun's own codes are negative and fixed forever. */
typedef int32_t bosun_status;

#define BOSUN_OK 0
#define BOSUN_ERR_INVALID_ARGUMENT (-1) /* an argument is malformed or out of range */
#define BOSUN_ERR_NOT_FOUND (-2)        /* no such key, method, plugin or call */
#define BOSUN_ERR_ABI_MISMATCH (-3)     /* built for another ABI major */
#define BOSUN_ERR_NOT_APPLICABLE (-4)   /* on_init: module declines to activate here */
#define BOSUN_ERR_INIT_FAILED (-5)      /* on_init: module could not start */
#define BOSUN_ERR_CANCELLED (-6)        /* the call was cancelled */
#define BOSUN_ERR_TIMEOUT (-7)          /* the call outlived its methodTimeout */
#define BOSUN_ERR_HANDLER (-8)          /* a handler failed; see its error text */
#define BOSUN_ERR_UNSUPPORTED (-9)      /* the host or module lacks this function */
#define BOSUN_ERR_IO (-10)              /* a file or socket operation failed */
#define BOSUN_ERR_STORAGE (-11)         /* the key-value store failed */
#define BOSUN_ERR_NO_MEMORY (-12)       /* allocation failed */
#define BOSUN_ERR_CALL_FINISHED (-13)   /* the call already ended; output dropped */
#define BOSUN_ERR_TOO_LARGE (-14)       /* a value exceeds a configured limit */
#define BOSUN_ERR_INTERNAL (-15)        /* a bug in bosun; please report it */

/* The name of a status code ("BOSUN_ERR_TIMEOUT"), never NULL. The returned
 * string is static. */
static inline const char* bosun_status_name(bosun_status status) {
  switch (status) {
    case BOSUN_OK: return "BOSUN_OK";
    case BOSUN_ERR_INVALID_ARGUMENT: return "BOSUN_ERR_INVALID_ARGUMENT";
    case BOSUN_ERR_NOT_FOUND: return "BOSUN_ERR_NOT_FOUND";
    case BOSUN_ERR_ABI_MISMATCH: return "BOSUN_ERR_ABI_MISMATCH";
    case BOSUN_ERR_NOT_APPLICABLE: return "BOSUN_ERR_NOT_APPLICABLE";
    case BOSUN_ERR_INIT_FAILED: return "BOSUN_ERR_INIT_FAILED";
    case BOSUN_ERR_CANCELLED: return "BOSUN_ERR_CANCELLED";
    case BOSUN_ERR_TIMEOUT: return "BOSUN_ERR_TIMEOUT";
    case BOSUN_ERR_HANDLER: return "BOSUN_ERR_HANDLER";
    case BOSUN_ERR_UNSUPPORTED: return "BOSUN_ERR_UNSUPPORTED";
    case BOSUN_ERR_IO: return "BOSUN_ERR_IO";
    case BOSUN_ERR_STORAGE: return "BOSUN_ERR_STORAGE";
    case BOSUN_ERR_NO_MEMORY: return "BOSUN_ERR_NO_MEMORY";
    case BOSUN_ERR_CALL_FINISHED: return "BOSUN_ERR_CALL_FINISHED";
    case BOSUN_ERR_TOO_LARGE: return "BOSUN_ERR_TOO_LARGE";
    case BOSUN_ERR_INTERNAL: return "BOSUN_ERR_INTERNAL";
    default: return "BOSUN_ERR_UNKNOWN";
  }
}

/* -------------------------------------------------------------- types ---- */

/* A borrowed byte string: `data` need not be NUL-terminated. */
typedef struct bosun_str {
  const char* data; /* BORROWED; may be NULL when len == 0 */
  size_t len;
} bosun_str;

/* Opaque handles, owned by the host. */
typedef struct bosun_host bosun_host; /* one loaded module instance */
typedef struct bosun_call bosun_call; /* one running method call */

typedef enum bosun_log_level {
  BOSUN_LOG_TRACE = 0,
  BOSUN_LOG_DEBUG = 1,
  BOSUN_LOG_INFO = 2,
  BOSUN_LOG_WARN = 3,
  BOSUN_LOG_ERROR = 4
} bosun_log_level;

/* What a handler is told about the message it serves. Every field is
 * BORROWED for the duration of the handler call. */
typedef struct bosun_request {
  uint32_t struct_size;  /* sizeof(bosun_request) as the host knows it */
  bosun_str id;          /* the message id (unique, sortable) */
  bosun_str from_node;   /* the node that sent the message */
  bosun_str to_node;     /* this node */
  bosun_str method;      /* the canonical method name (aliases resolved) */
  const bosun_str* args; /* methodArgs; a non-string element is given as its JSON text */
  uint32_t arg_count;
  uint32_t is_reply;      /* 1 when this message is a reply to one this node sent */
  bosun_str data;         /* the message's `data` field (a reply's output) */
  bosun_str message_json; /* the whole message as JSON, for fields not listed here */
  int64_t timeout_ms;     /* methodTimeout in milliseconds; 0 = none */
} bosun_request;

/* A handler. Returns BOSUN_OK, or an error after calling set_error() (a
 * non-OK status without an error text gets a generic one). The call ends
 * when the handler returns; reply() may be called any number of times
 * before that, each call sending one reply (streaming). */
typedef bosun_status (*bosun_on_call)(void* instance, bosun_call* call,
                                      const bosun_request* request);

#define BOSUN_METHOD_SERIAL 0x1u /* never run two calls of this method at once */
#define BOSUN_METHOD_REPLY 0x2u  /* a reply method: runs on the node receiving a reply */
/* ABI 1.2: the method answers later. A call that returns BOSUN_OK sends no
 * reply of its own (so it must not call reply()); the module answers the
 * request afterwards by sending reply messages with send() ("isReply": true,
 * "inReplyTo": the call's id). A call that fails still gets its error reply.
 * Used by relay, whose answer is the relayed message's reply. */
#define BOSUN_METHOD_DEFERRED 0x4u
/* ABI 1.2: a reply method that also runs for a stream's empty end marker
 * (the final reply of a stream whose data all came in earlier chunks), which
 * other reply methods never see. */
#define BOSUN_METHOD_END_MARKERS 0x8u
/* ABI 1.4: a call of this method sends messages to other nodes on its
 * caller's behalf with call_send() (a file copy's chunks). A node that sends
 * a request for such a method (and has the module, so it knows) signs it
 * with its Ed25519 key instead of a pair-key tag, so that the messages the
 * call sends can carry it and their receivers can check who asked. */
#define BOSUN_METHOD_CARRIES 0x10u

typedef struct bosun_method {
  uint32_t struct_size; /* sizeof(bosun_method) */
  uint32_t flags;       /* BOSUN_METHOD_* */
  const char* name;     /* NUL-terminated; one NATS token: [A-Za-z0-9_-]+ */
  bosun_on_call on_call;
  const char* help; /* NUL-terminated one-line description; may be NULL */
} bosun_method;

typedef struct bosun_host_api bosun_host_api;

/* A timer callback, run on a host worker thread. */
typedef void (*bosun_on_timer)(void* user_data);
/* Delivers a value: `value` is BORROWED for the callback only. */
typedef void (*bosun_on_value)(void* user_data, const char* value, size_t len);

/* The module descriptor: static, returned by bosun_plugin_entry(). */
typedef struct bosun_plugin {
  uint32_t abi_version;    /* BOSUN_ABI_VERSION the module was built with */
  uint32_t struct_size;    /* sizeof(bosun_plugin) */
  const char* name;        /* NUL-terminated, one NATS token; also the file name */
  const char* version;     /* NUL-terminated, e.g. "1.2.0" */
  const char* description; /* NUL-terminated; may be NULL */

  const bosun_method* methods; /* array of method_count, each method_struct_size apart */
  uint32_t method_count;
  uint32_t method_struct_size; /* sizeof(bosun_method) */

  /* Start the module. `settings_json` is the extension's settings object
   * (BORROWED). Store the module's state in *instance (OWNED by the module
   * until on_shutdown). On failure return BOSUN_ERR_INIT_FAILED, or
   * BOSUN_ERR_NOT_APPLICABLE to decline activating on this host, and write
   * the reason (NUL-terminated, truncated to reason_cap) into reason_buf,
   * which the host owns. `api` and `host` stay valid until on_shutdown
   * returns. */
  bosun_status (*on_init)(bosun_host* host, const bosun_host_api* api, bosun_str settings_json,
                          void** instance, char* reason_buf, size_t reason_cap);

  /* Stop the module: no call of it is running and none will start. Every
   * timer it started is already cancelled. Must not fail. May be NULL. */
  void (*on_shutdown)(void* instance);

  /* New settings for the running module (BORROWED). May be NULL: the host
   * then reports the change as needing a restart of the module. */
  bosun_status (*on_settings)(void* instance, bosun_str settings_json);
} bosun_plugin;

/* The host's functions, handed to on_init. Appended to only. */
struct bosun_host_api {
  uint32_t abi_version; /* BOSUN_ABI_VERSION the host was built with */
  uint32_t struct_size; /* sizeof(bosun_host_api) as the host knows it */

  /* Log a line under the module's name. Never log secrets. */
  void (*log)(bosun_host* host, bosun_log_level level, const char* msg, size_t len);

  /* Send one reply to the call's sender (copied). May be called repeatedly
   * to stream; returns BOSUN_ERR_CALL_FINISHED after the call ended (timed
   * out or cancelled). */
  bosun_status (*reply)(bosun_call* call, const char* data, size_t len);

  /* Set the call's error text (copied); the call's final reply reports it. */
  bosun_status (*set_error)(bosun_call* call, const char* msg, size_t len);

  /* 1 once the call is cancelled (op_process_stop, methodTimeout, module
   * drain, host shutdown); long handlers poll it and return. */
  int32_t (*cancelled)(bosun_call* call);

  /* Originate messages: a JSON array (or one object) of messages with
   * Steward's field names (copied). fromNode is set to this node.
   * Since ABI 1.2 a message may also be a reply, for a module answering a
   * request itself (BOSUN_METHOD_DEFERRED): "isReply": true, "inReplyTo"
   * (the request's id), one "toNode" (the requester) and "method" (the
   * reply method to run there), with "seq" and "final" for a stream and
   * "status" / "error" as in the replies the host sends. */
  bosun_status (*send)(bosun_host* host, const char* messages_json, size_t len);

  /* Publish an event named `event` with a JSON object payload (copied). */
  bosun_status (*emit_event)(bosun_host* host, const char* event, size_t event_len,
                             const char* payload_json, size_t payload_len);

  /* A key-value store scoped to the module's name, kept across restarts and
   * updates. Keys up to 511 bytes. kv_get delivers the value through
   * `on_value` (BORROWED for the callback) or returns BOSUN_ERR_NOT_FOUND. */
  bosun_status (*kv_put)(bosun_host* host, const char* key, size_t key_len, const char* value,
                         size_t value_len);
  bosun_status (*kv_get)(bosun_host* host, const char* key, size_t key_len, bosun_on_value on_value,
                         void* user_data);
  bosun_status (*kv_delete)(bosun_host* host, const char* key, size_t key_len);

  /* This node's name and data folder: valid until on_shutdown returns. */
  bosun_str (*node_name)(bosun_host* host);
  bosun_str (*data_dir)(bosun_host* host);

  /* The module's current settings (a JSON object), through `on_value`. */
  bosun_status (*settings_get)(bosun_host* host, bosun_on_value on_value, void* user_data);

  /* Run `on_timer(user_data)` on a worker thread after `delay_ms`, then
   * every `interval_ms` (0 = once). The host cancels every timer of a
   * module before on_shutdown. *timer_id receives the timer's id. */
  bosun_status (*timer_start)(bosun_host* host, uint64_t delay_ms, uint64_t interval_ms,
                              bosun_on_timer on_timer, void* user_data, uint64_t* timer_id);
  bosun_status (*timer_cancel)(bosun_host* host, uint64_t timer_id);

  /* Originate messages on behalf of a running call (a file copy's chunks).
   * When the call's request came signed (its method is flagged
   * BOSUN_METHOD_CARRIES on the node that sent it), each message carries that
   * request ("cause"), and so do the host's replies to the call; a receiver
   * whose security.allow does not let this node invoke the method authorizes
   * it as the request's sender instead, for methods of the module that
   * handles the request's method there (DESIGN §7). Otherwise the messages
   * are authorized as this node's. */
  bosun_status (*call_send)(bosun_call* call, const char* messages_json, size_t len);

  /* ---- ABI 1.1 ---- */

  /* The node as a JSON object through `on_value`: {"name", "central",
   * "dataDir", "version" (of bosun), "pid", "standalone", "workers" (the
   * threads that run calls; a handler that blocks holds one),
   * "requireSignature" and "publisherKeys" (the config's plugins.*)}.
   * Fields may be added. */
  bosun_status (*node_info)(bosun_host* host, bosun_on_value on_value, void* user_data);

  /* Every plugin of the node as a JSON array through `on_value`:
   * [{"name", "version", "state", "methods": [...]}, ...]. */
  bosun_status (*plugins_get)(bosun_host* host, bosun_on_value on_value, void* user_data);

  /* Ask the host to act on a plugin; the request is a JSON object (copied),
   * the outcome an UpdateResult {"node", "plugin", "from", "to", "status",
   * "reason", "durationMs"} through `on_value`. Requests:
   *   {"op": "update", "name", "path", "version"}: probe the module file at
   *     `path` in a child process, load it beside the running version, swap,
   *     drain and unload the old one (DESIGN §6);
   *   {"op": "settings", "name", "settings": {...}}: merge into the plugin's
   *     running settings and hand them to its on_settings.
   * Returns BOSUN_OK whenever an UpdateResult was delivered, even "failed". */
  bosun_status (*plugin_control)(bosun_host* host, const char* request_json, size_t len,
                                 bosun_on_value on_value, void* user_data);

  /* ---- ABI 1.3: keys and the cluster secret (DESIGN §7, the crypt module) ----
   *
   * Each of these delivers its result through `on_value` (BORROWED for the
   * callback) and returns BOSUN_OK; on failure it returns an error status
   * and delivers, through `on_value` too, a text saying what was wrong. Any
   * thread may call them (handlers, timers). The host keeps the private keys
   * and the cluster secret: no function here hands the secret to a module. */

  /* The trust store as a JSON object: {"node", "central", "ed25519" and
   * "rsa" (this node's public keys; "rsa" is "" while the key is still being
   * made), "clusterSecret": {"set": bool, "keyId": 16 hex digits naming it},
   * "keys": [{"node", "publicKey", "rsa", "state" (pending, accepted or
   * rejected), "source", "firstSeen", "lastSeen"}, ...]}. */
  bosun_status (*peer_keys)(bosun_host* host, bosun_on_value on_value, void* user_data);

  /* `data` (copied; at most 318 bytes) RSA-OAEP-SHA256 encrypted to the RSA
   * key that this node's trust store holds for `node`, as base64. Refused
   * with BOSUN_ERR_NOT_FOUND unless that node's key is accepted here and
   * the node announced an RSA key; a caller can never name the key. */
  bosun_status (*encrypt_to_node)(bosun_host* host, const char* node, size_t node_len,
                                  const char* data, size_t len, bosun_on_value on_value,
                                  void* user_data);

  /* The plaintext of base64 `data` (copied) encrypted to this node's RSA
   * key (by encrypt_to_node on a peer). */
  bosun_status (*decrypt_for_self)(bosun_host* host, const char* data, size_t len,
                                   bosun_on_value on_value, void* user_data);

  /* Sets this node's cluster secret: 32 bytes (copied), or NULL and 0 for
   * fresh random bytes. Kept in the node's store, never logged; from then on
   * requests and replies travel AES-256-GCM encrypted. */
  bosun_status (*cluster_secret_set)(bosun_host* host, const char* secret, size_t len);

  /* The current cluster secret encrypted to `node` as encrypt_to_node does
   * (base64), for a receive_cluster_secret message to it. BOSUN_ERR_NOT_FOUND
   * when this node has no secret or `node` is not accepted here. */
  bosun_status (*cluster_secret_seal_for)(bosun_host* host, const char* node, size_t node_len,
                                          bosun_on_value on_value, void* user_data);

  /* Installs the cluster secret that a running call brought: `data` (copied)
   * is cluster_secret_seal_for's base64 from the central node. Refused
   * unless the call's sender is the central node. Delivers the secret's key
   * id. */
  bosun_status (*cluster_secret_receive)(bosun_call* call, const char* data, size_t len,
                                         bosun_on_value on_value, void* user_data);

  /* Key operations on behalf of a running call; the request is a JSON
   * object (copied):
   *   {"op": "accepted_set"}: the keys this node accepted, itself included,
   *     {node: {"ed25519", "rsa"}}, as the central node hands them out;
   *   {"op": "apply", "keys": {node: {"ed25519", "rsa"}}}: take a key set;
   *     only when the call's sender is the central node, and never replacing
   *     a key the operator or the config decided on; delivers
   *     {"changed": n, "ignored": ["node: why", ...]};
   *   {"op": "delete", "node"}: forget a peer's key (not one pinned in the
   *     config); only when the call's sender is this node or central. */
  bosun_status (*key_control)(bosun_call* call, const char* request_json, size_t len,
                              bosun_on_value on_value, void* user_data);
};

/* True when `api` has the function `member` (appended after the module was
 * built against an older host, or vice versa). */
#define BOSUN_HOST_HAS(api, member)                                                  \
  ((api) != NULL &&                                                                  \
   (api)->struct_size >= offsetof(bosun_host_api, member) + sizeof((api)->member) && \
   (api)->member != NULL)

/* The one symbol a module exports. */
typedef const bosun_plugin* (*bosun_plugin_entry_fn)(void);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* BOSUN_PLUGIN_H */
