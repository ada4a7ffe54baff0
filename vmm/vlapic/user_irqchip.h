// The interrupt controller of a VM run with `--irqchip user` (no in-kernel irqchip): one LocalApic
// per vCPU on one ApicBus, a thread for their timers, and the hooks the vCPU run loop calls
// (vmm/vcpu.cc). The model is not thread-safe, so one mutex guards every APIC of the VM; vCPU
// threads and the timer thread hold it for microseconds.
//
// The run loop's part (KVM's rules for a userspace LAPIC, Documentation/virt/kvm/api.rst):
// - before every KVM_RUN, prepare_entry(): fire expired timers; inject the highest deliverable
//   vector with KVM_INTERRUPT only when kvm_run says the vCPU can take one (a second one before
//   delivery would replace the first; one injected while IF=0 is taken at once), otherwise ask for
//   an interrupt window; write kvm_run's cr8 from the TPR (KVM_RUN loads CR8 from it);
// - after every exit, after_exit(): the TPR from kvm_run's cr8 (a MOV to CR8 does not exit to
//   userspace on every host);
// - KVM_EXIT_HLT and an AP before its SIPI: wait_runnable() blocks until there is something to do;
// - the xAPIC page (KVM_EXIT_MMIO) and the LAPIC MSRs (x2APIC range by KVM_MSR_EXIT_REASON_INVAL,
//   IA32_APIC_BASE and IA32_TSC_DEADLINE by an MSR filter) go to mmio(), rdmsr(), wrmsr().
// A vCPU that received an interrupt while it runs guest code is kicked (the `kick` callback: a
// signal and immediate_exit, vcpu.cc), so it takes the interrupt even in a tight ring-3 loop.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "base/error.h"
#include "vmm/kvm/kvm.h"
#include "vmm/vlapic/apic_bus.h"
#include "vmm/vlapic/guest_clock.h"
#include "vmm/vlapic/local_apic.h"

namespace vmctl::vmm::vlapic {

// Host CLOCK_MONOTONIC and the guest's TSC, which is the host's plus an offset (KVM's TSC offset,
// measured once; no TSC scaling: the VM runs at the host's TSC rate).
class HostGuestClock final : public GuestClock {
 public:
  GuestTime now() const override;
  uint64_t tsc_hz() const override { return tsc_hz_; }
  // `guest_tsc` read from a vCPU at host TSC `host_tsc`.
  void calibrate(uint64_t guest_tsc, uint64_t host_tsc, uint64_t tsc_hz);

 private:
  int64_t offset_ = 0;
  uint64_t tsc_hz_ = 1'000'000'000;
};

class UserIrqchip {
 public:
  explicit UserIrqchip(unsigned vcpus);
  ~UserIrqchip();
  UserIrqchip(const UserIrqchip&) = delete;
  UserIrqchip& operator=(const UserIrqchip&) = delete;

  // Before the first vCPU runs: how to kick vCPU `index` out of KVM_RUN, and the clock's
  // calibration from vCPU 0. Starts the timer thread.
  void start(std::function<void(unsigned index)> kick, uint64_t guest_tsc, uint64_t host_tsc,
             uint64_t tsc_hz);
  // Ends the timer thread (no kicks after this returns); the destructor does it too.
  void stop();

  // What wait_runnable() found.
  struct Wake {
    enum class Kind {
      kRun,     // enter the guest
      kStart,   // an AP's SIPI: enter at `start_address` in real mode first
      kControl  // woken by wake_for_control(): go to the run loop's safe point
    };
    Kind kind = Kind::kRun;
    uint64_t start_address = 0;
  };
  // From vCPU `index`'s thread before entering the guest: returns at once for a running vCPU;
  // a halted one (halt()) waits for an interrupt, an AP for its SIPI.
  Wake wait_runnable(unsigned index);
  // KVM_EXIT_HLT with interrupts enabled.
  void halt(unsigned index);
  // The vCPU is asked to pause or stop: an ongoing or the next wait_runnable() returns kControl.
  void wake_for_control(unsigned index);

  Status prepare_entry(unsigned index, kvm::VcpuFd& fd);
  void after_exit(unsigned index, const kvm_run& run);

  // An access to vCPU `index`'s xAPIC page (its APIC base, xAPIC mode); false (and nothing done)
  // for any other address. One lock per MMIO exit.
  bool mmio(unsigned index, uint64_t address, uint8_t* data, size_t len, bool write);
  // False: #GP.
  bool rdmsr(unsigned index, uint32_t msr, uint64_t* value);
  bool wrmsr(unsigned index, uint32_t msr, uint64_t value);

  // State capture and restore (the vCPU is parked): KVM's register page layout (state/lapic.h).
  LapicSnapshot save(unsigned index);
  Status load(unsigned index, const kvm_lapic_state& page, uint64_t apic_base,
              uint64_t tsc_deadline);

  // The vCPU's MP state as KVM names it (KVM_MP_STATE_RUNNABLE, _HALTED, _INIT_RECEIVED for an
  // AP waiting for its SIPI), for snapshots; and set from one.
  uint32_t kvm_mp_state(unsigned index);
  Status set_kvm_mp_state(unsigned index, uint32_t mp_state);

  // The MSRs the VM's MSR filter must send to userspace.
  static std::vector<uint32_t> filtered_msrs();

 private:
  struct PerVcpu {
    std::unique_ptr<LocalApic> apic;
    bool halted = false;
    bool control_wake = false;
    std::condition_variable cv;
  };
  // With mu_ held: routes what a register write asked for; `deadline_before` is the APIC's timer
  // deadline before the write (the timer thread is woken only when it changed).
  void apply(unsigned index, const ApicWriteEffect& effect,
             std::optional<uint64_t> deadline_before);
  // With mu_ held: vCPU `index` got something to take: wake its wait, or kick it out of the guest.
  void notify(unsigned index, bool kick);
  void timer_loop();

  HostGuestClock clock_;
  std::mutex mu_;
  std::vector<std::unique_ptr<PerVcpu>> vcpus_;
  ApicBus bus_;
  std::function<void(unsigned)> kick_;
  std::condition_variable timer_cv_;  // a timer register changed, or stopping
  bool stopping_ = false;
  std::thread timer_;
};

}  // namespace vmctl::vmm::vlapic
