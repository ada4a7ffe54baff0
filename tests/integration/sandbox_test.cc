// The VM process's sandbox end to end (vmprocess/jail.h, vmprocess/seccomp_filter.h): a real
// vmctld starts real VM processes, and the test looks at them from outside, through /proc: their
// namespaces, what their root holds, their uid, capabilities and seccomp mode, and what happens
// when one makes a forbidden system call.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "tests/integration/daemon_fixture.h"

namespace vmctl::testing {
namespace {

using namespace std::chrono_literals;

constexpr uint64_t kMiB = 1 << 20;

// A "Key:\tvalue" line of /proc/PID/status ("" when absent).
std::string proc_status(pid_t pid, const std::string& key) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + ":", 0) == 0) {
      std::string value = line.substr(key.size() + 1);
      value.erase(0, value.find_first_not_of(" \t"));
      value.erase(value.find_last_not_of(" \t") + 1);
      return value;
    }
  }
  return "";
}

std::string ns_of(const std::string& pid, const std::string& ns) {
  char target[128] = {};
  ssize_t n = ::readlink(("/proc/" + pid + "/ns/" + ns).c_str(), target, sizeof target - 1);
  return n > 0 ? std::string(target, static_cast<size_t>(n)) : "";
}

bool exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

grpc::Status snapshot(Daemon& d, const std::string& name, const std::string& path) {
  grpc::ClientContext context;
  v1::SnapshotRequest request;
  request.set_name(name);
  request.set_path(path);
  v1::SnapshotResponse response;
  return d.stub().Snapshot(&context, request, &response);
}

class Sandbox : public ::testing::Test {
 protected:
  std::string write_config(const std::string& text) {
    std::string path = dir_.path() + "/vmctld.toml";
    std::ofstream(path) << text;
    return path;
  }
  ScratchDir dir_{"sandbox"};
};

TEST_F(Sandbox, AForbiddenSyscallKillsTheVmProcessAndTheDaemonReportsFailed) {
  // The fault makes the VM process call execve when asked to pause, as an exploited device
  // model would to start a shell.
  Daemon d(dir_.path(), {}, {"env", "VMCTL_FAULT_FORBIDDEN_SYSCALL=1"});
  ASSERT_TRUE(d.create("victim", "", "hb_ms=50", 64 * kMiB, 1).ok()) << d.log();
  ASSERT_TRUE(d.wait_console("victim", "HB 3", 30s)) << d.console("victim");
  pid_t pid = d.get("victim").pid();
  ASSERT_GT(pid, 0);
  EXPECT_EQ(proc_status(pid, "Seccomp"), "2") << "the filter is on before anything runs";

  EXPECT_FALSE(d.call(&v1::Vmctl::Stub::PauseVm, "victim").ok());
  ASSERT_TRUE(d.wait_state("victim", v1::VM_STATE_FAILED, 30s)) << d.log();
  v1::VmInfo info = d.get("victim");
  EXPECT_NE(info.error().find("signal 31"), std::string::npos) << info.error();
  EXPECT_NE(info.error().find("seccomp"), std::string::npos)
      << "the error says why: " << info.error();
  EXPECT_NE(::kill(pid, 0), 0) << "the VM process is gone";
  // No shell ran: execve never returned into a new program.
  std::ifstream log(dir_.path() + "/state/vms/victim/vmctl.log");
  std::stringstream text;
  text << log.rdbuf();
  EXPECT_NE(text.str().find("fault: calling execve"), std::string::npos) << text.str();
  EXPECT_EQ(text.str().find("execve returned"), std::string::npos) << text.str();
}

