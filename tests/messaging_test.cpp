// Messaging between real `bosun run` nodes over a real nats-server (DESIGN
// §4, §5): request and reply, fan-out, reply methods, retries while a node is
// offline, the retry budget running out, kill -9 of either side, a broker
// restart, failover in a NATS cluster, and bad input straight on the bus.
//
// fx_counter's `count` increments its KV key "n" and replies the new value:
// the side effect every exactly-once assertion counts.
#include <gtest/gtest.h>

#include <bosun/host/message.hpp>
#include <bosun/host/transport.hpp>

#include <algorithm>
#include <atomic>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include "cluster_harness.hpp"
#include "node_harness.hpp"

namespace bosun::test {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

json message(const std::string& to, const std::string& method, json extra = json::object()) {
  json m = {{"toNode", to}, {"method", method}};
  for (auto& [k, v] : extra.items()) m[k] = v;
  return m;
}

// The non-empty lines of a file; none when it does not exist.
std::vector<std::string> file_lines(const fs::path& p) {
  std::vector<std::string> out;
  if (!fs::exists(p)) return out;
  std::istringstream in(read_file(p));
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) out.push_back(line);
  }
  return out;
}

std::vector<long> sorted_numbers(const std::vector<std::string>& lines) {
  std::vector<long> out;
  for (const auto& l : lines) out.push_back(std::stol(l));
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<long> one_to(long n) {
  std::vector<long> out;
  for (long i = 1; i <= n; ++i) out.push_back(i);
  return out;
}

size_t occurrences(const std::string& text, const std::string& needle) {
  size_t n = 0;
  for (size_t pos = text.find(needle); pos != std::string::npos;
       pos = text.find(needle, pos + needle.size())) {
    ++n;
  }
  return n;
}

// Sends one `count` to `to` through `from` and returns the counter's new value.
long count_once(ClusterNode& from, const std::string& to) {
  auto lines = from.send(json::array({message(to, "count")}), true, 20);
  auto finals = final_replies(lines);
  if (finals.size() != 1 || finals[0].value("status", "") != "ok") {
    ADD_FAILURE() << "count on " << to << " did not answer ok: " << json(lines).dump();
    return -1;
  }
  return std::stol(finals[0].value("data", ""));
}

// A plain NATS connection that is no node: what anyone on the bus can send.
host::Transport raw_connection(const std::vector<std::string>& servers) {
  host::BrokerConfig c;
  c.servers = servers;
  c.connect_timeout_ms = 2000;
  return host::Transport(c, "intruder");
}

// A well-formed request as a node would publish it.
std::string wire_message(const std::string& from, const std::string& to, const std::string& method,
                         json extra = json::object()) {
  host::Message m;
  m.id = host::new_message_id();
  m.from_node = from;
  m.to_node = to;
  m.method = method;
  m.sent_at_ms = host::now_ms();
  json j = host::to_json(m);
  for (auto& [k, v] : extra.items()) j[k] = v;
  return j.dump();
}

// ------------------------------------------------------ request, reply ---

TEST(Messaging, PingFromCentralToShip1GetsPong) {
  ClusterHarness h;
  ClusterNode& central = h.add_node("central");
  ClusterNode& ship1 = h.add_node("ship1");
  central.start();
  ship1.start();
  // The keys first: ship1's announcement ACKed, central's key set ACKed,
  // and ship1's second announcement, with the RSA key it makes in the
  // background (so that it is not one of the messages counted below).
  ASSERT_TRUE(wait_until(
      [&] { return central.counter("acked") >= 1 && ship1.counter("acked") >= 1; }, 10s));
  ASSERT_TRUE(wait_until([&] { return !central.peer_key("ship1").value("rsa", "").empty(); }, 60s));
  std::this_thread::sleep_for(200ms);  // its ACK home
  const json c0 = central.counters(), s0 = ship1.counters();
  auto delta = [](const json& now, const json& before, const char* k) {
    return now[k].get<int64_t>() - before[k].get<int64_t>();
  };

  auto lines = central.send(json::array({message("ship1", "ping")}));
  auto finals = final_replies(lines);
  ASSERT_EQ(finals.size(), 1u) << json(lines).dump();
  EXPECT_EQ(finals[0]["status"], "ok") << finals[0].dump();
  EXPECT_EQ(finals[0]["data"], "pong");
  EXPECT_EQ(finals[0]["fromNode"], "ship1");
  EXPECT_EQ(finals[0]["method"], "ping");
  EXPECT_EQ(finals[0]["inReplyTo"], accepted_ids(lines).at(0));
  EXPECT_EQ(lines.back(), json({{"type", "done"}, {"missing", json::array()}}));

  // The same through the CLI.
  std::string out;
  int rc = run_command({BOSUN_BIN, "send", "--config", central.config_file().string(), "--to",
                        "ship1", "--method", "ping", "--wait", "--timeout", "10"},
                       &out);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("[ship1] pong"), std::string::npos) << out;

  json c = central.counters();
  EXPECT_EQ(delta(c, c0, "sent"), 2) << c.dump();
  EXPECT_EQ(delta(c, c0, "acked"), 2) << c.dump();
  EXPECT_EQ(c["failed"], 0) << c.dump();
  json s = ship1.counters();
  EXPECT_EQ(delta(s, s0, "sent"), 2) << "two replies: " << s.dump();
  EXPECT_GE(delta(s, s0, "received"), 2) << s.dump();
  EXPECT_EQ(s["dropped"], 0) << s.dump();
  EXPECT_EQ(s["refused"], json::object()) << s.dump();
}

