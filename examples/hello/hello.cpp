// hello: the smallest useful bosun module, built out of tree against the
// installed SDK. Tests build it twice (1.0.0 and 1.1.0) to exercise updates.
#include <bosun/plugin.hpp>

#include <chrono>
#include <string>
#include <thread>

#ifndef HELLO_VERSION
#define HELLO_VERSION "0.0.0"
#endif

class Hello : public bosun::Plugin {
 public:
  using Plugin::Plugin;

  void greet(bosun::Call& call) { call.reply(greeting(call)); }

  // Answers after methodArgs[0] milliseconds (default 100), so that tests
  // can catch a call in flight while the module drains.
  void greet_slow(bosun::Call& call) {
    long long delay_ms = 100;
    if (call.arg_count() > 0) {
      std::string arg(call.arg(0));
      size_t used = 0;
      try {
        delay_ms = std::stoll(arg, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used == 0 || used != arg.size() || delay_ms < 0 || delay_ms > 3600000) {
        throw bosun::Error(
            "greet_slow: methodArgs[0] must be 0..3600000 milliseconds, not \"" + arg + "\"",
            BOSUN_ERR_INVALID_ARGUMENT);
      }
    }
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(delay_ms);
    while (std::chrono::steady_clock::now() < deadline) {
      if (call.cancelled()) throw bosun::Error("greet_slow: cancelled", BOSUN_ERR_CANCELLED);
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    call.reply(greeting(call));
  }

 private:
  std::string greeting(const bosun::Call& call) const {
    std::string who = call.arg_count() > 0 && call.method() == "greet"
                          ? "hello " + std::string(call.arg(0))
                          : std::string("hello");
    return who + " from " + std::string(node_name()) + " (hello " HELLO_VERSION ")";
  }
};

BOSUN_PLUGIN(Hello, "hello", HELLO_VERSION, "Says hello (an out-of-tree example module)",
             BOSUN_METHOD(Hello, greet, "reply \"hello [<methodArgs[0]>] from <node>\""),
             BOSUN_METHOD(Hello, greet_slow, "reply after methodArgs[0] ms (default 100)"))
