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

// Sends this process's stdout (the guest console) to `path`, appending; for VMs run by vmctld.
Status redirect_console(const std::string& path);

// Writes all of a buffer to stdout, retrying short writes.
void write_stdout(const uint8_t* data, size_t len);

}  // namespace vmctl::vmprocess