TEST(Messaging, FanOutToTwoShipsGetsBothReplies) {
  ClusterHarness h;
  ClusterNode& central = h.add_node("central");
  h.add_node("ship1").start();
  h.add_node("ship2").start();
  central.start();

  json fan_out = {{"toNodes", json::array({"ship1", "ship2"})}, {"method", "ping"}};
  auto lines = central.send(json::array({fan_out}));
  auto ids = accepted_ids(lines);
  ASSERT_EQ(ids.size(), 2u) << json(lines).dump();
  EXPECT_NE(ids[0], ids[1]);
  auto finals = final_replies(lines);
  ASSERT_EQ(finals.size(), 2u) << json(lines).dump();
  std::set<std::string> from;
  for (const auto& r : finals) {
    EXPECT_EQ(r["status"], "ok") << r.dump();
    EXPECT_EQ(r["data"], "pong") << r.dump();
    from.insert(r["fromNode"].get<std::string>());
  }
  EXPECT_EQ(from, (std::set<std::string>{"ship1", "ship2"}));
}

TEST(Messaging, ReplyMethodToFileWritesUnderCentralsDataDir) {
  ClusterHarness h;
  ClusterNode& central = h.add_node("central");
  ClusterNode& ship1 = h.add_node("ship1");
  central.start();
  ship1.start();

  json m =
      message("ship1", "ping",
              {{"replyMethod", "to_file"}, {"directory", "replies"}, {"fileName", "ping.txt"}});
  auto finals = final_replies(central.send(json::array({m})));
  ASSERT_EQ(finals.size(), 1u);
  EXPECT_EQ(finals[0]["data"], "pong");

  // The reply method runs on central after the waiter has the reply.
  fs::path written = central.data_dir() / "replies" / "ping.txt";
  ASSERT_TRUE(wait_until([&] { return fs::exists(written); }, 10s))
      << "no " << written << "; central's log:\n"
      << central.log();
  EXPECT_TRUE(wait_until([&] { return read_file(written) == "pong"; }, 5s)) << read_file(written);
  EXPECT_FALSE(fs::exists(ship1.data_dir() / "replies")) << "the reply method ran on ship1";
}

// --------------------------------------------------- offline, budgets ---

TEST(Messaging, NodeOfflineWhenSentGetsItWhenItStartsWithinTheBudget) {
  ClusterHarness h;
  ClusterNode& central = h.add_node("central");
  ClusterNode& ship1 = h.add_node("ship1");
  ship1.add_module(fixture_module("fx_counter"));
  central.start();

  auto pending = std::async(std::launch::async, [&] {
    return central.send(
        json::array({message("ship1", "count", {{"ACKTimeout", 1}, {"retries", 10}})}), true, 20);
  });
  std::this_thread::sleep_for(3s);
  EXPECT_GE(central.counter("retried"), 1u) << "ship1 is down: central should be resending";
  ship1.start();

  ASSERT_EQ(pending.wait_for(30s), std::future_status::ready);
  auto lines = pending.get();
  auto finals = final_replies(lines);
  ASSERT_EQ(finals.size(), 1u) << json(lines).dump();
  EXPECT_EQ(finals[0]["status"], "ok") << finals[0].dump();
  EXPECT_EQ(finals[0]["data"], "1") << "the count ran once";
  EXPECT_EQ(central.counter("failed"), 0u);
  // Resent copies that reached ship1 were not run again.
  EXPECT_EQ(count_once(central, "ship1"), 2);
}

