// libFuzzer target for what a node does first with bytes from the bus:
// open the envelope, verify the signature, decode the message. Built with
// clang by tests/fuzz/run_fuzz.sh (ctest `fuzz_envelope`) and run for a
// bounded time. Half of the inputs are sealed with a real key first, so the
// message decoder behind the verifier is reached, not only the header
// parser. Anything but a clean return (a crash, a sanitizer report, an
// exception other than MessageError) is a finding.
#include <stdlib.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "bosun/host/message.hpp"
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
  std::string wire =
      (data[0] & 1) ? identity().seal("central", subject, rest, host::now_ms()) : std::string(rest);
  host::Envelope env;
  std::string why;
  if (!host::parse_envelope(wire, env, &why)) return 0;
  auto key = host::ed25519_public_key(env.public_key);
  std::string signed_bytes =
      host::envelope_signed_bytes(env.signer, env.signed_at_ms, subject, env.body);
  if (!host::ed25519_verify(key.get(), signed_bytes, env.signature)) return 0;
  nlohmann::json doc = nlohmann::json::parse(env.body, nullptr, false);
  if (doc.is_discarded()) return 0;
  try {
    host::Message m = host::parse_message(doc, "message");
    (void)host::to_json(m).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  } catch (const host::MessageError&) {
  }
  return 0;
}
