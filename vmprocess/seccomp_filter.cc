#include "vmprocess/seccomp_filter.h"

#include <sched.h>
#include <seccomp.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <memory>

#include <fmt/format.h>

#include "base/fault.h"

namespace vmctl::vmprocess {
namespace {

// What the VM process calls, found with `strace -f -c` over run, restore (eager and lazy),
// snapshot (full, diff, memory file), pause, and migration out and in over unix sockets and TLS;
// grouped by purpose. A name this architecture does not have is skipped.
constexpr const char* kAllowed[] = {
    // KVM, terminals, the dirty ring and userfaultfd: all ioctls go through one call.
    "ioctl",
    // Memory: guest RAM, thread stacks, malloc, lazy restore.
    "mmap",
    "munmap",
    "mprotect",
    "madvise",
    "mremap",
    "brk",
    "mlock",
    "munlock",
    "memfd_create",
    "userfaultfd",
    "membarrier",
    // Threads and their synchronisation (clone itself has a rule below).
    "futex",
    "futex_waitv",
    "set_robust_list",
    "get_robust_list",
    "rseq",
    "set_tid_address",
    "sched_yield",
    "sched_getaffinity",
    "sched_setaffinity",
    "exit",
    "exit_group",
    "restart_syscall",
    "arch_prctl",
    "prctl",
    // Signals: vCPU kicks, the stop signals through signalfd.
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "rt_sigtimedwait",
    "rt_sigpending",
    "rt_sigsuspend",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    // Waiting and time.
    "poll",
    "ppoll",
    "select",
    "pselect6",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_wait",
    "epoll_pwait",
    "epoll_pwait2",
    "eventfd",
    "eventfd2",
    "timerfd_create",
    "timerfd_settime",
    "timerfd_gettime",
    "nanosleep",
    "clock_nanosleep",
    "clock_gettime",
    "clock_getres",
    "gettimeofday",
    "time",
    // Files: snapshots, memory files, console logs, the control socket's path.
    "read",
    "write",
    "readv",
    "writev",
    "pread64",
    "pwrite64",
    "preadv",
    "pwritev",
    "preadv2",
    "pwritev2",
    "open",
    "openat",
    "close",
    "close_range",
    "lseek",
    "fstat",
    "stat",
    "lstat",
    "newfstatat",
    "statx",
    "statfs",
    "fstatfs",
    "fsync",
    "fdatasync",
    "syncfs",
    "sync_file_range",
    "ftruncate",
    "fallocate",
    "fadvise64",
    "rename",
    "renameat",
    "renameat2",
    "unlink",
    "unlinkat",
    "mkdir",
    "mkdirat",
    "rmdir",
    "fchmod",
    "fchmodat",
    "umask",
    "flock",
    "fcntl",
    "dup",
    "dup2",
    "dup3",
    "pipe",
    "pipe2",
    "splice",
    "vmsplice",
    "tee",
    "sendfile",
    "copy_file_range",
    "getdents64",
    "readlink",
    "readlinkat",
    "getcwd",
    "access",
    "faccessat",
    "faccessat2",
    // Sockets: control socket, migration streams and data connections (socket has a rule below).
    "socketpair",
    "bind",
    "listen",
    "accept",
    "accept4",
    "connect",
    "getsockname",
    "getpeername",
    "setsockopt",
    "getsockopt",
    "shutdown",
    "sendto",
    "recvfrom",
    "sendmsg",
    "recvmsg",
    "sendmmsg",
    "recvmmsg",
    // Identity and host facts: logs, RAM limits, core counts, TLS seeding.
    "getpid",
    "gettid",
    "getppid",
    "getuid",
    "geteuid",
    "getgid",
    "getegid",
    "getgroups",
    "getresuid",
    "getresgid",
    "uname",
    "sysinfo",
    "getrlimit",
    "prlimit64",
    "getrusage",
    "times",
    "getrandom",
    "getcpu",
};

struct FilterDeleter {
  void operator()(void* ctx) const { seccomp_release(ctx); }
};

Status add(scmp_filter_ctx ctx, uint32_t action, const char* name, unsigned count,
           const scmp_arg_cmp* args) {
  int nr = seccomp_syscall_resolve_name(name);
  if (nr == __NR_SCMP_ERROR) return ok_status();  // not a syscall of this architecture
  int r = seccomp_rule_add_array(ctx, action, nr, count, args);
  if (r < 0) return Error::from_errno(fmt::format("seccomp: a rule for {}", name), -r);
  return ok_status();
}

}  // namespace

Result<SeccompMode> parse_seccomp_mode(const std::string& text) {
  if (text == "enforce") return SeccompMode::kEnforce;
  if (text == "log") return SeccompMode::kLog;
  if (text == "off") return SeccompMode::kOff;
  return Error::user(fmt::format("--seccomp {}: say enforce, log or off", text));
}

Status install_seccomp_filter(SeccompMode mode) {
  if (mode == SeccompMode::kOff) return ok_status();
  uint32_t otherwise = mode == SeccompMode::kLog ? SCMP_ACT_LOG : SCMP_ACT_KILL_PROCESS;
  std::unique_ptr<void, FilterDeleter> filter(seccomp_init(otherwise));
  if (!filter) return Error::failure("seccomp_init failed (out of memory?)");
  scmp_filter_ctx ctx = filter.get();
  // Every thread, also those a library started before this point.
  if (int r = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1); r < 0) {
    return Error::from_errno("seccomp: synchronising threads", -r);
  }
  // A binary tree over syscall numbers, and ioctl (KVM_RUN: every exit of every vCPU) tested
  // first: the filter runs on each system call.
  (void)seccomp_attr_set(ctx, SCMP_FLTATR_CTL_OPTIMIZE, 2);
  for (const char* name : kAllowed) TRY(add(ctx, SCMP_ACT_ALLOW, name, 0, nullptr));
  (void)seccomp_syscall_priority(ctx, SCMP_SYS(ioctl), 255);