TEST(Messaging, PastTheRetryBudgetTheSenderReportsTheDrop) {
  ClusterHarness h;
  ClusterNode& central = h.add_node("central");
  central.start();  // ship1 never runs

  json m = message("ship1", "ping", {{"ACKTimeout", 0.5}, {"retries", 1}});
  auto start = std::chrono::steady_clock::now();
  auto lines = central.send(json::array({m}), true, 15);
  auto took = std::chrono::steady_clock::now() - start;
  auto ids = accepted_ids(lines);
  ASSERT_EQ(ids.size(), 1u) << json(lines).dump();
  auto finals = final_replies(lines);
  ASSERT_EQ(finals.size(), 1u) << json(lines).dump();
  EXPECT_EQ(finals[0]["status"], "error");
  std::string error = finals[0].value("error", "");
  EXPECT_EQ(error.rfind("not delivered", 0), 0u) << error;
  EXPECT_NE(error.find("no ACK from ship1 after 2 attempt(s)"), std::string::npos) << error;
  EXPECT_LT(took, 10s) << "send --wait should learn of the drop, not run into its timeout";

  fs::path errors = central.data_dir() / "errors.log";
  EXPECT_TRUE(wait_until(
      [&] {
        std::string t = fs::exists(errors) ? read_file(errors) : "";
        return t.find(ids[0]) != std::string::npos && t.find("dropped") != std::string::npos;
      },
      10s))
      << (fs::exists(errors) ? read_file(errors) : "no " + errors.string());
  EXPECT_NE(central.log().find("message " + ids[0] + " (ping) from central to ship1 dropped"),
            std::string::npos);
  EXPECT_EQ(central.counter("failed"), 1u);

  // `bosun send --wait` exits non-zero with the reason instead of hanging.
  fs::path file = h.root() / "ping-ship1.json";
  write_file(file, json::array({m}).dump());
  std::string out;
  start = std::chrono::steady_clock::now();
  int rc = run_command({BOSUN_BIN, "send", "--config", central.config_file().string(), "--wait",
                        "--timeout", "20", file.string()},
                       &out, true, "", 30s);
  took = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(rc, 1) << out;
  EXPECT_NE(out.find("error: not delivered: no ACK from ship1"), std::string::npos) << out;
  EXPECT_LT(took, 15s) << out;
  EXPECT_TRUE(wait_until([&] { return file_lines(errors).size() == 2; }, 10s)) << read_file(errors);
}

// ------------------------------------------------------------ crashes ---

TEST(Messaging, KillNineOfTheReceiverMidStreamRunsNoMessageTwice) {
  constexpr int kMessages = 20;
  ClusterHarness h;
  ClusterNode& central = h.add_node("central");
  ClusterNode& ship1 = h.add_node("ship1");
  ship1.add_module(fixture_module("fx_counter"));
  ship1.add_module(fixture_module("fx_slow"));
  // One worker, busy with slow_ignore (3 s): the counts that arrive are
  // recorded and ACKed but wait to run, so the kill finds some "received"
  // and one "running".
  ship1.config()["host"]["workers"] = 1;
  central.start();
  ship1.start();

  auto slow = std::async(std::launch::async, [&] {
    return central.send(json::array({message("ship1", "slow_ignore")}), true, 25);
  });
  ASSERT_TRUE(wait_until([&] { return ship1.counter("received") >= 1; }, 10s));
  // One request per send, a little apart, so that some reach ship1 before
  // the kill, some while it is down and some after it is back.
  std::vector<std::future<std::vector<json>>> sends;
  std::thread launcher([&] {
    for (int i = 0; i < kMessages; ++i) {
      sends.push_back(std::async(std::launch::async, [&] {
        return central.send(json::array({message("ship1", "count")}), true, 25);
      }));
      std::this_thread::sleep_for(40ms);
    }
  });
  bool hit = wait_until([&] { return ship1.counter("received") >= 7; }, 10s, 5ms);
  ship1.kill9();
  launcher.join();
  ASSERT_TRUE(hit) << "ship1 never received 6 counts";
  std::this_thread::sleep_for(300ms);
  ship1.start();

  // The running call is not run again: its sender hears why.
  ASSERT_EQ(slow.wait_for(40s), std::future_status::ready);
  auto slow_finals = final_replies(slow.get());
  ASSERT_EQ(slow_finals.size(), 1u);
  EXPECT_EQ(slow_finals[0]["status"], "error") << slow_finals[0].dump();
  EXPECT_NE(slow_finals[0]
                .value("error", "")
                .find("slow_ignore was interrupted by a restart of node ship1"),
            std::string::npos)
      << slow_finals[0].dump();

  // Every count ran exactly once: those ACKed before the kill after the
  // restart, the others when central resent them.
  std::vector<std::string> values;
  for (auto& f : sends) {
    ASSERT_EQ(f.wait_for(40s), std::future_status::ready);
    auto lines = f.get();
    auto finals = final_replies(lines);
    ASSERT_EQ(finals.size(), 1u) << "every message gets exactly one final reply: "
                                 << json(lines).dump();
    EXPECT_EQ(finals[0]["status"], "ok") << finals[0].dump();
    values.push_back(finals[0].value("data", ""));
  }
  EXPECT_EQ(sorted_numbers(values), one_to(kMessages));
  EXPECT_EQ(count_once(central, "ship1"), kMessages + 1);
  EXPECT_GE(occurrences(ship1.log(), "resuming message"), 1u)
      << "no count was waiting in the inbox at the kill";
  EXPECT_EQ(occurrences(ship1.log(), "was running when the node stopped; not run again"), 1u);
}

