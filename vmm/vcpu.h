// A vCPU: its KVM fd, its thread, and the run loop that dispatches exits to the VM.
//
// Pause protocol (used by snapshots and migration, which need every vCPU outside KVM_RUN with no
// half-finished instruction): the controller sets the vCPU's control to kPause, stores 1 in
// kvm_run.immediate_exit and sends the kick signal. Whether the thread is inside KVM_RUN (halted or
// running guest code) or in userspace handling an exit, its next return from KVM_RUN is EINTR, and
// KVM has by then completed any port I/O or MMIO the last exit left pending. Only at that point —
// the safe point — does the thread park.
#pragma once

#include <pthread.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "base/error.h"
#include "vmm/boot/boot.h"
#include "vmm/cpuid.h"
#include "vmm/kvm/kvm.h"
#include "vmm/memory.h"

namespace vmctl::vmm {

namespace vlapic {
class UserIrqchip;
}

// Why a VM stopped running.
struct VmExit {
  enum class Kind {
    kDebugExit,    // the guest wrote its status to the debug-exit port
    kPowerOff,     // KVM_SYSTEM_EVENT_SHUTDOWN (ACPI or PSCI power off)
    kReset,        // the guest asked for a reset (i8042 0xFE, KVM_SYSTEM_EVENT_RESET)
    kTripleFault,  // KVM_EXIT_SHUTDOWN: the guest triple-faulted
    kStopped,      // the operator stopped it (Ctrl-C, SIGTERM, an RPC)
    kError,        // the VMM could not go on: internal error, failed entry, failed ioctl
  };
  Kind kind = Kind::kStopped;
  uint32_t status = 0;  // for kDebugExit
  std::string message;  // for kError: one line naming the vCPU and what went wrong

  // The process exit code `vmctl run` uses for this outcome.
  int exit_code() const;
  std::string describe() const;
};

// What the VM provides to its vCPU threads. Called concurrently from every vCPU thread.
class ExitHandler {
 public:
  virtual ~ExitHandler() = default;
  virtual void port_read(uint16_t port, uint8_t* data, size_t size) = 0;
  virtual void port_write(uint16_t port, const uint8_t* data, size_t size) = 0;
  virtual void mmio_read(uint64_t address, uint8_t* data, size_t size) = 0;
  virtual void mmio_write(uint64_t address, const uint8_t* data, size_t size) = 0;
  // The vCPU cannot go on (or the guest ended the VM): stop everything with this outcome.
  virtual void end_vm(const VmExit& exit) = 0;
  // KVM_EXIT_DIRTY_RING_FULL: the vCPU's dirty ring must be emptied before it runs again.
  virtual Status dirty_ring_full() = 0;
};

class Vcpu {
 public:
  // `irqchip`: the VM's userspace interrupt controller (`--irqchip user`), or null with KVM's
  // in-kernel one.
  Vcpu(kvm::VcpuFd fd, ExitHandler& handler, const GuestMemory& memory,
       vlapic::UserIrqchip* irqchip = nullptr)
      : fd_(std::move(fd)), handler_(handler), memory_(memory), irqchip_(irqchip) {}
  ~Vcpu();
  Vcpu(const Vcpu&) = delete;
  Vcpu& operator=(const Vcpu&) = delete;

  int index() const { return fd_.index(); }
  // The vCPU's KVM fd, for state capture and restore. A vCPU ioctl waits for the vCPU's mutex,
  // which KVM_RUN holds for as long as the guest runs or halts (a guest idle in HLT for seconds,
  // or halted for good with interrupts off, holds it for that long), so any other thread may use
  // this only while the vCPU is parked (paused), not yet started or ended; anything else is a bug
  // and ends the process with a message saying so.
  kvm::VcpuFd& fd();
  // What the guest sees, kept when it was set, so that other threads can read it while the vCPU
  // runs (no ioctl): the CPUID table as KVM took it, and the TSC rate.
  const std::vector<CpuidEntry>& cpuid() const { return cpuid_; }
  uint32_t tsc_khz() const { return tsc_khz_; }
  // KVM_SET_CPUID2, then the table read back (KVM may widen what it was given).
  Status set_cpuid(const std::vector<CpuidEntry>& cpuid);
  // KVM_SET_TSC_KHZ.
  Status set_tsc_khz(uint32_t khz);

  // CPUID, initial MSRs and the LAPIC's LINT0/LINT1 wiring (ExtINT, NMI), for a freshly created
  // vCPU.
  Status configure(const std::vector<CpuidEntry>& cpuid);
  // Registers and segments for the boot vCPU, from the loader's description.
  Status set_boot_state(const boot::BootEntry& entry);

  void start();
  // Asks the thread to park at its next safe point; returns at once. wait_paused() blocks until it
  // has.
  void request_pause();
  void wait_paused();
  void resume();
  // Asks the thread to leave its run loop; join() waits for it.
  void request_stop();
  void join();

  // Makes the thread leave KVM_RUN (or not enter it) once, to take an interrupt the userspace
  // irqchip has for it. From any thread; changes nothing else.
  void kick_for_interrupt();

  // Installs the process-wide kick signal handler; call once before starting any vCPU.
  static void install_kick_handler();

 private:
  enum class Control { kRun, kPause, kStop };
  void thread_main();
  // Returns false when the VM must stop.
  bool handle_exit();
  // Back from KVM_RUN with EINTR (or woken while waiting in userspace): parks while paused.
  // False when the vCPU must stop.
  bool safe_point();
  // The userspace irqchip's part of an exit (MMIO on the APIC page, the LAPIC's MSRs, HLT); true
  // if it took the exit, with `keep_running` false when the VM must stop.
  bool handle_irqchip_exit(bool& keep_running);
  // An AP's SIPI: real mode at `start` (CS = start >> 4, IP = 0).
  Status enter_at_sipi(uint64_t start);
  void kick();
  std::string describe_internal_error();
  VmExit error_exit(const std::string& message);

  kvm::VcpuFd fd_;
  ExitHandler& handler_;
  const GuestMemory& memory_;  // for reporting the bytes of an instruction KVM failed on
  vlapic::UserIrqchip* irqchip_;
  std::thread thread_;
  // The thread while it runs, for kicks from other threads; cleared (under kick_mu_) before it
  // ends, so that no kick signals a thread that is gone.
  std::mutex kick_mu_;
  pthread_t native_ = 0;
  std::mutex mu_;
  std::condition_variable cv_;
  Control control_ = Control::kRun;
  bool parked_ = false;
  bool thread_ended_ = false;
  std::vector<CpuidEntry> cpuid_;
  uint32_t tsc_khz_ = 0;
};

}  // namespace vmctl::vmm
