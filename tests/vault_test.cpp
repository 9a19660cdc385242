// Issue 7, the vault module against real nodes on a real nats-server and a
// Vault stand-in over TLS (support/vault_stub): a token handed from a node
// that has one to a node that asks, encrypted to the key the holder accepted
// for it; renewal before expiry; a revoked token leading to a new request;
// refusals for nodes that are not accepted; a key named in the request
// ignored; Vault unreachable; the token in no log and no reply.
#include <gtest/gtest.h>

#include <mutex>
#include <nlohmann/json.hpp>
#include <regex>
#include <string>
#include <vector>

#include "../host/src/crypt.hpp"
#include "../host/src/security.hpp"
#include "bosun/host/client.hpp"
#include "bosun/host/message.hpp"
#include "bosun/host/transport.hpp"
#include "cluster_harness.hpp"
#include "node_harness.hpp"
#include "test_util.hpp"
#include "vault_stub.hpp"

namespace {

using namespace std::chrono_literals;
using bosun::test::ClusterHarness;
using bosun::test::ClusterNode;
using bosun::test::final_replies;
using bosun::test::message;
using bosun::test::TempDir;
using bosun::test::VaultStub;
using bosun::test::wait_until;
using nlohmann::json;
namespace fs = std::filesystem;
namespace host = bosun::host;

class VaultTest : public ::testing::Test {
 protected:
  // A node with the vault module, enabled against the stub.
  ClusterNode& add(const std::string& name, const std::string& token = {}) {
    ClusterNode& n = h_.add_node(name);
    n.add_module(bosun::test::plugin_module("vault"));
    json s = {{"enabled", true}, {"address", stub_.address()}, {"caFile", stub_.ca_file().string()},
              {"renewAt", 0.5},  {"retryMinMs", 200},          {"retryMaxMs", 1000}};
    if (!token.empty()) {
      fs::path f = h_.root() / (name + ".token");
      bosun::test::write_file(f, token + "\n");
      s["tokenFile"] = f.string();
    }
    n.config()["extensions"]["vault"] = {{"settings", s}};
    return n;
  }

  // Every answer line a test sees, for the no-token-in-any-reply check.
  json one_reply(ClusterNode& from, const json& m, double wait_s = 20) {
    auto lines = from.send(json::array({m}), true, wait_s);
    for (const auto& l : lines) seen_ += l.dump() + "\n";
    auto finals = final_replies(lines);
    return finals.size() == 1 ? finals[0] : json{{"replies", finals.size()}};
  }

  json status(ClusterNode& n) {
    json r = one_reply(n, message(n.name(), "vault_status"));
    return json::parse(r.value("data", "{}"), nullptr, false);
  }

  bool verified(ClusterNode& n) {
    json s = status(n);
    return s.is_object() && s.value("verified", false);
  }

  // The token that `n` holds, through the local-only call other modules
  // use: sealed to n's own RSA key, opened here with n's key file as
  // decrypt_for_self does. The reply goes to seen_ too: it carries no token.
  std::string token_of(ClusterNode& n) {
    json r = one_reply(n, message(n.name(), "vault_token"));
    if (r.value("status", "") != "ok") return "";
    std::string raw;
    if (!host::base64_decode(r.value("data", ""), raw)) return "not base64";
    auto key = host::RsaKey::load(n.data_dir() / "keys" / "node.rsa.pem");
    return key->decrypt(raw);
  }

  void expect_absent(const std::string& token, std::vector<ClusterNode*> nodes) {
    for (ClusterNode* n : nodes) {
      std::string log = n->log();
      EXPECT_EQ(log.find(token), std::string::npos) << n->name() << "'s log has the token";
      EXPECT_EQ(log.find(token.substr(4, 16)), std::string::npos) << n->name();
    }
    EXPECT_EQ(seen_.find(token), std::string::npos) << "a reply carries the token";
    EXPECT_EQ(seen_.find(token.substr(4, 16)), std::string::npos);
  }