TEST(Messaging, KillNineOfTheSenderWithAFullOutboxDeliversEachOnce) {
  constexpr int kMessages = 10;
  ClusterHarness h;
  ClusterNode& central = h.add_node("central");
  ClusterNode& ship1 = h.add_node("ship1");
  ship1.add_module(fixture_module("fx_counter"));
  central.start();  // ship1 is down

  json batch = json::array();
  for (int i = 0; i < kMessages; ++i) {
    batch.push_back(message("ship1", "count",
                            {{"retries", 30},
                             {"replyMethod", "to_file_append"},
                             {"directory", "counts"},
                             {"fileName", "ship1.txt"}}));
  }
  auto lines = central.send(batch, false);
  ASSERT_EQ(accepted_ids(lines).size(), static_cast<size_t>(kMessages)) << json(lines).dump();
  central.kill9();
  ship1.start();
  central.start();

  fs::path counts = central.data_dir() / "counts" / "ship1.txt";
  EXPECT_TRUE(wait_until([&] { return file_lines(counts).size() >= kMessages; }, 20s))
      << file_lines(counts).size() << " replies";
  std::this_thread::sleep_for(1500ms);  // past an ACKTimeout: a resent copy would show
  EXPECT_EQ(sorted_numbers(file_lines(counts)), one_to(kMessages));
  EXPECT_EQ(count_once(central, "ship1"), kMessages + 1);
  EXPECT_EQ(occurrences(central.log(), "resuming delivery of"), static_cast<size_t>(kMessages));
}

TEST(Messaging, NatsServerRestartMidStreamLosesNothing) {
  constexpr int kMessages = 50;
  ClusterHarness h;
  ClusterNode& central = h.add_node("central");
  ClusterNode& ship1 = h.add_node("ship1");
  ship1.add_module(fixture_module("fx_counter"));
  central.start();
  ship1.start();

  json m = message(
      "ship1", "count",
      {{"replyMethod", "to_file_append"}, {"directory", "counts"}, {"fileName", "ship1.txt"}});
  std::atomic<int> accepted{0};
  std::thread launcher([&] {
    for (int i = 0; i < kMessages; ++i) {
      auto lines = central.send(json::array({m}), false);
      accepted += static_cast<int>(accepted_ids(lines).size());
      std::this_thread::sleep_for(20ms);
    }
  });
  EXPECT_TRUE(wait_until([&] { return accepted >= 10; }, 10s));
  h.nats()->restart();
  launcher.join();
  ASSERT_EQ(accepted, kMessages);

  fs::path counts = central.data_dir() / "counts" / "ship1.txt";
  EXPECT_TRUE(wait_until([&] { return file_lines(counts).size() >= kMessages; }, 20s))
      << file_lines(counts).size() << " replies";
  std::this_thread::sleep_for(1500ms);
  EXPECT_EQ(sorted_numbers(file_lines(counts)), one_to(kMessages));
  EXPECT_EQ(count_once(central, "ship1"), kMessages + 1);
  EXPECT_GE(central.counter("reconnects"), 1u);
  EXPECT_GE(ship1.counter("reconnects"), 1u);
}

TEST(Messaging, NatsClusterFailoverKeepsMessagesFlowing) {
  NatsCluster cluster(3);  // outlives the nodes
  auto urls = cluster.urls();
  ClusterHarness h(urls);
  ClusterNode& central = h.add_node("central");
  ClusterNode& ship1 = h.add_node("ship1");
  ship1.add_module(fixture_module("fx_counter"));
  ship1.config()["broker"]["servers"] = json::array({urls[0], urls[1], urls[2]});
  central.config()["broker"]["servers"] = json::array({urls[1], urls[0], urls[2]});
  central.start();
  ship1.start();

  auto run_batch = [&](long first) {
    json batch = json::array();
    for (int i = 0; i < 10; ++i) batch.push_back(message("ship1", "count"));
    auto lines = central.send(batch, true, 20);
    std::vector<std::string> values;
    for (const auto& r : final_replies(lines)) {
      EXPECT_EQ(r["status"], "ok") << r.dump();
      values.push_back(r.value("data", ""));
    }
    std::vector<long> expected;
    for (long v = first; v < first + 10; ++v) expected.push_back(v);
    EXPECT_EQ(sorted_numbers(values), expected) << json(lines).dump();
  };
  run_batch(1);
  cluster.kill(1);  // central's server
  run_batch(11);
  EXPECT_TRUE(wait_until([&] { return central.counter("reconnects") >= 1; }, 5s));
  EXPECT_EQ(ship1.counter("reconnects"), 0u) << "ship1's server is still up";
}

// ------------------------------------------------------- bad input ---

