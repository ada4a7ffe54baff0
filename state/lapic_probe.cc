#include "state/lapic_probe.h"

#include <mutex>

#include "state/lapic.h"
#include "vmm/vm.h"

namespace vmctl::state {

Result<bool> probe_kvm_keeps_in_service_vectors() {
  constexpr uint64_t kApicBase = 0xfee00900;  // enabled, xAPIC, boot processor
  constexpr uint64_t kCode = 0x1000;
  vmm::VmConfig config;
  config.memory_size = 16ull << 20;  // the least a VM may have
  config.for_restore = true;  // no kernel: the probe sets the vCPU up itself
  config.dirty_tracking = vmm::DirtyTracking::kBitmap;
  std::unique_ptr<vmm::Vm> vm = TRY_CTX(vmm::Vm::create(config), "in-service vector probe");
  // mov al, 0; out 0xf4, al (the debug-exit port ends the VM); hlt
  const uint8_t code[] = {0xb0, 0x00, 0xe6, 0xf4, 0xf4};
  TRY(vm->memory().write(kCode, code, sizeof code));
  vmm::boot::BootEntry entry;
  entry.mode = vmm::boot::CpuMode::kProtected32;
  entry.rip = kCode;
  entry.rsp = 0x8000;
  TRY(vm->vcpu(0).set_boot_state(entry));
  vmm::kvm::VcpuFd& fd = vm->vcpu(0).fd();
  LapicState s = decode_lapic(TRY(fd.get_lapic()), kApicBase, 0, false);
  s.svr = 0x1ff;  // software-enabled
  s.tpr = 0;
  s.isr.set(0x51);
  TRY_CTX(fd.set_lapic(encode_lapic(s, false)), "in-service vector probe");
  vm->start();
  vmm::VmExit exit = vm->wait();
  if (exit.kind != vmm::VmExit::Kind::kDebugExit) {
    return Error::failure("in-service vector probe: the probe vCPU ended with " + exit.describe());
  }
  LapicState after = decode_lapic(TRY(fd.get_lapic()), kApicBase, 0, false);
  return after.ppr == 0x50;
}

Result<bool> kvm_keeps_in_service_vectors() {
  static std::once_flag once;
  static Result<bool> answer = false;
  std::call_once(once, [] { answer = probe_kvm_keeps_in_service_vectors(); });
  return answer;
}

}  // namespace vmctl::state
