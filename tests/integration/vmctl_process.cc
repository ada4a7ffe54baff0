#include "tests/integration/vmctl_process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <sstream>

#include "vmm/kvm/kvm.h"

namespace vmctl::testing {

std::string vmctl_binary() {
  return VMCTL_BINARY;
}
std::string vmctld_binary() {
  return VMCTLD_BINARY;
}
std::string guest_path(const std::string& name) {
  return std::string(VMCTL_GUEST_DIR) + "/" + name;
}

bool host_has_dirty_ring() {
  Result<vmm::kvm::KvmSystem> kvm = vmm::kvm::KvmSystem::open();
  return kvm.ok() && kvm->check_extension(KVM_CAP_DIRTY_LOG_RING) > 0;
}

VmctlProcess::VmctlProcess(const std::vector<std::string>& args)
    : VmctlProcess(vmctl_binary(), args) {}

VmctlProcess::VmctlProcess(const std::string& program, const std::vector<std::string>& args) {
  int in[2], out[2], err[2];
  if (pipe2(in, O_CLOEXEC) || pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC)) abort();
  pid_ = fork();
  if (pid_ == 0) {
    dup2(in[0], 0);
    dup2(out[1], 1);
    dup2(err[1], 2);
    std::vector<char*> argv;
    std::string binary = program;
    argv.push_back(binary.data());
    std::vector<std::string> copy = args;
    for (auto& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    execvp(binary.c_str(), argv.data());
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  close(err[1]);
  stdin_ = in[1];
  out_thread_ = std::thread([this, fd = out[0]] { pump(fd, &out_); });
  err_thread_ = std::thread([this, fd = err[0]] { pump(fd, &err_); });
}

VmctlProcess::~VmctlProcess() {
  if (!exit_code_ && pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  close_stdin();
  if (out_thread_.joinable()) out_thread_.join();
  if (err_thread_.joinable()) err_thread_.join();
}

void VmctlProcess::pump(int fd, std::string* into) {
  char buf[4096];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    std::lock_guard lock(mu_);
    into->append(buf, static_cast<size_t>(n));
  }
  close(fd);
}

std::optional<std::string> VmctlProcess::wait_for_line(const std::string& pattern,
                                                       std::chrono::milliseconds timeout) {
  std::regex re(pattern);
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    {
      std::lock_guard lock(mu_);
      // Whole lines only: the guest may be half-way through the last one (a partial
      // "VERIFY pages=1638" once matched "^VERIFY ").
      std::istringstream lines(out_.substr(0, out_.rfind('\n') + 1));
      std::string line;
      while (std::getline(lines, line)) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (std::regex_search(line, re)) return line;
      }
    }
    if (std::chrono::steady_clock::now() > deadline) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

size_t VmctlProcess::count_lines(const std::string& pattern) {
  std::regex re(pattern);
  std::lock_guard lock(mu_);
  std::istringstream lines(out_);
  std::string line;
  size_t n = 0;
  while (std::getline(lines, line)) n += std::regex_search(line, re) ? 1 : 0;
  return n;
}

void VmctlProcess::send(const std::string& text) {
  if (stdin_ >= 0) (void)!write(stdin_, text.data(), text.size());
}

void VmctlProcess::close_stdin() {
  if (stdin_ >= 0) close(stdin_);
  stdin_ = -1;
}

void VmctlProcess::signal(int sig) {
  if (pid_ > 0 && !exit_code_) kill(pid_, sig);
}

std::optional<int> VmctlProcess::wait_exit(std::chrono::milliseconds timeout) {
  if (exit_code_) return exit_code_;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    int status = 0;
    pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      if (WIFEXITED(status)) {
        exit_code_ = WEXITSTATUS(status);
      } else {
        exit_code_ = 128 + WTERMSIG(status);
      }
      if (out_thread_.joinable()) out_thread_.join();
      if (err_thread_.joinable()) err_thread_.join();
      return exit_code_;
    }
    if (std::chrono::steady_clock::now() > deadline) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

std::string VmctlProcess::out() {
  std::lock_guard lock(mu_);
  return out_;
}

std::string VmctlProcess::err() {
  std::lock_guard lock(mu_);
  return err_;
}

}  // namespace vmctl::testing