TEST(Messaging, BadInputOnTheBusIsDroppedNakedAndLogged) {
  ClusterHarness h;
  ClusterNode& central = h.add_node("central");
  ClusterNode& ship1 = h.add_node("ship1");
  ship1.config()["host"]["maxMessageBytes"] = 4096;
  central.start();
  ship1.start();
  host::Transport bus = raw_connection(h.servers());
  bus.connect(false);

  struct Case {
    std::string what;
    std::string payload;
    std::string reason;
  };
  // Signed as central would sign them, so that each gets past the
  // envelope to the check it is about (security_test.cpp covers envelopes).
  const std::string subject = "bosun.req.ship1.ping";
  auto as_central = [&](const std::string& body) { return sealed_by(central, subject, body); };
  std::vector<Case> cases = {
      {"raw bytes", as_central(std::string("\x01\x02\xff not json {")), "not valid JSON"},
      {"a JSON array", as_central("[1,2,3]"), "expected a JSON object"},
      {"a wrong type", as_central(wire_message("central", "ship1", "ping", {{"methodArgs", 42}})),
       "field \"methodArgs\": expected an array of strings"},
      {"another node's message", as_central(wire_message("central", "ship2", "ping")),
       "addressed to node \"ship2\", not ship1"},
      {"a payload over maxMessageBytes",
       as_central(wire_message("central", "ship1", "ping", {{"data", std::string(5000, 'x')}})),
       "exceeds host.maxMessageBytes"},
      {"an unsigned message", wire_message("central", "ship1", "ping"), "not a signed envelope"},
  };
  for (const auto& c : cases) {
    auto answer = bus.request(subject, c.payload, 5s);
    ASSERT_TRUE(answer.has_value()) << c.what << ": no answer on the reply subject";
    answer = envelope_body(*answer);
    EXPECT_EQ(answer->rfind("NAK ", 0), 0u) << c.what << ": " << *answer;
    EXPECT_NE(answer->find(c.reason), std::string::npos) << c.what << ": " << *answer;
    EXPECT_TRUE(wait_until(
        [&] {
          return ship1.log().find("dropped a message on bosun.req.ship1.ping: ") !=
                     std::string::npos &&
                 ship1.log().find(c.reason) != std::string::npos;
        },
        5s))
        << c.what << ": the log does not say why";
  }
  EXPECT_EQ(ship1.counter("dropped"), cases.size());
  EXPECT_TRUE(ship1.running());

  auto finals = final_replies(central.send(json::array({message("ship1", "ping")})));
  ASSERT_EQ(finals.size(), 1u);
  EXPECT_EQ(finals[0]["data"], "pong");
  EXPECT_EQ(ship1.counter("dropped"), cases.size());
}

// central and ship1 of `h`, started, ship1 answering central's ping (keys
// in place); `configure` edits ship1 before it starts.
void start_central_and_ship1(ClusterHarness& h,
                             const std::function<void(ClusterNode&)>& configure = {}) {
  ClusterNode& central = h.add_node("central");
  ClusterNode& ship1 = h.add_node("ship1");
  if (configure) configure(ship1);
  central.start();
  ship1.start();
  ASSERT_EQ(final_replies(central.send(json::array({message("ship1", "ping")}))).size(), 1u);
}

// What one bus subscription saw: subject and envelope body of each NATS
// message, in order.
struct Seen {
  std::mutex mu;
  std::vector<std::pair<std::string, std::string>> messages;
  std::vector<std::string> reply_subjects;  // each one's NATS reply subject
  void add(const host::Incoming& in) {
    std::lock_guard<std::mutex> lock(mu);
    messages.emplace_back(in.subject, envelope_body(in.data));
    reply_subjects.push_back(in.reply);
  }
  std::vector<std::string> replies_asked() {
    std::lock_guard<std::mutex> lock(mu);
    return reply_subjects;
  }
  std::vector<std::pair<std::string, std::string>> get() {
    std::lock_guard<std::mutex> lock(mu);
    return messages;
  }
};

