// Starting a VM process: its own session (it outlives the daemon), stdin from /dev/null, stdout
// and stderr appended to its log, the descriptors it takes over as 3, 4, ..., default signal
// dispositions, and (when the sandbox asks) its own PID and mount namespace, made by clone()
// since posix_spawn cannot. The jail inside the mount namespace is the VM process's own work
// (vmprocess/jail.h): it is built after exec, from the process's arguments.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "base/error.h"

namespace vmctl::daemon {

struct SpawnRequest {
  std::vector<std::string> argv;  // argv[0] is the binary
  std::string log_path;
  std::vector<int> inherit_fds;
  bool new_namespaces = false;  // CLONE_NEWPID | CLONE_NEWNS
};

// The child's pid as this daemon sees it. An exec failure is reported here, not as an exit.
Result<pid_t> spawn_vm_process(const SpawnRequest& request);

}  // namespace vmctl::daemon
