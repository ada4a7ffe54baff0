// The VM process's seccomp allowlist. The VM process parses guest-controlled data (device
// emulation, exits, snapshot and migration streams from peers), so it may make only the system
// calls a VMM needs: KVM ioctls, memory management, threads, files and sockets. Everything else,
// above all execve, ptrace, mount, namespaces, BPF and module loading, kills the whole process
// (SIGSYS), which vmctld reports as a FAILED VM.
//
// Rules beyond "this syscall": clone only makes threads (CLONE_THREAD), not processes; clone3 is
// answered ENOSYS (its flags sit in memory a filter cannot read) so glibc falls back to clone;
// socket only for unix, IPv4 and IPv6; signals only to this process's own threads.
#pragma once

#include <string>

#include "base/error.h"

namespace vmctl::vmprocess {

enum class SeccompMode {
  kEnforce,  // a syscall outside the list kills the process (the default)
  kLog,      // allowed, but the kernel logs it (audit, dmesg): to find what a new feature needs
  kOff,
};

Result<SeccompMode> parse_seccomp_mode(const std::string& text);

// Installs the filter on every thread of this process (TSYNC); it also sets no_new_privs. Threads
// started later inherit it.
Status install_seccomp_filter(SeccompMode mode);

// The fault point that proves enforcement: with VMCTL_FAULT_FORBIDDEN_SYSCALL set, calls execve,
// as an exploit of a device model would, which the filter must answer by killing the process.
void fault_forbidden_syscall();

}  // namespace vmctl::vmprocess
