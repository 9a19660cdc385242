// crypt: RSA public keys and the cluster secret between nodes (DESIGN §7, §9).
//
// The host keeps every private key and the secret itself (plugin.h, ABI
// 1.3): this module only moves ciphertext and public keys.
//
//   push_public_key [node...]      central, by an operator: hand the accepted
//                                  keys (Ed25519 and RSA) to the nodes
//   update_public_key              a node, from central: take that key set
//                                  (never replacing what an operator decided)
//   delete_public_key node         forget a peer's key (operator or central)
//   request_public_keys            central, from an accepted node: send it
//                                  the key set
//   push_cluster_secret [rotate] [node...]
//                                  central, by an operator: make the secret
//                                  if there is none (or a new one with
//                                  "rotate") and send it to every accepted
//                                  node (or those named), RSA-OAEP encrypted
//   request_cluster_secret         central, from an accepted node: send it
//                                  the secret the same way
//   receive_cluster_secret         a node, from central: install the secret
#include <bosun/plugin.hpp>

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace {

using bosun::Error;
using nlohmann::json;

constexpr char kVersion[] = "1.0.0";

class Crypt : public bosun::Plugin {
 public:
  Crypt(bosun::Host host, std::string_view settings) : Plugin(host, settings) {
    json info = json::parse(host.node_info(), nullptr, false);
    if (info.is_object()) central_ = info.value("central", "");
    try {
      host.peer_keys();
    } catch (const Error& e) {
      throw bosun::NotApplicable(std::string("no keys on this node: ") + e.what());
    }
  }

  void push_public_key(bosun::Call& c) {
    on_central_only(c);
    json set = json::parse(c.key_control(R"({"op":"accepted_set"})"));
    std::vector<std::string> to = targets(c, set, {});
    for (const auto& node : to) {
      send(node, "update_public_key", set.dump());
    }
    c.reply(json{{"sentTo", to}}.dump());
  }

  void update_public_key(bosun::Call& c) {
    json set = json::parse(c.data(), nullptr, false);
    if (!set.is_object()) throw Error("update_public_key: data must be a JSON object of keys");
    c.reply(c.key_control(json{{"op", "apply"}, {"keys", set}}.dump()));
  }

  void delete_public_key(bosun::Call& c) {
    std::string node(c.arg(0));
    c.reply(c.key_control(json{{"op", "delete"}, {"node", node}}.dump()));
  }

  void request_public_keys(bosun::Call& c) {
    on_central_only(c);
    json set = json::parse(c.key_control(R"({"op":"accepted_set"})"));
    std::string node(c.from_node());
    if (!set.contains(node)) throw Error(node + " is not an accepted node of " + central_);
    send(node, "update_public_key", set.dump());
  }

  void push_cluster_secret(bosun::Call& c) {
    on_central_only(c);
    json keys = json::parse(host().peer_keys());
    bool rotate = false;
    std::vector<std::string> named;
    for (auto a : c.args()) {
      if (a == "rotate") {
        rotate = true;
      } else {
        named.emplace_back(a);
      }
    }
    if (rotate || !keys["clusterSecret"].value("set", false)) {
      host().cluster_secret_set();
      keys = json::parse(host().peer_keys());
      host().info(std::string(rotate ? "rotated" : "made") + " the cluster secret; now " +
                  keys["clusterSecret"].value("keyId", ""));
    }
    json set = json::parse(c.key_control(R"({"op":"accepted_set"})"));
    json sent = json::array();
    json skipped = json::array();
    for (const auto& node : targets(c, set, named)) {
      try {
        send(node, "receive_cluster_secret", host().cluster_secret_seal_for(node));
        sent.push_back(node);
      } catch (const Error& e) {
        skipped.push_back({{"node", node}, {"why", e.what()}});
      }
    }
    c.reply(json{
        {"keyId", keys["clusterSecret"].value("keyId", "")}, {"sentTo", sent}, {"skipped", skipped}}
                .dump());
  }

  void request_cluster_secret(bosun::Call& c) {
    on_central_only(c);
    std::string node(c.from_node());
    // The host refuses a node whose key is not accepted here.
    std::string sealed = host().cluster_secret_seal_for(node);
    send(node, "receive_cluster_secret", sealed);
    host().info("cluster secret sent to " + node + " at its request");
  }

  void receive_cluster_secret(bosun::Call& c) {
    std::string id = c.cluster_secret_receive(c.data());
    c.reply("cluster secret " + id + " installed on " + std::string(node_name()));
  }

 private:
  void on_central_only(const bosun::Call& c) const {
    if (node_name() != central_) {
      throw Error(std::string(c.method()) + " runs on the central node " + central_ + ", not on " +
                      std::string(node_name()),
                  BOSUN_ERR_INVALID_ARGUMENT);
    }
  }

  // The accepted nodes (but this one) of `set`, or those `named` of them.
  std::vector<std::string> targets(const bosun::Call&, const json& set,
                                   const std::vector<std::string>& named) const {
    std::vector<std::string> out;
    if (!named.empty()) {
      for (const auto& n : named) {
        if (!set.contains(n)) throw Error(n + " is not an accepted node of " + central_);
        if (n != node_name()) out.push_back(n);
      }
      return out;
    }
    for (const auto& item : set.items()) {
      if (item.key() != node_name()) out.push_back(item.key());
    }
    return out;
  }

  void send(const std::string& to, const std::string& method, const std::string& data) const {
    host().send(
        json{{"toNode", to}, {"method", method}, {"data", data}, {"replyMethod", "none"}}.dump());
  }

  std::string central_;
};

}  // namespace

BOSUN_PLUGIN(
    Crypt, "crypt", kVersion,
    "RSA public keys and the cluster secret between nodes (encrypted payloads)",
    BOSUN_METHOD(Crypt, push_public_key,
                 "central: hand the accepted keys to every accepted node (or those named)"),
    BOSUN_METHOD(Crypt, update_public_key,
                 "take a key set from central; operator-decided keys stay"),
    BOSUN_METHOD(Crypt, delete_public_key, "forget the key of the node in methodArgs[0]"),
    BOSUN_METHOD_EX(Crypt, request_public_keys, "request_public_keys", BOSUN_METHOD_DEFERRED,
                    "central: send the key set to the asking node"),
    BOSUN_METHOD(Crypt, push_cluster_secret,
                 "central: make the cluster secret (args: rotate, nodes) and send it "
                 "RSA-encrypted to every accepted node"),
    BOSUN_METHOD_EX(Crypt, request_cluster_secret, "request_cluster_secret", BOSUN_METHOD_DEFERRED,
                    "central: send the cluster secret to the asking (accepted) node"),
    BOSUN_METHOD(Crypt, receive_cluster_secret,
                 "install the cluster secret central sent, encrypted to this node"))