  TempDir certs_;
  VaultStub stub_{certs_.path()};
  ClusterHarness h_;
  std::string seen_;
};

TEST_F(VaultTest, HandOffRenewalAndANewRequestAfterRevocation) {
  const std::string t1 = stub_.add_token(3);
  ClusterNode& central = add("central", t1);
  ClusterNode& ship1 = add("ship1");
  central.start();
  ship1.start();

  // central checks its token; ship1 asks, and gets it once central holds
  // its RSA key (announced after the node made it).
  ASSERT_TRUE(wait_until([&] { return verified(central); }, 30s)) << status(central).dump();
  ASSERT_TRUE(wait_until([&] { return verified(ship1); }, 90s)) << status(ship1).dump();
  EXPECT_EQ(token_of(ship1), t1);
  EXPECT_GE(stub_.stats(t1).lookups, 2);  // central's, then ship1's with the token it got
  EXPECT_GE(status(central).value("tokensSent", 0), 1);
  EXPECT_GE(status(ship1).value("received", 0), 1);

  // Renewal: a 3 s TTL renewed at half of it by both nodes, never after expiry.
  ASSERT_TRUE(wait_until([&] { return stub_.stats(t1).renewals >= 6; }, 20s))
      << stub_.stats(t1).renewals;
  // ship1 may have got the token late on a loaded machine: central's
  // renewals alone can make those six; ship1 renews within its TTL too.
  EXPECT_TRUE(wait_until([&] { return status(ship1).value("renewals", 0) >= 1; }, 15s))
      << status(ship1).dump();
  EXPECT_EQ(stub_.stats(t1).late_renewals, 0);
  EXPECT_EQ(stub_.stats(t1).refused, 0);

  // Revoked: both drop it and ask again; nobody has one to give.
  json before = status(ship1);
  stub_.revoke(t1);
  ASSERT_TRUE(wait_until([&] { return !status(ship1).value("hasToken", true); }, 15s));
  ASSERT_TRUE(wait_until(
      [&] { return status(ship1).value("requestsSent", 0) > before.value("requestsSent", 0) + 1; },
      15s));
  EXPECT_NE(ship1.log().find("the Vault token is no longer valid (renew-self: Vault answered 403)"),
            std::string::npos);
  EXPECT_EQ(token_of(ship1), "");

  // central gets a new token (at restart, from its tokenFile); ship1's next
  // request is answered with it.
  const std::string t2 = stub_.add_token(60);
  central.stop();
  bosun::test::write_file(h_.root() / "central.token", t2 + "\n");
  central.start();
  ASSERT_TRUE(wait_until([&] { return verified(ship1); }, 30s)) << status(ship1).dump();
  EXPECT_EQ(token_of(ship1), t2);

  // Only calls from the node itself get the token.
  json r = one_reply(central, message("ship1", "vault_token"));
  EXPECT_EQ(r.value("status", ""), "error") << r.dump();
  EXPECT_NE(r.value("error", "").find("served only to calls from ship1, not from central"),
            std::string::npos)
      << r.dump();
  json r2 = one_reply(ship1, message("ship1", "request_token"));
  EXPECT_EQ(r2.value("status", ""), "ok") << r2.dump();

  // At rest the KV holds ciphertext: the token is in no file of either node
  // (the store, the audit log which keeps every message, the KV).
  central.stop();
  ship1.stop();
  for (ClusterNode* n : {&central, &ship1}) {
    for (const auto& e : fs::recursive_directory_iterator(n->data_dir())) {
      if (!e.is_regular_file() || e.path().extension() == ".sock") continue;
      std::string bytes = bosun::test::read_file(e.path());
      EXPECT_EQ(bytes.find(t2), std::string::npos) << e.path();
    }
  }
  expect_absent(t1, {&central, &ship1});
  expect_absent(t2, {&central, &ship1});
}

TEST_F(VaultTest, OnlyAcceptedNodesGetATokenAndOnlyUnderTheirAcceptedKey) {
  const std::string token = stub_.add_token(600);
  ClusterNode& central = add("central", token);
  ClusterNode& ship1 = add("ship1");
  ClusterNode& ship2 = add("ship2");
  for (ClusterNode* n : {&central, &ship1, &ship2}) {
    n->config().erase("security");  // secure defaults: no autoAccept, only central allowed
    n->add_module(bosun::test::fixture_module("fx_keys"));
  }
  central.config()["security"] = {
      {"allow", {{"central", {"*"}}, {"*", {"request_vault_token", "ping"}}}}};
  central.start();
  ship1.start();
  ship2.start();
  ASSERT_TRUE(wait_until([&] { return central.key_state("ship1") == "pending/seen"; }, 10s));
  ASSERT_FALSE(central.keys("accept", "ship1").contains("error"));
  ASSERT_TRUE(wait_until([&] { return central.key_state("ship2") == "pending/seen"; }, 10s));

  ASSERT_TRUE(wait_until([&] { return verified(ship1); }, 90s)) << status(ship1).dump();
  EXPECT_EQ(token_of(ship1), token);

  // ship2 is pending: its requests are refused by central, and nothing
  // reaches it.
  ASSERT_TRUE(wait_until([&] { return status(ship2).value("requestsSent", 0) >= 2; }, 15s));
  json asked = one_reply(ship2, message("central", "request_vault_token"), 10);
  EXPECT_EQ(asked.value("status", ""), "error") << asked.dump();
  EXPECT_FALSE(status(ship2).value("hasToken", true));
  EXPECT_NE(central.log().find("the key of ship2 is pending"), std::string::npos);

  // Pushed to it by the operator: the module refuses (encrypt_to_node does),
  // logs it and counts it; the reply names why, without the token.
  json pushed = one_reply(central, message("central", "push_vault_token", {"ship2", "nobody"}));
  ASSERT_EQ(pushed.value("status", ""), "ok") << pushed.dump();
  json p = json::parse(pushed.value("data", "{}"));
  EXPECT_EQ(p["sentTo"], json::array());
  ASSERT_EQ(p["refused"].size(), 2u) << p.dump();
  EXPECT_NE(p["refused"][0].value("why", "").find("the key of ship2 is pending on central"),
            std::string::npos)
      << p.dump();
  EXPECT_GE(status(central).value("refused", 0), 2);
  EXPECT_NE(central.log().find("refused a Vault token to ship2"), std::string::npos);
  EXPECT_FALSE(status(ship2).value("hasToken", true));

  // A request naming ship2's RSA key: ignored; what central sends goes to
  // ship1 under the key central accepted for ship1, and only ship1 opens it.
  // Before the bus: its callbacks may run until it is gone.
  std::mutex mu;
  std::vector<std::string> sealed;
  auto bus = h_.connect_bus("listener");
  bus->subscribe("bosun.req.ship1.receive_vault_token", [&](host::Incoming&& in) {
    host::Envelope env;
    std::string why;
    if (!host::parse_envelope(in.data, env, &why)) return;
    json m = json::parse(env.body, nullptr, false);
    if (!m.is_object()) return;
    std::lock_guard<std::mutex> lock(mu);
    sealed.push_back(m.value("data", ""));
  });
  // ship2 announces its RSA key once made (in the background, after its
  // signing key): central records it with the pending key.
  ASSERT_TRUE(wait_until([&] { return !central.peer_key("ship2").value("rsa", "").empty(); }, 60s));
  const std::string ship2_rsa = central.peer_key("ship2").value("rsa", "");
  json forged = one_reply(
      ship1, message("central", "request_vault_token", {}, json{{"publicKey", ship2_rsa}}.dump()));
  ASSERT_EQ(forged.value("status", ""), "ok") << forged.dump();
  ASSERT_TRUE(wait_until(
      [&] {
        std::lock_guard<std::mutex> lock(mu);
        return !sealed.empty();
      },
      10s));
  std::string box;
  {
    std::lock_guard<std::mutex> lock(mu);
    box = sealed.back();
  }
  EXPECT_EQ(box.find(token), std::string::npos);
  json by2 = one_reply(ship2, message("ship2", "decrypt", {box}));
  EXPECT_EQ(by2.value("status", ""), "error") << by2.dump();
  EXPECT_NE(by2.value("error", "").find("does not decrypt with this node's RSA key"),
            std::string::npos)
      << by2.dump();
  auto by1 = final_replies(ship1.send(json::array({message("ship1", "decrypt", {box})})));
  ASSERT_EQ(by1.size(), 1u);
  EXPECT_EQ(by1[0].value("data", ""), token);

  central.stop();
  ship1.stop();
  ship2.stop();
  expect_absent(token, {&central, &ship1, &ship2});
}

TEST_F(VaultTest, VaultUnreachableIsRetriedWithBackoffAndTheNodeServes) {
  const std::string token = stub_.add_token(600);
  ClusterNode& central = add("central", token);
  const int port = bosun::test::free_port();  // nobody listens there
  json& s = central.config()["extensions"]["vault"]["settings"];
  s["address"] = "https://127.0.0.1:" + std::to_string(port);
  s["retryMinMs"] = 100;
  s["retryMaxMs"] = 800;
  central.start();

  const std::string what =
      "Vault at https://127.0.0.1:" + std::to_string(port) + " unreachable for lookup-self";
  std::regex retry(what + R"([^\n]*; retrying in (\d+) ms)");
  std::vector<int> delays;
  ASSERT_TRUE(wait_until(
      [&] {
        std::string log = central.log();
        delays.clear();
        for (std::sregex_iterator it(log.begin(), log.end(), retry), end; it != end; ++it) {
          delays.push_back(std::stoi((*it)[1]));
        }
        return delays.size() >= 6;
      },
      30s))
      << central.log();
  EXPECT_EQ(std::vector<int>(delays.begin(), delays.begin() + 6),
            (std::vector<int>{100, 200, 400, 800, 800, 800}));
  EXPECT_NE(central.log().find(what + ": cannot connect to 127.0.0.1:" + std::to_string(port)),
            std::string::npos);

  // Still serving.
  json pong = one_reply(central, message("central", "ping"));
  EXPECT_EQ(pong.value("data", ""), "pong") << pong.dump();
  json st = status(central);
  EXPECT_FALSE(st.value("verified", true));
  EXPECT_GE(st.value("vaultErrors", 0), 6);
  EXPECT_NE(st.value("lastError", "").find("unreachable"), std::string::npos);

  central.stop();
  expect_absent(token, {&central});
}

TEST_F(VaultTest, AServerTheCaFileDoesNotVouchForIsRefused) {
  TempDir other_dir;
  VaultStub other(other_dir.path());  // its own CA
  const std::string token = other.add_token(600);
  ClusterNode& central = add("central", token);
  central.config()["extensions"]["vault"]["settings"]["address"] = other.address();
  central.start();
  ASSERT_TRUE(wait_until(
      [&] { return central.log().find("TLS handshake with 127.0.0.1") != std::string::npos; }, 20s))
      << central.log();
  EXPECT_EQ(other.stats(token).lookups, 0);
  EXPECT_FALSE(status(central).value("verified", true));
}

TEST_F(VaultTest, DisabledByDefault) {
  ClusterNode& n = h_.add_node("central");
  n.add_module(bosun::test::plugin_module("vault"));
  n.start();
  EXPECT_NE(n.log().find("module vault inactive: declined to activate on this host: vault is "
                         "disabled (settings.enabled is false)"),
            std::string::npos)
      << n.log();
  EXPECT_EQ(one_reply(n, message("central", "ping")).value("data", ""), "pong");
}

TEST_F(VaultTest, BadSettingsAreRefusedNamingTheSetting) {
  ClusterNode& central = add("central");
  ClusterNode& ship1 = add("ship1");
  ClusterNode& ship2 = add("ship2");
  central.config()["extensions"]["vault"]["settings"]["address"] = "http://127.0.0.1:8200";
  ship1.config()["extensions"]["vault"]["settings"]["renewAt"] = 1.5;
  ship2.config()["extensions"]["vault"]["settings"]["adress"] = "https://127.0.0.1:8200";
  central.start();
  ship1.start();
  ship2.start();
  EXPECT_NE(central.log().find(
                "vault settings.address \"http://127.0.0.1:8200\" must start with https://"),
            std::string::npos)
      << central.log();
  EXPECT_NE(ship1.log().find("vault settings.renewAt: must be a number between 0 and 1"),
            std::string::npos)
      << ship1.log();
  EXPECT_NE(ship2.log().find("module vault failed: init failed (BOSUN_ERR_INIT_FAILED): vault "
                             "settings: unknown key \"adress\""),
            std::string::npos)
      << ship2.log();
  // The nodes serve without it.
  EXPECT_EQ(one_reply(central, message("ship2", "ping")).value("data", ""), "pong");
}

TEST_F(VaultTest, ATokenThatCannotBeRenewedBeforeItsTtlRunsOutIsDroppedAndAskedFor) {
  const std::string token = stub_.add_token(3);
  ClusterNode& central = add("central", token);
  central.start();
  ASSERT_TRUE(wait_until([&] { return verified(central); }, 30s)) << status(central).dump();
  json before = status(central);
  stub_.set_sealed(true);
  ASSERT_TRUE(wait_until(
      [&] {
        return central.log().find(
                   "the Vault token is no longer valid (renewal failed until its "
                   "TTL ran out)") != std::string::npos;
      },
      20s))
      << central.log();
  EXPECT_NE(central.log().find(" answered 503 to renew-self; retrying in 200 ms"),
            std::string::npos);
  ASSERT_TRUE(wait_until(
      [&] { return status(central).value("requestsSent", 0) > before.value("requestsSent", 0); },
      10s));
  EXPECT_FALSE(status(central).value("hasToken", true));
  EXPECT_EQ(one_reply(central, message("central", "ping")).value("data", ""), "pong");
  central.stop();
  expect_absent(token, {&central});
}

}  // namespace
