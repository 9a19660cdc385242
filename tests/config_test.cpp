// Config loading and validation (DESIGN §8): values, defaults, paths, and an
// error naming the exact JSON path for every kind of bad input.
#include "bosun/host/config.hpp"

#include <gtest/gtest.h>

#include <string>

#include "test_util.hpp"

namespace bosun::host {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using test::TempDir;
using test::write_file;

// The message of the ConfigError that parsing `doc` throws; fails the test if none.
std::string error_of(const json& doc, const fs::path& base = "/etc/bosun") {
  try {
    parse_config(doc, base);
  } catch (const ConfigError& e) {
    std::string what = e.what();
    // The message always starts with the path the error carries.
    EXPECT_EQ(what.rfind(e.json_path() + ": ", 0), 0u) << what;
    return what;
  }
  ADD_FAILURE() << "no ConfigError for " << doc.dump();
  return "";
}

// A minimal valid config with `section` merged in at the top level.
json with(const json& section) {
  json doc = {{"node", {{"name", "n1"}}}};
  doc.update(section);
  return doc;
}

const char* kDesignExample = R"({
  "node":       {"name": "ship1", "central": "central", "dataDir": "var/ship1"},
  "broker":     {"servers": ["nats://127.0.0.1:4222"]},
  "plugins":    {"dir": "build/plugins"},
  "extensions": {"vault": {"enabled": false}, "cli": {"settings": {}}},
  "defaults":   {"ackTimeout": 5, "retries": 3, "methodTimeout": 10},
  "security":   {"allow": {"central": ["*"], "ship2": ["relay"]}},
  "metrics":    {"listen": "127.0.0.1:9464"},
  "storage":    {"sync": "interval", "syncInterval": 100}
})";

TEST(Config, DesignExampleLoads) {
  TempDir dir;
  write_file(dir / "bosun.json", kDesignExample);
  Config c = load_config(dir / "bosun.json");

  EXPECT_EQ(c.file, dir / "bosun.json");
  EXPECT_EQ(c.node.name, "ship1");
  EXPECT_EQ(c.node.central, "central");
  EXPECT_EQ(c.node.data_dir, dir / "var/ship1");
  EXPECT_EQ(c.socket_path(), dir / "var/ship1/bosun.sock");
  EXPECT_EQ(c.broker.servers, std::vector<std::string>{"nats://127.0.0.1:4222"});
  EXPECT_FALSE(c.broker.standalone());
  EXPECT_EQ(c.plugins.dir, dir / "build/plugins");
  EXPECT_FALSE(c.extension("vault").enabled);
  EXPECT_TRUE(c.extension("cli").enabled);
  EXPECT_EQ(c.extension("cli").settings, json::object());
  EXPECT_TRUE(c.extension("tail").enabled);  // not named: enabled by default
  EXPECT_EQ(c.defaults.ack_timeout_s, 5);
  EXPECT_EQ(c.defaults.retries, 3);
  EXPECT_EQ(c.defaults.method_timeout_s, 10);
  EXPECT_EQ(c.security.allow.size(), 2u);
  EXPECT_EQ(c.security.allow.at("central"), std::vector<std::string>{"*"});
  EXPECT_EQ(c.security.allow.at("ship2"), std::vector<std::string>{"relay"});
  EXPECT_EQ(c.metrics.listen, "127.0.0.1:9464");
  EXPECT_EQ(c.storage.sync, SyncMode::interval);
  EXPECT_EQ(c.storage.sync_interval_ms, 100);
}

