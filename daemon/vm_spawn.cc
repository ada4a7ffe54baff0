#include "daemon/vm_spawn.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "base/fd.h"

extern char** environ;

namespace vmctl::daemon {
namespace {

// Everything the child needs, prepared before clone(): between clone and exec the child of a
// multithreaded daemon may only make async-signal-safe calls (no allocation, no locks).
struct ChildPlan {
  char** argv;
  int null_fd;
  int log_fd;
  const int* inherit;
  size_t inherit_count;
  int error_pipe;  // the write end; errno goes here if exec fails (it is CLOEXEC otherwise)
};

[[noreturn]] void fail_child(int error_pipe, const char* step) {
  int err = errno;
  // "step:errno" without snprintf; the parent decodes it.
  char message[64];
  size_t n = 0;
  for (const char* c = step; *c && n < 40; ++c) message[n++] = *c;
  message[n++] = ':';
  char digits[12];
  size_t d = 0;
  do {
    digits[d++] = static_cast<char>('0' + err % 10);
    err /= 10;
  } while (err && d < sizeof digits);
  while (d) message[n++] = digits[--d];
  ssize_t ignored = ::write(error_pipe, message, n);
  (void)ignored;
  ::_exit(127);
}

int child_main(void* arg) {
  const ChildPlan& plan = *static_cast<ChildPlan*>(arg);
  if (::setsid() < 0) fail_child(plan.error_pipe, "setsid");
  if (::dup2(plan.null_fd, STDIN_FILENO) < 0) fail_child(plan.error_pipe, "dup2 stdin");
  if (::dup2(plan.log_fd, STDOUT_FILENO) < 0) fail_child(plan.error_pipe, "dup2 stdout");
  if (::dup2(plan.log_fd, STDERR_FILENO) < 0) fail_child(plan.error_pipe, "dup2 stderr");
  // Descriptors the VM process takes over (the migration stream) become 3, 4, ... The sources
  // are above that range (spawn_vm_process moved them there), so no dup2 clobbers another.
  for (size_t i = 0; i < plan.inherit_count; ++i) {
    if (::dup2(plan.inherit[i], static_cast<int>(3 + i)) < 0) {
      fail_child(plan.error_pipe, "dup2 inherited");
    }
  }
  sigset_t none;
  sigemptyset(&none);
  struct sigaction defaults {};
  defaults.sa_handler = SIG_DFL;
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGPIPE, SIGCHLD}) ::sigaction(sig, &defaults, nullptr);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  ::execve(plan.argv[0], plan.argv, environ);
  fail_child(plan.error_pipe, "exec");
}

}  // namespace

Result<pid_t> spawn_vm_process(const SpawnRequest& r) {
  std::vector<std::string> argv_storage = r.argv;
  std::vector<char*> argv;
  for (std::string& a : argv_storage) argv.push_back(a.data());
  argv.push_back(nullptr);

  Fd null_fd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (!null_fd.valid()) return Error::from_errno("open /dev/null", errno);
  Fd log_fd(::open(r.log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640));
  if (!log_fd.valid()) return Error::from_errno("open " + r.log_path, errno);
  // Copies of the inherited descriptors above 3 + count, so the child's dup2s cannot overwrite a
  // source before it is copied.
  int floor = static_cast<int>(3 + r.inherit_fds.size());
  std::vector<Fd> moved;
  std::vector<int> inherit;
  for (int fd : r.inherit_fds) {
    Fd copy(::fcntl(fd, F_DUPFD_CLOEXEC, floor));
    if (!copy.valid()) return Error::from_errno("duplicating an inherited descriptor", errno);
    inherit.push_back(copy.get());
    moved.push_back(std::move(copy));
  }
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) return Error::from_errno("pipe2", errno);
  Fd error_read(pipe_fds[0]), error_write(pipe_fds[1]);

  ChildPlan plan{argv.data(),    null_fd.get(),  log_fd.get(),
                 inherit.data(), inherit.size(), error_write.get()};
  // Without CLONE_VM the child gets a copy-on-write copy of this memory, this stack included.
  std::vector<char> stack(256 * 1024);
  int flags = SIGCHLD;
  if (r.new_namespaces) flags |= CLONE_NEWPID | CLONE_NEWNS;
  pid_t pid = ::clone(child_main, stack.data() + stack.size(), flags, &plan);
  if (pid < 0) {
    int err = errno;
    return Error::from_errno(
        r.new_namespaces ? "clone with a new PID and mount namespace (vmctld needs root for the "
                           "VM sandbox; set [sandbox] jail = false to run VMs without it)"
                         : "clone",
        err);
  }
  error_write.reset();
  char message[64] = {};
  ssize_t n;
  while ((n = ::read(error_read.get(), message, sizeof message - 1)) < 0 && errno == EINTR) {
  }
  if (n > 0) {
    // The exec failed: reap the child here (no watcher is started for it).
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    std::string text(message, static_cast<size_t>(n));
    size_t colon = text.rfind(':');
    int err = std::atoi(text.c_str() + colon + 1);
    return Error::failure(
        fmt::format("starting {}: {}: {}", r.argv[0], text.substr(0, colon), std::strerror(err)));
  }
  return pid;
}

}  // namespace vmctl::daemon
