// TLS identities map to roles: a destination that does not list the source's certificate as a
// migration peer refuses the VM before any memory moves (and it keeps running at the source
// only), and remote control over TLS needs a role of its own.
#include <sys/stat.h>

#include <gtest/gtest.h>

#include <fstream>

#include "tests/integration/cross_host.h"

namespace vmctl::testing {
namespace {

using namespace std::chrono_literals;

constexpr uint64_t kMiB = 1 << 20;

TEST_F(CrossHost, TlsIdentitiesMapToRolesOnTheDestination) {
  // C: a second daemon on host B that takes VMs only from "another-host" and lets this
  // certificate (CN vmctld, the one both test daemons use) only look; root on its unix socket
  // (the test) operates it. A [roles] table replaces the defaults entirely.
  std::string c_dir = hosts->dir->path() + "/c";
  ::mkdir(c_dir.c_str(), 0700);
  std::string config = c_dir + "/vmctld.toml";
  std::ofstream(config) << "[roles]\n"
                           "migration-peer = [\"tls:another-host\"]\n"
                           "viewer = [\"tls:vmctld\"]\n"
                           "operator = [\"uid:0\"]\n";
  std::string c_address = hosts->addr_b + ":7444";
  std::vector<std::string> flags = {"--listen", c_address, "--config", config};
  for (const std::string& f : hosts->tls_flags()) flags.push_back(f);
  Daemon c(c_dir, flags, hosts->in_ns(hosts->ns_b));

  ASSERT_NO_FATAL_FAILURE(start_dirtier(A(), "acl", 128 * kMiB, "mib=32 rate=16 hb_ms=50"));
  v1::MigrateRequest r = request("acl", hosts->addr_b);
  r.set_destination(c_address);
  MigrationResult m = migrate(A(), r);
  EXPECT_FALSE(m.status.ok());
  EXPECT_NE(m.status.error_message().find("refused this daemon"), std::string::npos)
      << m.status.error_message();
  EXPECT_NE(m.status.error_message().find("may not call Control"), std::string::npos)
      << m.status.error_message();
  EXPECT_NE(c.log().find("denied Control to certificate vmctld"), std::string::npos) << c.log();
  expect_one_copy("acl", hosts->root_a());
  EXPECT_TRUE(guest_copies({c_dir + "/state"}, "acl").empty())
      << "nothing started on the refusing host";

  // Remote control over TLS, from host A: the viewer may list on C and not stop; the default
  // daemon B grants a certificate only the migration-peer role.
  auto remote = [&](const std::string& address, const std::string& args, std::string* err) {
    std::string out = hosts->dir->path() + "/remote.err";
    std::string command =
        "ip netns exec " + hosts->ns_a + " " + vmctl_binary() + " --host " + address;
    for (const std::string& f : hosts->tls_flags()) command += " " + f;
    int rc = shell(command + " " + args + " >/dev/null 2>" + out);
    std::ifstream in(out);
    err->assign(std::istreambuf_iterator<char>(in), {});
    return rc;
  };
  std::string err;
  EXPECT_EQ(remote(c_address, "list", &err), 0) << err;
  EXPECT_EQ(remote(c_address, "create x --memory 64M", &err), 2) << err;
  EXPECT_NE(err.find("may not call CreateVm"), std::string::npos) << err;
  EXPECT_EQ(remote(hosts->tcp(hosts->addr_b), "list", &err), 2) << err;
  EXPECT_NE(err.find("has migration-peer"), std::string::npos) << err;
  stop_vm("acl");
}

}  // namespace
}  // namespace vmctl::testing