// A batch: several messages for one subject in one NATS message, a JSON
// array under one envelope. Each is checked as if it had come alone, and
// the batch gets one answer on its ACK subject (NATS permissions may allow
// no more, allow_responses): a NAK with its reason for the refused one, an
// ACK for any other not answered yet (the quick calls' replies are their
// ACKs). The replies leave ship1 as one NATS message. Malformed batches
// are refused whole.
TEST(Messaging, ABatchIsTakenMessageByMessageAndItsRepliesLeaveTogether) {
  ClusterHarness h;
  ASSERT_NO_FATAL_FAILURE(start_central_and_ship1(h));
  ClusterNode& central = h.node("central");
  ClusterNode& ship1 = h.node("ship1");

  Seen replies, acks;  // before the bus: its callbacks fill them
  auto bus = h.connect_bus("observer");
  bus->subscribe("bosun.req.central.none", [&](host::Incoming&& in) { replies.add(in); });
  const std::string inbox = "_INBOX.observer.acks";
  bus->subscribe(inbox + ".*", [&](host::Incoming&& in) { acks.add(in); });
  ASSERT_TRUE(bus->flush(5s));

  const std::string subject = "bosun.req.ship1.ping";
  json a = json::parse(wire_message("central", "ship1", "ping"));
  json b = json::parse(wire_message("central", "ship2", "ping"));  // another node's
  json c = json::parse(wire_message("central", "ship1", "ping"));
  const std::string ida = a["id"], idb = b["id"], idc = c["id"];
  ASSERT_TRUE(bus->publish(subject, sealed_by(central, subject, json::array({a, b, c}).dump()),
                           inbox + "." + ida));
  ASSERT_TRUE(wait_until([&] { return !acks.get().empty() && !replies.get().empty(); }, 10s));
  std::this_thread::sleep_for(300ms);  // anything more would show now

  auto got = acks.get();
  ASSERT_EQ(got.size(), 1u) << "one answer to one batch";
  EXPECT_EQ(got[0].first, inbox + "." + ida);
  EXPECT_EQ(got[0].second, "ACKS\nNAK " + idb + " addressed to node \"ship2\", not ship1");
  EXPECT_EQ(ship1.refused("wrong_node"), 1u);
  EXPECT_NE(ship1.log().find("dropped a message on bosun.req.ship1.ping: addressed to node"),
            std::string::npos);

  auto sent = replies.get();
  ASSERT_EQ(sent.size(), 1u) << "the two replies left as " << sent.size() << " NATS messages";
  json batch = json::parse(sent[0].second, nullptr, false);
  ASSERT_TRUE(batch.is_array()) << sent[0].second;
  ASSERT_EQ(batch.size(), 2u);
  std::set<std::string> answered;
  for (const auto& r : batch) {
    EXPECT_EQ(r.value("data", ""), "pong");
    EXPECT_EQ(r.value("fromNode", ""), "ship1");
    answered.insert(r.value("inReplyTo", ""));
  }
  EXPECT_EQ(answered, (std::set<std::string>{ida, idc}));

  // The same ping twice in one batch runs once; the copy is ACKed.
  json d = json::parse(wire_message("central", "ship1", "ping"));
  const std::string idd = d["id"];
  ASSERT_TRUE(bus->publish(subject, sealed_by(central, subject, json::array({d, d}).dump()),
                           inbox + "." + idd));
  ASSERT_TRUE(wait_until([&] { return acks.get().size() >= 2 && replies.get().size() >= 2; }, 10s));
  std::this_thread::sleep_for(300ms);
  ASSERT_EQ(acks.get().size(), 2u);
  EXPECT_EQ(acks.get()[1], std::make_pair(inbox + "." + idd, std::string("ACK")));
  ASSERT_EQ(replies.get().size(), 2u);
  json twice = json::parse(replies.get()[1].second, nullptr, false);
  ASSERT_TRUE(twice.is_object()) << replies.get()[1].second;  // one reply, not a batch of two
  EXPECT_EQ(twice.value("inReplyTo", ""), idd);
  EXPECT_EQ(ship1.counter("duplicates"), 1u);

  // Refused whole, with one NAK on the batch's own ACK subject: too many
  // messages, and something that is not a message.
  json many = json::array();
  for (int i = 0; i < 65; ++i)
    many.push_back(json::parse(wire_message("central", "ship1", "ping")));
  auto answer = bus->request(subject, sealed_by(central, subject, many.dump()), 5s);
  ASSERT_TRUE(answer.has_value());
  EXPECT_EQ(envelope_body(*answer).rfind("NAK a batch must hold 1 to 64 messages", 0), 0u)
      << envelope_body(*answer);
  answer = bus->request(subject, sealed_by(central, subject, json::array({a, 7}).dump()), 5s);
  ASSERT_TRUE(answer.has_value());
  EXPECT_EQ(envelope_body(*answer), "NAK batch message 1: expected a JSON object, got number");
  std::this_thread::sleep_for(300ms);
  EXPECT_EQ(replies.get().size(), 2u) << "a refused batch ran something";
}

// A `send` of several messages to one node goes as one NATS message (one
// outbox write before it), and each is answered.
TEST(Messaging, MessagesSentTogetherToOneNodeTravelAsOneBatch) {
  ClusterHarness h;
  ASSERT_NO_FATAL_FAILURE(start_central_and_ship1(h));
  ClusterNode& central = h.node("central");
  ClusterNode& ship1 = h.node("ship1");

  Seen requests;
  auto bus = h.connect_bus("observer");
  bus->subscribe("bosun.req.ship1.ping", [&](host::Incoming&& in) { requests.add(in); });
  ASSERT_TRUE(bus->flush(5s));
  json five = json::array();
  for (int i = 0; i < 5; ++i) five.push_back(message("ship1", "ping"));
  auto finals = final_replies(central.send(five));
  ASSERT_EQ(finals.size(), 5u);
  for (const auto& f : finals) EXPECT_EQ(f.value("data", ""), "pong");
  auto seen = requests.get();
  ASSERT_EQ(seen.size(), 1u) << "five requests left central as " << seen.size() << " NATS messages";
  json batch = json::parse(seen[0].second, nullptr, false);
  ASSERT_TRUE(batch.is_array()) << seen[0].second;
  EXPECT_EQ(batch.size(), 5u);
  EXPECT_EQ(ship1.counter("duplicates"), 0u);
}

