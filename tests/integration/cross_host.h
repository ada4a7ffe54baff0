// Two "hosts" for migration tests: network namespaces joined by a veth pair, each with its own
// vmctld listening on its own address with mutual TLS. Tests drive both daemons through their unix
// sockets (shared filesystem); migrations cross the veth link. What runs where is read from the
// processes themselves (guest_copies.h).
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "tests/integration/daemon_fixture.h"
#include "tests/integration/guest_copies.h"

namespace vmctl::testing {

struct Hosts {
  std::string ns_a, ns_b, veth_a, veth_b;
  std::string addr_a = "10.77.0.1", addr_b = "10.77.0.2";
  std::unique_ptr<ScratchDir> dir;
  std::unique_ptr<Daemon> a, b;
  std::string tls_dir;

  std::string tcp(const std::string& ip) const { return ip + ":7443"; }
  std::string root_a() const { return dir->path() + "/a/state"; }
  std::string root_b() const { return dir->path() + "/b/state"; }
  std::vector<std::string> tls_flags() const;
  std::vector<std::string> daemon_flags(const std::string& ip) const;
  std::vector<std::string> in_ns(const std::string& ns, std::vector<std::string> env = {}) const;
};

extern Hosts* hosts;

class CrossHost : public ::testing::Test {
 protected:
  static void SetUpTestSuite();
  static void TearDownTestSuite();
  // Both daemons up with no fault injection, the link up, and no VM process left anywhere.
  void SetUp() override;
  // A VM process still alive under either host fails the test (then it is killed, so that the
  // tests after it start clean).
  void TearDown() override;

  Daemon& A() { return *hosts->a; }
  Daemon& B() { return *hosts->b; }
  std::vector<std::string> roots() const { return {hosts->root_a(), hosts->root_b()}; }
  // Restarts `d` (A or B) with fault injection in its environment (and its VM processes').
  void with_faults(Daemon& d, std::vector<std::string> env);
  void link(bool up);

  v1::MigrateRequest request(const std::string& name, const std::string& to_ip);
  // The dirtier, which rewrites `mib` MiB from ring 3 and checks every page it reads back.
  void start_dirtier(Daemon& d, const std::string& name, uint64_t memory, const std::string& args);

  // Waits (up to `settle`) until exactly one copy of `name` exists, runs, and lives under `root`,
  // then has the guest check all its memory; fails with every copy found otherwise. The daemon
  // of that host must agree that it runs there.
  void expect_one_copy(const std::string& name, const std::string& root,
                       std::chrono::seconds settle = std::chrono::seconds(30));
  // Waits until no copy of `name` exists on either host.
  void expect_no_copy(const std::string& name,
                      std::chrono::seconds settle = std::chrono::seconds(20));

  // The VM runs on `d` (daemon's view), its heartbeat advances, and its pages are intact.
  void expect_running_and_intact(Daemon& d, const std::string& name);
  static int max_hb(const std::string& console);
  static size_t count(const std::string& text, const std::string& pattern);
  // Stops and deletes `name` on both daemons.
  void stop_vm(const std::string& name);
};

}  // namespace vmctl::testing