TEST(Config, EveryKeyIsRead) {
  json doc = json::parse(R"({
    "node": {"name": "edge-7", "central": "hq_1"},
    "broker": {"servers": ["tls://user:secret@nats.example.com:4443", "nats://[::1]:4222"],
               "subjectPrefix": "acme", "user": "u", "password": "p", "token": "t",
               "nkeySeedFile": "keys/seed.nk", "credentialsFile": "/etc/nats/n.creds",
               "tls": {"caFile": "ca.pem", "certFile": "c.pem", "keyFile": "k.pem"},
               "connectTimeout": 1.5, "reconnectWait": 0, "reconnectJitter": 7,
               "reconnectJitterTLS": 70, "maxReconnects": 12},
    "plugins": {"requireSignature": true,
                "publisherKeys": ["11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="]},
    "extensions": {"relay": {"enabled": true, "settings": {"hops": 3}}},
    "defaults": {"ackTimeout": 0.25, "retries": 0, "methodTimeout": 60,
                 "replyACKTimeout": 2, "replyRetries": 9, "replyMethodTimeout": 0.5},
    "security": {"allow": {"*": ["ping", "hello"]}, "allowSkew": 30.5},
    "metrics": {"listen": ""},
    "storage": {"sync": "always", "syncInterval": 5, "mapSizeMB": 64},
    "log": {"level": "debug", "file": "log/bosun.log"},
    "host": {"workers": 2, "maxMessageBytes": 1024, "drainTimeout": 250}
  })");
  Config c = parse_config(doc, "/srv/bosun");

  EXPECT_EQ(c.node.central, "hq_1");
  EXPECT_EQ(c.node.data_dir, "/srv/bosun/var/edge-7");
  EXPECT_EQ(c.broker.servers.size(), 2u);
  EXPECT_EQ(c.broker.subject_prefix, "acme");
  EXPECT_EQ(c.broker.user, "u");
  EXPECT_EQ(c.broker.password, "p");
  EXPECT_EQ(c.broker.token, "t");
  EXPECT_EQ(c.broker.nkey_seed_file, "/srv/bosun/keys/seed.nk");
  EXPECT_EQ(c.broker.credentials_file, "/etc/nats/n.creds");
  EXPECT_EQ(c.broker.tls.ca_file, "/srv/bosun/ca.pem");
  EXPECT_EQ(c.broker.tls.cert_file, "/srv/bosun/c.pem");
  EXPECT_EQ(c.broker.tls.key_file, "/srv/bosun/k.pem");
  EXPECT_TRUE(c.broker.tls.enabled());
  EXPECT_EQ(c.broker.connect_timeout_ms, 1500);
  EXPECT_EQ(c.broker.reconnect_wait_ms, 0);
  EXPECT_EQ(c.broker.reconnect_jitter_ms, 7);
  EXPECT_EQ(c.broker.reconnect_jitter_tls_ms, 70);
  EXPECT_EQ(c.broker.max_reconnects, 12);
  EXPECT_TRUE(c.plugins.require_signature);
  EXPECT_EQ(c.plugins.publisher_keys.size(), 1u);
  EXPECT_EQ(c.extension("relay").settings, json({{"hops", 3}}));
  EXPECT_EQ(c.defaults.ack_timeout_s, 0.25);
  EXPECT_EQ(c.defaults.retries, 0);
  EXPECT_EQ(c.defaults.method_timeout_s, 60);
  EXPECT_EQ(c.defaults.reply_ack_timeout_s, 2);
  EXPECT_EQ(c.defaults.reply_retries, 9);
  EXPECT_EQ(c.defaults.reply_method_timeout_s, 0.5);
  EXPECT_EQ(c.security.allow.size(), 1u);  // a given table replaces the default
  EXPECT_EQ(c.security.allow.at("*"), (std::vector<std::string>{"ping", "hello"}));
  EXPECT_EQ(c.security.allow_skew_s, 30.5);
  EXPECT_EQ(c.metrics.listen, "");
  EXPECT_EQ(c.storage.sync, SyncMode::always);
  EXPECT_EQ(c.storage.sync_interval_ms, 5);
  EXPECT_EQ(c.storage.map_size_mb, 64);
  EXPECT_EQ(c.log.level, "debug");
  EXPECT_EQ(c.log.file, "/srv/bosun/log/bosun.log");
  EXPECT_EQ(c.host.workers, 2);
  EXPECT_EQ(c.host.max_message_bytes, 1024);
  EXPECT_EQ(c.host.drain_timeout_ms, 250);
}

