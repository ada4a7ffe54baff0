// A guest's serial console collected in memory, for benchmarks that boot a VM in-process and wait
// for what the guest says.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <regex>
#include <string>

namespace vmctl::bench {

class GuestConsole {
 public:
  // The VmConfig::console_output callback (called from vCPU threads).
  void append(const uint8_t* data, size_t len) {
    std::lock_guard lock(mu_);
    text_.append(reinterpret_cast<const char*>(data), len);
    cv_.notify_all();
  }

  // Waits until `done` holds for the console text from offset `from` on.
  bool wait_until(const std::function<bool(const std::string&)>& done, std::chrono::seconds timeout,
                  size_t from = 0) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout,
                        [&] { return done(from < text_.size() ? text_.substr(from) : ""); });
  }

  bool wait_for(const std::string& pattern, std::chrono::seconds timeout) {
    std::regex re(pattern);
    return wait_until([&](const std::string& t) { return std::regex_search(t, re); }, timeout);
  }

  // The first match of `re` after `from` (which then moves past it), or nothing on timeout.
  std::optional<std::smatch> next_match(const std::regex& re, size_t& from,
                                        std::chrono::seconds timeout, std::string& storage) {
    std::optional<std::smatch> found;
    size_t start = from;
    wait_until(
        [&](const std::string& t) {
          storage = t;
          std::smatch m;
          if (!std::regex_search(storage, m, re)) return false;
          from = start + static_cast<size_t>(m.position(0) + m.length(0));
          found = m;
          return true;
        },
        timeout, start);
    return found;
  }

  std::string text() {
    std::lock_guard lock(mu_);
    return text_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::string text_;
};

}  // namespace vmctl::bench
