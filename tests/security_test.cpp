// Issue 6 against real nodes on a real nats-server: enrolment (pending until
// an operator accepts, central pinned on first contact, keys handed out by
// central) and a hostile peer on the bus. In every hostile case nothing
// runs, the reason is logged and counted, and the node keeps serving.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <openssl/hmac.h>

#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>

#include "../host/src/crypt.hpp"
#include "../host/src/security.hpp"
#include "bosun/host/client.hpp"
#include "bosun/host/message.hpp"
#include "bosun/host/transport.hpp"
#include "cluster_harness.hpp"
#include "node_harness.hpp"
#include "test_util.hpp"

namespace {

using namespace std::chrono_literals;
using bosun::test::ClusterHarness;
using bosun::test::ClusterNode;
using bosun::test::envelope_body;
using bosun::test::final_replies;
using bosun::test::message;
using bosun::test::paired_by;
using bosun::test::sealed_by;
using bosun::test::TempDir;
using bosun::test::wait_until;
using nlohmann::json;
namespace fs = std::filesystem;
namespace host = bosun::host;

class SecurityTest : public ::testing::Test {
 protected:
  // Secure defaults, as an operator gets them: no autoAccept, only central
  // may invoke methods.
  ClusterNode& add(const std::string& name) {
    ClusterNode& n = h_.add_node(name);
    n.config().erase("security");
    n.add_module(bosun::test::plugin_module("cli"));
    return n;
  }

  // central and ship1 started, ship1 accepted on central.
  void enrol(ClusterNode& central, ClusterNode& ship) {
    ASSERT_TRUE(wait_until([&] { return central.key_state(ship.name()) == "pending/seen"; }, 10s))
        << central.key_state(ship.name());
    json r = central.keys("accept", ship.name());
    ASSERT_FALSE(r.contains("error")) << r.dump();
  }

  // central, then the ships started; each ship accepted on central.
  void start_and_enrol(ClusterNode& central, std::initializer_list<ClusterNode*> ships) {
    central.start();
    for (ClusterNode* ship : ships) ship->start();
    for (ClusterNode* ship : ships) ASSERT_NO_FATAL_FAILURE(enrol(central, *ship));
  }

