// A module artifact on its way in: decoded, hashed, signature-checked and
// staged under <dataDir>/plugins/<name>/<version>/ (DESIGN §6 step 1).
// Every function throws std::runtime_error with a sentence saying what is
// wrong; the node module turns it into a failed UpdateResult.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace bosun::node {

// Strict standard base64 (RFC 4648 §4, padded); line breaks are skipped.
// `what` names the input in errors ("data", "methodArgs[3]").
std::string base64_decode(std::string_view text, std::string_view what);

// Lower-case hex SHA-256 of `bytes`.
std::string sha256_hex(std::string_view bytes);

// True when `signature` is a valid Ed25519 signature of `bytes` by one of
// `public_keys` (raw 32-byte keys).
bool ed25519_verify_any(std::string_view bytes, std::string_view signature,
                        const std::vector<std::string>& public_keys);

// Writes `bytes` (whose SHA-256 is `sha256`) to
// <data_dir>/plugins/<name>/<version>/<name>.so and returns that path. An
// identical file already there is reused; a different one (it may be
// loaded) is left alone and the artifact goes to <version>-<sha256[0:8]>/.
std::filesystem::path stage_module(const std::filesystem::path& data_dir, const std::string& name,
                                   const std::string& version, const std::string& sha256,
                                   std::string_view bytes);

}  // namespace bosun::node
