// core/filecopy: copy a file from one node to another (DESIGN §9; Steward's
// REQCopyFileFrom and REQCopyFileTo).
//
//   copy_file_from [source path, destination node, destination path]
//       sent to the node that has the file;
//   copy_file_to   [source node, source path, destination path]
//       sent to the node that is to have it (it asks the source node for a
//       copy_file_from and passes its replies on).
//
// The file travels in chunks (256 KiB by default, base64 in the message's
// data) over the host's exactly-once delivery, at most `window` chunks ahead
// of what the receiver has written; the receiver writes a temp file beside
// the destination, checks its SHA-256 against the source's, gives it the
// source's mode and renames it into place. See sender.hpp and receiver.hpp.
//
// A relative source path counts from the source node's data folder; the
// destination must be inside one of the receiver's `allowedDirs` (default:
// its data folder), a relative one counts from the data folder, ".." is
// refused.
//
// Settings (extensions.filecopy.settings), all optional:
//   allowedDirs          folders a copy may write into   [dataDir]
//   chunkSize            raw bytes per chunk message     262144 (4 KiB .. 512 KiB)
//   window               chunks ahead of the receiver    8
//   ackTimeout, retries  delivery of the copy's messages when the request has
//                        no ACKTimeout / retries         5 s, 10
//   progressInterval     ms between progress replies     1000 (0: none)
//   maxConcurrentCopies  copy_file_from / _to calls at once (each holds a worker
//                        thread while the copy's answers need others; more are
//                        refused, not queued)            half of host.workers
//   partialTtl           s before an idle partial copy is removed  86400
#include <bosun/plugin.hpp>

#include <atomic>
#include <cmath>
#include <mutex>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

#include "paths.hpp"
#include "receiver.hpp"
#include "sender.hpp"
#include "settings.hpp"

namespace filecopy {

using nlohmann::json;

Settings parse_settings(std::string_view text, const std::string& data_dir) {
  Settings s;
  if (text.empty()) return s;
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    throw std::runtime_error("filecopy settings must be a JSON object, not: " + std::string(text));
  }
  auto integer = [](const std::string& key, const json& v, int64_t lo, int64_t hi) {
    if (!v.is_number_integer() || v.get<int64_t>() < lo || v.get<int64_t>() > hi) {
      throw std::runtime_error("filecopy settings: \"" + key + "\" must be an integer from " +
                               std::to_string(lo) + " to " + std::to_string(hi) + ", not " +
                               v.dump());
    }
    return v.get<int64_t>();
  };
  for (const auto& [key, value] : j.items()) {
    if (key == "allowedDirs") {
      if (!value.is_array()) {
        throw std::runtime_error("filecopy settings: \"allowedDirs\" must be an array of folders");
      }
      for (const auto& d : value) {
        if (!d.is_string() || d.get<std::string>().empty()) {
          throw std::runtime_error(
              "filecopy settings: \"allowedDirs\" must hold folder paths, not " + d.dump());
        }
        std::string dir = d.get<std::string>();
        if (dir.find("/../") != std::string::npos || dir.starts_with("../") ||
            dir.ends_with("/..") || dir == "..") {
          throw std::runtime_error("filecopy settings: \"allowedDirs\" entry \"" + dir +
                                   "\" must not contain \"..\"");
        }
        s.allowed_dirs.push_back(absolute_from(dir, data_dir));
      }
    } else if (key == "chunkSize") {
      s.chunk_size = static_cast<size_t>(integer(key, value, 4096, 512 * 1024));
    } else if (key == "window") {
      s.window = static_cast<size_t>(integer(key, value, 1, 64));
    } else if (key == "ackTimeout") {
      if (!value.is_number() || value.get<double>() <= 0 || value.get<double>() > 3600) {
        throw std::runtime_error(
            "filecopy settings: \"ackTimeout\" must be seconds above 0 (at most 3600), not " +
            value.dump());
      }
      s.ack_timeout_s = value.get<double>();
    } else if (key == "retries") {
      s.retries = static_cast<int>(integer(key, value, 0, 1000));
    } else if (key == "progressInterval") {
      s.progress_interval = std::chrono::milliseconds(integer(key, value, 0, 3600 * 1000));
    } else if (key == "maxConcurrentCopies") {
      s.max_concurrent = static_cast<int>(integer(key, value, 0, 256));
    } else if (key == "partialTtl") {
      s.partial_ttl = std::chrono::seconds(integer(key, value, 1, 365LL * 24 * 3600));
    } else {
      throw std::runtime_error(
          "filecopy settings: unknown key \"" + key +
          "\" (known: allowedDirs, chunkSize, window, ackTimeout, retries, progressInterval, "
          "maxConcurrentCopies, partialTtl)");
    }
  }
  return s;
}

