#include "artifact.hpp"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <stdexcept>

namespace bosun::node {

namespace fs = std::filesystem;

namespace {

int base64_value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

std::string shown_char(char c) {
  auto u = static_cast<unsigned char>(c);
  if (u >= 0x20 && u < 0x7f) return std::string("'") + c + "'";
  char buf[8];
  std::snprintf(buf, sizeof buf, "0x%02x", u);
  return buf;
}

std::string errno_text(const std::string& what, const fs::path& p) {
  return what + " " + p.string() + ": " + std::strerror(errno);
}

std::string mode_text(mode_t mode) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(mode & 07777));
  return buf;
}

// A module's folder must be ours and writable by no one else, or someone
// else could swap the file between our hash check and the host's dlopen.
void check_ours(const fs::path& p, const struct stat& st, const char* what) {
  if (st.st_uid != ::geteuid() && st.st_uid != 0) {
    throw std::runtime_error(std::string(what) + " " + p.string() + " belongs to uid " +
                             std::to_string(st.st_uid) + ", not to this user");
  }
  if (st.st_mode & (S_IWGRP | S_IWOTH)) {
    throw std::runtime_error(std::string(what) + " " + p.string() +
                             " is writable by others than its owner (mode " +
                             mode_text(st.st_mode) + ")");
  }
}

void ensure_folder(const fs::path& dir) {
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    throw std::runtime_error(errno_text("cannot create the folder", dir));
  }
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0) throw std::runtime_error(errno_text("cannot stat", dir));
  if (!S_ISDIR(st.st_mode)) {
    throw std::runtime_error(dir.string() + " is in the way: it is not a folder");
  }
  check_ours(dir, st, "the folder");
}

std::string read_whole(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw std::runtime_error(errno_text("cannot read", p));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The hash of the regular file at `p`, or "" when nothing is there.
std::string existing_hash(const fs::path& p) {
  struct stat st {};
  if (::lstat(p.c_str(), &st) != 0) {
    if (errno == ENOENT) return "";
    throw std::runtime_error(errno_text("cannot stat", p));
  }
  if (!S_ISREG(st.st_mode)) {
    throw std::runtime_error(p.string() + " is in the way: it is not a regular file");
  }
  check_ours(p, st, "the file");
  return sha256_hex(read_whole(p));
}

// Temp file beside the target, then rename: the target path never holds a
// partly written module.
void write_new(const fs::path& target, std::string_view bytes) {
  std::string tmp =
      (target.parent_path() / ("." + target.filename().string() + ".XXXXXX")).string();
  int fd = ::mkostemp(tmp.data(), O_CLOEXEC);
  if (fd < 0)
    throw std::runtime_error(errno_text("cannot create a temp file in", target.parent_path()));
  auto fail = [&](const std::string& what) {
    std::string text = errno_text(what, tmp);
    ::close(fd);
    ::unlink(tmp.c_str());
    throw std::runtime_error(text);
  };
  size_t off = 0;
  while (off < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + off, bytes.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail("cannot write");
    off += static_cast<size_t>(n);
  }
  if (::fchmod(fd, 0755) != 0) fail("cannot chmod");
  if (::fsync(fd) != 0) fail("cannot sync");
  if (::close(fd) != 0) {
    std::string text = errno_text("cannot close", tmp);
    ::unlink(tmp.c_str());
    throw std::runtime_error(text);
  }
  if (::rename(tmp.c_str(), target.c_str()) != 0) {
    std::string text = errno_text("cannot rename " + tmp + " to", target);
    ::unlink(tmp.c_str());
    throw std::runtime_error(text);
  }
}

struct PkeyFree {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct MdCtxFree {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};

}  // namespace

std::string base64_decode(std::string_view text, std::string_view what) {
  std::string out(text.size() / 4 * 3 + 3, '\0');
  size_t used = 0;
  uint32_t acc = 0;
  int bits = 0;
  size_t count = 0, pad = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c == '\n' || c == '\r') continue;
    ++count;
    if (c == '=') {
      ++pad;
      continue;
    }
    int v = base64_value(c);
    if (v < 0 || pad > 0) {
      throw std::runtime_error(std::string(what) + " is not valid base64: " +
                               (v < 0 ? "unexpected character " + shown_char(c)
                                      : std::string("data after the '=' padding")) +
                               " at offset " + std::to_string(i));
    }
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[used++] = static_cast<char>((acc >> bits) & 0xffu);
    }
  }
  if (count % 4 != 0) {
    throw std::runtime_error(std::string(what) + " is not valid base64: its length (" +
                             std::to_string(count) + " characters) is not a multiple of 4");
  }
  if (pad > 2 || (acc & ((1u << bits) - 1u)) != 0) {
    throw std::runtime_error(std::string(what) + " is not valid base64: bad padding at the end");
  }
  out.resize(used);
  return out;
}

std::string sha256_hex(std::string_view bytes) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(bytes.data(), bytes.size(), md, &len, EVP_sha256(), nullptr) != 1) {
    throw std::runtime_error("SHA-256 failed (OpenSSL EVP_Digest)");
  }
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < len; ++i) {
    out.push_back(hex[md[i] >> 4]);
    out.push_back(hex[md[i] & 15]);
  }
  return out;
}

bool ed25519_verify_any(std::string_view bytes, std::string_view signature,
                        const std::vector<std::string>& public_keys) {
  for (const auto& key : public_keys) {
    std::unique_ptr<EVP_PKEY, PkeyFree> pkey(EVP_PKEY_new_raw_public_key(
        EVP_PKEY_ED25519, nullptr, reinterpret_cast<const unsigned char*>(key.data()), key.size()));
    std::unique_ptr<EVP_MD_CTX, MdCtxFree> ctx(EVP_MD_CTX_new());
    if (!pkey || !ctx) continue;
    if (EVP_DigestVerifyInit(ctx.get(), nullptr, nullptr, nullptr, pkey.get()) != 1) continue;
    if (EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(signature.data()),
                         signature.size(), reinterpret_cast<const unsigned char*>(bytes.data()),
                         bytes.size()) == 1) {
      return true;
    }
  }
  return false;
}

fs::path stage_module(const fs::path& data_dir, const std::string& name, const std::string& version,
                      const std::string& sha256, std::string_view bytes) {
  fs::path root = data_dir / "plugins";
  ensure_folder(root);
  ensure_folder(root / name);
  for (const std::string& folder : {version, version + "-" + sha256.substr(0, 8)}) {
    fs::path dir = root / name / folder;
    ensure_folder(dir);
    fs::path target = dir / (name + ".so");
    std::string there = existing_hash(target);
    if (there == sha256) return target;
    if (there.empty()) {
      write_new(target, bytes);
      return target;
    }
    // A different file under this version: it may be mapped, so leave it.
  }
  throw std::runtime_error("cannot stage " + name + " " + version + ": both " +
                           (root / name / version).string() + " and its -" + sha256.substr(0, 8) +
                           " sibling hold other files");
}

}  // namespace bosun::node
