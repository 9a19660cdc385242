#include "bosun/host/message.hpp"

#include <openssl/rand.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <chrono>
#include <cmath>
#include <mutex>
#include <unordered_map>

#include "bosun/host/config.hpp"

namespace bosun::host {

// Declared in config.hpp; defined here so that the message decoder stands on
// its own (tests/fuzz builds it without the rest of the host).
bool is_valid_token(std::string_view s) {
  constexpr size_t kMaxTokenLength = 128;
  if (s.empty() || s.size() > kMaxTokenLength) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
  });
}

using nlohmann::json;

namespace {

const std::vector<std::string>& known_fields() {
  static const std::vector<std::string> fields = {"toNode",
                                                  "toNodes",
                                                  "method",
                                                  "methodArgs",
                                                  "replyMethod",
                                                  "replyMethodArgs",
                                                  "ACKTimeout",
                                                  "retries",
                                                  "replyACKTimeout",
                                                  "replyRetries",
                                                  "methodTimeout",
                                                  "replyMethodTimeout",
                                                  "directory",
                                                  "fileName",
                                                  "relayViaNode",
                                                  "relayReplyMethod",
                                                  "data",
                                                  "id",
                                                  "fromNode",
                                                  "sentAt",
                                                  "isReply",
                                                  "inReplyTo",
                                                  "requestMethod",
                                                  "final",
                                                  "seq",
                                                  "status",
                                                  "error"};
  return fields;
}

std::string type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: return "an integer";
    case json::value_t::number_float: return "a number";
    case json::value_t::string: return "a string";
    case json::value_t::array: return "an array";
    case json::value_t::object: return "an object";
    default: return "something else";
  }
}

[[noreturn]] void fail(const std::string& where, const std::string& field,
                       const std::string& what) {
  throw MessageError(field, where + ": field \"" + field + "\": " + what);
}

std::string get_string(const json& j, const char* field, const std::string& where) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) return {};
  if (!it->is_string()) fail(where, field, "expected a string, got " + type_name(*it));
  return it->get<std::string>();
}

std::string get_token(const json& j, const char* field, const std::string& where) {
  std::string s = get_string(j, field, where);
  if (!s.empty() && !is_valid_token(s)) {
    fail(where, field, "\"" + s + "\" is not a valid name (use letters, digits, '_' and '-' only)");
  }
  return s;
}

std::vector<std::string> get_args(const json& j, const char* field, const std::string& where) {
  std::vector<std::string> out;
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) return out;
  if (!it->is_array()) fail(where, field, "expected an array of strings, got " + type_name(*it));
  out.reserve(it->size());
  for (const auto& e : *it) out.push_back(e.is_string() ? e.get<std::string>() : e.dump());
  return out;
}

std::optional<double> get_seconds(const json& j, const char* field, const std::string& where,
                                  bool allow_unlimited) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) return std::nullopt;
  if (!it->is_number()) fail(where, field, "expected a number of seconds, got " + type_name(*it));
  double v = it->get<double>();
  if (!std::isfinite(v)) fail(where, field, "must be a finite number");
  if (allow_unlimited && v == -1) return v;
  if (v < 0) {
    fail(where, field,
         "must be >= 0" + std::string(allow_unlimited ? " (or -1 for no limit)" : "") + ", got " +
             it->dump());
  }
  constexpr double kWeek = 7 * 24 * 3600;
  if (v > kWeek) fail(where, field, "must be at most one week (604800 s), got " + it->dump());
  return v;
}

std::optional<int> get_count(const json& j, const char* field, const std::string& where) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) return std::nullopt;
  if (!it->is_number_integer()) fail(where, field, "expected an integer, got " + type_name(*it));
  auto v = it->get<int64_t>();
  if (v < 0 || v > 1000) fail(where, field, "must be between 0 and 1000, got " + it->dump());
  return static_cast<int>(v);
}

bool get_bool(const json& j, const char* field, const std::string& where, bool dflt) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) return dflt;
  if (!it->is_boolean()) fail(where, field, "expected a boolean, got " + type_name(*it));
  return it->get<bool>();
}

}  // namespace

