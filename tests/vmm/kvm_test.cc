// Tests of the KVM wrappers against the real /dev/kvm. The CI machine has KVM: its absence fails.
#include "vmm/kvm/kvm.h"

#include <gtest/gtest.h>

#include "vmm/kvm/stats.h"

namespace vmctl::vmm::kvm {
namespace {

TEST(KvmSystem, MissingDeviceIsAClearUserError) {
  Result<KvmSystem> kvm = KvmSystem::open("/nonexistent/kvm");
  ASSERT_FALSE(kvm.ok());
  EXPECT_EQ(kvm.error().exit_code(), 2);
  EXPECT_NE(kvm.error().message().find("KVM is not available"), std::string::npos)
      << kvm.error().message();
}

TEST(KvmSystem, NonKvmDeviceIsRejectedByApiVersion) {
  Result<KvmSystem> kvm = KvmSystem::open("/dev/null");
  ASSERT_FALSE(kvm.ok());
  EXPECT_NE(kvm.error().message().find("KVM API version"), std::string::npos)
      << kvm.error().message();
}

TEST(KvmSystem, OpensTheHostKvmAndReportsCpuidAndMsrs) {
  Result<KvmSystem> kvm = KvmSystem::open();
  ASSERT_TRUE(kvm.ok()) << kvm.error().message();
  auto cpuid = kvm->get_supported_cpuid();
  ASSERT_TRUE(cpuid.ok()) << cpuid.error().message();
  EXPECT_NE(find_cpuid(*cpuid, 0x1), nullptr);
  auto msrs = kvm->get_msr_index_list();
  ASSERT_TRUE(msrs.ok()) << msrs.error().message();
  EXPECT_GT(msrs->size(), 10u);
}

TEST(VcpuFd, RefusedMsrIsNamedInTheError) {
  KvmSystem kvm = KvmSystem::open().value();
  VmFd vm = kvm.create_vm().value();
  ASSERT_TRUE(vm.create_irqchip().ok());
  VcpuFd vcpu = vm.create_vcpu(0).value();
  // 0x10 (TSC) is accepted, 0xdeadbeef is no MSR at all.
  Status s = vcpu.set_msrs({{0x10, 0}, {0xdeadbeef, 1}});
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message().find(
                "KVM_SET_MSRS on vCPU 0: set 1 of 2 MSRs (first failing: 0xdeadbeef)"),
            std::string::npos)
      << s.error().message();
}

TEST(StatsReader, ReadsExitCountersFromTheVcpuStatsFd) {
  KvmSystem kvm = KvmSystem::open().value();
  if (kvm.check_extension(KVM_CAP_BINARY_STATS_FD) <= 0)
    GTEST_FAIL() << "host KVM lacks KVM_CAP_BINARY_STATS_FD";
  VmFd vm = kvm.create_vm().value();
  VcpuFd vcpu = vm.create_vcpu(0).value();
  StatsReader reader = StatsReader::open(vcpu.get_stats_fd().value()).value();
  auto values = reader.sample();
  ASSERT_TRUE(values.ok()) << values.error().message();
  bool has_exits = false;
  for (const auto& v : *values) has_exits |= v.name == "exits";
  EXPECT_TRUE(has_exits);
}

}  // namespace
}  // namespace vmctl::vmm::kvm