TEST(Config, Defaults) {
  Config c = parse_config({{"node", {{"name", "n1"}}}}, "/etc/bosun");
  const Config d;
  EXPECT_EQ(c.file, fs::path());
  EXPECT_EQ(c.node.central, "central");
  EXPECT_EQ(c.node.data_dir, "/etc/bosun/var/n1");
  EXPECT_TRUE(c.broker.standalone());
  EXPECT_EQ(c.broker.subject_prefix, "bosun");
  EXPECT_FALSE(c.broker.tls.enabled());
  EXPECT_EQ(c.broker.connect_timeout_ms, d.broker.connect_timeout_ms);
  EXPECT_EQ(c.broker.max_reconnects, -1);
  EXPECT_EQ(c.plugins.dir, "/etc/bosun/plugins");
  EXPECT_FALSE(c.plugins.require_signature);
  EXPECT_TRUE(c.extensions.empty());
  EXPECT_TRUE(c.extension("anything").enabled);
  EXPECT_EQ(c.defaults.retries, 3);
  EXPECT_EQ(c.security.allow, d.security.allow);
  EXPECT_EQ(c.security.allow.at("central"), std::vector<std::string>{"*"});
  EXPECT_EQ(c.metrics.listen, "");
  EXPECT_EQ(c.storage.sync, SyncMode::interval);
  EXPECT_EQ(c.storage.sync_interval_ms, 100);
  EXPECT_EQ(c.log.level, "info");
  EXPECT_EQ(c.log.file, fs::path());
  EXPECT_EQ(c.host.max_message_bytes, d.host.max_message_bytes);
}

TEST(Config, RelativePathsCountFromTheConfigFolder) {
  TempDir dir;
  write_file(dir / "etc/node.json", R"({
    "node": {"name": "n1", "dataDir": "../data/./n1/"},
    "plugins": {"dir": "mods"},
    "log": {"file": "/var/log/bosun.log"}
  })");
  // The file is named through "..", and its paths still count from its real folder.
  Config c = load_config(dir / "etc/sub/../node.json");
  EXPECT_EQ(c.file, dir / "etc/node.json");
  EXPECT_EQ(c.node.data_dir, dir / "data/n1");
  EXPECT_EQ(c.plugins.dir, dir / "etc/mods");
  EXPECT_EQ(c.log.file, "/var/log/bosun.log");
}

TEST(Config, UnknownKeys) {
  EXPECT_EQ(error_of(with({{"colour", 1}})), "$.colour: unknown key");
  EXPECT_EQ(error_of(with({{"storage", {{"syncIntervall", 100}}}})),
            "$.storage.syncIntervall: unknown key (did you mean \"syncInterval\"?)");
  EXPECT_EQ(error_of({{"node", {{"name", "n1"}, {"datadir", "x"}}}}),
            "$.node.datadir: unknown key (did you mean \"dataDir\"?)");
  EXPECT_EQ(error_of(with({{"broker", {{"tls", {{"caFiles", "x"}}}}}})),
            "$.broker.tls.caFiles: unknown key (did you mean \"caFile\"?)");
  EXPECT_EQ(error_of(with({{"extensions", {{"cli", {{"enable", false}}}}}})),
            "$.extensions.cli.enable: unknown key (did you mean \"enabled\"?)");
  EXPECT_EQ(error_of(with({{"log", {{"a.b", 1}}}})), "$.log[\"a.b\"]: unknown key");
}

