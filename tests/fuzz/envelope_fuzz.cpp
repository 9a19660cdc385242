// libFuzzer target for what a node does first with bytes from the bus:
// open the envelope, verify the signature (or pair-key tag), decode the
// message. Built with clang by tests/fuzz/run_fuzz.sh (ctest
// `fuzz_envelope`) and run for a bounded time. Half of the inputs are sealed with a real key first,
// so the message decoder behind the verifier is reached, not only the header parser. Anything but a
// clean return (a crash, a sanitizer report, an exception other than MessageError) is a finding,
// and so is the bus's fast message reader (read_messages) reading anything otherwise than the
// general decoder does.
#include <stdlib.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "bosun/host/message.hpp"
#include "crypt.hpp"
#include "security.hpp"

namespace host = bosun::host;

namespace {
const host::Identity& identity() {
  static const host::Identity id = [] {
    char dir[] = "/tmp/bosun-fuzz-XXXXXX";
    if (mkdtemp(dir) == nullptr) abort();
    return host::Identity::load_or_create(dir);
  }();
  return id;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string subject = "bosun.req.ship1.cli_command";
  std::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  // Bit 0: sealed first; bit 1: with a pair-key tag (to this same node)
  // rather than a signature; bit 2: encrypted with the cluster secret.
  static const host::ClusterKey secret(std::string(host::ClusterKey::kSecretBytes, '\x5a'));
  std::string wire;
  if (data[0] & 1) {
    const std::string peer = (data[0] & 2) ? identity().public_key_raw() : std::string();
    wire = identity().seal("central", subject, rest, host::now_ms(),
                           (data[0] & 4) ? &secret : nullptr, peer);
  } else {
    wire = std::string(rest);
  }
  host::Envelope env;
  std::string why;
  if (!host::parse_envelope(wire, env, &why)) return 0;
  if (!identity().verify(env, subject)) return 0;
  std::string plain;
  std::string_view body = env.body;
  if (env.encrypted) {
    if (env.key_id != secret.id()) return 0;
    if (!secret.decrypt(host::payload_aad(env.signer, env.signed_at_ms, subject, env.key_id),
                        env.body, plain)) {
      return 0;
    }
    body = plain;
  }
  // The bus's fast path (read_messages) must read nothing the general way
  // would not, and read it the same: compared message by message, by text.
  bool batch = false;
  auto fast = host::read_messages(body, &batch);
  nlohmann::json doc = nlohmann::json::parse(body, nullptr, false);
  if (doc.is_discarded()) {
    if (fast) abort();
    return 0;
  }
  std::vector<host::Message> general;
  try {
    if (doc.is_array()) {
      for (const auto& one : doc) general.push_back(host::parse_message(one, "message"));
    } else {
      general.push_back(host::parse_message(doc, "message"));
    }
    for (const auto& m : general) {
      (void)host::to_json(m).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    }
  } catch (const host::MessageError&) {
    if (fast) abort();
    return 0;
  }
  if (fast) {
    if (fast->size() != general.size() || batch != doc.is_array()) abort();
    for (size_t i = 0; i < general.size(); ++i) {
      const host::Message& a = (*fast)[i].msg;
      const host::Message& b = general[i];
      if (host::to_text(a) != host::to_text(b) || a.status != b.status || a.error != b.error ||
          a.final_reply != b.final_reply || a.seq != b.seq || a.in_reply_to != b.in_reply_to ||
          a.request_method != b.request_method) {
        abort();
      }
    }
  }
  return 0;
}
