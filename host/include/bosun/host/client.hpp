// A client of a node's unix socket (the CLI's side of the local API).
#pragma once

#include <nlohmann/json.hpp>

#include <filesystem>
#include <functional>

namespace bosun::host {

class NodeClient {
 public:
  // Connects; throws std::runtime_error saying whether the node is not running.
  explicit NodeClient(const std::filesystem::path& socket);
  ~NodeClient();
  NodeClient(const NodeClient&) = delete;
  NodeClient& operator=(const NodeClient&) = delete;

  // Sends one JSON value and hands each line of the answer to `on_line`
  // until it returns false or the node closes the connection.
  void request(const nlohmann::json& req,
               const std::function<bool(const nlohmann::json&)>& on_line);

 private:
  int fd_ = -1;
  std::filesystem::path path_;
};

}  // namespace bosun::host