TEST(Config, WrongTypes) {
  EXPECT_EQ(error_of(with({{"defaults", {{"retries", "3"}}}})),
            "$.defaults.retries: expected an integer, got string");
  EXPECT_EQ(error_of(with({{"defaults", {{"retries", 1.5}}}})),
            "$.defaults.retries: expected an integer, got number");
  EXPECT_EQ(error_of(with({{"defaults", {{"ackTimeout", true}}}})),
            "$.defaults.ackTimeout: expected a number of seconds, got boolean");
  EXPECT_EQ(error_of(with({{"broker", {{"servers", {"nats://a:1", 5}}}}})),
            "$.broker.servers[1]: expected a string, got integer");
  EXPECT_EQ(error_of(with({{"broker", {{"servers", "nats://a:1"}}}})),
            "$.broker.servers: expected an array of strings, got string");
  EXPECT_EQ(error_of(with({{"security", {{"allow", {{"ship2", {"relay", nullptr}}}}}}})),
            "$.security.allow.ship2[1]: expected a string, got null");
  EXPECT_EQ(error_of(with({{"extensions", {{"cli", {{"settings", json::array()}}}}}})),
            "$.extensions.cli.settings: expected an object, got array");
  EXPECT_EQ(error_of(with({{"plugins", {{"requireSignature", "yes"}}}})),
            "$.plugins.requireSignature: expected a boolean, got string");
  EXPECT_EQ(error_of({{"node", "n1"}}), "$.node: expected an object, got string");
  EXPECT_EQ(error_of(json::array()), "$: expected an object, got array");
  EXPECT_EQ(error_of(json()), "$: expected an object, got null");
}

TEST(Config, OutOfRange) {
  EXPECT_EQ(error_of(with({{"storage", {{"syncInterval", 0}}}})),
            "$.storage.syncInterval: must be >= 1, got 0");
  EXPECT_EQ(error_of(with({{"storage", {{"mapSizeMB", 0}}}})),
            "$.storage.mapSizeMB: must be >= 1, got 0");
  EXPECT_EQ(error_of(with({{"broker", {{"connectTimeout", 0}}}})),
            "$.broker.connectTimeout: must be > 0, got 0");
  EXPECT_EQ(error_of(with({{"broker", {{"maxReconnects", -2}}}})),
            "$.broker.maxReconnects: must be >= -1, got -2");
  EXPECT_EQ(error_of(with({{"defaults", {{"methodTimeout", -0.5}}}})),
            "$.defaults.methodTimeout: must be >= 0, got -0.5");
  EXPECT_EQ(error_of(with({{"security", {{"allowSkew", 0}}}})),
            "$.security.allowSkew: must be > 0, got 0");
  EXPECT_EQ(error_of(with({{"host", {{"maxMessageBytes", 100}}}})),
            "$.host.maxMessageBytes: must be >= 1024, got 100");
  EXPECT_EQ(error_of(with({{"defaults", {{"retries", json::parse("18446744073709551615")}}}})),
            "$.defaults.retries: must be <= 2147483647, got 18446744073709551615");
}

TEST(Config, BadChoices) {
  EXPECT_EQ(error_of(with({{"storage", {{"sync", "sometimes"}}}})),
            "$.storage.sync: must be one of \"interval\", \"always\", got \"sometimes\"");
  EXPECT_EQ(error_of(with({{"log", {{"level", "verbose"}}}})),
            "$.log.level: must be one of \"trace\", \"debug\", \"info\", \"warn\", \"error\", "
            "\"off\", got \"verbose\"");
}

TEST(Config, BadNames) {
  const std::string rule = " (1-128 characters of A-Z a-z 0-9 _ -)";
  EXPECT_EQ(error_of({{"node", {{"name", "ship.1"}}}}),
            "$.node.name: \"ship.1\" is not a valid node name" + rule);
  EXPECT_EQ(error_of({{"node", {{"name", "n1"}, {"central", "*"}}}}),
            "$.node.central: \"*\" is not a valid node name" + rule);
  EXPECT_EQ(error_of(with({{"broker", {{"subjectPrefix", "a b"}}}})),
            "$.broker.subjectPrefix: \"a b\" is not a valid subject prefix" + rule);
  EXPECT_EQ(error_of(with({{"extensions", {{"my.plugin", json::object()}}}})),
            "$.extensions[\"my.plugin\"]: \"my.plugin\" is not a valid plugin name" + rule);
  EXPECT_EQ(error_of(with({{"security", {{"allow", {{"ship>", {"*"}}}}}}})),
            "$.security.allow[\"ship>\"]: \"ship>\" is not a node name or \"*\"" + rule);
  EXPECT_EQ(error_of(with({{"security", {{"allow", {{"ship2", {"relay", "a.*"}}}}}}})),
            "$.security.allow.ship2[1]: \"a.*\" is not a method name or \"*\"" + rule);
}

