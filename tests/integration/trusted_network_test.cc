// Plaintext data connections on a trusted migration network (migrate/data_plane.md): only when
// both daemons list each other's network under [migration] trusted_networks; a daemon that does
// not keeps TLS whichever side asks. Every leg moves a writing guest across the veth link, and
// the guest is checked where it lands, on all four daemons' processes.
#include <sys/stat.h>

#include <gtest/gtest.h>

#include <fstream>

#include "tests/integration/cross_host.h"

namespace vmctl::testing {
namespace {

using namespace std::chrono_literals;

constexpr uint64_t kMiB = 1 << 20;

TEST_F(CrossHost, PlaintextDataOnlyWhenBothDaemonsTrustTheNetwork) {
  // C on host B and D on host A trust the link's network; A and B (the suite's daemons) do not.
  auto trusting = [&](const std::string& name, const std::string& address, const std::string& ns) {
    std::string dir = hosts->dir->path() + "/" + name;
    ::mkdir(dir.c_str(), 0700);
    std::string config = dir + "/vmctld.toml";
    std::ofstream(config) << "[migration]\ntrusted_networks = [\"10.77.0.0/24\"]\n";
    std::vector<std::string> flags = {"--listen", address, "--config", config};
    for (const std::string& f : hosts->tls_flags()) flags.push_back(f);
    return std::make_unique<Daemon>(dir, flags, hosts->in_ns(ns));
  };
  const std::string c_address = hosts->addr_b + ":7445", d_address = hosts->addr_a + ":7446";
  std::unique_ptr<Daemon> c = trusting("c", c_address, hosts->ns_b);
  std::unique_ptr<Daemon> d = trusting("d", d_address, hosts->ns_a);
  const std::string c_root = hosts->dir->path() + "/c/state";
  const std::string d_root = hosts->dir->path() + "/d/state";
  const std::vector<std::string> all_roots = {hosts->root_a(), hosts->root_b(), c_root, d_root};
  EXPECT_NE(c->log().find("plaintext migration data with peers on 10.77.0.0/24"), std::string::npos)
      << c->log();

  const std::string name = "plain";
  ASSERT_NO_FATAL_FAILURE(start_dirtier(*d, name, 128 * kMiB, "mib=48 rate=32 hb_ms=50"));

  struct Leg {
    Daemon* from;
    Daemon* to;
    std::string to_address, to_root, transport;
  };
  const std::vector<Leg> legs = {
      {d.get(), c.get(), c_address, c_root, "plaintext"},                  // both trust: plaintext
      {c.get(), &A(), hosts->tcp(hosts->addr_a), hosts->root_a(), "tls"},  // C asks, A says no
      {&A(), c.get(), c_address, c_root, "tls"},                           // A does not ask
  };
  for (size_t i = 0; i < legs.size(); ++i) {
    const Leg& leg = legs[i];
    v1::MigrateRequest r = request(name, hosts->addr_b);
    r.set_destination(leg.to_address);
    MigrationResult m = migrate(*leg.from, r);
    ASSERT_TRUE(m.status.ok()) << "leg " << i << ": " << m.status.error_message() << leg.from->log()
                               << leg.to->log();
    ASSERT_NE(m.last(), nullptr);
    EXPECT_EQ(m.last()->phase(), "done") << "leg " << i;
    EXPECT_EQ(m.last()->data_transport(), leg.transport) << "leg " << i;
    // What the destination daemon says it did, not only what the source was told.
    std::string expected_log = leg.transport == "plaintext"
                                   ? "plaintext (trusted network) data connection"
                                   : "TLS data connection";
    EXPECT_NE(leg.to->log().find(expected_log), std::string::npos)
        << "leg " << i << ": " << leg.to->log();
    // Exactly one copy, on the destination, running, with every page the guest wrote intact.
    std::vector<GuestCopy> copies;
    auto deadline = std::chrono::steady_clock::now() + 30s;
    while (true) {
      copies = guest_copies(all_roots, name);
      if (copies.size() == 1 && copies[0].root == leg.to_root && copies[0].answers &&
          !copies[0].paused) {
        break;
      }
      ASSERT_LT(std::chrono::steady_clock::now(), deadline)
          << "leg " << i << ": expected one running copy in " << leg.to_root << ", found "
          << describe(copies);
      std::this_thread::sleep_for(50ms);
    }
    EXPECT_EQ(verify_dirtier(copies[0], 60s), "") << "leg " << i;
    ASSERT_TRUE(leg.to->wait_state(name, v1::VM_STATE_RUNNING, 20s)) << "leg " << i;
    EXPECT_EQ(count(leg.to->console(name), "MISMATCH"), 0u) << leg.to->console(name);
  }
  ASSERT_TRUE(c->call(&v1::Vmctl::Stub::StopVm, name).ok());
  ASSERT_TRUE(c->call(&v1::Vmctl::Stub::DeleteVm, name).ok());
  for (Daemon* x : {d.get(), &A()}) (void)x->call(&v1::Vmctl::Stub::DeleteVm, name);
  auto deadline = std::chrono::steady_clock::now() + 20s;
  while (!guest_copies(all_roots, name).empty()) {
    ASSERT_LT(std::chrono::steady_clock::now(), deadline)
        << describe(guest_copies(all_roots, name));
    std::this_thread::sleep_for(50ms);
  }
}

}  // namespace
}  // namespace vmctl::testing