std::string canonical_method(std::string_view name) {
  static const std::unordered_map<std::string_view, std::string_view> aliases = {
      {"REQCliCommand", "cli_command"},
      {"REQnCliCommand", "cli_command"},
      {"REQCliCommandCont", "cli_command_cont"},
      {"REQnCliCommandCont", "cli_command_cont"},
      {"REQTailFile", "tail_file"},
      {"REQCopyFileFrom", "copy_file_from"},
      {"REQCopyFileTo", "copy_file_to"},
      {"REQHello", "hello"},
      {"REQRelay", "relay"},
      {"REQToFile", "to_file"},
      {"REQToFileAppend", "to_file_append"},
      {"REQToConsole", "to_console"},
      {"REQNone", "none"},
      {"REQErrorLog", "error_log"},
      {"REQOpProcessList", "op_process_list"},
      {"REQOpProcessStop", "op_process_stop"},
      {"REQPing", "ping"},
  };
  if (name.substr(0, 3) != "REQ") return std::string(name);  // not a Steward name
  auto it = aliases.find(name);
  return std::string(it == aliases.end() ? name : it->second);
}

Message parse_message(const json& j, const std::string& where) {
  if (!j.is_object()) {
    throw MessageError("", where + ": expected a JSON object, got " + type_name(j));
  }
  Message m;
  for (const auto& [key, value] : j.items()) {
    const auto& known = known_fields();
    if (std::find(known.begin(), known.end(), key) != known.end()) continue;
    // A near miss of a known field is a typo that would silently change the
    // message's meaning; anything else is passed through untouched.
    std::string near = closest_match(key, known);
    if (!near.empty()) fail(where, key, "unknown field (did you mean \"" + near + "\"?)");
    m.extra[key] = value;
  }

  m.to_node = get_token(j, "toNode", where);
  if (auto it = j.find("toNodes"); it != j.end() && !it->is_null()) {
    if (!it->is_array())
      fail(where, "toNodes", "expected an array of node names, got " + type_name(*it));
    for (size_t i = 0; i < it->size(); ++i) {
      const auto& e = (*it)[i];
      std::string f = "toNodes[" + std::to_string(i) + "]";
      if (!e.is_string()) fail(where, f, "expected a string, got " + type_name(e));
      if (!is_valid_token(e.get<std::string>())) {
        fail(where, f, "\"" + e.get<std::string>() + "\" is not a valid node name");
      }
      m.to_nodes.push_back(e.get<std::string>());
    }
  }
  if (m.to_node.empty() && m.to_nodes.empty()) {
    throw MessageError("toNode", where + ": needs \"toNode\" or \"toNodes\"");
  }

  auto method = j.find("method");
  if (method == j.end() || method->is_null()) {
    throw MessageError("method", where + ": field \"method\" is missing");
  }
  m.method = canonical_method(get_token(j, "method", where));
  if (m.method.empty()) fail(where, "method", "must not be empty");
  m.method_args = get_args(j, "methodArgs", where);
  m.reply_method = canonical_method(get_token(j, "replyMethod", where));
  m.reply_method_args = get_args(j, "replyMethodArgs", where);
  m.ack_timeout = get_seconds(j, "ACKTimeout", where, false);
  m.retries = get_count(j, "retries", where);
  m.reply_ack_timeout = get_seconds(j, "replyACKTimeout", where, false);
  m.reply_retries = get_count(j, "replyRetries", where);
  m.method_timeout = get_seconds(j, "methodTimeout", where, true);
  m.reply_method_timeout = get_seconds(j, "replyMethodTimeout", where, true);
  if (m.method_timeout && *m.method_timeout == 0) {
    fail(where, "methodTimeout", "must be > 0 (or -1 for no limit), got 0");
  }
  m.directory = get_string(j, "directory", where);
  m.file_name = get_string(j, "fileName", where);
  m.relay_via_node = get_token(j, "relayViaNode", where);
  m.relay_reply_method = canonical_method(get_token(j, "relayReplyMethod", where));
  if (auto it = j.find("data"); it != j.end() && !it->is_null()) {
    m.data = it->is_string() ? it->get<std::string>() : it->dump();
  }

  m.id = get_string(j, "id", where);
  m.from_node = get_token(j, "fromNode", where);
  if (auto it = j.find("sentAt"); it != j.end() && !it->is_null()) {
    if (!it->is_number_integer())
      fail(where, "sentAt", "expected epoch milliseconds, got " + type_name(*it));
    m.sent_at_ms = it->get<int64_t>();
  }
  m.is_reply = get_bool(j, "isReply", where, false);
  m.in_reply_to = get_string(j, "inReplyTo", where);
  m.request_method = get_string(j, "requestMethod", where);
  m.final_reply = get_bool(j, "final", where, true);
  if (auto it = j.find("seq"); it != j.end() && !it->is_null()) {
    if (!it->is_number_unsigned())
      fail(where, "seq", "expected a non-negative integer, got " + type_name(*it));
    m.seq = it->get<uint32_t>();
  }
  m.status = get_string(j, "status", where);
  m.error = get_string(j, "error", where);
  return m;
}

