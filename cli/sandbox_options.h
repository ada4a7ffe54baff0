// --jail, --jail-bind, --jail-read-only, --user and --seccomp: the VM process's sandbox
// (vmprocess/jail.h, vmprocess/seccomp_filter.h), shared by run, restore and receive. vmctld
// passes them to every VM process it starts; a foreground `vmctl run` gets the seccomp filter.
#pragma once

#include <string>
#include <vector>

#include <CLI/CLI.hpp>

namespace vmctl::cli {

struct SandboxFlags {
  std::string jail;                    // an empty directory to build the new root on
  std::vector<std::string> writable;   // bound read-write into the jail
  std::vector<std::string> read_only;  // bound read-only into the jail
  std::string user;
  bool drop_capabilities = false;
  std::string seccomp = "enforce";
};

void add_sandbox_options(CLI::App* command, SandboxFlags& flags);

// Enters the sandbox; `inputs` (kernel, snapshot, TLS files) are bound read-only into the jail.
// Returns 0, or the exit code after printing the one-line error. Call before any thread starts.
int enter_sandbox(const SandboxFlags& flags, const std::vector<std::string>& inputs);

}  // namespace vmctl::cli
