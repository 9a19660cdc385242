#include "bosun/host/client.hpp"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace bosun::host {

NodeClient::NodeClient(const std::filesystem::path& socket) : path_(socket) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket.string().size() >= sizeof addr.sun_path) {
    throw std::runtime_error("socket path too long: " + socket.string());
  }
  std::strncpy(addr.sun_path, socket.c_str(), sizeof addr.sun_path - 1);
  fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd_ < 0) throw std::runtime_error(std::string("socket: ") + std::strerror(errno));
  if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    int err = errno;
    ::close(fd_);
    fd_ = -1;
    throw std::runtime_error(
        "cannot reach the node at " + socket.string() + ": " + std::strerror(err) +
        (err == ENOENT || err == ECONNREFUSED ? " (is `bosun run` running?)" : ""));
  }
}

NodeClient::~NodeClient() {
  if (fd_ >= 0) ::close(fd_);
}

void NodeClient::request(const nlohmann::json& req,
                         const std::function<bool(const nlohmann::json&)>& on_line) {
  std::string out = req.dump();
  size_t off = 0;
  while (off < out.size()) {
    ssize_t n = ::write(fd_, out.data() + off, out.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw std::runtime_error(std::string("write to node: ") + std::strerror(errno));
    }
    off += static_cast<size_t>(n);
  }
  // No half-close: the node reads one JSON value, and a hang-up ends a watch.
  std::string buf;
  char chunk[65536];
  while (true) {
    ssize_t n = ::read(fd_, chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    buf.append(chunk, static_cast<size_t>(n));
    size_t pos;
    while ((pos = buf.find('\n')) != std::string::npos) {
      std::string line = buf.substr(0, pos);
      buf.erase(0, pos + 1);
      if (line.empty()) continue;
      auto j = nlohmann::json::parse(line, nullptr, false);
      if (j.is_discarded()) throw std::runtime_error("node sent a line that is not JSON: " + line);
      if (!on_line(j)) return;
    }
  }
}

}  // namespace bosun::host