namespace {

using bosun::Error;

Error invalid(const std::string& text) {
  return Error(text, BOSUN_ERR_INVALID_ARGUMENT);
}

// methodArgs must be exactly `names`, each a non-empty string.
void check_args(const bosun::Call& call, const char* method, const char* form) {
  if (call.arg_count() != 3) {
    throw invalid(std::string(method) + ": methodArgs must be " + form + ", got " +
                  std::to_string(call.arg_count()) + " argument(s)");
  }
  for (size_t i = 0; i < 3; ++i) {
    if (call.arg(i).empty()) {
      throw invalid(std::string(method) + ": methodArgs[" + std::to_string(i) +
                    "] is empty; methodArgs must be " + form);
    }
  }
}

void check_node(const char* method, std::string_view node, const char* what) {
  if (!is_node_name(node)) {
    throw invalid(std::string(method) + ": the " + what + " " + in_quotes(node) +
                  " is not a node name (letters, digits, '_' and '-' only)");
  }
}

Answer answer_of(const bosun::Call& call, std::string kind, uint64_t offset) {
  Answer a;
  a.kind = std::move(kind);
  a.offset = offset;
  json m = json::parse(call.message_json(), nullptr, false);
  bool error = m.is_object() && m.value("status", "ok") == "error";
  a.ok = !error;
  a.final = !m.is_object() || m.value("final", true);
  a.error = error ? m.value("error", "failed") : "";
  a.data = error ? "" : std::string(call.data());
  return a;
}

class FileCopy : public bosun::Plugin {
 public:
  FileCopy(bosun::Host host, std::string_view settings)
      : Plugin(host, settings),
        data_dir_(host.data_dir()),
        settings_(parse_settings(settings, data_dir_)),
        receiver_(host, data_dir_, [this] { return current(); }) {
    start_timer(std::chrono::seconds(5), std::chrono::minutes(10), [this] { receiver_.sweep(); });
  }

  void on_settings(std::string_view settings) override {
    Settings parsed = parse_settings(settings, data_dir_);
    std::lock_guard<std::mutex> lock(mu_);
    settings_ = parsed;
  }

  void copy_file_from(bosun::Call& call) {
    const char* method = "copy_file_from";
    check_args(call, method, "[source path, destination node, destination path]");
    check_node(method, call.arg(1), "destination node");
    check_reachable(method, call.arg(1));
    Settings s = current();
    Slot slot = take_slot(method);
    call.reply(run_copy(call, host(), s, copies_));
  }

  void copy_file_to(bosun::Call& call) {
    const char* method = "copy_file_to";
    check_args(call, method, "[source node, source path, destination path]");
    check_node(method, call.arg(0), "source node");
    check_reachable(method, call.arg(0));
    Settings s = current();
    std::vector<std::string> allowed = s.allowed_dirs;
    if (allowed.empty()) allowed.push_back(data_dir_);
    // Refuse a bad destination here, before the source node is bothered.
    resolve_destination(method, call.arg(2), data_dir_, allowed, false);
    Slot slot = take_slot(method);

    std::string token(call.id());
    auto inbox = relays_.open(token);
    struct Closer {
      Inboxes& inboxes;
      std::string id;
      ~Closer() { inboxes.close(id); }
    } closer{relays_, token};
    Delivery d = delivery_of(call, s);
    double timeout = call.request().timeout_ms > 0
                         ? std::max(1.0, static_cast<double>(call.request().timeout_ms) / 1000 - 2)
                         : -1;
    json m = {{"toNode", std::string(call.arg(0))},
              {"method", "copy_file_from"},
              {"methodArgs",
               {std::string(call.arg(1)), std::string(node_name()), std::string(call.arg(2))}},
              {"replyMethod", kRelay},
              {"replyMethodArgs", {token}},
              {"ACKTimeout", d.ack_timeout_s},
              {"retries", d.retries},
              {"replyACKTimeout", d.ack_timeout_s},
              {"replyRetries", d.retries},
              {"methodTimeout", timeout}};
    try {
      call.send(m.dump());
    } catch (const Error& e) {
      throw Error(std::string(method) + ": cannot ask node " + std::string(call.arg(0)) +
                      " for the file: " + e.what(),
                  e.status());
    }
    // The source answers as soon as its copy runs; until then it may be
    // away for the delivery budget, twice (the request, then the begin).
    auto first_by = std::chrono::steady_clock::now() + 2 * d.budget() + std::chrono::seconds(10);
    bool heard = false;
    while (true) {
      std::vector<Answer> answers;
      inbox->take(answers, std::chrono::milliseconds(100));
      for (auto& a : answers) {
        heard = true;
        if (!a.ok)
          throw Error(std::string(method) + ": node " + std::string(call.arg(0)) + ": " + a.error);
        if (!call.reply(a.data)) return;
        // The source's result is its last reply with data, but not always
        // its final one: a host sends a reply it held for 30 ms as it is and
        // may end the stream with an empty marker, which reply methods never
        // see. So anything but progress is the result.
        json d = json::parse(a.data, nullptr, false);
        if (a.final || !d.is_object() || !d.contains("progress")) return;
      }
      if (call.cancelled()) {
        throw Error(std::string(method) + ": cancelled", BOSUN_ERR_CANCELLED);
      }
      if (!heard && std::chrono::steady_clock::now() > first_by) {
        throw Error(std::string(method) + ": no answer from node " + std::string(call.arg(0)) +
                        " (is it up, with the filecopy module?)",
                    BOSUN_ERR_TIMEOUT);
      }
    }
  }