// One message of a batch refused by the receiver (here: over its
// host.maxMessageBytes) fails alone and at once, with the receiver's reason
// (the batch's one answer names it); the others run.
TEST(Messaging, AMessageOfABatchThatTheReceiverRefusesFailsAloneAndAtOnce) {
  ClusterHarness h;
  ASSERT_NO_FATAL_FAILURE(start_central_and_ship1(
      h, [](ClusterNode& ship1) { ship1.config()["host"]["maxMessageBytes"] = 4096; }));
  ClusterNode& central = h.node("central");
  ClusterNode& ship1 = h.node("ship1");

  json two = json::array({message("ship1", "ping"), message("ship1", "ping")});
  two[1]["data"] = std::string(5000, 'x');
  const auto start = std::chrono::steady_clock::now();
  auto finals = final_replies(central.send(two));
  ASSERT_EQ(finals.size(), 2u) << json(finals).dump();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s) << "the refusal waited for a timeout";
  int pong = 0, refused = 0;
  for (const auto& f : finals) {
    if (f.value("data", "") == "pong") ++pong;
    if (f.value("error", "").find("refused by ship1: message of ") != std::string::npos &&
        f.value("error", "").find("exceeds host.maxMessageBytes") != std::string::npos) {
      ++refused;
    }
  }
  EXPECT_EQ(pong, 1) << json(finals).dump();
  EXPECT_EQ(refused, 1) << json(finals).dump();
  EXPECT_EQ(ship1.refused("too_large"), 1u);
}

// A quick built-in (ping) is answered right where it arrives, and its
// reply is its ACK: no ACK message of its own. Its sender takes the reply
// for the ACK (nothing resent, nothing left in its outbox). A pure one's
// reply is sent once and asks for no ACK (none comes): a resent copy of
// the request is ACKed as any duplicate is, not run again, and answered
// with the same reply again (the first may be what was lost).
TEST(Messaging, AQuickCallIsAckedByItsReply) {
  ClusterHarness h;
  ASSERT_NO_FATAL_FAILURE(start_central_and_ship1(h));
  ClusterNode& central = h.node("central");
  ClusterNode& ship1 = h.node("ship1");
  ASSERT_TRUE(wait_until([&] { return !central.peer_key("ship1").value("rsa", "").empty(); }, 60s));
  std::this_thread::sleep_for(300ms);  // the key messages' ACKs home

  Seen central_acks, ship1_acks, injected_acks, replies;
  auto bus = h.connect_bus("observer");
  bus->subscribe("_INBOX.central.>", [&](host::Incoming&& in) { central_acks.add(in); });
  bus->subscribe("_INBOX.ship1.>", [&](host::Incoming&& in) { ship1_acks.add(in); });
  const std::string inbox = "_INBOX.observer.acks";
  bus->subscribe(inbox + ".*", [&](host::Incoming&& in) { injected_acks.add(in); });
  bus->subscribe("bosun.req.central.none", [&](host::Incoming&& in) { replies.add(in); });
  ASSERT_TRUE(bus->flush(5s));

  // central's own ping: answered, acked by the reply alone.
  const json c0 = central.counters();
  auto finals = final_replies(central.send(json::array({message("ship1", "ping")})));
  ASSERT_EQ(finals.size(), 1u);
  EXPECT_EQ(finals[0].value("data", ""), "pong");
  std::this_thread::sleep_for(1500ms);  // past the 1 s ACKTimeout: a resend would show
  const json c = central.counters();
  EXPECT_EQ(c["acked"].get<int64_t>() - c0["acked"].get<int64_t>(), 1) << c.dump();
  EXPECT_EQ(c["retried"], c0["retried"]) << c.dump();
  EXPECT_TRUE(central_acks.get().empty())
      << "ship1 ACKed a ping it answered: " << central_acks.get()[0].second;
  ASSERT_EQ(replies.get().size(), 1u);
  EXPECT_EQ(replies.replies_asked()[0], "") << "the pong asked for an ACK";
  EXPECT_TRUE(ship1_acks.get().empty()) << "central ACKed the pong: " << ship1_acks.get()[0].second;
  EXPECT_EQ(ship1.counters()["retried"], 0) << ship1.counters().dump();

  // A ping injected as central's: no ACK, a reply; the same again: an ACK.
  const std::string subject = "bosun.req.ship1.ping";
  json p = json::parse(wire_message("central", "ship1", "ping"));
  const std::string id = p["id"];
  const std::string wire = sealed_by(central, subject, p.dump());
  const size_t before = replies.get().size();  // central's own ping's
  ASSERT_TRUE(bus->publish(subject, wire, inbox + "." + id));
  ASSERT_TRUE(wait_until([&] { return replies.get().size() > before; }, 10s));
  std::this_thread::sleep_for(300ms);
  EXPECT_TRUE(injected_acks.get().empty()) << injected_acks.get()[0].second;
  ASSERT_TRUE(bus->publish(subject, wire, inbox + "." + id));
  ASSERT_TRUE(wait_until([&] { return !injected_acks.get().empty(); }, 10s));
  EXPECT_EQ(injected_acks.get()[0], std::make_pair(inbox + "." + id, std::string("ACK")));
  ASSERT_TRUE(wait_until([&] { return replies.get().size() > before + 1; }, 10s))
      << "the resent copy got no reply";
  std::this_thread::sleep_for(300ms);
  auto seen = replies.get();
  ASSERT_EQ(seen.size(), before + 2);
  // The same reply both times: the same message, not a second run.
  json first = json::parse(seen[before].second), again = json::parse(seen[before + 1].second);
  EXPECT_EQ(first["inReplyTo"], id);
  EXPECT_EQ(again, first);
  EXPECT_EQ(ship1.counter("duplicates"), 1u);
}