TEST(Config, MissingNodeName) {
  EXPECT_EQ(error_of(json::object()), "$.node.name: missing (every node needs a name)");
  EXPECT_EQ(error_of({{"node", json::object()}}), "$.node.name: missing (every node needs a name)");
}

TEST(Config, ServerUrls) {
  auto servers = [](const std::string& url) {
    return with({{"broker", {{"servers", {"nats://ok:4222", url}}}}});
  };
  EXPECT_EQ(error_of(servers("127.0.0.1:4222")),
            "$.broker.servers[1]: expected \"nats://host:port\" or \"tls://host:port\"");
  EXPECT_EQ(error_of(servers("http://h:80")),
            "$.broker.servers[1]: unknown scheme \"http\" (expected nats or tls)");
  EXPECT_EQ(error_of(servers("nats://host")), "$.broker.servers[1]: missing \":port\"");
  EXPECT_EQ(error_of(servers("nats://:4222")), "$.broker.servers[1]: missing host");
  EXPECT_EQ(error_of(servers("nats://h:99999")),
            "$.broker.servers[1]: port must be a number from 1 to 65535, got \"99999\"");
  EXPECT_EQ(error_of(servers("nats://::1:4222")),
            "$.broker.servers[1]: an IPv6 address needs brackets: [addr]:port");
  EXPECT_EQ(error_of(servers("nats://a b:1")),
            "$.broker.servers[1]: bad character in host \"a b\"");
  // The password in a URL never reaches the message.
  std::string e = error_of(servers("nats://me:hunter2@h:x"));
  EXPECT_EQ(e, "$.broker.servers[1]: port must be a number from 1 to 65535, got \"x\"");

  EXPECT_NO_THROW(parse_config(servers("tls://me:hunter2@[::1]:4443"), "/"));
}

TEST(Config, CrossChecks) {
  EXPECT_EQ(error_of(with({{"metrics", {{"listen", "9464"}}}})),
            "$.metrics.listen: missing \":port\"");
  EXPECT_EQ(error_of(with({{"broker", {{"tls", {{"certFile", "c.pem"}}}}}})),
            "$.broker.tls: certFile and keyFile must be given together");
  EXPECT_EQ(error_of(with({{"plugins", {{"requireSignature", true}}}})),
            "$.plugins.publisherKeys: requireSignature is true but no publisher key is trusted");
  EXPECT_EQ(error_of(with({{"plugins", {{"publisherKeys", {"not-a-key"}}}}})),
            "$.plugins.publisherKeys[0]: expected an Ed25519 public key in base64 (44 characters)");
  EXPECT_EQ(error_of({{"node", {{"name", "n1"}, {"dataDir", ""}}}}),
            "$.node.dataDir: must not be empty");
  EXPECT_EQ(error_of(with({{"log", {{"file", std::string("a\0b", 3)}}}})),
            "$.log.file: a path must not contain a NUL character");
  std::string e = error_of({{"node", {{"name", "n1"}, {"dataDir", "/" + std::string(120, 'd')}}}});
  EXPECT_NE(e.find("$.node.dataDir: too long"), std::string::npos) << e;
}

TEST(Config, JsonSyntaxErrorNamesFileAndLine) {
  TempDir dir;
  const fs::path file = dir / "bad.json";
  write_file(file, "{\n  \"node\": {\"name\": \"n1\"},\n  oops\n}\n");
  try {
    load_config(file);
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.json_path(), "$");
    std::string what = e.what();
    EXPECT_EQ(what.rfind("$: " + file.string() + ": parse error at line 3, column 3:", 0), 0u)
        << what;
    EXPECT_EQ(what.find("json.exception"), std::string::npos) << what;
  }
}