  void filecopy_begin(bosun::Call& call) { call.reply(receiver_.begin(call)); }
  void filecopy_chunk(bosun::Call& call) { call.reply(receiver_.chunk(call)); }
  void filecopy_commit(bosun::Call& call) { call.reply(receiver_.commit(call)); }
  void filecopy_abort(bosun::Call& call) { call.reply(receiver_.abort(call)); }

  // A reply to one of a copy's messages: methodArgs [copy id, kind, offset].
  void filecopy_ack(bosun::Call& call) {
    if (call.arg_count() < 2) return;
    auto inbox = copies_.find(std::string(call.arg(0)));
    if (!inbox) return;  // the copy has ended; a late answer
    uint64_t offset = 0;
    if (call.arg_count() > 2) {
      std::string o(call.arg(2));
      if (o.empty() || o.find_first_not_of("0123456789") != std::string::npos || o.size() > 19) {
        return;
      }
      offset = std::stoull(o);
    }
    inbox->deliver(answer_of(call, std::string(call.arg(1)), offset));
  }

  // A reply of the source node's copy_file_from, for copy_file_to: [token].
  void filecopy_relay(bosun::Call& call) {
    if (call.arg_count() < 1) return;
    if (auto inbox = relays_.find(std::string(call.arg(0)))) {
      inbox->deliver(answer_of(call, "relay", 0));
    }
  }

 private:
  struct Slot {
    explicit Slot(std::atomic<int>* count) : n(count) {}
    Slot(const Slot&) = delete;
    ~Slot() { n->fetch_sub(1); }
    std::atomic<int>* n;
  };

  // One of the maxConcurrentCopies places, or an error saying there is none.
  Slot take_slot(const char* method) {
    int max = current().max_concurrent;
    if (max <= 0) {
      json info = json::parse(host().node_info(), nullptr, false);
      int workers = info.is_object() ? info.value("workers", 4) : 4;
      max = std::max(1, workers / 2);
    }
    if (running_.fetch_add(1) >= max) {
      running_.fetch_sub(1);
      throw Error(std::string(method) + ": node " + std::string(node_name()) +
                      " is already running " + std::to_string(max) +
                      " copies (filecopy setting maxConcurrentCopies, by default half of "
                      "host.workers); send it again when one is done",
                  BOSUN_ERR_TOO_LARGE);
    }
    return Slot(&running_);
  }

  Settings current() {
    std::lock_guard<std::mutex> lock(mu_);
    return settings_;
  }

  // A standalone node reaches no other node: say so now rather than after
  // the delivery budget.
  void check_reachable(const char* method, std::string_view node) {
    if (node == node_name()) return;
    json info = json::parse(host().node_info(), nullptr, false);
    if (info.is_object() && info.value("standalone", false)) {
      throw invalid(std::string(method) + ": node " + std::string(node_name()) +
                    " is standalone (no broker.servers in its config) and cannot reach node " +
                    std::string(node));
    }
  }

  std::string data_dir_;
  std::mutex mu_;
  Settings settings_;
  Receiver receiver_;
  Inboxes copies_;
  Inboxes relays_;
  std::atomic<int> running_{0};
};

}  // namespace
}  // namespace filecopy

using filecopy::FileCopy;

BOSUN_PLUGIN(
    FileCopy, "filecopy", "1.0.0", "Copy files between nodes: chunked, SHA-256 verified, resumable",
    BOSUN_METHOD_EX(
        FileCopy, copy_file_from, "copy_file_from", BOSUN_METHOD_CARRIES,
        "[source path, destination node, destination path]: send a file from this node"),
    BOSUN_METHOD_EX(FileCopy, copy_file_to, "copy_file_to", BOSUN_METHOD_CARRIES,
                    "[source node, source path, destination path]: fetch a file to this node"),
    BOSUN_METHOD(FileCopy, filecopy_begin, "internal: a copy starts or resumes here"),
    BOSUN_METHOD(FileCopy, filecopy_chunk, "internal: one chunk of a copy"),
    BOSUN_METHOD(FileCopy, filecopy_commit, "internal: verify a copy and move it into place"),
    BOSUN_METHOD(FileCopy, filecopy_abort, "internal: drop a partial copy"),
    BOSUN_METHOD_EX(FileCopy, filecopy_ack, "filecopy_ack", BOSUN_METHOD_REPLY,
                    "internal reply method: a receiver's answer to a copy's message"),
    BOSUN_METHOD_EX(FileCopy, filecopy_relay, "filecopy_relay", BOSUN_METHOD_REPLY,
                    "internal reply method: the source's replies for copy_file_to"))
