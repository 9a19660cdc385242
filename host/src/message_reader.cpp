// read_messages (message.hpp): the messages of a JSON text from the bus,
// read straight into Message without building a JSON document first. Only
// for what bosun's own nodes send: known fields, ASCII strings, arrays of
// strings, numbers, booleans. Anything else, and anything parse_message
// would refuse, is left to the general way (json::parse + parse_message),
// which also says what is wrong: so this never has to.
#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "bosun/host/config.hpp"
#include "bosun/host/message.hpp"

namespace bosun::host {

namespace {

enum Field : unsigned {
  kToNode,
  kToNodes,
  kMethod,
  kMethodArgs,
  kReplyMethod,
  kReplyMethodArgs,
  kAckTimeout,
  kRetries,
  kReplyAckTimeout,
  kReplyRetries,
  kMethodTimeout,
  kReplyMethodTimeout,
  kDirectory,
  kFileName,
  kRelayViaNode,
  kRelayReplyMethod,
  kData,
  kId,
  kFromNode,
  kSentAt,
  kIsReply,
  kInReplyTo,
  kRequestMethod,
  kFinal,
  kSeq,
  kStatus,
  kError,
  kUnknown,
};

Field field_of(std::string_view k) {
  static constexpr std::pair<std::string_view, Field> kFields[] = {
      {"toNode", kToNode},
      {"toNodes", kToNodes},
      {"method", kMethod},
      {"methodArgs", kMethodArgs},
      {"replyMethod", kReplyMethod},
      {"replyMethodArgs", kReplyMethodArgs},
      {"ACKTimeout", kAckTimeout},
      {"retries", kRetries},
      {"replyACKTimeout", kReplyAckTimeout},
      {"replyRetries", kReplyRetries},
      {"methodTimeout", kMethodTimeout},
      {"replyMethodTimeout", kReplyMethodTimeout},
      {"directory", kDirectory},
      {"fileName", kFileName},
      {"relayViaNode", kRelayViaNode},
      {"relayReplyMethod", kRelayReplyMethod},
      {"data", kData},
      {"id", kId},
      {"fromNode", kFromNode},
      {"sentAt", kSentAt},
      {"isReply", kIsReply},
      {"inReplyTo", kInReplyTo},
      {"requestMethod", kRequestMethod},
      {"final", kFinal},
      {"seq", kSeq},
      {"status", kStatus},
      {"error", kError},
  };
  for (const auto& [name, f] : kFields) {
    if (name == k) return f;
  }
  return kUnknown;
}

// A JSON number as the JSON library would hold it.
struct Number {
  enum Kind { unsigned_integer, negative_integer, floating } kind = unsigned_integer;
  uint64_t u = 0;
  int64_t i = 0;
  double d = 0;
  double as_double() const {
    return kind == floating           ? d
           : kind == negative_integer ? static_cast<double>(i)
                                      : static_cast<double>(u);
  }
};

class Reader {
 public:
  explicit Reader(std::string_view text) : s_(text) {}

  size_t pos() const { return i_; }
  bool at_end() {
    ws();
    return i_ == s_.size();
  }
  bool eat(char c) {
    ws();
    if (i_ < s_.size() && s_[i_] == c) {
      ++i_;
      return true;
    }
    return false;
  }
  bool peek(char c) {
    ws();
    return i_ < s_.size() && s_[i_] == c;
  }

  // A string of ASCII characters (escapes decoded, \u below U+D800 or
  // above U+DFFF encoded as UTF-8); false on anything else.
  bool string(std::string& out) {
    ws();
    if (i_ >= s_.size() || s_[i_] != '"') return false;
    size_t start = ++i_;
    while (i_ < s_.size()) {
      const unsigned char c = static_cast<unsigned char>(s_[i_]);
      if (c == '"') {
        out.append(s_.substr(start, i_ - start));
        ++i_;
        return true;
      }
      if (c < 0x20 || c >= 0x80) return false;
      if (c != '\\') {
        ++i_;
        continue;
      }
      out.append(s_.substr(start, i_ - start));
      if (++i_ >= s_.size()) return false;
      const char e = s_[i_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          if (s_.size() - i_ < 4) return false;
          unsigned cp = 0;
          for (int k = 0; k < 4; ++k) {
            const char h = s_[i_++];
            cp <<= 4;
            if (h >= '0' && h <= '9') {
              cp |= static_cast<unsigned>(h - '0');
            } else if (h >= 'a' && h <= 'f') {
              cp |= static_cast<unsigned>(h - 'a' + 10);
            } else if (h >= 'A' && h <= 'F') {
              cp |= static_cast<unsigned>(h - 'A' + 10);
            } else {
              return false;
            }
          }
          if (cp >= 0xD800 && cp <= 0xDFFF) return false;  // surrogates: the general way
          if (cp < 0x80) {
            out += static_cast<char>(cp);
          } else if (cp < 0x800) {
            out += static_cast<char>(0xC0 | (cp >> 6));
            out += static_cast<char>(0x80 | (cp & 0x3F));
          } else {
            out += static_cast<char>(0xE0 | (cp >> 12));
            out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
            out += static_cast<char>(0x80 | (cp & 0x3F));
          }
          break;
        }
        default: return false;
      }
      start = i_;
    }
    return false;
  }

