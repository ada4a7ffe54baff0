// A live migration between two daemons whose VMs use different LAPIC implementations: a writing
// guest moves from KVM's in-kernel irqchip to vmctl's userspace LAPIC and back across the veth
// link, and is checked on both hosts' processes after each leg (one copy, running, every page
// intact, heartbeats going on: its timer interrupts arrive under either implementation).
#include <gtest/gtest.h>

#include "tests/integration/cross_host.h"

namespace vmctl::testing {
namespace {

using namespace std::chrono_literals;

TEST_F(CrossHost, AVmMigratesBetweenTheKernelAndTheUserspaceLapic) {
  const std::string name = "lapics";
  ASSERT_NO_FATAL_FAILURE(start_dirtier(A(), name, 128 * (1ull << 20), "mib=32 rate=32 hb_ms=20"));
  struct Leg {
    Daemon* from;
    Daemon* to;
    std::string to_ip, to_root, irqchip;
  };
  const std::vector<Leg> legs = {{&A(), &B(), hosts->addr_b, hosts->root_b(), "user"},
                                 {&B(), &A(), hosts->addr_a, hosts->root_a(), "kernel"}};
  for (size_t i = 0; i < legs.size(); ++i) {
    const Leg& leg = legs[i];
    v1::MigrateRequest r = request(name, leg.to_ip);
    r.set_irqchip(leg.irqchip);
    MigrationResult m = migrate(*leg.from, r);
    ASSERT_TRUE(m.status.ok()) << "leg " << i << ": " << m.status.error_message() << leg.to->log();
    ASSERT_NE(m.last(), nullptr);
    EXPECT_EQ(m.last()->phase(), "done");
    expect_one_copy(name, leg.to_root);
    EXPECT_EQ(leg.to->get(name).config().irqchip(), leg.irqchip) << "leg " << i;
    // The guest's LAPIC timer still beats on the new implementation.
    int before = max_hb(leg.to->console(name));
    std::this_thread::sleep_for(500ms);
    EXPECT_GT(max_hb(leg.to->console(name)), before + 5) << leg.to->console(name);
    EXPECT_EQ(count(leg.to->console(name), "MISMATCH"), 0u) << leg.to->console(name);
  }
  stop_vm(name);
}

}  // namespace
}  // namespace vmctl::testing