namespace {

json message_object(const Message& m, bool with_data) {
  json j = m.extra.is_object() ? m.extra : json::object();
  auto put = [&](const char* k, const std::string& v) {
    if (!v.empty()) j[k] = v;
  };
  put("id", m.id);
  put("toNode", m.to_node);
  if (!m.to_nodes.empty()) j["toNodes"] = m.to_nodes;
  put("fromNode", m.from_node);
  put("method", m.method);
  if (!m.method_args.empty()) j["methodArgs"] = m.method_args;
  put("replyMethod", m.reply_method);
  if (!m.reply_method_args.empty()) j["replyMethodArgs"] = m.reply_method_args;
  if (m.ack_timeout) j["ACKTimeout"] = *m.ack_timeout;
  if (m.retries) j["retries"] = *m.retries;
  if (m.reply_ack_timeout) j["replyACKTimeout"] = *m.reply_ack_timeout;
  if (m.reply_retries) j["replyRetries"] = *m.reply_retries;
  if (m.method_timeout) j["methodTimeout"] = *m.method_timeout;
  if (m.reply_method_timeout) j["replyMethodTimeout"] = *m.reply_method_timeout;
  put("directory", m.directory);
  put("fileName", m.file_name);
  put("relayViaNode", m.relay_via_node);
  put("relayReplyMethod", m.relay_reply_method);
  if (with_data && !m.data.empty()) j["data"] = m.data;
  if (m.sent_at_ms) j["sentAt"] = m.sent_at_ms;
  if (m.is_reply) {
    j["isReply"] = true;
    put("inReplyTo", m.in_reply_to);
    put("requestMethod", m.request_method);
    j["final"] = m.final_reply;
    j["seq"] = m.seq;
    put("status", m.status);
    put("error", m.error);
  }
  return j;
}

}  // namespace

json to_json(const Message& m) {
  return message_object(m, true);
}

void append_json_string(std::string& out, std::string_view s) {
  bool plain = true;
  for (unsigned char c : s) {
    if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\') {
      plain = false;
      break;
    }
  }
  if (!plain) {
    out += json(s).dump(-1, ' ', false, json::error_handler_t::replace);
    return;
  }
  out.reserve(out.size() + s.size() + 2);
  out += '"';
  out += s;
  out += '"';
}