  bool strings(std::vector<std::string>& out) {
    if (!eat('[')) return false;
    if (eat(']')) return true;
    do {
      out.emplace_back();
      if (!string(out.back())) return false;
    } while (eat(','));
    return eat(']');
  }

  bool boolean(bool& out) {
    ws();
    if (s_.substr(i_, 4) == "true") {
      i_ += 4;
      out = true;
      return true;
    }
    if (s_.substr(i_, 5) == "false") {
      i_ += 5;
      out = false;
      return true;
    }
    return false;
  }

  // JSON's number grammar exactly; integers of up to 18 digits.
  bool number(Number& n) {
    ws();
    const size_t start = i_;
    const bool negative = i_ < s_.size() && s_[i_] == '-';
    if (negative) ++i_;
    const size_t digits = i_;
    if (i_ >= s_.size() || s_[i_] < '0' || s_[i_] > '9') return false;
    if (s_[i_] == '0') {
      ++i_;
    } else {
      while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') ++i_;
    }
    const size_t int_end = i_;
    bool is_float = false;
    if (i_ < s_.size() && s_[i_] == '.') {
      is_float = true;
      if (++i_ >= s_.size() || s_[i_] < '0' || s_[i_] > '9') return false;
      while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') ++i_;
    }
    if (i_ < s_.size() && (s_[i_] == 'e' || s_[i_] == 'E')) {
      is_float = true;
      ++i_;
      if (i_ < s_.size() && (s_[i_] == '+' || s_[i_] == '-')) ++i_;
      if (i_ >= s_.size() || s_[i_] < '0' || s_[i_] > '9') return false;
      while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') ++i_;
    }
    if (is_float) {
      n.kind = Number::floating;
      auto r = std::from_chars(s_.data() + start, s_.data() + i_, n.d);
      return r.ec == std::errc() && r.ptr == s_.data() + i_;
    }
    if (int_end - digits > 18) return false;
    uint64_t v = 0;
    for (size_t k = digits; k < int_end; ++k) v = v * 10 + static_cast<uint64_t>(s_[k] - '0');
    if (negative) {
      if (v == 0) return false;  // "-0": the general way
      n.kind = Number::negative_integer;
      n.i = -static_cast<int64_t>(v);
    } else {
      n.kind = Number::unsigned_integer;
      n.u = v;
    }
    return true;
  }

