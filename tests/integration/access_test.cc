// Authorization and path policy end to end: a real vmctld with a --config file, callers on its
// unix socket as different users (setpriv), and the files they name.
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <fstream>

#include "tests/integration/daemon_fixture.h"
#include "tests/integration/guest_copies.h"

namespace vmctl::testing {
namespace {

using namespace std::chrono_literals;

constexpr uint64_t kMiB = 1 << 20;

class AccessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Other users must reach the socket in this directory (the socket's own mode decides).
    ::chmod(dir_.path().c_str(), 0755);
    images_ = dir_.path() + "/images";
    ::mkdir(images_.c_str(), 0755);
  }
  std::string write_config(const std::string& text) {
    std::string path = dir_.path() + "/vmctld.toml";
    std::ofstream(path) << text;
    return path;
  }
  // `vmctl ARGS` against `d` as user `uid` (0: root); returns the exit code, stderr in `err`.
  int vmctl_as(Daemon& d, int uid, const std::string& args, std::string* err) {
    std::string out = dir_.path() + "/vmctl.err";
    std::string prefix = uid == 0 ? ""
                                  : "setpriv --reuid=" + std::to_string(uid) +
                                        " --regid=" + std::to_string(uid) + " --clear-groups ";
    int rc = shell(prefix + vmctl_binary() + " --host " + d.address() + " " + args +
                   " >/dev/null 2>" + out);
    std::ifstream in(out);
    err->assign(std::istreambuf_iterator<char>(in), {});
    return rc;
  }

