// Runs the real vmctl binary as a child process with piped stdin/stdout/stderr, for tests that
// assert on a guest's serial console and on vmctl's exit code.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <mutex>
#include <optional>
#include <regex>
#include <string>
#include <thread>
#include <vector>

namespace vmctl::testing {

class VmctlProcess {
 public:
  explicit VmctlProcess(const std::vector<std::string>& args);
  // Any program (vmctld, ip netns exec ...), with the same pipes.
  VmctlProcess(const std::string& binary, const std::vector<std::string>& args);
  pid_t pid() const { return pid_; }
  ~VmctlProcess();  // kills the child if it is still running

  // Waits until stdout (the guest console) has a line matching `pattern`; returns the match's line.
  std::optional<std::string> wait_for_line(const std::string& pattern,
                                           std::chrono::milliseconds timeout);
  // Number of stdout lines matching `pattern` so far.
  size_t count_lines(const std::string& pattern);
  void send(const std::string& text);
  void close_stdin();
  void signal(int sig);
  // Waits for the child to exit; returns its exit code, or nullopt on timeout or a death by signal.
  std::optional<int> wait_exit(std::chrono::milliseconds timeout);

  std::string out();
  std::string err();

 private:
  void pump(int fd, std::string* into);
  pid_t pid_ = -1;
  int stdin_ = -1;
  std::thread out_thread_, err_thread_;
  std::mutex mu_;
  std::string out_, err_;
  std::optional<int> exit_code_;
};

// Absolute paths of the build's artifacts.
std::string vmctl_binary();
std::string vmctld_binary();
std::string guest_path(const std::string& name);  // e.g. "heartbeat.elf"

// Whether this host's KVM offers the dirty ring (tests of --dirty-tracking ring skip otherwise).
bool host_has_dirty_ring();

}  // namespace vmctl::testing