TEST(Config, DuplicateKeyIsAnError) {
  TempDir dir;
  const fs::path file = dir / "dup.json";
  write_file(file, R"({"node": {"name": "n1"},
    "extensions": {"cli": {"settings": {"list": [1, {"k": 1, "k": 2}]}}}})");
  try {
    load_config(file);
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.json_path(), "$.extensions.cli.settings.list[1].k");
    EXPECT_EQ(std::string(e.what()),
              "$.extensions.cli.settings.list[1].k: duplicate key in " + file.string());
  }
}

TEST(Config, MissingFile) {
  TempDir dir;
  const fs::path file = dir / "nope.json";
  try {
    load_config(file);
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.json_path(), "$");
    EXPECT_EQ(std::string(e.what()),
              "$: cannot read " + file.string() + ": No such file or directory");
  }
  try {
    load_config(dir.path());  // a folder, not a file
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()), "$: cannot read " + dir.path().string() + ": Is a directory");
  }
}

TEST(Config, ErrorsInLoadedFilesCarryTheirPath) {
  TempDir dir;
  write_file(dir / "c.json", R"({"node": {"name": "n1"}, "storage": {"syncInterval": 0}})");
  try {
    load_config(dir / "c.json");
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.json_path(), "$.storage.syncInterval");
  }
}

TEST(Config, DefaultTextRoundTrips) {
  const std::string text = default_config_text("ship1");
  json doc = json::parse(text);
  for (const char* key :
       {"node", "broker", "plugins", "extensions", "defaults", "security", "metrics", "storage"}) {
    EXPECT_TRUE(doc.contains(key)) << key;
  }
  EXPECT_EQ(doc["broker"]["servers"], json::array());
  EXPECT_EQ(doc["defaults"]["ackTimeout"], 5);
  EXPECT_EQ(doc["storage"]["syncInterval"], 100);

  TempDir dir;
  write_file(dir / "bosun.json", text);
  Config c = load_config(dir / "bosun.json");
  const Config d;
  EXPECT_EQ(c.node.name, "ship1");
  EXPECT_EQ(c.node.data_dir, dir / "var/ship1");
  EXPECT_EQ(c.plugins.dir, dir / "plugins");
  EXPECT_TRUE(c.broker.standalone());
  EXPECT_EQ(c.broker.connect_timeout_ms, d.broker.connect_timeout_ms);
  EXPECT_EQ(c.broker.reconnect_wait_ms, d.broker.reconnect_wait_ms);
  EXPECT_EQ(c.broker.reconnect_jitter_tls_ms, d.broker.reconnect_jitter_tls_ms);
  EXPECT_EQ(c.broker.max_reconnects, d.broker.max_reconnects);
  EXPECT_FALSE(c.broker.tls.enabled());
  EXPECT_EQ(c.defaults.reply_method_timeout_s, d.defaults.reply_method_timeout_s);
  EXPECT_EQ(c.security.allow, d.security.allow);
  EXPECT_EQ(c.security.allow_skew_s, d.security.allow_skew_s);
  EXPECT_EQ(c.storage.map_size_mb, d.storage.map_size_mb);
  EXPECT_EQ(c.log.level, d.log.level);
  EXPECT_EQ(c.host.max_message_bytes, d.host.max_message_bytes);
  EXPECT_EQ(c.host.drain_timeout_ms, d.host.drain_timeout_ms);

  EXPECT_THROW(default_config_text("bad name"), ConfigError);
}

TEST(Config, Tokens) {
  EXPECT_TRUE(is_valid_token("ship1"));
  EXPECT_TRUE(is_valid_token("A-z_09"));
  EXPECT_TRUE(is_valid_token(std::string(128, 'a')));
  EXPECT_FALSE(is_valid_token(std::string(129, 'a')));
  EXPECT_FALSE(is_valid_token(""));
  for (const char* bad : {"a.b", "*", ">", "a b", "a\tb", "é", "a/b"}) {
    EXPECT_FALSE(is_valid_token(bad)) << bad;
  }
  EXPECT_FALSE(is_valid_token(std::string_view("a\0b", 3)));
}

}  // namespace
}  // namespace bosun::host