  ScratchDir dir_{"access"};
  std::string images_;
};

TEST_F(AccessTest, RolesFromTheConfigDecideWhatEachLocalUserMayCall) {
  std::string config = write_config(
      "[roles]\n"
      "operator = [\"uid:0\"]\n"
      "viewer = [\"uid:65534\"]\n"
      "[socket]\n"
      "mode = \"0666\"\n");
  Daemon d(dir_.path(), {"--config", config});
  ASSERT_TRUE(d.create("web", "", "hb_ms=50", 64 * kMiB, 1).ok()) << d.log();

  std::string err;
  EXPECT_EQ(vmctl_as(d, 65534, "list", &err), 0) << "a viewer may list: " << err;
  EXPECT_EQ(vmctl_as(d, 65534, "info web", &err), 0) << "a viewer may look: " << err;
  EXPECT_EQ(vmctl_as(d, 65534, "stop web", &err), 2) << err;
  EXPECT_NE(err.find("uid 65534"), std::string::npos) << err;
  EXPECT_NE(err.find("may not call StopVm"), std::string::npos) << err;
  EXPECT_NE(err.find("[roles]"), std::string::npos) << "says what to change: " << err;
  EXPECT_EQ(vmctl_as(d, 65533, "list", &err), 2) << "a user with no role may not even list";
  EXPECT_NE(err.find("no role"), std::string::npos) << err;
  EXPECT_NE(d.log().find("denied StopVm to uid 65534"), std::string::npos)
      << "denials are logged with who: " << d.log();

  // The VM is untouched by the denied stop; the operator stops it.
  EXPECT_EQ(d.get("web").state(), v1::VM_STATE_RUNNING);
  EXPECT_EQ(guest_copies({dir_.path() + "/state"}, "web").size(), 1u);
  EXPECT_EQ(vmctl_as(d, 0, "stop web", &err), 0) << err;
  EXPECT_TRUE(d.wait_state("web", v1::VM_STATE_STOPPED, 10s));
}

TEST_F(AccessTest, FilesOutsideTheAllowedDirectoriesAreRefusedSymlinksIncluded) {
  std::string config = write_config("[paths]\nallowed = [\"" + images_ +
                                    "\"]\nmigration_sockets = [\"" + images_ + "\"]\n");
  Daemon d(dir_.path(), {"--config", config});

  // A kernel outside, and one that looks inside but is a symlink leading out.
  ASSERT_EQ(::symlink("/etc/passwd", (images_ + "/kernel").c_str()), 0);
  grpc::Status s = d.create("k1", "/etc/passwd", "", 64 * kMiB, 1);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("outside the directories this daemon allows"), std::string::npos)
      << s.error_message();
  s = d.create("k2", images_ + "/kernel", "", 64 * kMiB, 1);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("resolves to /etc/passwd"), std::string::npos)
      << s.error_message();

  ASSERT_TRUE(d.create("hb", "", "hb_ms=50", 64 * kMiB, 1).ok()) << d.log();
  auto snapshot = [&](const std::string& path, const std::string& memory_file) {
    grpc::ClientContext context;
    v1::SnapshotRequest request;
    request.set_name("hb");
    request.set_path(path);
    request.set_memory_file(memory_file);
    v1::SnapshotResponse response;
    return d.stub().Snapshot(&context, request, &response);
  };
  std::string outside = dir_.path() + "/outside.snap";
  s = snapshot(outside, "");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  EXPECT_NE(::access(outside.c_str(), F_OK), 0) << "nothing was written outside";
  s = snapshot(images_ + "/hb.snap", dir_.path() + "/outside.mem");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  // A directory symlink inside that leads out is refused too.
  ASSERT_EQ(::symlink(dir_.path().c_str(), (images_ + "/up").c_str()), 0);
  s = snapshot(images_ + "/up/escape.snap", "");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  EXPECT_NE(::access((dir_.path() + "/escape.snap").c_str(), F_OK), 0);
  s = snapshot(images_ + "/hb.snap", "");
  ASSERT_TRUE(s.ok()) << "inside is fine: " << s.error_message();

  // Restoring from outside, and migrating into a socket outside the allowed ones.
  std::ofstream(outside) << "not a snapshot";
  {
    grpc::ClientContext context;
    v1::RestoreRequest request;
    request.set_name("r");
    request.add_files(outside);
    v1::VmInfo info;
    s = d.stub().Restore(&context, request, &info);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
    EXPECT_NE(s.error_message().find("outside"), std::string::npos) << s.error_message();
  }
  v1::MigrateRequest request;
  request.set_name("hb");
  request.set_destination(d.address());
  MigrationResult m = migrate(d, request);
  EXPECT_EQ(m.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << m.status.error_message();
  EXPECT_NE(m.status.error_message().find("local migration destination"), std::string::npos)
      << m.status.error_message();
  EXPECT_EQ(d.get("hb").state(), v1::VM_STATE_RUNNING);
  EXPECT_TRUE(d.call(&v1::Vmctl::Stub::StopVm, "hb").ok());
}

TEST_F(AccessTest, AMalformedConfigStopsTheDaemonWithOneLineNamingFileAndLine) {
  struct Case {
    const char* text;
    const char* expect;
  } cases[] = {
      {"[roles]\noperator = [\"uid:0\"\n", "vmctld.toml:"},
      {"[roles]\nsuperuser = [\"uid:0\"]\n", "unknown role 'superuser'"},
      {"[roles]\noperator = [\"root\"]\n", "expected uid:N, user:NAME"},
      {"[paths]\nallowed = [\"/no/such/dir\"]\n", "/no/such/dir does not exist"},
      {"[socket]\nmode = \"0066\"\n", "socket.mode"},
      {"[sockets]\nmode = \"0600\"\n", "unknown key 'sockets'"},
  };
  for (const Case& c : cases) {
    std::string config = write_config(c.text);
    VmctlProcess p(vmctld_binary(), {"--socket", dir_.path() + "/x.sock", "--state-dir",
                                     dir_.path() + "/state", "--config", config});
    EXPECT_EQ(p.wait_exit(10s), 2) << c.text;
    std::string err = p.err();
    EXPECT_NE(err.find(c.expect), std::string::npos) << c.text << " -> " << err;
    EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << "one line: " << err;
  }
}

}  // namespace
}  // namespace vmctl::testing
