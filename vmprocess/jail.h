// The VM process's jail, after Firecracker's jailer: vmctld starts each VM process in its own PID
// and mount namespace (daemon/vm_manager.cc), and the process then, still single-threaded and
// before it reads anything a guest or peer controls:
//
//   1. opens /dev/kvm, kept for the VMM (so it needs no access to the device afterwards);
//   2. builds a new root on a tmpfs holding only what it may touch, at the same absolute paths:
//      its VM folder and the daemon's allowed directories read-write, its kernel, initrd,
//      snapshot and TLS files read-only, /dev/{kvm,null,zero,urandom,random,userfaultfd,net/tun},
//      a /proc of its own PID namespace, /sys/module and /sys/devices/system/cpu read-only;
//   3. pivot_roots into it and detaches the host's root;
//   4. takes the unprivileged uid if configured (`[sandbox] user` of vmctld), and drops every
//      capability but those a VMM uses (userfaultfd, locked memory, low ports, tap devices);
//   5. installs the seccomp allowlist (seccomp_filter.h).
//
// A path outside the jail does not exist for the VM process: a snapshot or memory file outside the
// daemon's allowed directories fails with ENOENT, which the error names as outside the jail.
#pragma once

#include <string>
#include <vector>

#include "base/error.h"

namespace vmctl::vmprocess {

struct JailOptions {
  std::string root;                    // an empty directory to build the new root on; "" = none
  std::vector<std::string> writable;   // bound read-write at the same path
  std::vector<std::string> read_only;  // bound read-only at the same path (files or folders)
  std::string user;                    // run as this user (name or uid); "" = stay as started
  bool drop_capabilities = false;      // as root: keep only the capabilities a VMM uses
};

// Steps 1 to 4 above (the caller installs the seccomp filter after). Must run before any thread.
Status enter_jail(const JailOptions& options);

}  // namespace vmctl::vmprocess
