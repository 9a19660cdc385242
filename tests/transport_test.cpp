// bosun::host::Transport against a real nats-server on loopback.
#include "bosun/host/transport.hpp"

#include "nats_server.hpp"
#include "test_util.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <thread>
#include <vector>

namespace bosun::host {
namespace {

using namespace std::chrono_literals;
using test::NatsCluster;
using test::NatsServer;
using test::wait_until;

BrokerConfig broker(std::vector<std::string> servers) {
  BrokerConfig c;
  c.servers = std::move(servers);
  c.connect_timeout_ms = 2000;
  c.reconnect_wait_ms = 50;
  c.reconnect_jitter_ms = 10;
  c.reconnect_jitter_tls_ms = 10;
  return c;
}

// Collects what a subscription receives.
struct Inbox {
  std::mutex mu;
  std::vector<Incoming> got;
  Transport::Handler handler() {
    return [this](Incoming&& in) {
      std::lock_guard lock(mu);
      got.push_back(std::move(in));
    };
  }
  size_t size() {
    std::lock_guard lock(mu);
    return got.size();
  }
  Incoming at(size_t i) {
    std::lock_guard lock(mu);
    return got.at(i);
  }
};

// Echoes every request back with "echo:" in front.
Transport::SubscriptionId echo(Transport& t, const std::string& subject) {
  return t.subscribe(subject, [&t](Incoming&& in) {
    if (!in.reply.empty()) t.publish(in.reply, "echo:" + in.data);
  });
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no exception)";
}

TEST(Subjects, BuildsRequestAndEventSubjects) {
  EXPECT_EQ(request_subject("bosun", "ship1", "cli_command"), "bosun.req.ship1.cli_command");
  EXPECT_EQ(event_subject("bosun", "ship1", "update_result"), "bosun.evt.ship1.update_result");
  EXPECT_EQ(request_subject("acme.bosun", "n", "m"), "acme.bosun.req.n.m");
}

TEST(Subjects, RejectsBadPartsNamingThem) {
  EXPECT_THROW(request_subject("bosun", "a.b", "m"), std::invalid_argument);
  EXPECT_EQ(error_of([] { request_subject("bosun", "a.b", "m"); }),
            "request subject: node name \"a.b\" is not a valid token (1-128 characters of A-Z a-z "
            "0-9 _ -)");
  EXPECT_NE(error_of([] { request_subject("bosun", "ship1", "*"); }).find("method \"*\""),
            std::string::npos);
  EXPECT_NE(error_of([] { request_subject("bosun", "ship1", ""); }).find("method \"\""),
            std::string::npos);
  EXPECT_NE(error_of([] { event_subject("bosun", "ship 1", "beat"); }).find("node name \"ship 1\""),
            std::string::npos);
  EXPECT_NE(error_of([] { event_subject("bosun", "ship1", ">"); }).find("event \">\""),
            std::string::npos);
  EXPECT_EQ(error_of([] { request_subject("bo..sun", "n", "m"); }),
            "request subject: subject prefix \"bo..sun\" has an invalid token \"\"");
}

TEST(NKey, DerivesThePublicKeyFromASeed) {
  // The user nkey pair from the NATS documentation.
  EXPECT_EQ(nkey_public_from_seed("SUACSSL3UAHUDXKFSNVUZRF5UHPMWZ6BFDTJ7M6USDXIEDNPPQYYYCU3VY"),
            "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4");
  EXPECT_EQ(error_of([] {
              nkey_public_from_seed("SUACSSL3UAHUDXKFSNVUZRF5UHPMWZ6BFDTJ7M6USDXIEDNPPQYYYCU3VA");
            }),
            "nkey seed has a bad checksum");
  EXPECT_EQ(error_of([] { nkey_public_from_seed("not-a-seed"); }),
            "nkey seed is not a valid seed encoding");
}

TEST(Transport, ConnectFailsWithServersAndReason) {
  std::string url = "nats://127.0.0.1:" + std::to_string(test::free_port());
  Transport t(broker({url}), "n1");
  std::string err = error_of([&] { t.connect(); });
  EXPECT_EQ(err, "cannot connect to NATS at " + url + ": No server available for connection");
  EXPECT_FALSE(t.connected());
  EXPECT_FALSE(t.publish("x", "y"));
}

TEST(Transport, StandaloneConfigCannotConnect) {
  Transport t(BrokerConfig{}, "n1");
  EXPECT_EQ(error_of([&] { t.connect(); }),
            "connect: no broker servers configured (standalone node)");
}

TEST(Transport, MissingSeedFileIsNamed) {
  NatsServer server;
  auto cfg = broker({server.url()});
  cfg.nkey_seed_file = "/nonexistent/bosun.nk";
  Transport t(cfg, "n1");
  EXPECT_EQ(error_of([&] { t.connect(); }), "cannot read nkey seed file /nonexistent/bosun.nk");
}

TEST(Transport, MissingTlsFileIsNamed) {
  auto cfg = broker({"nats://127.0.0.1:4222"});
  cfg.tls.ca_file = "/nonexistent/ca.pem";
  Transport t(cfg, "n1");
  EXPECT_EQ(error_of([&] { t.connect(); }), "tls ca file /nonexistent/ca.pem: no such file");
}

TEST(Transport, PubSubRoundTrip) {
  NatsServer server;
  Transport a(broker({server.url()}), "a");
  Transport b(broker({server.url()}), "b");
  a.connect();
  b.connect();
  EXPECT_TRUE(a.connected());
  EXPECT_EQ(a.connected_url(), server.url());

  Inbox inbox;
  b.subscribe("bosun.req.b.ping", inbox.handler());
  ASSERT_TRUE(b.flush(2s));
  std::string binary("x\0y", 3);
  ASSERT_TRUE(a.publish("bosun.req.b.ping", binary, "reply.here"));
  ASSERT_TRUE(wait_until([&] { return inbox.size() == 1; }, 5s));
  Incoming in = inbox.at(0);
  EXPECT_EQ(in.subject, "bosun.req.b.ping");
  EXPECT_EQ(in.reply, "reply.here");
  EXPECT_EQ(in.data, binary);
}

TEST(Transport, RequestReplyAndNoResponder) {
  NatsServer server;
  Transport a(broker({server.url()}), "a");
  Transport b(broker({server.url()}), "b");
  a.connect();
  b.connect();
  echo(b, "svc.echo");
  ASSERT_TRUE(b.flush(2s));
  EXPECT_EQ(a.request("svc.echo", "hi", 2s), "echo:hi");
  auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(a.request("svc.nobody", "hi", 2s), std::nullopt);
  // The server answers "no responders" at once: no need to wait for the timeout.
  EXPECT_LT(std::chrono::steady_clock::now() - start, 1500ms);
  std::string inbox = a.new_inbox();
  EXPECT_EQ(inbox.rfind("_INBOX.", 0), 0u) << inbox;
  EXPECT_NE(inbox, a.new_inbox());
}

TEST(Transport, UnsubscribeStopsDeliveries) {
  NatsServer server;
  Transport t(broker({server.url()}), "a");
  t.connect();
  Inbox inbox;
  auto id = t.subscribe("s", inbox.handler());
  ASSERT_TRUE(t.flush(2s));
  t.publish("s", "1");
  ASSERT_TRUE(wait_until([&] { return inbox.size() == 1; }, 5s));
  t.unsubscribe(id);
  t.publish("s", "2");
  ASSERT_TRUE(t.flush(2s));
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(inbox.size(), 1u);
  t.unsubscribe(id);  // twice is harmless
}

TEST(Transport, HandlerExceptionIsReported) {
  NatsServer server;
  std::mutex mu;
  std::vector<std::string> errors;
  TransportCallbacks cbs;
  cbs.on_error = [&](std::string e) {
    std::lock_guard lock(mu);
    errors.push_back(std::move(e));
  };
  Transport t(broker({server.url()}), "a", cbs);
  t.connect();
  t.subscribe("boom", [](Incoming&&) { throw std::runtime_error("kaput"); });
  Inbox after;
  t.subscribe("after", after.handler());
  ASSERT_TRUE(t.flush(2s));
  t.publish("boom", "");
  t.publish("after", "");
  ASSERT_TRUE(wait_until([&] {
    std::lock_guard lock(mu);
    return !errors.empty();
  }));
  std::lock_guard lock(mu);
  EXPECT_EQ(errors.at(0), "handler threw: kaput");
  EXPECT_TRUE(wait_until([&] { return after.size() == 1; }, 5s));
}

TEST(Transport, NoHandlerRunsAfterDestruction) {
  NatsServer server;
  std::atomic<int> calls{0};
  {
    Transport t(broker({server.url()}), "a");
    t.connect();
    t.subscribe("slow", [&](Incoming&&) {
      std::this_thread::sleep_for(50ms);
      ++calls;
    });
    ASSERT_TRUE(t.flush(2s));
    for (int i = 0; i < 20; ++i) t.publish("slow", "x");
    ASSERT_TRUE(t.flush(2s));
    ASSERT_TRUE(wait_until([&] { return calls.load() >= 1; }, 5s));
  }
  int at_destruction = calls.load();
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(calls.load(), at_destruction);
}

TEST(Transport, UserPasswordAuth) {
  NatsServer server("authorization { user: alice, password: \"s3cret\" }");
  auto good = broker({server.url()});
  good.user = "alice";
  good.password = "s3cret";
  Transport ok(good, "a");
  ok.connect();
  EXPECT_TRUE(ok.connected());

  auto bad = good;
  bad.password = "wrong";
  Transport denied(bad, "b");
  std::string err = error_of([&] { denied.connect(); });
  EXPECT_EQ(err.rfind("cannot connect to NATS at " + server.url() + ": Authorization Violation", 0),
            0u)
      << err;
  EXPECT_EQ(err.find("wrong"), std::string::npos) << "the password leaked: " << err;
}

TEST(Transport, TokenAuth) {
  NatsServer server("authorization { token: \"t0ken\" }");
  auto cfg = broker({server.url()});
  cfg.token = "t0ken";
  Transport ok(cfg, "a");
  ok.connect();
  EXPECT_TRUE(ok.connected());
  cfg.token = "other";
  Transport denied(cfg, "b");
  EXPECT_NE(error_of([&] { denied.connect(); }).find("Authorization Violation"), std::string::npos);
}

TEST(Transport, NKeySeedFileAuth) {
  NatsServer server(
      "authorization { users = [ { nkey: UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4 "
      "} ] }");
  test::TempDir dir;
  test::write_file(dir / "user.nk", "SUACSSL3UAHUDXKFSNVUZRF5UHPMWZ6BFDTJ7M6USDXIEDNPPQYYYCU3VY\n");
  auto cfg = broker({server.url()});
  cfg.nkey_seed_file = dir / "user.nk";
  Transport t(cfg, "a");
  t.connect();
  EXPECT_TRUE(t.connected());
  echo(t, "self");
  EXPECT_EQ(t.request("self", "n", 2s), "echo:n");

  Transport anonymous(broker({server.url()}), "b");
  EXPECT_NE(error_of([&] { anonymous.connect(); }).find("Authorization Violation"),
            std::string::npos);
}

// A CA and a server certificate for 127.0.0.1, made with the openssl CLI.
void make_certs(const test::TempDir& dir) {
  auto run = [](const std::vector<std::string>& argv) {
    std::string out;
    ASSERT_EQ(test::run_command(argv, &out), 0) << out;
  };
  auto p = [&](const char* name) { return (dir / name).string(); };
  test::write_file(dir / "ext.cnf", "subjectAltName=IP:127.0.0.1,DNS:localhost\n");
  run({"openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
       "-nodes", "-keyout", p("ca.key"), "-out", p("ca.pem"), "-days", "2", "-subj",
       "/CN=bosun-test-ca"});
  run({"openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
       "-keyout", p("server.key"), "-out", p("server.csr"), "-subj", "/CN=127.0.0.1"});
  run({"openssl", "x509", "-req", "-in", p("server.csr"), "-CA", p("ca.pem"), "-CAkey", p("ca.key"),
       "-CAcreateserial", "-out", p("server.pem"), "-days", "2", "-extfile", p("ext.cnf")});
  // A second CA that did not sign the server's certificate.
  run({"openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
       "-nodes", "-keyout", p("other.key"), "-out", p("other.pem"), "-days", "2", "-subj",
       "/CN=other-ca"});
}

TEST(Transport, TlsWithCa) {
  test::TempDir dir;
  make_certs(dir);
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  NatsServer server("tls { cert_file: \"" + (dir / "server.pem").string() + "\", key_file: \"" +
                    (dir / "server.key").string() + "\" }");
  auto cfg = broker({server.url()});
  cfg.tls.ca_file = dir / "ca.pem";
  Transport t(cfg, "a");
  t.connect();
  EXPECT_TRUE(t.connected());
  echo(t, "tls.echo");
  EXPECT_EQ(t.request("tls.echo", "s", 2s), "echo:s");

  cfg.tls.ca_file = dir / "other.pem";
  Transport untrusted(cfg, "b");
  std::string err = error_of([&] { untrusted.connect(); });
  EXPECT_EQ(err.rfind("cannot connect to NATS at " + server.url() + ": ", 0), 0u) << err;
  EXPECT_NE(err.find("SSL handshake error"), std::string::npos) << err;

  // The server asks for TLS, so nats.c tries it anyway, against the system CAs.
  Transport plain(broker({server.url()}), "c");
  err = error_of([&] { plain.connect(); });
  EXPECT_EQ(err.rfind("cannot connect to NATS at " + server.url() + ": SSL handshake error", 0), 0u)
      << err;
}

TEST(Transport, RetryOnFailedConnectComesUpInBackground) {
  int port = test::free_port();
  std::atomic<int> connected_calls{0};
  TransportCallbacks cbs;
  cbs.on_connected = [&] { ++connected_calls; };
  Transport t(broker({"nats://127.0.0.1:" + std::to_string(port)}), "early", cbs);
  auto start = std::chrono::steady_clock::now();
  t.connect(/*retry_on_failed=*/true);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 1s);
  EXPECT_FALSE(t.connected());
  Inbox inbox;
  t.subscribe("early.s", inbox.handler());  // sent once the connection is up

