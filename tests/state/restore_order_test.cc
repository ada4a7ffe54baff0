// The vCPU restore order is data (kVcpuRestoreOrder) so its constraints can be checked here; each
// expectation names the KVM behaviour that makes the order matter.
#include <gtest/gtest.h>

#include <algorithm>

#include "state/vm_state.h"

namespace vmctl::state {
namespace {

using Step = VcpuRestoreStep;

size_t position(Step step) {
  auto it = std::find(kVcpuRestoreOrder.begin(), kVcpuRestoreOrder.end(), step);
  return static_cast<size_t>(it - kVcpuRestoreOrder.begin());
}

void expect_before(Step first, Step second, const char* why) {
  EXPECT_LT(position(first), position(second))
      << vcpu_restore_step_name(first) << " must come before " << vcpu_restore_step_name(second)
      << ": " << why;
}

TEST(VcpuRestoreOrder, EveryStepExactlyOnce) {
  for (int s = 0; s <= static_cast<int>(Step::kVerifyPpr); ++s) {
    Step step = static_cast<Step>(s);
    EXPECT_EQ(std::count(kVcpuRestoreOrder.begin(), kVcpuRestoreOrder.end(), step), 1)
        << vcpu_restore_step_name(step);
  }
}

TEST(VcpuRestoreOrder, CpuidBeforeAllCpuState) {
  for (Step step : kVcpuRestoreOrder) {
    if (step == Step::kTscRate || step == Step::kCpuid) continue;
    expect_before(Step::kCpuid, step, "KVM checks XSAVE sizes, MSRs and CR4 against CPUID");
  }
}

TEST(VcpuRestoreOrder, TscRateBeforeAnyTscWrite) {
  expect_before(Step::kTscRate, Step::kMsrs, "the TSC MSR is written in the guest's rate");
  expect_before(Step::kTscRate, Step::kTscDeadline, "the deadline is in guest TSC ticks");
}

TEST(VcpuRestoreOrder, ApicBaseBeforeTheLapicPage) {
  expect_before(Step::kSregs, Step::kLapic, "the APIC base in sregs sets xAPIC/x2APIC mode");
}

TEST(VcpuRestoreOrder, XcrsBeforeXsave) {
  expect_before(Step::kXcrs, Step::kXsave, "XCR0 says which XSAVE components are valid");
}

TEST(VcpuRestoreOrder, TscDeadlineAfterLapicAndMsrs) {
  expect_before(Step::kLapic, Step::kMsrs, "KVM_SET_LAPIC resets timer state MSRs depend on");
  expect_before(Step::kLapic, Step::kTscDeadline, "KVM_SET_LAPIC cancels an armed deadline");
  expect_before(Step::kMsrs, Step::kTscDeadline, "the bulk MSR write may carry a stale deadline");
}

TEST(VcpuRestoreOrder, EventsLastThenThePprCheck) {
  EXPECT_EQ(kVcpuRestoreOrder.back(), Step::kVerifyPpr);
  EXPECT_EQ(kVcpuRestoreOrder[kVcpuRestoreOrder.size() - 2], Step::kEvents)
      << "pending events must not be dropped by a later register or LAPIC write";
}

}  // namespace
}  // namespace vmctl::state
