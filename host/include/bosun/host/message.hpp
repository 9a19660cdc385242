// The message envelope (DESIGN §4): Steward's field names, parsed and
// validated with errors that name the message and the field.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace bosun::host {

struct Message {
  // Steward's fields.
  std::string to_node;
  std::vector<std::string> to_nodes;  // before fan-out only
  std::string method;                 // canonical name (aliases resolved)
  std::vector<std::string> method_args;
  std::string reply_method;
  std::vector<std::string> reply_method_args;
  std::optional<double> ack_timeout;  // seconds
  std::optional<int> retries;
  std::optional<double> reply_ack_timeout;
  std::optional<int> reply_retries;
  std::optional<double> method_timeout;  // seconds; -1 = no limit
  std::optional<double> reply_method_timeout;
  std::string directory;
  std::string file_name;
  std::string relay_via_node;
  std::string relay_reply_method;
  std::string data;

  // Set by the host.
  std::string id;  // unique, sortable
  std::string from_node;
  int64_t sent_at_ms = 0;  // Unix epoch milliseconds
  bool is_reply = false;

  // On replies: what the reply answers.
  std::string in_reply_to;     // the request's id
  std::string request_method;  // the request's method
  bool final_reply = true;     // false on every chunk of a stream but the last
  uint32_t seq = 0;            // chunk number within a stream
  std::string status;          // "ok" | "error"
  std::string error;           // error text when status == "error"

  // Fields we do not know, passed through untouched: null (none, not
  // allocated: most messages) or an object.
  nlohmann::json extra;

  // Host only, never read from or written to JSON by to_json/parse_message:
  // the signed request a call of this message acts for (DESIGN §7), as the
  // "cause" its module's messages carry: {"subject", "envelope" (base64 of
  // the request as it came off the bus)}. Null when there is none.
  nlohmann::json cause;
};

// Parse error: `what()` names the message index and the field.
class MessageError : public std::runtime_error {
 public:
  MessageError(std::string field, const std::string& what)
      : std::runtime_error(what), field_(std::move(field)) {}
  const std::string& field() const noexcept { return field_; }

 private:
  std::string field_;
};

// Parses one message object; `where` prefixes errors ("message 2").
Message parse_message(const nlohmann::json& j, const std::string& where);
nlohmann::json to_json(const Message& m);
// to_json(m) as JSON text (invalid UTF-8 replaced, as everywhere), with
// "data" last and, when it needs no escaping (base64, plain text), copied
// once instead of going through the JSON library's escaping byte by byte:
// a file copy's chunks are hundreds of kilobytes.
std::string to_text(const Message& m);
// One message read by read_messages, and its own text within the input.
struct ReadMessage {
  Message msg;
  std::string_view text;
};
// The messages of a JSON text from the bus (one object, or an array of them:
// a batch; `*batch` says which) read without building a JSON document, for
// the shapes bosun's own nodes send: known fields only, ASCII strings,
// arrays of strings. nullopt for anything else, and whenever parse_message
// would refuse one of them: parse it the general way then, which says what
// is wrong. What it returns is exactly what parse_message would.
std::optional<std::vector<ReadMessage>> read_messages(std::string_view text, bool* batch);
// Appends `s` to `out` as a JSON string.
void append_json_string(std::string& out, std::string_view s);

// Canonical method name for a Steward alias ("REQCliCommand" ->
// "cli_command"); the name itself when it is no alias.
std::string canonical_method(std::string_view name);

// A new unique id: 48-bit millisecond time + 80 random bits, Crockford
// base32, 26 characters; sorts by creation time (like a ULID).
std::string new_message_id();

int64_t now_ms();

// The closest of `candidates` to `word` within edit distance 2, or "".
std::string closest_match(std::string_view word, const std::vector<std::string>& candidates);

}  // namespace bosun::host