namespace {

// to_text's first part the library's way: the object without "data".
std::string text_by_library(const Message& m) {
  return message_object(m, false).dump(-1, ' ', false, json::error_handler_t::replace);
}

// The same text written directly, field by field in the library's key order
// (std::map: byte order) with its number formats: a message is turned into
// text several times on its way (outbox, wire, audit log, the handler's
// view), and building a JSON object for each was ~14% of a node's CPU at
// full messaging load. Messages with fields of their own (`extra`) go the
// library's way.
std::string text_direct(const Message& m) {
  std::string out;
  out.reserve(256 + m.method_args.size() * 16);
  char sep = '{';
  auto key = [&](std::string_view k) {
    out += sep;
    sep = ',';
    out += '"';
    out += k;
    out += "\":";
  };
  auto str = [&](std::string_view k, const std::string& v) {
    if (v.empty()) return;
    key(k);
    append_json_string(out, v);
  };
  auto list = [&](std::string_view k, const std::vector<std::string>& v) {
    if (v.empty()) return;
    key(k);
    char c = '[';
    for (const auto& e : v) {
      out += c;
      c = ',';
      append_json_string(out, e);
    }
    out += ']';
  };
  auto integer = [&](std::string_view k, int64_t v) {
    key(k);
    char buf[24];
    auto r = std::to_chars(buf, buf + sizeof buf, v);
    out.append(buf, r.ptr);
  };
  auto seconds = [&](std::string_view k, const std::optional<double>& v) {
    if (!v) return;
    key(k);
    out += json(*v).dump();
  };
  // In byte order of the keys, as std::map has them ("data" comes last,
  // from to_text).
  seconds("ACKTimeout", m.ack_timeout);
  str("directory", m.directory);
  if (m.is_reply) str("error", m.error);
  str("fileName", m.file_name);
  if (m.is_reply) {
    key("final");
    out += m.final_reply ? "true" : "false";
  }
  str("fromNode", m.from_node);
  str("id", m.id);
  if (m.is_reply) {
    str("inReplyTo", m.in_reply_to);
    key("isReply");
    out += "true";
  }
  str("method", m.method);
  list("methodArgs", m.method_args);
  seconds("methodTimeout", m.method_timeout);
  str("relayReplyMethod", m.relay_reply_method);
  str("relayViaNode", m.relay_via_node);
  seconds("replyACKTimeout", m.reply_ack_timeout);
  str("replyMethod", m.reply_method);
  list("replyMethodArgs", m.reply_method_args);
  seconds("replyMethodTimeout", m.reply_method_timeout);
  if (m.reply_retries) integer("replyRetries", *m.reply_retries);
  if (m.is_reply) str("requestMethod", m.request_method);
  if (m.retries) integer("retries", *m.retries);
  if (m.sent_at_ms) integer("sentAt", m.sent_at_ms);
  if (m.is_reply) {
    integer("seq", m.seq);
    str("status", m.status);
  }
  str("toNode", m.to_node);
  list("toNodes", m.to_nodes);
  if (sep == '{') out += '{';
  out += '}';
  return out;
}

}  // namespace

std::string to_text(const Message& m) {
  const bool own_fields = m.extra.is_object() && !m.extra.empty();
  std::string text = own_fields ? text_by_library(m) : text_direct(m);
  if (m.data.empty()) return text;
  text.pop_back();  // the closing '}'
  if (text.size() > 1) text += ',';
  text += "\"data\":";
  append_json_string(text, m.data);
  text += '}';
  return text;
}

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string new_message_id() {
  static constexpr char kAlphabet[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
  static std::mutex mu;
  static int64_t last_ms = 0;
  static std::array<uint8_t, 10> last_rand{};

  std::array<uint8_t, 10> rnd{};
  int64_t ms = now_ms();
  {
    // Monotonic within a millisecond: increment the random part, so ids
    // created in one millisecond still sort in creation order.
    std::lock_guard<std::mutex> lock(mu);
    if (ms <= last_ms) {
      ms = last_ms;
      for (int i = 9; i >= 0 && ++last_rand[i] == 0; --i) {
      }
    } else {
      last_ms = ms;
      if (RAND_bytes(last_rand.data(), static_cast<int>(last_rand.size())) != 1) {
        throw std::runtime_error("RAND_bytes failed");
      }
      last_rand[0] &= 0x7F;  // leave room to increment without overflow
    }
    rnd = last_rand;
  }
  std::string out(26, '0');
  uint64_t t = static_cast<uint64_t>(ms);
  for (int i = 9; i >= 0; --i) {
    out[i] = kAlphabet[t & 31];
    t >>= 5;
  }
  // 80 random bits -> 16 characters of 5 bits each.
  int bit = 0;
  for (int i = 0; i < 16; ++i) {
    int v = 0;
    for (int b = 0; b < 5; ++b, ++bit) {
      v = (v << 1) | ((rnd[bit / 8] >> (7 - bit % 8)) & 1);
    }
    out[10 + i] = kAlphabet[v];
  }
  return out;
}

std::string closest_match(std::string_view word, const std::vector<std::string>& candidates) {
  auto distance = [](std::string_view a, std::string_view b) {
    std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
    for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
    for (size_t i = 1; i <= a.size(); ++i) {
      cur[0] = i;
      for (size_t j = 1; j <= b.size(); ++j) {
        size_t cost = std::tolower(a[i - 1]) == std::tolower(b[j - 1]) ? 0 : 1;
        cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost});
      }
      std::swap(prev, cur);
    }
    return prev[b.size()];
  };
  std::string best;
  size_t best_d = 3;
  for (const auto& c : candidates) {
    size_t d = distance(word, c);
    if (d < best_d) {
      best_d = d;
      best = c;
    }
  }
  return best;
}

}  // namespace bosun::host