  NatsServer::Options o;
  o.port = port;
  NatsServer server(o);
  ASSERT_TRUE(wait_until([&] { return t.connected(); }, 10s));
  EXPECT_TRUE(wait_until([&] { return connected_calls.load() == 1; }, 5s));
  ASSERT_TRUE(wait_until(
      [&] {
        t.publish("early.s", "x");
        return inbox.size() > 0;
      },
      5s, 50ms));
}

TEST(Transport, ClosesQuicklyWhileStillRetrying) {
  auto start = std::chrono::steady_clock::now();
  {
    Transport t(broker({"nats://127.0.0.1:" + std::to_string(test::free_port())}), "never");
    t.connect(/*retry_on_failed=*/true);
    t.subscribe("x", [](Incoming&&) {});
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);
}

TEST(Transport, ReconnectsAfterServerRestart) {
  NatsServer server;
  std::atomic<int> disconnected{0}, reconnected{0};
  TransportCallbacks cbs;
  cbs.on_disconnected = [&] { ++disconnected; };
  cbs.on_reconnected = [&] { ++reconnected; };
  Transport a(broker({server.url()}), "a", cbs);
  Transport b(broker({server.url()}), "b");
  a.connect();
  b.connect();
  echo(b, "svc");
  ASSERT_TRUE(b.flush(2s));
  ASSERT_EQ(a.request("svc", "1", 2s), "echo:1");
  EXPECT_EQ(a.reconnects(), 0u);

  server.restart();
  ASSERT_TRUE(wait_until([&] { return a.reconnects() == 1 && b.reconnects() == 1; }, 10s));
  EXPECT_TRUE(a.connected());
  EXPECT_GE(a.disconnects(), 1u);
  EXPECT_TRUE(wait_until([&] { return reconnected.load() == 1 && disconnected.load() >= 1; }));
  // b's subscription was sent again on reconnect.
  ASSERT_TRUE(wait_until([&] { return a.request("svc", "2", 500ms) == "echo:2"; }, 10s, 50ms));
}

TEST(Transport, FailsOverInACluster) {
  NatsCluster cluster(3);
  auto urls = cluster.urls();
  // The client lists every server and, without randomization, sits on the first.
  Transport client(broker(urls), "client");
  Transport responder(broker({urls[2]}), "responder");
  client.connect();
  responder.connect();
  ASSERT_EQ(client.connected_url(), urls[0]);
  echo(responder, "svc");
  ASSERT_TRUE(responder.flush(2s));
  // Routes take a moment to form and to carry the subscription interest.
  ASSERT_TRUE(wait_until([&] { return client.request("svc", "a", 500ms) == "echo:a"; }, 15s, 50ms))
      << cluster.server(0).log();

  cluster.kill(0);
  ASSERT_TRUE(wait_until([&] { return client.reconnects() == 1; }, 10s));
  EXPECT_EQ(client.connected_url(), urls[1]);
  ASSERT_TRUE(wait_until([&] { return client.request("svc", "b", 500ms) == "echo:b"; }, 10s, 50ms));
  for (int i = 0; i < 20; ++i) {
    EXPECT_EQ(client.request("svc", std::to_string(i), 2s), "echo:" + std::to_string(i));
  }
}

}  // namespace
}  // namespace bosun::host
