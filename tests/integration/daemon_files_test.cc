// The daemon's own files: one vmctld per state directory (vmctld.lock), vm.json written atomically
// and owner-only, and a malformed vm.json reported as a LOST VM instead of crashing or being
// skipped.
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <fmt/format.h>

#include <fstream>
#include <sstream>

#include "tests/integration/daemon_fixture.h"
#include "tests/integration/vmctl_process.h"

namespace vmctl::testing {
namespace {

using namespace std::chrono_literals;

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

int count_lines(const std::string& command) {
  FILE* p = popen(command.c_str(), "r");
  int lines = 0;
  for (int c; (c = fgetc(p)) != EOF;) lines += c == '\n';
  pclose(p);
  return lines;
}

TEST(DaemonFiles, SecondDaemonOnTheSameStateDirectoryIsRefused) {
  ScratchDir dir("daemon-lock");
  Daemon first(dir.path());
  ASSERT_TRUE(first.create("hb", guest_path("heartbeat.elf"), "hb_ms=100", 64 << 20, 1).ok());
  std::string other_socket = dir.path() + "/second.sock";
  VmctlProcess second(vmctld_binary(),
                      {"--socket", other_socket, "--state-dir", dir.path() + "/state"});
  EXPECT_EQ(second.wait_exit(30s), 2);
  std::string err = second.err();
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << "one line: " << err;
  EXPECT_NE(err.find(fmt::format("another vmctld (pid {})", first.pid())), std::string::npos)
      << err;
  EXPECT_NE(err.find(dir.path() + "/state"), std::string::npos) << err;
  EXPECT_NE(access(other_socket.c_str(), F_OK), 0) << "the refused daemon must not listen";
  // The first daemon goes on as before, with its VM.
  grpc::Status status;
  v1::VmInfo info = first.get("hb", &status);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(info.state(), v1::VM_STATE_RUNNING);
  EXPECT_TRUE(first.wait_console("hb", "^HB 2 ", 60s));
  // Once the first has stopped, the directory is free again.
  first.stop();
  first.start();
  EXPECT_EQ(first.get("hb", &status).state(), v1::VM_STATE_RUNNING) << status.error_message();
  first.stop_vms();
}

TEST(DaemonFiles, VmJsonIsOwnerOnlyAndALeftoverOfADeadWriterIsRemoved) {
  ScratchDir dir("daemon-vmjson");
  Daemon d(dir.path());
  ASSERT_TRUE(d.create("hb", guest_path("heartbeat.elf"), "hb_ms=100", 64 << 20, 1).ok());
  std::string vm_dir = dir.path() + "/state/vms/hb";
  struct stat st {};
  ASSERT_EQ(stat((vm_dir + "/vm.json").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  // A daemon that died while writing vm.json left its temporary file.
  pid_t dead = fork();
  if (dead == 0) _exit(0);
  waitpid(dead, nullptr, 0);
  std::string leftover = fmt::format("{}/vm.json.tmp-{}-0123456789abcdef", vm_dir, dead);
  std::ofstream(leftover) << "{\"half\": ";
  ASSERT_TRUE(d.call(&v1::Vmctl::Stub::PauseVm, "hb").ok());  // a change: vm.json is rewritten
  EXPECT_NE(access(leftover.c_str(), F_OK), 0) << "the dead writer's file must be removed";
  EXPECT_EQ(count_lines("ls " + vm_dir + " | grep tmp-"), 0);
  EXPECT_NE(read_file(vm_dir + "/vm.json").find("\"state\": \"paused\""), std::string::npos)
      << read_file(vm_dir + "/vm.json");
  d.stop_vms();
}

TEST(DaemonFiles, MalformedVmJsonIsReportedAsALostVmNotFatalAndNotSkipped) {
  ScratchDir dir("daemon-malformed");
  Daemon d(dir.path());
  ASSERT_TRUE(d.create("good", guest_path("heartbeat.elf"), "hb_ms=100", 64 << 20, 1).ok());
  ASSERT_TRUE(d.create("bad", guest_path("heartbeat.elf"), "hb_ms=100", 64 << 20, 1).ok());
  ASSERT_TRUE(d.call(&v1::Vmctl::Stub::StopVm, "bad").ok());
  d.stop();
  std::string bad_json = dir.path() + "/state/vms/bad/vm.json";
  const std::string garbage = "{\"name\": \"bad\", \"state_code\": ";  // cut short
  std::ofstream(bad_json, std::ios::trunc) << garbage;

  d.start();
  ASSERT_TRUE(d.running());
  grpc::Status status;
  v1::VmInfo bad = d.get("bad", &status);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(bad.state(), v1::VM_STATE_LOST);
  EXPECT_EQ(bad.error().rfind("vm.json is malformed: not JSON: ", 0), 0u) << bad.error();
  EXPECT_NE(bad.error().find("(delete the VM or fix the file " + bad_json + ")"), std::string::npos)
      << bad.error();
  EXPECT_EQ(d.get("good").state(), v1::VM_STATE_RUNNING) << "the other VM was adopted";
  EXPECT_EQ(read_file(bad_json), garbage) << "the operator's file must not be overwritten";

  // It cannot be started (with what config?), only deleted; the daemon serves on.
  status = d.call(&v1::Vmctl::Stub::StartVm, "bad");
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(status.error_message().find("vm.json is malformed"), std::string::npos)
      << status.error_message();
  EXPECT_EQ(read_file(bad_json), garbage);
  ASSERT_TRUE(d.call(&v1::Vmctl::Stub::DeleteVm, "bad").ok());
  EXPECT_NE(access((dir.path() + "/state/vms/bad").c_str(), F_OK), 0);
  EXPECT_TRUE(d.create("new", guest_path("heartbeat.elf"), "hb_ms=100", 64 << 20, 1).ok());
  d.stop_vms();
}

}  // namespace
}  // namespace vmctl::testing
