// The terminal side of `vmctl run`: guest serial output to stdout, stdin to the guest's serial
// input, and the terminal put in a mode where keys go to the guest but Ctrl-C still stops the VM.
#pragma once

#include <functional>
#include <string>
#include <thread>

#include <termios.h>

#include "base/error.h"
#include "base/fd.h"

namespace vmctl::vmprocess {

// Restores the terminal's settings when destroyed.
class TerminalMode {
 public:
  // Character-at-a-time input without echo; signals (Ctrl-C) and output processing stay on.
  // Does nothing when stdin is not a terminal.
  TerminalMode();
  ~TerminalMode();
  TerminalMode(const TerminalMode&) = delete;
  TerminalMode& operator=(const TerminalMode&) = delete;

 private:
  bool active_ = false;
  termios saved_{};
};

// Reads stdin on its own thread and passes each chunk to `sink` until EOF or until destroyed.
class StdinPump {
 public:
  explicit StdinPump(std::function<void(const uint8_t*, size_t)> sink);
  ~StdinPump();
  StdinPump(const StdinPump&) = delete;
  StdinPump& operator=(const StdinPump&) = delete;

 private:
  void run();
  std::function<void(const uint8_t*, size_t)> sink_;
  Fd wake_;  // eventfd that ends the thread
  std::thread thread_;
};

// Where the guest's console goes: with a `log_path` (--console-log, as vmctld runs its VMs), a
// log file capped at `log_max` bytes (--console-log-max, e.g. "8M") and rotated to
// `log_path`.1 (base/rotating_log.h), so a guest cannot fill the host's disk; else stdout.
Result<std::function<void(const uint8_t*, size_t)>> console_output(const std::string& log_path,
                                                                   const std::string& log_max);
inline constexpr const char* kDefaultConsoleLogMax = "8M";

// Writes all of a buffer to stdout, retrying short writes.
void write_stdout(const uint8_t* data, size_t len);

}  // namespace vmctl::vmprocess
