#include "cli/sandbox_options.h"

#include <signal.h>
#include <unistd.h>

#include <cstdio>

#include "base/path.h"
#include "vmprocess/jail.h"
#include "vmprocess/seccomp_filter.h"

namespace vmctl::cli {
namespace {

[[noreturn]] void exit_on_signal(int sig) {
  ::_exit(128 + sig);
}

// As the first process of its PID namespace (vmctld starts it so), the kernel ignores signals it
// has no handler for, SIGTERM included: until the session takes them (session.cc), they end it.
void end_on_stop_signals() {
  if (::getpid() != 1) return;
  struct sigaction action {};
  action.sa_handler = exit_on_signal;
  sigemptyset(&action.sa_mask);
  for (int sig : {SIGTERM, SIGINT, SIGHUP}) ::sigaction(sig, &action, nullptr);
}

}  // namespace

void add_sandbox_options(CLI::App* command, SandboxFlags& f) {
  const char* group = "Sandbox (vmctld sets these for its VMs)";
  command
      ->add_option("--jail", f.jail,
                   "Build a new root on this empty directory holding only the VM's files, "
                   "devices and --jail-bind paths, and pivot_root into it (needs root)")
      ->group(group);
  command->add_option("--jail-bind", f.writable, "Bind this path read-write into the jail")
      ->group(group);
  command->add_option("--jail-read-only", f.read_only, "Bind this path read-only into the jail")
      ->group(group);
  command
      ->add_option("--user", f.user,
                   "Give up root for this user (NAME, UID or UID:GID) once /dev/kvm is open")
      ->group(group);
  command
      ->add_flag("--drop-capabilities", f.drop_capabilities,
                 "As root, keep only the capabilities a VMM uses (userfaultfd, locked memory, "
                 "low ports, tap devices)")
      ->group(group);
  command
      ->add_option("--seccomp", f.seccomp,
                   "enforce: a system call outside the VM process's allowlist kills it; log: "
                   "allow it but have the kernel log it; off")
      ->check(CLI::IsMember({"enforce", "log", "off"}))
      ->capture_default_str()
      ->group(group);
}

int enter_sandbox(const SandboxFlags& f, const std::vector<std::string>& inputs) {
  end_on_stop_signals();
  Result<vmprocess::SeccompMode> mode = vmprocess::parse_seccomp_mode(f.seccomp);
  if (!mode.ok()) {
    std::fprintf(stderr, "vmctl: %s\n", mode.error().message().c_str());
    return 2;
  }
  vmprocess::JailOptions jail;
  if (!f.jail.empty()) jail.root = absolute_path(f.jail);
  for (const std::string& p : f.writable) jail.writable.push_back(absolute_path(p));
  for (const std::string& p : f.read_only) jail.read_only.push_back(absolute_path(p));
  for (const std::string& p : inputs) {
    if (p.empty()) continue;
    std::string path = absolute_path(p);
    // One the VM may write anyway stays writable: a read-only mount on a file would also keep a
    // later snapshot from replacing it (rename onto a mount point fails).
    bool covered = false;
    for (const std::string& w : jail.writable) {
      covered |= path == w || path.rfind(w == "/" ? w : w + "/", 0) == 0;
    }
    if (!covered) jail.read_only.push_back(path);
  }
  jail.user = f.user;
  jail.drop_capabilities = f.drop_capabilities;
  Status entered = vmprocess::enter_jail(jail);
  if (entered.ok()) entered = vmprocess::install_seccomp_filter(*mode);
  if (!entered.ok()) {
    std::fprintf(stderr, "vmctl: %s\n", entered.error().message().c_str());
    return entered.error().exit_code();
  }
  return 0;
}

}  // namespace vmctl::cli