  ClusterHarness h_;
};

TEST_F(SecurityTest, AKeyIsPendingUntilAcceptedAndCentralIsPinnedOnFirstContact) {
  ClusterNode& central = add("central");
  ClusterNode& ship1 = add("ship1");
  ClusterNode& ship2 = add("ship2");
  central.start();
  ship1.start();
  ship2.start();

  // Announced at start, pending on central; nothing of ship1's is believed.
  ASSERT_TRUE(wait_until([&] { return central.key_state("ship1") == "pending/seen"; }, 10s));
  // Central does not believe ship1's ACKs: the ping is not delivered as far
  // as central knows.
  auto lines = central.send(json::array({message("ship1", "ping")}), true, 10);
  auto failed = final_replies(lines);
  ASSERT_EQ(failed.size(), 1u) << json(lines).dump();
  EXPECT_EQ(failed[0].value("status", ""), "error");
  EXPECT_EQ(failed[0].value("error", "").find("not delivered"), 0u) << failed[0].dump();
  EXPECT_EQ(ship1.key_state("central"), "accepted/first contact");
  EXPECT_GE(central.refused("pending_key"), 1u);
  EXPECT_NE(central.log().find("the key of ship1 is pending"), std::string::npos);

  // The operator accepts both on central; central hands each the keys.
  ASSERT_FALSE(central.keys("accept", "ship1").contains("error"));
  ASSERT_TRUE(wait_until([&] { return central.key_state("ship2") == "pending/seen"; }, 10s));
  ASSERT_FALSE(central.keys("accept", "ship2").contains("error"));
  auto finals = final_replies(central.send(json::array({message("ship1", "ping")})));
  ASSERT_EQ(finals.size(), 1u);
  EXPECT_EQ(finals[0]["data"], "pong");
  EXPECT_TRUE(wait_until([&] { return ship1.key_state("ship2") == "accepted/central"; }, 10s))
      << ship1.key_state("ship2");
  EXPECT_TRUE(wait_until([&] { return ship2.key_state("ship1") == "accepted/central"; }, 10s));

  // Rejected on central: gone from the ships too.
  ASSERT_FALSE(central.keys("reject", "ship2").contains("error"));
  EXPECT_TRUE(wait_until([&] { return ship1.key_state("ship2") == "rejected/central"; }, 10s))
      << ship1.key_state("ship2");
  json bad = central.keys("accept", "nobody");
  EXPECT_EQ(bad.value("error", "").find("no key of nobody is known"), 0u) << bad.dump();
}

TEST_F(SecurityTest, KeyFilesArePrivateAndNeverLogged) {
  ClusterNode& central = add("central");
  central.start();
  fs::path dir = central.data_dir() / "keys";
  fs::path file = dir / "node.ed25519.pem";
  struct stat st {};
  ASSERT_EQ(::stat(file.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_EQ(::stat(dir.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  std::string pem = bosun::test::read_file(file);
  std::string secret = pem.substr(pem.find('\n') + 1, 40);  // the first key characters
  ASSERT_EQ(secret.size(), 40u);
  central.stop();
  central.start();  // the same key again, not a new one
  EXPECT_EQ(bosun::test::read_file(file), pem);
  EXPECT_EQ(central.log().find(secret), std::string::npos);
}

TEST_F(SecurityTest, AHostilePeerOnTheBusRunsNothingAndTheNodeKeepsServing) {
  ClusterNode& central = add("central");
  ClusterNode& ship1 = add("ship1");
  ClusterNode& ship2 = add("ship2");
  ship1.config()["host"]["maxMessageBytes"] = 8192;
  ASSERT_NO_FATAL_FAILURE(start_and_enrol(central, {&ship1, &ship2}));
  auto first = final_replies(central.send(json::array({message("ship1", "ping")})));
  ASSERT_EQ(first.size(), 1u);  // ship1 pinned central
  ASSERT_TRUE(wait_until([&] { return ship1.key_state("ship2") == "accepted/central"; }, 10s));

  // Every case asks ship1 to create this file; none may.
  fs::path marker = h_.root() / "ran";
  const std::string subject = "bosun.req.ship1.cli_command";
  auto request = [&](const std::string& from) {
    host::Message m;
    m.id = host::new_message_id();
    m.from_node = from;
    m.to_node = "ship1";
    m.method = "cli_command";
    m.method_args = {"touch", marker.string()};
    m.sent_at_ms = host::now_ms();
    return host::to_json(m).dump();
  };
  TempDir intruder_dir;
  auto intruder = host::Identity::load_or_create(intruder_dir.path());
  TempDir other_dir;
  auto other = host::Identity::load_or_create(other_dir.path());
  std::string good = sealed_by(central, subject, request("central"));
  std::string flipped = good;
  flipped[flipped.size() - 5] ^= 1;

  struct Case {
    std::string what, wire, reason, text;
  };
  std::vector<Case> cases = {
      {"garbage", "\x01\x02 garbage {", "bad_envelope", "not a signed envelope"},
      {"truncated", good.substr(0, good.size() / 2), "bad_signature", "does not verify"},
      {"a header without its end", "BSN1 central 1 " + std::string(600, 'A'), "bad_envelope",
       "header has no end"},
      {"one byte changed", flipped, "bad_signature", "does not verify"},
      {"an unknown key", intruder.seal("mallory", subject, request("mallory"), host::now_ms()),
       "unknown_key", "the key of mallory is new on ship1"},
      {"a pending key", intruder.seal("mallory", subject, request("mallory"), host::now_ms()),
       "pending_key", "the key of mallory is pending"},
      {"central with another key",
       other.seal("central", subject, request("central"), host::now_ms()), "impersonation",
       "signed with another key than the one ship1 accepted for it"},
      {"a stale time stamp",
       sealed_by(central, subject, request("central"), host::now_ms() - 3600 * 1000), "stale",
       "beyond security.allowSkew"},
      {"fromNode another than the signer", sealed_by(ship2, subject, request("central")),
       "impersonation", "\"fromNode\" central is not the signer ship2"},
      {"a method the peer may not invoke", sealed_by(ship2, subject, request("ship2")),
       "not_allowed", "ship2 may not invoke cli_command on ship1 (security.allow)"},
      {"another subject", sealed_by(central, "bosun.req.ship1.ping", request("central")),
       "bad_signature", "does not verify"},
  };

  auto bus = h_.connect_bus("hostile");
  for (const auto& c : cases) {
    uint64_t before = ship1.refused(c.reason);
    auto answer = bus->request(subject, c.wire, 5s);
    ASSERT_TRUE(answer.has_value()) << c.what << ": no answer";
    std::string text = envelope_body(*answer);
    EXPECT_EQ(text.rfind("NAK ", 0), 0u) << c.what << ": " << text;
    EXPECT_NE(text.find(c.text), std::string::npos) << c.what << ": " << text;
    EXPECT_EQ(ship1.refused(c.reason), before + 1) << c.what;
    EXPECT_NE(ship1.log().find(c.text), std::string::npos) << c.what << ": not in the log";
  }
  // The operator rejects mallory: refused as rejected from then on.
  ASSERT_FALSE(ship1.keys("reject", "mallory").contains("error"));
  auto answer = bus->request(
      subject, intruder.seal("mallory", subject, request("mallory"), host::now_ms()), 5s);
  ASSERT_TRUE(answer.has_value());
  EXPECT_NE(envelope_body(*answer).find("the key of mallory was rejected on ship1"),
            std::string::npos);
  EXPECT_EQ(ship1.refused("rejected_key"), 1u);

  // A valid message captured and published again: ACKed twice, run once.
  json captured = json::parse(request("central"));
  captured["methodArgs"] = {"sh", "-c", "echo x >> " + marker.string() + ".once"};
  std::string once = sealed_by(central, subject, captured.dump());
  for (int i = 0; i < 2; ++i) {
    auto a = bus->request(subject, once, 5s);
    ASSERT_TRUE(a.has_value());
    EXPECT_EQ(envelope_body(*a), "ACK");
  }
  EXPECT_TRUE(wait_until([&] { return fs::exists(marker.string() + ".once"); }, 10s));
  std::this_thread::sleep_for(500ms);
  EXPECT_EQ(bosun::test::read_file(marker.string() + ".once"), "x\n");
  EXPECT_FALSE(fs::exists(marker)) << "a hostile message ran";

  // Still serving.
  EXPECT_TRUE(ship1.running());
  auto finals = final_replies(central.send(json::array({message("ship1", "ping")})));
  ASSERT_EQ(finals.size(), 1u);
  EXPECT_EQ(finals[0]["data"], "pong");
}

TEST_F(SecurityTest, AKeyPinnedInTheConfigRefusesEveryOtherKeyForThatName) {
  ClusterNode& central = add("central");
  ClusterNode& ship1 = add("ship1");
  TempDir elsewhere;
  auto impostor = host::Identity::load_or_create(elsewhere.path());
  // ship1 is told central's key is the impostor's: the real central is refused.
  ship1.config()["security"] = {{"keys", {{"central", impostor.public_key_b64()}}}};
  central.config()["security"] = {{"autoAccept", {"ship*"}}};
  central.start();
  ship1.start();
  ASSERT_TRUE(wait_until([&] { return central.key_state("ship1") == "accepted/autoAccept"; }, 10s));
  auto lines = central.send(json::array({message("ship1", "ping")}), true, 10);
  auto finals = final_replies(lines);
  ASSERT_EQ(finals.size(), 1u) << json(lines).dump();
  EXPECT_NE(finals[0]
                .value("error", "")
                .find("refused by ship1: a message claims to come from central but is signed with "
                      "another key than the one ship1 accepted for it (config)"),
            std::string::npos)
      << finals[0].dump();
  EXPECT_GE(ship1.refused("impersonation"), 1u);
  EXPECT_EQ(ship1.key_state("central"), "accepted/config");
}

TEST_F(SecurityTest, SecurityAllowChangesOnReloadWithoutARestart) {
  ClusterNode& central = add("central");
  ClusterNode& ship1 = add("ship1");
  ClusterNode& ship2 = add("ship2");
  ASSERT_NO_FATAL_FAILURE(start_and_enrol(central, {&ship1, &ship2}));
  ASSERT_TRUE(wait_until([&] { return ship1.key_state("ship2") == "accepted/central"; }, 10s));
  // By default only central may invoke methods on ship1.
  auto refused_ping = final_replies(ship2.send(json::array({message("ship1", "ping")})));
  ASSERT_EQ(refused_ping.size(), 1u);
  EXPECT_NE(refused_ping[0].value("error", "").find("ship2 may not invoke ping on ship1"),
            std::string::npos)
      << refused_ping[0].dump();
  pid_t pid = ship1.pid();
  ship1.config()["security"] = {{"allow", {{"central", {"*"}}, {"ship2", {"ping"}}}}};
  ship1.write_config();
  ship1.signal(SIGHUP);
  ASSERT_TRUE(
      wait_until([&] { return ship1.log().find("$.security.allow") != std::string::npos; }, 10s));
  auto finals = final_replies(ship2.send(json::array({message("ship1", "ping")})));
  ASSERT_EQ(finals.size(), 1u);
  EXPECT_EQ(finals[0]["data"], "pong") << finals[0].dump();
  EXPECT_EQ(ship1.pid(), pid) << "the node restarted";
  // ... and ping only.
  auto other = final_replies(ship2.send(json::array({message("ship1", "plugin_list")})));
  ASSERT_EQ(other.size(), 1u);
  EXPECT_EQ(other[0].value("status", ""), "error");
}

// The tag function against RFC 4231's test cases: a short key (1), a key
// shorter than the data (2), a key longer than SHA-256's block, hashed
// first (6), and a message of several blocks (7); and against OpenSSL's
// own one-shot HMAC() for every length up to three blocks.
TEST(PairKeys, HmacSha256MatchesRfc4231AndOpenSsl) {
  auto hex = [](std::string_view s) { return host::hex_encode(s); };
  EXPECT_EQ(hex(host::hmac_sha256(std::string(20, '\x0b'), "Hi There")),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
  EXPECT_EQ(hex(host::hmac_sha256("Jefe", "what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  EXPECT_EQ(hex(host::hmac_sha256(std::string(131, '\xaa'),
                                  "Test Using Larger Than Block-Size Key - Hash Key First")),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
  EXPECT_EQ(
      hex(host::hmac_sha256(std::string(131, '\xaa'),
                            "This is a test using a larger than block-size key and a larger than "
                            "block-size data. The key needs to be hashed before being used by the "
                            "HMAC algorithm.")),
      "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2");
  const std::string key(32, '\x5c');
  std::string data;
  for (int n = 0; n <= 192; ++n) {
    unsigned char md[32];
    unsigned int len = 0;
    ASSERT_NE(HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
                   reinterpret_cast<const unsigned char*>(data.data()), data.size(), md, &len),
              nullptr);
    ASSERT_EQ(host::hmac_sha256(key, data), std::string(reinterpret_cast<char*>(md), len))
        << "data of " << n << " bytes";
    data.push_back(static_cast<char>('a' + n % 26));
  }
}

// Pair keys (security.pairKeys) without a bus: both ends derive the same
// key, nobody else does, and a tag verifies only for its two nodes, its
// subject and its bytes.
TEST(PairKeys, BothEndsDeriveOneKeyThatNoThirdNodeHas) {
  TempDir da, db, dc;
  auto a = host::Identity::load_or_create(da.path());
  auto b = host::Identity::load_or_create(db.path());
  auto c = host::Identity::load_or_create(dc.path());
  const std::string ab = a.pair_key(b.public_key_raw());
  ASSERT_EQ(ab.size(), 32u);
  // Equal only if the Ed25519 -> X25519 maps of both keys are right.
  EXPECT_EQ(b.pair_key(a.public_key_raw()), ab);
  EXPECT_NE(a.pair_key(c.public_key_raw()), ab);
  EXPECT_NE(c.pair_key(b.public_key_raw()), ab);
  EXPECT_NE(c.pair_key(a.public_key_raw()), c.pair_key(b.public_key_raw()));
  // Not keys: a non-canonical y (2^255 - 1), the identity (y = 1), a point
  // of small order (y = 0, u = 1: X25519 gives all zeros), a short string.
  EXPECT_EQ(a.pair_key(std::string(32, '\xff')), "");
  EXPECT_EQ(a.pair_key(std::string("\x01") + std::string(31, '\0')), "");
  EXPECT_EQ(a.pair_key(std::string(32, '\0')), "");
  EXPECT_EQ(a.pair_key("short"), "");
  // The key of a node that is unchanged after a restart (same key file).
  EXPECT_EQ(host::Identity::load_or_create(da.path()).pair_key(b.public_key_raw()), ab);
  // A tag is HMAC-SHA256 under the pair key of exactly the signed bytes
  // (computed piece by piece on the way), in clear and encrypted.
  const host::ClusterKey secret(std::string(host::ClusterKey::kSecretBytes, '\x42'));
  for (const host::ClusterKey* key : {static_cast<const host::ClusterKey*>(nullptr), &secret}) {
    const std::string subj = "bosun.req.b.ping";
    std::string wire = a.seal("a", subj, "{\"x\":1}", 1700000000123, key, b.public_key_raw());
    host::Envelope env;
    std::string why;
    ASSERT_TRUE(host::parse_envelope(wire, env, &why)) << why;
    ASSERT_TRUE(env.pair);
    EXPECT_EQ(env.signature,
              host::hmac_sha256(ab, host::envelope_signed_bytes(env.signer, env.signed_at_ms, subj,
                                                                env.body, env.key_id, true)));
    EXPECT_TRUE(b.verify(env, subj));
  }

  const std::string subject = "bosun.req.b.ping";
  const std::string body = R"({"method":"ping"})";
  std::string wire = a.seal("a", subject, body, host::now_ms(), nullptr, b.public_key_raw());
  ASSERT_EQ(wire.rfind("BSM1 a ", 0), 0u) << wire;
  host::Envelope env;
  std::string why;
  ASSERT_TRUE(host::parse_envelope(wire, env, &why)) << why;
  EXPECT_TRUE(env.pair);
  EXPECT_EQ(env.signature.size(), 32u);
  EXPECT_EQ(env.public_key, a.public_key_raw());
  EXPECT_EQ(env.body, body);
  EXPECT_TRUE(b.verify(env, subject));
  // Its sender checks a tag with the key carried, its own: a tag made for b
  // is not one of its own messages coming back.
  EXPECT_FALSE(a.verify(env, subject));
  EXPECT_EQ(env.for_key, host::key_hint(b.public_key_raw()));
  EXPECT_EQ(env.for_key.size(), 16u);
  host::Envelope own;
  const std::string own_wire =
      a.seal("a", subject, body, host::now_ms(), nullptr, a.public_key_raw());
  ASSERT_TRUE(host::parse_envelope(own_wire, own, &why));  // own.body points into own_wire
  EXPECT_TRUE(own.pair);
  EXPECT_TRUE(a.verify(own, subject));
  EXPECT_FALSE(c.verify(env, subject));          // made for b, not for c
  EXPECT_FALSE(b.verify(env, "bosun.req.b.x"));  // another subject
  host::Envelope changed = env;
  std::string other_body = R"({"method":"pong"})";
  changed.body = other_body;
  EXPECT_FALSE(b.verify(changed, subject));
  changed = env;
  changed.signed_at_ms += 1;
  EXPECT_FALSE(b.verify(changed, subject));
  changed = env;
  changed.signer = "c";
  EXPECT_FALSE(b.verify(changed, subject));
  // The same bytes presented as a signature (BSN1) do not verify.
  changed = env;
  changed.pair = false;
  EXPECT_FALSE(b.verify(changed, subject));

  // No usable peer key: signed as before.
  std::string signed_wire =
      a.seal("a", subject, body, host::now_ms(), nullptr, std::string(32, '\0'));
  ASSERT_EQ(signed_wire.rfind("BSN1 a ", 0), 0u);
  ASSERT_TRUE(host::parse_envelope(signed_wire, env, &why)) << why;
  EXPECT_FALSE(env.pair);
  EXPECT_TRUE(c.verify(env, subject));  // anyone can check a signature

  // Headers that lie about the tag, or about the key it was made for, are
  // refused by the parser, naming what is wrong.
  const size_t nl = wire.find('\n');
  const size_t last = wire.rfind(' ', nl);
  const size_t before = wire.rfind(' ', last - 1);
  std::string bad = wire;
  bad.replace(last + 1, nl - last - 1, "AAAA");
  EXPECT_FALSE(host::parse_envelope(bad, env, &why));
  EXPECT_EQ(why, "pair-key envelope does not name the key it was made for (16 hex digits)");
  bad = wire;
  bad.replace(before + 1, last - before - 1, "AAAA");
  EXPECT_FALSE(host::parse_envelope(bad, env, &why));
  EXPECT_EQ(why, "envelope tag is not a base64 HMAC-SHA256 tag");
  bad = wire;
  bad.insert(nl, " x");
  EXPECT_FALSE(host::parse_envelope(bad, env, &why));
  EXPECT_EQ(why, "envelope header has more than 5 fields");
}

// On the bus: once central accepted ship1, their requests, replies and ACKs
// carry pair-key tags; events stay signed; a tag made for another node, or
// by a third node in central's name, runs nothing; pairKeys off signs all.
TEST_F(SecurityTest, AcceptedPeersUsePairKeyTagsThatNoThirdNodeCanMake) {
  ClusterNode& central = add("central");
  ClusterNode& ship1 = add("ship1");
  ClusterNode& ship2 = add("ship2");
  ASSERT_NO_FATAL_FAILURE(start_and_enrol(central, {&ship1, &ship2}));

  // Before the bus: its callbacks may run until it is gone.
  std::mutex mu;
  std::vector<std::pair<std::string, std::string>> seen;  // subject, first 5 bytes
  auto bus = h_.connect_bus("observer");
  auto record = [&](host::Incoming&& in) {
    std::lock_guard<std::mutex> lock(mu);
    seen.emplace_back(in.subject, in.data.substr(0, 5));
  };
  bus->subscribe("bosun.req.>", record);
  bus->subscribe("_INBOX.>", record);
  bus->subscribe("bosun.evt.>", record);
  auto finals = final_replies(central.send(json::array({message("ship1", "ping")})));
  ASSERT_EQ(finals.size(), 1u);
  EXPECT_EQ(finals[0]["data"], "pong");
  ASSERT_TRUE(wait_until([&] { return ship1.key_state("ship2") == "accepted/central"; }, 10s));
  // A second round trip, ship1 now knowing central (pinned on the first).
  {
    std::lock_guard<std::mutex> lock(mu);
    seen.clear();
  }
  finals = final_replies(central.send(json::array({message("ship1", "ping")})));
  ASSERT_EQ(finals.size(), 1u);
  // An event (key_accepted) and, 200 ms later, the key set to both ships.
  central.keys("accept", "ship1");
  // Signed whatever pairKeys says: what delivers keys (announce_key, which a
  // ship sends once its RSA key is made, may land here too) and events.
  auto signed_by_design = [](const std::string& subject) {
    std::string method = subject.substr(subject.rfind('.') + 1);
    return subject.rfind("bosun.evt.", 0) == 0 ||
           (subject.rfind("bosun.req.", 0) == 0 &&
            (method == "announce_key" || method == "key_set" || method == "request_public_keys" ||
             method == "update_public_key" || method == "request_cluster_secret" ||
             method == "receive_cluster_secret"));
  };
  ASSERT_TRUE(wait_until(
      [&] {
        std::lock_guard<std::mutex> lock(mu);
        int req = 0, reply = 0, acks = 0, events = 0, key_sets = 0;
        for (const auto& [subject, head] : seen) {
          req += subject == "bosun.req.ship1.ping";
          reply += subject.rfind("bosun.req.central.", 0) == 0 && !signed_by_design(subject);
          acks += subject.rfind("_INBOX.", 0) == 0;
          events += subject.rfind("bosun.evt.", 0) == 0;
          key_sets += subject == "bosun.req.ship1.key_set";
        }
        return req >= 1 && reply >= 1 && acks >= 3 && events >= 1 && key_sets >= 1;
      },
      10s));
  {
    std::lock_guard<std::mutex> lock(mu);
    for (const auto& [subject, head] : seen) {
      EXPECT_EQ(head, signed_by_design(subject) ? "BSN1 " : "BSM1 ") << subject;
    }
  }

  fs::path marker = h_.root() / "ran";
  const std::string subject = "bosun.req.ship1.cli_command";
  host::Message m;
  m.id = host::new_message_id();
  m.from_node = "central";
  m.to_node = "ship1";
  m.method = "cli_command";
  m.method_args = {"touch", marker.string()};
  m.sent_at_ms = host::now_ms();
  const std::string body = host::to_json(m).dump();

  // Central's own tag, but made for ship2: refused, naming the key it was
  // made for; and with that name changed to ship1's, the tag does not verify.
  auto ship1_id = host::Identity::load_or_create(ship1.data_dir());
  auto ship2_id = host::Identity::load_or_create(ship2.data_dir());
  uint64_t bad_before = ship1.refused("bad_signature");
  std::string for_ship2 = paired_by(central, ship2, subject, body);
  auto answer = bus->request(subject, for_ship2, 5s);
  ASSERT_TRUE(answer.has_value());
  EXPECT_NE(
      envelope_body(*answer).find("a tag made for another key of ship1 (" +
                                  host::key_hint(ship2_id.public_key_raw()) + "; this node's is " +
                                  host::key_hint(ship1_id.public_key_raw()) +
                                  "): central holds another key for ship1"),
      std::string::npos)
      << envelope_body(*answer);
  EXPECT_EQ(ship1.refused("bad_signature"), bad_before + 1);
  size_t hint = for_ship2.find(host::key_hint(ship2_id.public_key_raw()));
  ASSERT_LT(hint, for_ship2.find('\n'));
  for_ship2.replace(hint, 16, host::key_hint(ship1_id.public_key_raw()));
  answer = bus->request(subject, for_ship2, 5s);
  ASSERT_TRUE(answer.has_value());
  EXPECT_NE(envelope_body(*answer).find("the tag does not verify against the key it carries "
                                        "(claims to be central): changed on the way, or forged, "
                                        "or made for another node"),
            std::string::npos)
      << envelope_body(*answer);
  EXPECT_EQ(ship1.refused("bad_signature"), bad_before + 2);

  // ship2, accepted everywhere, in central's name with central's public key:
  // the only pair keys it has are its own, and none is central's with ship1.
  auto central_id = host::Identity::load_or_create(central.data_dir());
  const int64_t ts = host::now_ms();
  const std::string bytes = host::envelope_signed_bytes("central", ts, subject, body, "", true);
  for (const std::string& key : {ship2_id.pair_key(ship1_id.public_key_raw()),
                                 ship2_id.pair_key(central_id.public_key_raw())}) {
    unsigned char tag[32];
    unsigned int len = 0;
    ASSERT_NE(HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
                   reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(), tag, &len),
              nullptr);
    std::string forged = "BSM1 central " + std::to_string(ts) + " " + central_id.public_key_b64() +
                         " " + host::base64_encode(std::string(reinterpret_cast<char*>(tag), len)) +
                         " " + host::key_hint(ship1_id.public_key_raw()) + "\n" + body;
    bad_before = ship1.refused("bad_signature");
    answer = bus->request(subject, forged, 5s);
    ASSERT_TRUE(answer.has_value());
    EXPECT_EQ(envelope_body(*answer).rfind("NAK ", 0), 0u) << envelope_body(*answer);
    EXPECT_EQ(ship1.refused("bad_signature"), bad_before + 1);
  }
  // The genuine article runs (so the refusals above were about the tag).
  answer = bus->request(subject, paired_by(central, ship1, subject, body), 5s);
  ASSERT_TRUE(answer.has_value());
  EXPECT_EQ(envelope_body(*answer), "ACK");
  EXPECT_TRUE(wait_until([&] { return fs::exists(marker); }, 10s));

  // security.pairKeys off on central (live, on reload): signed again.
  central.config()["security"] = {{"pairKeys", false}};
  central.write_config();
  central.signal(SIGHUP);
  ASSERT_TRUE(wait_until(
      [&] { return central.log().find("$.security.pairKeys") != std::string::npos; }, 10s))
      << central.log();
  {
    std::lock_guard<std::mutex> lock(mu);
    seen.clear();
  }
  finals = final_replies(central.send(json::array({message("ship1", "ping")})));
  ASSERT_EQ(finals.size(), 1u);
  EXPECT_EQ(finals[0]["data"], "pong");
  // The observer's copy may come after the reply did.
  EXPECT_TRUE(wait_until(
      [&] {
        std::lock_guard<std::mutex> lock(mu);
        return std::any_of(seen.begin(), seen.end(),
                           [](const auto& s) { return s.first == "bosun.req.ship1.ping"; });
      },
      5s));
  std::lock_guard<std::mutex> lock(mu);
  for (const auto& [subj, head] : seen) {
    if (subj == "bosun.req.ship1.ping") {
      EXPECT_EQ(head, "BSN1 ") << subj;
    }
  }
}

TEST_F(SecurityTest, ModuleMessagesCarryTheSignedRequestAndRunAsItsSender) {
  // DESIGN §7: with the default security.allow (only central may invoke
  // methods), a file copy between two ships that central asked for works:
  // the chunks carry central's signed request and run as central's.
  ClusterNode& central = add("central");
  ClusterNode& ship1 = add("ship1");
  ClusterNode& ship2 = add("ship2");
  for (ClusterNode* n : {&central, &ship1, &ship2}) {
    n->add_module(bosun::test::plugin_module("filecopy"));
  }
  ASSERT_NO_FATAL_FAILURE(start_and_enrol(central, {&ship1, &ship2}));
  for (const char* ship : {"ship1", "ship2"}) {
    ASSERT_EQ(final_replies(central.send(json::array({message(ship, "ping")}))).size(), 1u);
  }
  ASSERT_TRUE(wait_until([&] { return ship1.key_state("ship2") == "accepted/central"; }, 10s));
  ASSERT_TRUE(wait_until([&] { return ship2.key_state("ship1") == "accepted/central"; }, 10s));

  fs::path src = h_.root() / "source.bin";
  std::string bytes(300 * 1024 + 17, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>((i * 131) ^ (i >> 7));
  bosun::test::write_file(src, bytes);
  auto final_of = [](const std::vector<json>& lines) {
    auto f = final_replies(lines);
    EXPECT_EQ(f.size(), 1u) << json(lines).dump().substr(0, 3000);
    return f.empty() ? json::object() : f.back();
  };

  // central asks ship1 to send to ship2, and ship2 to fetch from ship1.
  json from = {{"toNode", "ship1"},
               {"method", "copy_file_from"},
               {"methodArgs", {src.string(), "ship2", "incoming/from.bin"}},
               {"methodTimeout", 60}};
  json r = final_of(central.send(json::array({from}), true, 60));
  EXPECT_EQ(r.value("status", ""), "ok") << r.dump();
  EXPECT_EQ(bosun::test::read_file(ship2.data_dir() / "incoming" / "from.bin"), bytes);
  json to = {{"toNode", "ship2"},
             {"method", "copy_file_to"},
             {"methodArgs", {"ship1", src.string(), "incoming/to.bin"}},
             {"methodTimeout", 60}};
  r = final_of(central.send(json::array({to}), true, 60));
  EXPECT_EQ(r.value("status", ""), "ok") << r.dump();
  EXPECT_EQ(bosun::test::read_file(ship2.data_dir() / "incoming" / "to.bin"), bytes);

  // ship1 on its own carries nothing: ship2 refuses its copy.
  json own = from;
  own["methodArgs"] = {src.string(), "ship2", "incoming/own.bin"};
  r = final_of(ship1.send(json::array({own}), true, 60));
  EXPECT_EQ(r.value("status", ""), "error") << r.dump();
  EXPECT_NE(r.value("error", "").find("ship1 may not invoke filecopy_begin on ship2"),
            std::string::npos)
      << r.dump();
  EXPECT_FALSE(fs::exists(ship2.data_dir() / "incoming" / "own.bin"));

  // What ship1 could carry, and what ship2 makes of it.
  auto central_request = [&](const std::string& to_node, int64_t at_ms) {
    host::Message c;
    c.id = host::new_message_id();
    c.from_node = "central";
    c.to_node = to_node;
    c.method = "copy_file_from";
    c.method_args = {src.string(), "ship2", "incoming/x.bin"};
    c.method_timeout = 60;
    c.sent_at_ms = at_ms;
    return host::to_json(c).dump();
  };
  const std::string cause_subject = "bosun.req.ship1.copy_file_from";
  auto cause = [&](const std::string& subject, const std::string& wire) {
    return json{{"subject", subject}, {"envelope", host::base64_encode(wire)}};
  };
  std::string good = sealed_by(central, cause_subject, central_request("ship1", host::now_ms()));
  std::string flipped = good;
  flipped[flipped.size() - 3] ^= 1;
  const std::string ship3_subject = "bosun.req.ship3.copy_file_from";
  auto carried = [&](const std::string& method, const json& why) {
    host::Message m;
    m.id = host::new_message_id();
    m.from_node = "ship1";
    m.to_node = "ship2";
    m.method = method;
    m.method_args = {std::string(32, 'a')};
    m.sent_at_ms = host::now_ms();
    m.reply_method = "none";
    m.extra["cause"] = why;
    return sealed_by(ship1, "bosun.req.ship2." + method, host::to_json(m).dump());
  };
  struct Case {
    std::string what, method;
    json cause;
    std::string text;
  };
  std::vector<Case> cases = {
      {"another module's method", "cli_command", cause(cause_subject, good),
       "cli_command is not a method of filecopy, which handles copy_file_from here"},
      {"a changed request", "filecopy_abort", cause(cause_subject, flipped),
       "its signature does not verify"},
      {"a request to another node", "filecopy_abort",
       cause(ship3_subject,
             sealed_by(central, ship3_subject, central_request("ship3", host::now_ms()))),
       "it was sent to ship3, not to ship1 or ship2"},
      {"an old request", "filecopy_abort",
       cause(cause_subject, sealed_by(central, cause_subject,
                                      central_request("ship1", host::now_ms() - 3600 * 1000),
                                      host::now_ms() - 3600 * 1000)),
       "outside its methodTimeout and security.allowSkew"},
      {"a request with a pair-key tag", "filecopy_abort",
       cause(cause_subject,
             paired_by(central, ship1, cause_subject, central_request("ship1", host::now_ms()))),
       "pair-key tag, which only its two ends can check"},
      {"a request ship1 signed itself", "filecopy_abort",
       cause(cause_subject, sealed_by(ship1, cause_subject, central_request("ship1", 1))),
       "does not match its envelope"},
      {"no envelope", "filecopy_abort", json{{"subject", cause_subject}},
       "\"cause\" must be an object"},
  };
  auto bus = h_.connect_bus("ship1-forger");
  for (const auto& c : cases) {
    uint64_t before = ship2.refused("not_allowed");
    auto answer = bus->request("bosun.req.ship2." + c.method, carried(c.method, c.cause), 5s);
    ASSERT_TRUE(answer.has_value()) << c.what << ": no answer";
    std::string text = envelope_body(*answer);
    EXPECT_EQ(text.rfind("NAK ", 0), 0u) << c.what << ": " << text;
    EXPECT_NE(text.find("ship1 may not invoke " + c.method + " on ship2"), std::string::npos)
        << c.what << ": " << text;
    EXPECT_NE(text.find(c.text), std::string::npos) << c.what << ": " << text;
    EXPECT_EQ(ship2.refused("not_allowed"), before + 1) << c.what;
  }
  // The genuine request lets a filecopy method in.
  auto answer = bus->request("bosun.req.ship2.filecopy_abort",
                             carried("filecopy_abort", cause(cause_subject, good)), 5s);
  ASSERT_TRUE(answer.has_value());
  EXPECT_EQ(envelope_body(*answer), "ACK");
  EXPECT_TRUE(wait_until(
      [&] { return ship2.log().find("authorized as central, whose request") != std::string::npos; },
      10s));
}

TEST_F(SecurityTest, AnUnknownKeyInAConfigIsANamedError) {
  ClusterNode& central = add("central");
  central.config()["security"] = {{"keys", {{"ship1", "not-a-key"}}}};
  EXPECT_THROW(central.start(5s), std::runtime_error);
  EXPECT_NE(central.log().find("$.security.keys.ship1: expected an Ed25519 public key"),
            std::string::npos)
      << central.log();
}

}  // namespace