 private:
  void ws() {
    while (i_ < s_.size() &&
           (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) {
      ++i_;
    }
  }
  std::string_view s_;
  size_t i_ = 0;
};

// parse_message's rule for a number of seconds: a value, or nullopt when it
// would refuse it.
std::optional<double> seconds(const Number& n, bool allow_unlimited) {
  const double v = n.as_double();
  if (!std::isfinite(v)) return std::nullopt;
  if (allow_unlimited && v == -1) return v;
  if (v < 0 || v > 7 * 24 * 3600) return std::nullopt;
  return v;
}

// parse_message's rule for retries: an integer from 0 to 1000.
std::optional<int> count(const Number& n) {
  if (n.kind != Number::unsigned_integer || n.u > 1000) return std::nullopt;
  return static_cast<int>(n.u);
}

bool token_ok(const std::string& s) {
  return s.empty() || is_valid_token(s);
}

// One message object; false when it is not of the shapes read here or
// parse_message would refuse it.
bool read_message(Reader& r, Message& m) {
  if (!r.eat('{')) return false;
  uint32_t seen = 0;
  bool has_method = false;
  std::string method, reply_method, relay_reply_method;
  if (!r.eat('}')) {
    do {
      std::string key;
      if (!r.string(key) || !r.eat(':')) return false;
      const Field f = field_of(key);
      if (f == kUnknown || (seen & (1u << f))) return false;  // extra fields, repeats
      seen |= 1u << f;
      Number n;
      switch (f) {
        case kToNode:
          if (!r.string(m.to_node) || !token_ok(m.to_node)) return false;
          break;
        case kToNodes:
          if (!r.strings(m.to_nodes)) return false;
          for (const auto& t : m.to_nodes) {
            if (!is_valid_token(t)) return false;
          }
          break;
        case kMethod:
          has_method = true;
          if (!r.string(method) || !token_ok(method)) return false;
          break;
        case kMethodArgs:
          if (!r.strings(m.method_args)) return false;
          break;
        case kReplyMethod:
          if (!r.string(reply_method) || !token_ok(reply_method)) return false;
          break;
        case kReplyMethodArgs:
          if (!r.strings(m.reply_method_args)) return false;
          break;
        case kAckTimeout:
          if (!r.number(n) || !(m.ack_timeout = seconds(n, false))) return false;
          break;
        case kReplyAckTimeout:
          if (!r.number(n) || !(m.reply_ack_timeout = seconds(n, false))) return false;
          break;
        case kMethodTimeout:
          if (!r.number(n) || !(m.method_timeout = seconds(n, true)) || *m.method_timeout == 0) {
            return false;
          }
          break;
        case kReplyMethodTimeout:
          if (!r.number(n) || !(m.reply_method_timeout = seconds(n, true))) return false;
          break;
        case kRetries:
          if (!r.number(n) || !(m.retries = count(n))) return false;
          break;
        case kReplyRetries:
          if (!r.number(n) || !(m.reply_retries = count(n))) return false;
          break;
        case kDirectory:
          if (!r.string(m.directory)) return false;
          break;
        case kFileName:
          if (!r.string(m.file_name)) return false;
          break;
        case kRelayViaNode:
          if (!r.string(m.relay_via_node) || !token_ok(m.relay_via_node)) return false;
          break;
        case kRelayReplyMethod:
          if (!r.string(relay_reply_method) || !token_ok(relay_reply_method)) return false;
          break;
        case kData:
          if (!r.string(m.data)) return false;
          break;
        case kId:
          if (!r.string(m.id)) return false;
          break;
        case kFromNode:
          if (!r.string(m.from_node) || !token_ok(m.from_node)) return false;
          break;
        case kSentAt:
          if (!r.number(n) || n.kind != Number::unsigned_integer ||
              n.u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
            return false;
          }
          m.sent_at_ms = static_cast<int64_t>(n.u);
          break;
        case kIsReply:
          if (!r.boolean(m.is_reply)) return false;
          break;
        case kInReplyTo:
          if (!r.string(m.in_reply_to)) return false;
          break;
        case kRequestMethod:
          if (!r.string(m.request_method)) return false;
          break;
        case kFinal:
          if (!r.boolean(m.final_reply)) return false;
          break;
        case kSeq:
          if (!r.number(n) || n.kind != Number::unsigned_integer ||
              n.u > std::numeric_limits<uint32_t>::max()) {
            return false;
          }
          m.seq = static_cast<uint32_t>(n.u);
          break;
        case kStatus:
          if (!r.string(m.status)) return false;
          break;
        case kError:
          if (!r.string(m.error)) return false;
          break;
        case kUnknown: return false;
      }
    } while (r.eat(','));
    if (!r.eat('}')) return false;
  }
  if (m.to_node.empty() && m.to_nodes.empty()) return false;
  if (!has_method) return false;
  m.method = canonical_method(method);
  if (m.method.empty()) return false;
  m.reply_method = canonical_method(reply_method);
  m.relay_reply_method = canonical_method(relay_reply_method);
  return true;
}

}  // namespace

std::optional<std::vector<ReadMessage>> read_messages(std::string_view text, bool* batch) {
  Reader r(text);
  std::vector<ReadMessage> out;
  *batch = r.peek('[');
  if (!*batch) {
    out.emplace_back();
    if (!read_message(r, out.back().msg) || !r.at_end()) return std::nullopt;
    out.back().text = text;
    return out;
  }
  r.eat('[');
  if (r.eat(']')) return std::nullopt;  // an empty batch: refused the general way
  // Room for as many as the text could hold at ~100 bytes a message (up to
  // the 64 a batch may have), so that they are not moved as the vector grows.
  out.reserve(std::min<size_t>(64, text.size() / 100 + 1));
  do {
    out.emplace_back();
    r.peek('{');  // past the white space: the message starts here
    const size_t start = r.pos();
    if (!read_message(r, out.back().msg)) return std::nullopt;
    out.back().text = text.substr(start, r.pos() - start);
  } while (r.eat(','));
  if (!r.eat(']') || !r.at_end()) return std::nullopt;
  return out;
}

}  // namespace bosun::host