TEST_F(Sandbox, AVmProcessSeesOnlyItsFilesInItsOwnNamespacesWithFewCapabilities) {
  std::string images = dir_.path() + "/images";
  ASSERT_EQ(::mkdir(images.c_str(), 0755), 0);
  std::string config = write_config("[paths]\nallowed = [\"" + images + "\"]\n");
  Daemon d(dir_.path(), {"--config", config});
  ASSERT_TRUE(d.create("jailed", "", "hb_ms=50", 64 * kMiB, 1).ok()) << d.log();
  ASSERT_TRUE(d.wait_console("jailed", "HB 3", 30s)) << d.console("jailed");
  pid_t pid = d.get("jailed").pid();
  ASSERT_GT(pid, 0);
  std::string p = std::to_string(pid);

  // Its own PID namespace (pid 1 there) and mount namespace.
  EXPECT_EQ(proc_status(pid, "NSpid"), p + "\t1");
  EXPECT_NE(ns_of(p, "pid"), ns_of("self", "pid"));
  EXPECT_NE(ns_of(p, "mnt"), ns_of("self", "mnt"));
  // Its root holds the allowed folder, its own VM folder and the devices, nothing else of the
  // host: no /etc/passwd, no other VM's folder, no daemon socket, no /root.
  std::string root = "/proc/" + p + "/root";
  EXPECT_TRUE(exists(root + images));
  EXPECT_TRUE(exists(root + dir_.path() + "/state/vms/jailed/control.sock"));
  EXPECT_TRUE(exists(root + "/dev/kvm"));
  EXPECT_FALSE(exists(root + "/etc/passwd"));
  EXPECT_FALSE(exists(root + "/usr/bin"));
  EXPECT_FALSE(exists(root + dir_.path() + "/vmctld.sock"));
  EXPECT_FALSE(exists(root + dir_.path() + "/state/migrations"));
  EXPECT_FALSE(exists(root + dir_.path() + "/vmctld.toml"));
  // Capabilities: userfaultfd (SYS_PTRACE 19), IPC_LOCK 14, NET_BIND_SERVICE 10, NET_ADMIN 12.
  uint64_t kept = (1ull << 19) | (1ull << 14) | (1ull << 10) | (1ull << 12);
  EXPECT_EQ(std::stoull(proc_status(pid, "CapEff"), nullptr, 16), kept);
  EXPECT_EQ(std::stoull(proc_status(pid, "CapBnd"), nullptr, 16), kept);
  EXPECT_EQ(proc_status(pid, "NoNewPrivs"), "1");
  EXPECT_EQ(proc_status(pid, "Seccomp"), "2");

  // It still does its work: a snapshot into the allowed folder, then a restore from it (a jailed
  // restoring process reads the file at the same path).
  grpc::Status s = snapshot(d, "jailed", images + "/jailed.snap");
  ASSERT_TRUE(s.ok()) << s.error_message() << d.log();
  ASSERT_TRUE(d.call(&v1::Vmctl::Stub::StopVm, "jailed").ok());
  grpc::ClientContext context;
  v1::RestoreRequest request;
  request.set_name("again");
  request.add_files(images + "/jailed.snap");
  v1::VmInfo info;
  s = d.stub().Restore(&context, request, &info);
  ASSERT_TRUE(s.ok()) << s.error_message() << d.log();
  ASSERT_TRUE(d.wait_console("again", "HB 8", 30s)) << d.console("again");
  pid_t again = d.get("again").pid();
  EXPECT_EQ(proc_status(again, "NSpid"), std::to_string(again) + "\t1");
  EXPECT_FALSE(exists("/proc/" + std::to_string(again) + "/root/etc/passwd"));
  EXPECT_TRUE(d.call(&v1::Vmctl::Stub::StopVm, "again").ok());
}

TEST_F(Sandbox, AVmProcessRunsAsTheConfiguredUser) {
  std::string images = dir_.path() + "/images";
  ASSERT_EQ(::mkdir(images.c_str(), 0755), 0);
  ASSERT_EQ(::chown(images.c_str(), 65534, 65534), 0);
  std::string config =
      write_config("[paths]\nallowed = [\"" + images + "\"]\n[sandbox]\nuser = \"nobody\"\n");
  Daemon d(dir_.path(), {"--config", config});
  ASSERT_TRUE(d.create("plain", "", "hb_ms=50", 64 * kMiB, 1).ok()) << d.log();
  ASSERT_TRUE(d.wait_console("plain", "HB 3", 30s)) << d.console("plain") << d.log();
  pid_t pid = d.get("plain").pid();
  ASSERT_GT(pid, 0);
  // /dev/kvm is root's alone here (mode 0600): the process opened it before it gave up root.
  EXPECT_EQ(proc_status(pid, "Uid"), "65534\t65534\t65534\t65534");
  EXPECT_EQ(proc_status(pid, "Gid"), "65534\t65534\t65534\t65534");
  EXPECT_EQ(proc_status(pid, "Groups"), "65534");
  EXPECT_EQ(std::stoull(proc_status(pid, "CapEff"), nullptr, 16), 0u);
  grpc::Status s = snapshot(d, "plain", images + "/plain.snap");
  ASSERT_TRUE(s.ok()) << s.error_message() << d.log();
  struct stat st {};
  ASSERT_EQ(::stat((images + "/plain.snap").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, 65534u) << "written by the VM's user";
  EXPECT_TRUE(d.call(&v1::Vmctl::Stub::StopVm, "plain").ok());
}

}  // namespace
}  // namespace vmctl::testing