  // Threads yes, processes no: a VM process never forks or execs.
  scmp_arg_cmp thread_only = SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_THREAD, CLONE_THREAD);
  TRY(add(ctx, SCMP_ACT_ALLOW, "clone", 1, &thread_only));
  TRY(add(ctx, SCMP_ACT_ERRNO(ENOSYS), "clone3", 0, nullptr));
  // Unix (control socket, local migration), IPv4 and IPv6 (TCP migration); no raw, netlink or
  // packet sockets.
  for (int family : {AF_UNIX, AF_INET, AF_INET6}) {
    scmp_arg_cmp is_family = SCMP_A0(SCMP_CMP_EQ, static_cast<scmp_datum_t>(family));
    TRY(add(ctx, SCMP_ACT_ALLOW, "socket", 1, &is_family));
  }
  // Signals to our own threads only (vCPU kicks, raise).
  scmp_arg_cmp own_process = SCMP_A0(SCMP_CMP_EQ, static_cast<scmp_datum_t>(::getpid()));
  TRY(add(ctx, SCMP_ACT_ALLOW, "tgkill", 1, &own_process));
  TRY(add(ctx, SCMP_ACT_ALLOW, "kill", 1, &own_process));

  if (int r = seccomp_load(ctx); r < 0) return Error::from_errno("seccomp: loading the filter", -r);
  return ok_status();
}

void fault_forbidden_syscall() {
  if (!fault_enabled("VMCTL_FAULT_FORBIDDEN_SYSCALL")) return;
  std::fprintf(stderr, "fault: calling execve, which the seccomp filter forbids\n");
  std::fflush(stderr);
  char shell[] = "/bin/sh";
  char* argv[] = {shell, nullptr};
  ::execve(shell, argv, nullptr);
  std::fprintf(stderr, "fault: execve returned: the seccomp filter is not enforcing\n");
}

}  // namespace vmctl::vmprocess