TEST(Messaging, ADuplicateOnTheBusIsAckedTwiceAndRunOnce) {
  ClusterHarness h;
  ClusterNode& central = h.add_node("central");
  ClusterNode& ship1 = h.add_node("ship1");
  ship1.add_module(fixture_module("fx_counter"));
  central.start();
  ship1.start();
  host::Transport bus = raw_connection(h.servers());
  bus.connect(false);

  std::string copy = sealed_by(
      central, "bosun.req.ship1.count",
      wire_message(
          "central", "ship1", "count",
          {{"replyMethod", "to_file_append"}, {"directory", "dup"}, {"fileName", "replies.txt"}}));
  for (int i = 0; i < 2; ++i) {
    auto answer = bus.request("bosun.req.ship1.count", copy, 5s);
    ASSERT_TRUE(answer.has_value()) << "copy " << i << ": no ACK";
    EXPECT_EQ(envelope_body(*answer), "ACK") << "copy " << i;
  }
  // The counter moves just after the ACK is published.
  EXPECT_TRUE(wait_until([&] { return ship1.counter("duplicates") >= 1; }, 5s));
  EXPECT_EQ(ship1.counter("duplicates"), 1u);

  // The reply of the one run reaches central's reply method.
  fs::path replies = central.data_dir() / "dup" / "replies.txt";
  EXPECT_TRUE(wait_until([&] { return !file_lines(replies).empty(); }, 10s));
  std::this_thread::sleep_for(1s);
  EXPECT_EQ(file_lines(replies), std::vector<std::string>{"1"});
  EXPECT_EQ(count_once(central, "ship1"), 2);
}

TEST(Messaging, ABurstFromOneSenderIsAckedInBatchesEachIdOnce) {
  ClusterHarness h;
  ClusterNode& central = h.add_node("central");
  ClusterNode& ship1 = h.add_node("ship1");
  // A method that runs on a worker, so that each is ACKed (a quick built-in
  // is ACKed by its reply).
  ship1.add_module(fixture_module("fx_counter"));
  central.start();
  ship1.start();
  // Before the bus: its callbacks may run until it is gone.
  std::mutex mu;
  std::vector<std::pair<std::string, std::string>> acks;  // subject, payload
  host::Transport bus = raw_connection(h.servers());
  bus.connect(false);
  const std::string inbox = bus.new_inbox();
  bus.subscribe(inbox + ".*", [&](host::Incoming&& in) {
    std::lock_guard<std::mutex> lock(mu);
    acks.emplace_back(in.subject, envelope_body(in.data));
  });
  // Published back to back, faster than the node takes them, so they queue
  // on its subscription and are recorded and ACKed a group at a time.
  constexpr int kBurst = 300;
  std::set<std::string> sent;
  for (int i = 0; i < kBurst; ++i) {
    std::string id = host::new_message_id();
    host::Message m;
    m.id = id;
    m.from_node = "central";
    m.to_node = "ship1";
    m.method = "count";
    m.sent_at_ms = host::now_ms();
    sent.insert(id);
    ASSERT_TRUE(bus.publish("bosun.req.ship1.count",
                            sealed_by(central, "bosun.req.ship1.count", host::to_json(m).dump()),
                            inbox + "." + id));
  }
  auto acked = [&] {
    std::multiset<std::string> ids;
    std::lock_guard<std::mutex> lock(mu);
    for (const auto& [subject, payload] : acks) {
      if (payload == "ACK") {
        ids.insert(subject.substr(subject.rfind('.') + 1));
      } else if (payload.rfind("ACK ", 0) == 0) {
        std::istringstream words(payload.substr(4));
        for (std::string id; words >> id;) ids.insert(id);
      } else {
        ADD_FAILURE() << "unexpected answer " << payload << " on " << subject;
      }
    }
    return ids;
  };
  ASSERT_TRUE(wait_until([&] { return acked().size() >= sent.size(); }, 20s))
      << acked().size() << " of " << sent.size() << " ACKed";
  std::this_thread::sleep_for(300ms);  // nothing more may come
  auto ids = acked();
  EXPECT_EQ(std::set<std::string>(ids.begin(), ids.end()), sent);
  EXPECT_EQ(ids.size(), sent.size()) << "an id was ACKed twice";
  size_t messages;
  {
    std::lock_guard<std::mutex> lock(mu);
    messages = acks.size();
  }
  EXPECT_LT(messages, sent.size()) << "no two ACKs shared a message";
  std::printf("%zu ACKs in %zu messages\n", ids.size(), messages);
  EXPECT_TRUE(wait_until([&] { return ship1.counter("received") >= kBurst; }, 10s));
  EXPECT_EQ(ship1.counter("duplicates"), 0u);
  auto finals = final_replies(central.send(json::array({message("ship1", "ping")})));
  ASSERT_EQ(finals.size(), 1u);
  EXPECT_EQ(finals[0]["data"], "pong");
}

}  // namespace
}  // namespace bosun::test
