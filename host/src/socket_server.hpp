// The node's unix socket, <dataDir>/bosun.sock: the local message API.
//
// A client writes one JSON value:
//   - an array of messages (or one message object), Steward's way, e.g.
//     `nc -U bosun.sock < msgs.json`: the node answers one line
//     {"type":"result","accepted":[...],"errors":[...]} and closes;
//   - a request object {"op": ...}: "send" (with "messages", optional
//     "wait" and "timeout" seconds: reply lines follow as they arrive, then
//     {"type":"done"}), "plugins", "calls", "watch" (event lines until the
//     client hangs up), "status", "reload" (re-read the config file: one line
//     {"type":"reload","result":{...}}, see Node::reload).
#pragma once

#include <boost/asio.hpp>
#include <filesystem>
#include <memory>

namespace bosun::host {

class Node;

class SocketServer {
 public:
  SocketServer(Node& node, boost::asio::io_context& io, const std::filesystem::path& path);
  ~SocketServer();
  void close();

 private:
  void accept();
  Node& node_;
  std::filesystem::path path_;
  boost::asio::local::stream_protocol::acceptor acceptor_;
};

}  // namespace bosun::host
