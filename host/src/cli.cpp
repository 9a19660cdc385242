#include "bosun/host/cli.hpp"

#include <malloc.h>
#include <spdlog/spdlog.h>
#include <unistd.h>
#include <array>

#include <CLI/CLI.hpp>
#include <boost/asio.hpp>
#include <chrono>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>

#include "bosun/host/client.hpp"
#include "bosun/host/config.hpp"
#include "bosun/host/module.hpp"
#include "bosun/host/node.hpp"
#include "logging.hpp"
#include "signing.hpp"

namespace bosun::host {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Exit codes, the same for every subcommand (docs/operating.md lists them).
constexpr int kExitOk = 0;
constexpr int kExitFailed = 1;       // the operation failed, or a node answered with an error
constexpr int kExitUsage = 2;        // bad command line, config or input file: nothing was tried
constexpr int kExitUnreachable = 3;  // the local node's socket does not answer

const char* const kExitCodesHelp =
    "Exit codes: 0 ok; 1 the operation failed or a node answered with an error;\n"
    "2 usage, config or input file error (nothing was tried); 3 the node is not reachable\n"
    "(is `bosun run` running, and may this user open <dataDir>/bosun.sock?).";

// The local node could not be reached at all (exit code 3).
class NodeUnreachable : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

std::unique_ptr<NodeClient> connect_node(const fs::path& socket) {
  try {
    return std::make_unique<NodeClient>(socket);
  } catch (const std::exception& e) {
    throw NodeUnreachable(e.what());
  }
}

// Prints "<who>: <error>" and returns the exit code it stands for.
int report_failure(const std::string& who, const std::exception& e) {
  std::cerr << who << ": " << e.what() << "\n";
  return dynamic_cast<const NodeUnreachable*>(&e) != nullptr ? kExitUnreachable : kExitFailed;
}

Config load_or_exit(const std::string& file) {
  try {
    return load_config(file);
  } catch (const ConfigError& e) {
    std::cerr << "bosun: config error: " << e.what() << "\n";
    std::exit(kExitUsage);
  }
}

// Colour only on a terminal, and never when NO_COLOR is set (no-color.org).
bool colour() {
  static const bool on = ::isatty(1) != 0 && std::getenv("NO_COLOR") == nullptr;
  return on;
}

std::string paint(const std::string& text, const char* sgr) {
  return colour() ? std::string("\033[") + sgr + "m" + text + "\033[0m" : text;
}

// Green for the states that are fine, red for the ones that are not.
const char* state_colour(const std::string& state) {
  if (state == "active" || state == "updated" || state == "unchanged" || state == "online" ||
      state == "alive" || state == "ok") {
    return "32";
  }
  if (state == "failed" || state == "rolled_back" || state == "offline" || state == "missing" ||
      state == "dead" || state == "error") {
    return "31";
  }
  return "33";
}

std::string pad(const std::string& s, size_t w) {
  return s.size() >= w ? s : s + std::string(w - s.size(), ' ');
}

// Columns aligned on the text's own width; on a terminal the header is bold
// and the column `state_column` (if any) coloured by state_colour().
void print_table(const std::vector<std::vector<std::string>>& rows, int state_column = -1) {
  std::vector<size_t> widths;
  for (const auto& r : rows) {
    if (widths.size() < r.size()) widths.resize(r.size(), 0);
    for (size_t i = 0; i < r.size(); ++i) widths[i] = std::max(widths[i], r[i].size());
  }
  for (size_t n = 0; n < rows.size(); ++n) {
    std::string line;
    for (size_t i = 0; i < rows[n].size(); ++i) {
      std::string cell = i + 1 == rows[n].size() ? rows[n][i] : pad(rows[n][i], widths[i] + 2);
      if (n > 0 && static_cast<int>(i) == state_column) {
        cell = paint(rows[n][i], state_colour(rows[n][i])) + cell.substr(rows[n][i].size());
      }
      line += cell;
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    std::cout << (n == 0 ? paint(line, "1") : line) << "\n";
  }
}

int cmd_run(const std::string& config_file, const std::string& log_level) {
  // glibc gives each thread that allocates a malloc arena of its own, up to
  // 8 per core, and a mostly idle node keeps what each one fragmented: two
  // arenas held ~0.9 MiB less per node in a 100-node fleet, with no loss of
  // messaging throughput measured. MALLOC_ARENA_MAX, when set, decides.
  if (std::getenv("MALLOC_ARENA_MAX") == nullptr) mallopt(M_ARENA_MAX, 2);
  Config cfg = load_or_exit(config_file);
  try {
    setup_logging(log_level.empty() ? cfg.log.level : log_level, cfg.node.name, cfg.log.file);
  } catch (const std::exception& e) {
    std::cerr << "bosun run: cannot log to " << cfg.log.file.string() << " (log.file): " << e.what()
              << "\n";
    return kExitFailed;
  }
  try {
    Node node(cfg);
    node.start();
    node.run();
  } catch (const std::exception& e) {
    spdlog::critical("cannot run: {}", e.what());
    return kExitFailed;
  }
  return kExitOk;
}

// Progress replies ({"progress": {"done", "total", "unit", "what"}}, streamed
// by long calls such as a file copy) drawn as one line that rewrites itself
// on a terminal. Everything else, and every reply when stdout is no
// terminal, is printed as it is.
class ProgressLine {
 public:
  explicit ProgressLine(bool enabled) : enabled_(enabled) {}

  // Draws `line` if it is a progress reply; false when it is not one.
  bool update(const json& line) {
    if (!enabled_ || line.value("final", true)) return false;
    json data = json::parse(line.value("data", ""), nullptr, false);
    if (!data.is_object() || !data.contains("progress") || !data["progress"].is_object()) {
      return false;
    }
    const json& p = data["progress"];
    if (!p.contains("done") || !p["done"].is_number()) return false;
    auto now = std::chrono::steady_clock::now();
    std::string key = line.value("inReplyTo", "");
    Entry& e = entries_[key];
    double done = p["done"].get<double>();
    if (e.text.empty()) {
      e.first_at = now;
      e.first_done = done;
    }
    e.text = render(line.value("fromNode", "?"), p, done, e, now);
    draw();
    return true;
  }

  // Before anything else is printed: the progress line makes room.
  void clear() {
    if (!drawn_) return;
    std::cout << "\r\033[K";
    drawn_ = false;
  }

  // The call ended: its progress goes (the final reply says the rest).
  void end(const json& line) { entries_.erase(line.value("inReplyTo", "")); }

 private:
  struct Entry {
    std::chrono::steady_clock::time_point first_at;
    double first_done = 0;
    std::string text;
  };

  static std::string amount(double v, const std::string& unit) {
    char buf[64];
    if (unit == "bytes") {
      std::snprintf(buf, sizeof buf, "%.1f MiB", v / (1 << 20));
    } else {
      std::snprintf(buf, sizeof buf, "%.0f %s", v, unit.c_str());
    }
    return buf;
  }

  static std::string render(const std::string& node, const json& p, double done, const Entry& e,
                            std::chrono::steady_clock::time_point now) {
    std::string unit = p.value("unit", "");
    std::string text = "[" + node + "] ";
    if (p.contains("what") && p["what"].is_string()) text += p["what"].get<std::string>() + "  ";
    double total = p.contains("total") && p["total"].is_number() ? p["total"].get<double>() : 0;
    char buf[64];
    if (total > 0) {
      std::snprintf(buf, sizeof buf, "%3.0f%%  ", 100 * done / total);
      text += buf + amount(done, unit) + " of " + amount(total, unit);
    } else {
      text += amount(done, unit);
    }
    double secs = std::chrono::duration<double>(now - e.first_at).count();
    if (secs > 0.2 && done > e.first_done) {
      text += "  " + amount((done - e.first_done) / secs, unit) + "/s";
    }
    return text;
  }

  void draw() {
    std::string text;
    for (const auto& [id, e] : entries_) text += (text.empty() ? "" : "  |  ") + e.text;
    std::cout << "\r\033[K" << text << std::flush;
    drawn_ = true;
  }

  bool enabled_;
  bool drawn_ = false;
  std::map<std::string, Entry> entries_;
};

int cmd_send(const std::string& config_file, const std::string& file, const std::string& to,
             const std::string& method, const std::vector<std::string>& args, bool wait,
             double timeout, bool as_json) {
  Config cfg = load_or_exit(config_file);
  json messages;
  if (!method.empty() && !file.empty()) {
    // With --method every positional is a methodArg; CLI11 fills `file` first.
    std::vector<std::string> all{file};
    all.insert(all.end(), args.begin(), args.end());
    return cmd_send(config_file, "", to, method, all, wait, timeout, as_json);
  }
  if (!method.empty() || !to.empty()) {
    if (method.empty() || to.empty()) {
      std::cerr << "bosun send: --to and --method go together\n";
      return kExitUsage;
    }
    json m = {{"method", method}, {"methodArgs", args}};
    std::vector<std::string> nodes;
    std::stringstream ss(to);
    for (std::string n; std::getline(ss, n, ',');) {
      if (!n.empty()) nodes.push_back(n);
    }
    if (nodes.size() == 1) {
      m["toNode"] = nodes[0];
    } else {
      m["toNodes"] = nodes;
    }
    if (timeout > 0) m["methodTimeout"] = timeout;
    messages = json::array({m});
  } else {
    std::string text;
    if (file.empty() || file == "-") {
      std::stringstream ss;
      ss << std::cin.rdbuf();
      text = ss.str();
    } else {
      std::ifstream in(file);
      if (!in) {
        std::cerr << "bosun send: cannot read " << file << "\n";
        return kExitUsage;
      }
      std::stringstream ss;
      ss << in.rdbuf();
      text = ss.str();
    }
    try {
      messages = json::parse(text);
    } catch (const json::parse_error& e) {
      std::cerr << "bosun send: " << (file.empty() ? "stdin" : file)
                << " is not valid JSON: " << e.what() << "\n";
      return kExitUsage;
    }
  }
  json request = {{"op", "send"}, {"messages", messages}, {"wait", wait}};
  if (timeout > 0) request["timeout"] = timeout + 5;  // let the node's own timeout speak first
  int failures = 0;
  int missing = 0;
  ProgressLine progress(!as_json && ::isatty(1) != 0);
  try {
    auto client = connect_node(cfg.socket_path());
    client->request(request, [&](const json& line) {
      if (as_json) {
        std::cout << line.dump() << std::endl;
      }
      std::string type = line.value("type", "");
      if (type == "reply" && progress.update(line)) return true;
      progress.clear();
      if (type == "result") {
        for (const auto& e : line["errors"]) {
          ++failures;
          if (!as_json) std::cerr << "rejected: " << e["error"].get<std::string>() << "\n";
        }
        if (!as_json && !wait) {
          for (const auto& a : line["accepted"]) {
            std::cout << "accepted " << a["id"].get<std::string>() << " -> "
                      << a["toNode"].get<std::string>() << " " << a["method"].get<std::string>()
                      << "\n";
          }
        }
      } else if (type == "reply") {
        bool failed = line.value("status", "ok") == "error";
        if (failed) ++failures;
        if (as_json) return true;
        if (line.value("final", true)) progress.end(line);
        std::string node = line.value("fromNode", "?");
        std::string data = line.value("data", "");
        std::string prefix = colour() ? "\033[36m[" + node + "]\033[0m " : "[" + node + "] ";
        if (!data.empty()) {
          std::cout << prefix << data;
          if (data.back() != '\n') std::cout << "\n";
        }
        if (failed) std::cout << prefix << "error: " << line.value("error", "") << "\n";
        std::cout.flush();
      } else if (type == "done") {
        for (const auto& m : line["missing"]) {
          ++missing;
          if (!as_json) {
            std::cerr << "no answer from " << m["toNode"].get<std::string>() << " (message "
                      << m["id"].get<std::string>() << ") in time\n";
          }
        }
        return false;
      } else if (type == "error") {
        ++failures;
        if (!as_json) std::cerr << "bosun send: " << line.value("error", "") << "\n";
        return false;
      }
      return true;
    });
  } catch (const std::exception& e) {
    progress.clear();
    return report_failure("bosun send", e);
  }
  return failures + missing > 0 ? kExitFailed : kExitOk;
}

int cmd_plugins(const std::string& config_file, bool as_json) {
  Config cfg = load_or_exit(config_file);
  json result;
  try {
    auto client = connect_node(cfg.socket_path());
    client->request({{"op", "plugins"}}, [&](const json& line) {
      result = line;
      return false;
    });
  } catch (const std::exception& e) {
    return report_failure("bosun plugins", e);
  }
  if (!result.is_object() || !result.contains("plugins") || !result["plugins"].is_array()) {
    std::cerr << "bosun plugins: the node answered without a plugin list: " << result.dump()
              << "\n";
    return kExitFailed;
  }
  if (as_json) {
    std::cout << result["plugins"].dump(2) << "\n";
    return kExitOk;
  }
  std::vector<std::vector<std::string>> rows{{"NAME", "VERSION", "STATE", "METHODS", "REASON"}};
  for (const auto& p : result["plugins"]) {
    std::string methods;
    for (const auto& m : p["methods"]) {
      if (!methods.empty()) methods += ',';
      methods += m.get<std::string>();
    }
    rows.push_back({p["name"], p["version"], p["state"], methods, p.value("reason", "")});
  }
  print_table(rows, 2);
  return kExitOk;
}

// Asks the local node to run `method` on itself and returns the reply data.
std::string call_self(const Config& cfg, const std::string& method) {
  json request = {{"op", "send"},
                  {"messages", json::array({{{"toNode", cfg.node.name}, {"method", method}}})},
                  {"wait", true},
                  {"timeout", 10}};
  std::string data, error;
  auto client = connect_node(cfg.socket_path());
  client->request(request, [&](const json& line) {
    std::string type = line.value("type", "");
    if (type == "result" && !line["errors"].empty()) {
      error = line["errors"][0].value("error", "rejected");
      return false;
    }
    if (type == "reply") {
      data += line.value("data", "");
      if (line.value("status", "ok") == "error") error = line.value("error", "failed");
    }
    if (type == "error") error = line.value("error", "failed");
    return type != "done" && type != "error";
  });
  if (!error.empty()) throw std::runtime_error(error);
  return data;
}

int cmd_nodes(const std::string& config_file, bool as_json) {
  Config cfg = load_or_exit(config_file);
  json nodes;
  try {
    nodes = json::parse(call_self(cfg, "node_list"));
  } catch (const NodeUnreachable& e) {
    return report_failure("bosun nodes", e);
  } catch (const std::exception& e) {
    std::cerr << "bosun nodes: " << e.what()
              << " (the node registry lives in the beat module on the central node)\n";
    return kExitFailed;
  }
  if (as_json) {
    std::cout << nodes.dump(2) << "\n";
    return kExitOk;
  }
  std::vector<std::vector<std::string>> rows{
      {"NODE", "STATUS", "LAST SEEN", "HOSTNAME", "PLUGINS"}};
  for (const auto& n : nodes) {
    std::string plugins;
    if (n.contains("plugins") && n["plugins"].is_object()) {
      for (const auto& [name, version] : n["plugins"].items()) {
        if (!plugins.empty()) plugins += ' ';
        plugins += name + "@" + (version.is_string() ? version.get<std::string>() : version.dump());
      }
    }
    char ago[32];
    std::snprintf(ago, sizeof ago, "%.0fs ago", n.value("lastSeenAgoS", 0.0));
    rows.push_back(
        {n.value("node", "?"), n.value("status", "?"), ago, n.value("hostname", ""), plugins});
  }
  print_table(rows, 1);
  return kExitOk;
}

// `bosun sign-plugin`: a new key pair, or the signature of a module file.
int cmd_sign_plugin(const std::string& new_key, const std::string& key_file,
                    const std::string& module_file, bool as_json) {
  try {
    if (!new_key.empty()) {
      Ed25519Key key = Ed25519Key::generate();
      key.write_private_pem(new_key);
      std::string public_key = base64_encode(key.public_key_raw());
      if (as_json) {
        std::cout << json{{"privateKeyFile", new_key}, {"publicKey", public_key}}.dump()
                  << std::endl;
      } else {
        std::cerr << "wrote the private key to " << new_key
                  << " (mode 0600); trust its public key with plugins.publisherKeys:\n";
        std::cout << public_key << std::endl;
      }
      return kExitOk;
    }
    if (key_file.empty() || module_file.empty()) {
      std::cerr << "bosun sign-plugin: give --key KEY.pem and --file MODULE.so (or --new-key "
                   "KEY.pem to make a key)\n";
      return kExitUsage;
    }
    Ed25519Key key = Ed25519Key::load(key_file);
    std::string bytes = read_file_bytes(module_file);
    std::string signature = base64_encode(key.sign(bytes));
    if (as_json) {
      std::cout << json{{"file", module_file},
                        {"sha256", sha256_hex(bytes)},
                        {"signature", signature},
                        {"publicKey", base64_encode(key.public_key_raw())}}
                       .dump()
                << std::endl;
    } else {
      std::cout << signature << std::endl;
    }
    return kExitOk;
  } catch (const std::exception& e) {
    // A key or module file that cannot be read or used: an input error.
    std::cerr << "bosun sign-plugin: " << e.what() << "\n";
    return kExitUsage;
  }
}

int cmd_update_plugin(const std::string& config_file, const std::string& to,
                      const std::string& module_file, const std::string& signature_arg,
                      const std::string& sign_key, bool wait, bool as_json) {
  if (!signature_arg.empty() && !sign_key.empty()) {
    std::cerr << "bosun update-plugin: give --signature or --sign-key, not both\n";
    return kExitUsage;
  }
  Config cfg = load_or_exit(config_file);
  std::string name, version, bytes, signature = signature_arg;
  try {
    // Only bosun_plugin_entry runs: the name and version come from the module itself.
    auto file = ModuleFile::open(fs::absolute(module_file));
    name = file->name();
    version = file->version();
    bytes = read_file_bytes(module_file);
    if (!sign_key.empty()) signature = base64_encode(Ed25519Key::load(sign_key).sign(bytes));
  } catch (const std::exception& e) {
    std::cerr << "bosun update-plugin: " << e.what() << "\n";
    return kExitUsage;
  }
  std::vector<std::string> nodes;
  std::stringstream ns(to);
  for (std::string n; std::getline(ns, n, ',');) {
    if (!n.empty()) nodes.push_back(n);
  }
  std::string sha = sha256_hex(bytes);
  if (!as_json) {
    std::cerr << "shipping " << name << " " << version << " (" << bytes.size() << " bytes, sha256 "
              << sha.substr(0, 12) << "...) to " << to << "\n";
  }
  json args = {name, version, sha};
  if (!signature.empty()) args.push_back(signature);
  json msg = {{"toNodes", nodes},     {"method", "update_plugin"},
              {"methodArgs", args},   {"data", base64_encode(bytes)},
              {"methodTimeout", 120}, {"replyMethod", "none"}};
  json request = {
      {"op", "send"}, {"messages", json::array({msg})}, {"wait", wait}, {"timeout", 150}};
  int failures = 0;
  std::vector<std::vector<std::string>> rows{
      {"NODE", "PLUGIN", "FROM", "TO", "STATUS", "MS", "REASON"}};
  try {
    auto client = connect_node(cfg.socket_path());
    client->request(request, [&](const json& line) {
      std::string type = line.value("type", "");
      if (type == "result") {
        for (const auto& e : line["errors"]) {
          ++failures;
          std::cerr << "rejected: " << e["error"].get<std::string>() << "\n";
        }
        if (!wait) {
          for (const auto& a : line["accepted"]) {
            std::cout << "accepted " << a["id"].get<std::string>() << " -> "
                      << a["toNode"].get<std::string>() << "\n";
          }
        }
      } else if (type == "reply") {
        json r = json::parse(line.value("data", ""), nullptr, false);
        if (!r.is_object()) {
          r = {{"node", line.value("fromNode", "?")},
               {"plugin", name},
               {"from", ""},
               {"to", version},
               {"status", "failed"},
               {"reason", line.value("error", "no UpdateResult in the reply")},
               {"durationMs", 0}};
        }
        if (r.value("status", "") == "failed" || line.value("status", "ok") == "error") ++failures;
        if (as_json) {
          std::cout << r.dump() << std::endl;
        } else {
          rows.push_back({r.value("node", "?"), r.value("plugin", ""), r.value("from", ""),
                          r.value("to", ""), r.value("status", ""),
                          std::to_string(r.value("durationMs", 0)), r.value("reason", "")});
        }
      } else if (type == "done") {
        for (const auto& m : line["missing"]) {
          ++failures;
          std::cerr << "no UpdateResult from " << m["toNode"].get<std::string>() << " in time\n";
        }
        return false;
      } else if (type == "error") {
        ++failures;
        std::cerr << "bosun update-plugin: " << line.value("error", "") << "\n";
        return false;
      }
      return true;
    });
  } catch (const std::exception& e) {
    return report_failure("bosun update-plugin", e);
  }
  if (!as_json && rows.size() > 1) print_table(rows, 4);
  return failures > 0 ? kExitFailed : kExitOk;
}

// One event as a line: "<time> <node> <event> <payload>".
void print_event(const json& body) {
  std::string when = "?";
  if (body.contains("time") && body["time"].is_number()) {
    auto ms = body["time"].get<int64_t>();
    std::time_t secs = static_cast<std::time_t>(ms / 1000);
    std::tm tm{};
    ::localtime_r(&secs, &tm);
    char buf[64];
    std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
    char millis[8];
    std::snprintf(millis, sizeof millis, ".%03d", static_cast<int>(ms % 1000));
    when = std::string(buf) + millis;
  }
  std::string event = body.value("event", "?");
  json payload = body.value("payload", json::object());
  std::cout << when << "  " << paint(body.value("node", "?"), "36") << "  " << paint(event, "1")
            << "  " << payload.dump() << std::endl;
}

int cmd_watch(const std::string& config_file, const std::vector<std::string>& events,
              bool as_json) {
  Config cfg = load_or_exit(config_file);
  try {
    auto client = connect_node(cfg.socket_path());
    client->request({{"op", "watch"}, {"events", events}}, [&](const json& line) {
      if (line.value("type", "") != "event") return true;
      if (as_json) {
        std::cout << line["body"].dump() << std::endl;
      } else {
        print_event(line["body"]);
      }
      return true;
    });
  } catch (const std::exception& e) {
    return report_failure("bosun watch", e);
  }
  // Only a node that stops ends a watch.
  std::cerr << "bosun watch: the node closed the connection\n";
  return kExitFailed;
}

// The socket of the node a config file names, from its "node" section
// alone: a file refused for an error elsewhere still reaches its node.
std::optional<fs::path> socket_of_broken_config(const std::string& file) {
  std::ifstream in(file);
  std::stringstream ss;
  ss << in.rdbuf();
  json doc = json::parse(ss.str(), nullptr, false);
  if (!doc.is_object() || !doc.contains("node")) return std::nullopt;
  try {
    return parse_config({{"node", doc["node"]}}, fs::absolute(file).parent_path()).socket_path();
  } catch (const ConfigError&) {
    return std::nullopt;
  }
}

void print_reload(const json& r) {
  std::string node = r.value("node", "?");
  std::string file = r.value("file", "");
  std::string status = r.value("status", "");
  if (status == "refused") {
    std::cerr << "bosun reload: node " << node << " refused " << file << ": "
              << r.value("error", "") << "\n"
              << "the running config stays\n";
    return;
  }
  std::cout << "node " << node << ": "
            << (status == "unchanged" ? "nothing to change from " : "config reloaded from ") << file
            << " (" << status << ", " << r.value("durationMs", 0) << " ms)\n";
  std::vector<std::vector<std::string>> rows;
  for (const auto& e : r["loaded"]) {
    rows.push_back({"loaded", e.value("plugin", "") + " " + e.value("version", "")});
  }
  for (const auto& e : r["unloaded"]) {
    rows.push_back({"unloaded", e.value("plugin", "") + " " + e.value("version", "") + " (" +
                                    e.value("drain", "") + ")"});
  }
  for (const auto& e : r["settingsUpdated"]) {
    rows.push_back({"settings updated", e.get<std::string>()});
  }
  for (const auto& e : r["applied"]) rows.push_back({"applied", e.get<std::string>()});
  for (const auto& e : r["failed"]) {
    rows.push_back({"FAILED", e.value("plugin", "") + ": " + e.value("reason", "")});
  }
  for (const auto& e : r["needsRestart"]) {
    rows.push_back({"needs a restart", e.get<std::string>()});
  }
  size_t width = 0;
  for (const auto& row : rows) width = std::max(width, row[0].size());
  for (const auto& row : rows) std::cout << "  " << pad(row[0], width + 2) << row[1] << "\n";
}

int cmd_reload(const std::string& config_file, bool as_json) {
  fs::path socket;
  try {
    socket = load_config(config_file).socket_path();
  } catch (const ConfigError& e) {
    auto s = socket_of_broken_config(config_file);
    if (!s) {
      // Without a readable "node" section there is no node to ask.
      std::cerr << "bosun reload: refused " << config_file << ": " << e.what()
                << "\nthe running config stays (the node was not asked: its socket is unknown)\n";
      return kExitUsage;
    }
    socket = *s;  // the node refuses it too, and logs and publishes that
  }
  json result;
  std::string error;
  try {
    auto client = connect_node(socket);
    client->request({{"op", "reload"}}, [&](const json& line) {
      std::string type = line.value("type", "");
      if (type == "reload") result = line.value("result", json::object());
      if (type == "error") error = line.value("error", "");
      return false;
    });
  } catch (const std::exception& e) {
    return report_failure("bosun reload", e);
  }
  if (!result.is_object() || !result.contains("status")) {
    std::cerr << "bosun reload: "
              << (error.empty() ? "the node closed the connection without an answer" : error)
              << "\n";
    return kExitFailed;
  }
  if (as_json) {
    std::cout << result.dump() << std::endl;
  } else {
    print_reload(result);
  }
  std::string status = result.value("status", "");
  return status == "reloaded" || status == "unchanged" ? kExitOk : kExitFailed;
}

int cmd_keys(const std::string& config_file, const std::string& action, const std::string& node,
             bool as_json) {
  if (action != "list" && node.empty()) {
    std::cerr << "bosun keys " << action << ": name the node, e.g. bosun keys --config "
              << config_file << " " << action << " ship1\n";
    return kExitUsage;
  }
  Config cfg = load_or_exit(config_file);
  json result;
  try {
    auto client = connect_node(cfg.socket_path());
    client->request({{"op", "keys"}, {"action", action}, {"node", node}}, [&](const json& line) {
      result = line;
      return false;
    });
  } catch (const std::exception& e) {
    return report_failure("bosun keys", e);
  }
  if (result.contains("error")) {
    std::cerr << "bosun keys " << action << ": " << result.value("error", "") << "\n";
    return kExitFailed;
  }
  if (as_json) {
    result.erase("type");
    std::cout << result.dump() << std::endl;
    return kExitOk;
  }
  if (action != "list") std::cout << "key of " << node << " " << action << "ed\n";
  std::cout << "this node (" << result.value("node", "?") << "): " << result.value("publicKey", "")
            << "\n";
  const json secret = result.value("clusterSecret", json::object());
  std::cout << "cluster secret: "
            << (secret.value("set", false) ? secret.value("keyId", "") + " (payloads encrypted)"
                                           : std::string("none (payloads travel in clear)"))
            << "\n";
  std::vector<std::array<std::string, 5>> rows{{"NODE", "STATE", "SOURCE", "RSA", "PUBLIC KEY"}};
  for (const auto& k : result.value("keys", json::array())) {
    rows.push_back({k.value("node", ""), k.value("state", ""), k.value("source", ""),
                    k.value("rsa", "").empty() ? "-" : "yes", k.value("publicKey", "")});
  }
  std::array<size_t, 4> w{};
  for (const auto& r : rows) {
    for (size_t i = 0; i < 4; ++i) w[i] = std::max(w[i], r[i].size());
  }
  for (const auto& r : rows) {
    std::cout << pad(r[0], w[0] + 2) << pad(r[1], w[1] + 2) << pad(r[2], w[2] + 2)
              << pad(r[3], w[3] + 2) << r[4] << "\n";
  }
  if (rows.size() == 1) std::cout << "(no peer keys yet: a node's key appears once it sends)\n";
  return kExitOk;
}

std::string default_node_name() {
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  std::string name;
  for (char c : std::string(host)) {
    if (c == '.') break;
    name.push_back(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' ? c : '_');
  }
  return is_valid_token(name) ? name : "node1";
}

int cmd_config_init(const std::string& file, const std::string& name_arg, bool force) {
  if (fs::exists(file) && !force) {
    std::cerr << "bosun config init: " << file << " exists (use --force to overwrite)\n";
    return kExitUsage;
  }
  std::string name = name_arg.empty() ? default_node_name() : name_arg;
  if (!is_valid_token(name)) {
    std::cerr << "bosun config init: \"" << name << "\" is not a valid node name\n";
    return kExitUsage;
  }
  std::ofstream out(file, std::ios::trunc);
  out << default_config_text(name);
  if (!out) {
    std::cerr << "bosun config init: cannot write " << file << "\n";
    return kExitFailed;
  }
  std::cout << "wrote " << file << " (node \"" << name << "\")\n";
  return kExitOk;
}

int cmd_config_check(const std::string& file, bool as_json) {
  try {
    Config c = load_config(file);
    if (as_json) {
      std::cout << json{{"ok", true}, {"file", c.file.string()}, {"node", c.node.name}}.dump()
                << std::endl;
    } else {
      std::cout << "ok: " << file << " (node \"" << c.node.name << "\")\n";
    }
    return kExitOk;
  } catch (const ConfigError& e) {
    if (as_json) {
      std::cout << json{{"ok", false}, {"file", file}, {"path", e.json_path()}, {"error", e.what()}}
                       .dump()
                << std::endl;
    } else {
      std::cerr << file << ": " << e.what() << "\n";
    }
    return kExitUsage;
  }
}

}  // namespace

int cli_main(int argc, char** argv) {
  CLI::App app{"bosun: a small, native node agent."};
  app.footer(std::string("Examples:\n"
                         "  bosun config init bosun.json\n"
                         "  bosun run --config bosun.json\n"
                         "  bosun send --config bosun.json --to ship1 --method ping --wait\n"
                         "  bosun <subcommand> --help\n\n") +
             kExitCodesHelp);
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("bosun ") + BOSUN_VERSION);

  std::string config_file, log_level, file, to, method;
  std::vector<std::string> args, events;
  bool wait = false, as_json = false;
  double timeout = 0;

  // Every subcommand: a one-line description (listed by `bosun --help`) and
  // a footer with at least one example (tests/cli_test.cpp checks).
  auto* run = app.add_subcommand("run", "Run the node in the foreground (logs to stderr)");
  run->footer(
      "Under systemd (stderr is the journal) log lines carry <N> priority prefixes.\n"
      "Examples:\n"
      "  bosun run --config bosun.json\n"
      "  bosun run --config /etc/bosun/bosun.json --log-level debug");
  run->add_option("--config", config_file, "config file")->required()->check(CLI::ExistingFile);
  run->add_option("--log-level", log_level, "trace|debug|info|warn|error|off (overrides log.level)")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}));

  auto* send = app.add_subcommand("send", "Send messages through the local node");
  send->footer(
      "With --wait, prints each node's reply as it arrives; exits 1 if any failed or was late.\n"
      "Examples:\n"
      "  bosun send --config bosun.json msgs.json\n"
      "  bosun send --config bosun.json --to ship1 --method ping --wait\n"
      "  bosun send --config bosun.json --to ship1,ship2 --method cli_command --wait -- uname -a\n"
      "  bosun send --config bosun.json --wait --json - < msgs.json");
  send->add_option("--config", config_file, "config file")->required()->check(CLI::ExistingFile);
  send->add_option("--to", to, "NODE[,NODE...] (with --method)");
  send->add_option("--method", method, "method to call (with --to)");
  send->add_flag("--wait", wait,
                 "print each node's reply; exit non-zero if any failed or was late");
  send->add_option("--timeout", timeout,
                   "seconds to wait for replies (also the methodTimeout with --method)")
      ->check(CLI::PositiveNumber);
  send->add_flag("--json", as_json, "machine-readable output: one JSON object per line");
  send->add_option("file", file, "a JSON file of messages, or - for stdin");
  send->add_option("args", args, "methodArgs (after --)");
  send->positionals_at_end();

  auto* plugins = app.add_subcommand("plugins", "List the node's plugins, versions and states");
  plugins->footer(
      "Examples:\n"
      "  bosun plugins --config bosun.json\n"
      "  bosun plugins --config bosun.json --json");
  plugins->add_option("--config", config_file, "config file")->required()->check(CLI::ExistingFile);
  plugins->add_flag("--json", as_json, "machine-readable output");

  auto* nodes = app.add_subcommand("nodes", "List the nodes the central node has heard from");
  nodes->footer(
      "The registry lives in the beat module of the central node: ask that node.\n"
      "Examples:\n"
      "  bosun nodes --config central.json\n"
      "  bosun nodes --config central.json --json");
  nodes->add_option("--config", config_file, "config file")->required()->check(CLI::ExistingFile);
  nodes->add_flag("--json", as_json, "machine-readable output");

  std::string module_file;
  auto* update =
      app.add_subcommand("update-plugin", "Ship a module to nodes and hot-update it there");
  update->footer(
      "With --wait, prints each node's UpdateResult (updated, unchanged, failed, rolled_back);\n"
      "exits 1 if any failed or did not answer.\n"
      "Examples:\n"
      "  bosun update-plugin --config central.json --to ship1,ship2 --file hello.so --wait\n"
      "  bosun update-plugin --config central.json --to ship1 --file hello.so --sign-key "
      "publisher.pem --wait --json");
  update->add_option("--config", config_file, "config file")->required()->check(CLI::ExistingFile);
  update->add_option("--to", to, "NODE[,NODE...]")->required();
  update
      ->add_option("--file", module_file, "the module (.so); its name and version are read from it")
      ->required()
      ->check(CLI::ExistingFile);
  update->add_flag("--wait", wait,
                   "wait for every node's UpdateResult; exit non-zero if any failed");
  update->add_flag("--json", as_json, "one UpdateResult JSON object per line");
  std::string signature, sign_key;
  update->add_option("--signature", signature,
                     "the publisher's base64 Ed25519 signature of the file (bosun sign-plugin); "
                     "sent as methodArgs[3]");
  update->add_option("--sign-key", sign_key,
                     "sign the file here with this Ed25519 private key (PEM) instead");

  std::string new_key, key_file;
  auto* sign =
      app.add_subcommand("sign-plugin", "Sign a module file, or make a publisher key pair");
  sign->footer(
      "Signs with an Ed25519 private key (PKCS#8 PEM) and prints the base64 signature, for\n"
      "nodes with plugins.requireSignature; --new-key prints the base64 public key to list in\n"
      "plugins.publisherKeys.\n"
      "Examples:\n"
      "  bosun sign-plugin --new-key publisher.pem\n"
      "  bosun sign-plugin --key publisher.pem --file hello.so");
  auto* new_key_opt = sign->add_option(
      "--new-key", new_key,
      "write a new private key to this file (mode 0600, never replacing one); print its "
      "public key");
  sign->add_option("--key", key_file, "the Ed25519 private key (PEM) to sign with")
      ->excludes(new_key_opt);
  sign->add_option("--file", module_file, "the module (.so) to sign")->excludes(new_key_opt);
  sign->add_flag("--json", as_json,
                 "one JSON object: {file, sha256, signature, publicKey} (with --new-key: "
                 "{privateKeyFile, publicKey})");

  auto* watch = app.add_subcommand("watch", "Print the node's events as they happen");
  watch->footer(
      "Runs until interrupted; exits 1 when the node stops.\n"
      "Examples:\n"
      "  bosun watch --config bosun.json\n"
      "  bosun watch --config central.json --json update_result node_added node_removed");
  watch->add_option("--config", config_file, "config file")->required()->check(CLI::ExistingFile);
  watch->add_flag("--json", as_json, "one event JSON object per line");
  watch->add_option("events", events, "event names to show (default: all)");

  auto* reload =
      app.add_subcommand("reload", "Make the running node re-read its config file (as SIGHUP)");
  reload->footer(
      "Prints what changed: modules loaded, unloaded, settings updated, and what needs a\n"
      "restart; exits 1 when the node refuses the config (the running one stays) or a change\n"
      "failed.\n"
      "Examples:\n"
      "  bosun reload --config bosun.json\n"
      "  bosun reload --config bosun.json --json");
  reload->add_option("--config", config_file, "config file")->required()->check(CLI::ExistingFile);
  reload->add_flag("--json", as_json, "the outcome as one JSON object");

  std::string keys_action, keys_node;
  auto* keys = app.add_subcommand(
      "keys", "See and decide which peers' keys this node trusts (pending until accepted)");
  keys->footer(
      "A node's key is pending on the central node until an operator accepts it there; the\n"
      "central node then hands the keys it accepted to every node. Exits 1 on an unknown node.\n"
      "Examples:\n"
      "  bosun keys --config central.json list\n"
      "  bosun keys --config central.json accept ship1\n"
      "  bosun keys --config central.json reject ship9");
  keys->add_option("--config", config_file, "config file")->required()->check(CLI::ExistingFile);
  keys->add_option("action", keys_action, "list | accept | reject")
      ->required()
      ->check(CLI::IsMember({"list", "accept", "reject"}));
  keys->add_option("node", keys_node, "the node whose key to accept or reject");
  keys->add_flag("--json", as_json, "machine-readable output");

  auto* config = app.add_subcommand("config", "Write or check a config file");
  config->footer(
      "Examples:\n"
      "  bosun config init bosun.json --name ship1\n"
      "  bosun config check --config bosun.json");
  config->require_subcommand(1);
  auto* init = config->add_subcommand("init", "Write a default config, every key listed");
  init->footer(
      "Examples:\n"
      "  bosun config init bosun.json\n"
      "  bosun config init /etc/bosun/bosun.json --name ship1 --force");
  std::string init_file = "bosun.json", init_name;
  bool force = false;
  init->add_option("file", init_file, "where to write it (default bosun.json)");
  init->add_option("--name", init_name, "node name (default: this host's name)");
  init->add_flag("--force", force, "overwrite an existing file");
  auto* check = config->add_subcommand(
      "check", "Validate a config; names the JSON path of the first error (exit 2)");
  check->footer(
      "Examples:\n"
      "  bosun config check --config bosun.json\n"
      "  bosun config check --config bosun.json --json");
  check->add_option("--config", config_file, "config file")->required();
  check->add_flag("--json", as_json, "{ok, file, node} or {ok, file, path, error}");

  // Internal (no help entry): the update probe runs here, in a process of
  // its own, so that a module that crashes takes only this process down.
  std::string probe_path, probe_name, probe_settings, probe_node, probe_dir;
  auto* probe = app.add_subcommand("probe-module", "");
  probe->group("");
  probe->add_option("path", probe_path)->required();
  probe->add_option("name", probe_name)->required();
  probe->add_option("settings", probe_settings)->required();
  probe->add_option("node", probe_node)->required();
  probe->add_option("dataDir", probe_dir)->required();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version exit 0; every other parse error is a usage error.
    return app.exit(e) == 0 ? kExitOk : kExitUsage;
  }

  if (probe->parsed()) {
    ::alarm(10);  // a module that hangs in init fails the probe
    std::string err =
        run_module_probe(probe_path, probe_name, probe_settings, probe_node, probe_dir);
    std::cout << (err.empty() ? "OK" : err) << std::flush;
    return err.empty() ? kExitOk : kExitFailed;
  }
  if (run->parsed()) return cmd_run(config_file, log_level);
  if (send->parsed()) return cmd_send(config_file, file, to, method, args, wait, timeout, as_json);
  if (plugins->parsed()) return cmd_plugins(config_file, as_json);
  if (watch->parsed()) return cmd_watch(config_file, events, as_json);
  if (nodes->parsed()) return cmd_nodes(config_file, as_json);
  if (update->parsed()) {
    return cmd_update_plugin(config_file, to, module_file, signature, sign_key, wait, as_json);
  }
  if (sign->parsed()) return cmd_sign_plugin(new_key, key_file, module_file, as_json);
  if (reload->parsed()) return cmd_reload(config_file, as_json);
  if (keys->parsed()) return cmd_keys(config_file, keys_action, keys_node, as_json);
  if (init->parsed()) return cmd_config_init(init_file, init_name, force);
  if (check->parsed()) return cmd_config_check(config_file, as_json);
  return kExitUsage;
}

}  // namespace bosun::host
