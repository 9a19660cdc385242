/* Between the host and its metrics module (lib/bosun/bosun-metrics.so), which
 * holds prometheus-cpp and its HTTP server and is loaded only when
 * metrics.listen is set: a node without metrics maps neither. Private to
 * bosun (not the plugin ABI): both sides are built from the same tree, and a
 * version number guards against a stale file. Plain C, so neither side's
 * C++ runtime crosses it. No function lets an exception out. */
#ifndef BOSUN_HOST_METRICS_ABI_H
#define BOSUN_HOST_METRICS_ABI_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BOSUN_METRICS_ABI_VERSION 1u
#define BOSUN_METRICS_ENTRY "bosun_metrics_entry"

struct bosun_metrics_plugin_row {
  const char* name;
  const char* version;
  const char* state;
};

/* What the node reports at a scrape; valid only during the sink call. */
struct bosun_metrics_state_view {
  uint64_t inflight_calls;
  uint64_t outbox_depth;
  uint64_t reconnects;
  uint64_t duplicates;
  const struct bosun_metrics_plugin_row* plugins;
  size_t plugin_count;
};

typedef void (*bosun_metrics_state_sink)(void* sink_ctx, const struct bosun_metrics_state_view*);
/* Called by the module at each scrape, on its HTTP thread: the host fills a
 * view and hands it to sink before returning. */
typedef void (*bosun_metrics_state_fn)(void* state_ctx, bosun_metrics_state_sink sink,
                                       void* sink_ctx);

struct bosun_metrics_api {
  uint32_t abi_version; /* BOSUN_METRICS_ABI_VERSION */
  /* Serves GET /metrics on listen ("host:port"). NULL on failure, with the
   * reason in err (always NUL-terminated). */
  void* (*create)(const char* listen, bosun_metrics_state_fn state, void* state_ctx, char* err,
                  size_t err_len);
  /* Stops serving; no state call runs once it returns. */
  void (*destroy)(void* m);
  /* event: the index of bosun::host::MessageEvent. */
  void (*count)(void* m, int event, const char* method, size_t method_len, const char* peer,
                size_t peer_len);
  void (*observe_handler)(void* m, const char* method, size_t method_len, double seconds);
  /* reason: an index into bosun::host::kRefusedReasons. */
  void (*count_refused)(void* m, size_t reason);
  void (*count_update)(void* m, const char* plugin, size_t plugin_len, const char* status,
                       size_t status_len);
  /* The TCP ports listened on; returns how many there are (writes up to max). */
  size_t (*ports)(void* m, int* out, size_t max);
};

typedef const struct bosun_metrics_api* (*bosun_metrics_entry_fn)(void);

#ifdef __cplusplus
}
#endif

#endif
