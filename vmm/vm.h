// A running virtual machine: KVM VM fd, guest memory, in-kernel irqchip and PIT, the legacy
// devices, and one thread per vCPU.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "base/error.h"
#include "vmm/boot/boot.h"
#include "vmm/devices/port_io.h"
#include "vmm/dirty_pages.h"
#include "vmm/irqchip_mode.h"
#include "vmm/kvm/kvm.h"
#include "vmm/kvm/stats.h"
#include "vmm/memory.h"
#include "vmm/vcpu.h"

namespace vmctl::vmm {

class Serial8250;
class CmosRtc;

inline constexpr unsigned kMaxVcpus = 254;  // APIC IDs 0..253; 254 is the IOAPIC's at most

namespace vlapic {
class UserIrqchip;
}

struct VmConfig {
  uint64_t memory_size = 256ull << 20;
  unsigned num_cpus = 1;
  boot::BootConfig boot;  // an empty kernel_path boots the built-in demo guest
  // Receives every byte the guest writes to COM1. Called from vCPU threads.
  std::function<void(const uint8_t*, size_t)> console_output;
  // Build the machine (memory, irqchip, devices, vCPUs) but load no kernel and set no boot state:
  // a snapshot or a migration stream supplies the state (state/restore.h).
  bool for_restore = false;
  // With for_restore: map guest RAM from this file (lazy restore) instead of allocating it.
  std::optional<MemoryFileBacking> memory_file;
  // Where dirty pages come from (snapshots --diff, migration rounds); fixed for the VM's life.
  // Vm::config() keeps what was asked for (a migration passes that on); dirty_pages().mode()
  // says what auto became.
  DirtyTracking dirty_tracking = DirtyTracking::kAuto;
  // Ring mode: entries per vCPU ring, a power of two; 0 = kDefaultDirtyRingEntries.
  uint32_t dirty_ring_entries = 0;
  IrqchipMode irqchip = IrqchipMode::kKernel;
};

struct VcpuStats {
  int vcpu;
  std::vector<kvm::StatValue> values;
};

class Vm final : public ExitHandler {
 public:
  static Result<std::unique_ptr<Vm>> create(const VmConfig& config);
  ~Vm() override;

  // Starts every vCPU thread.
  void start();
  // Parks every vCPU at a safe point; returns once all are parked. Pauses nest.
  void pause();
  void resume();
  bool paused() const { return pause_depth_ > 0; }
  // Ends the VM with outcome kStopped (unless it already ended).
  void stop();
  // Blocks until the VM has ended and every vCPU thread has finished.
  VmExit wait();
  bool ended() const;

  // Feeds bytes to the guest's COM1 receiver.
  void console_input(const uint8_t* data, size_t len);
  // Turns KVM_MEM_LOG_DIRTY_PAGES on or off on every RAM slot while the VM runs.
  Status set_dirty_logging(bool enabled);
  // The VM's dirty page source (bitmap or ring, as decided at creation).
  DirtyPages& dirty_pages() { return *dirty_pages_; }
  // Per-vCPU counters from KVM's binary stats (empty when the host has no stats fd).
  Result<std::vector<VcpuStats>> exit_stats() const;

  // For state capture and restore (state/): use only while the VM is paused or not yet started.
  kvm::KvmSystem& kvm_system() { return system_; }
  kvm::VmFd& vm_fd() { return vm_fd_; }
  Vcpu& vcpu(unsigned index) { return *vcpus_[index]; }
  Serial8250& serial() { return *serial_; }
  CmosRtc& rtc() { return *rtc_; }
  // The userspace irqchip (`--irqchip user`), or null.
  vlapic::UserIrqchip* user_irqchip() { return user_irqchip_.get(); }
  const VmConfig& config() const { return config_; }

  GuestMemory& memory() { return memory_; }
  unsigned num_cpus() const { return static_cast<unsigned>(vcpus_.size()); }
  const boot::BootEntry& boot_entry() const { return boot_entry_; }

  // ExitHandler, called from vCPU threads.
  void port_read(uint16_t port, uint8_t* data, size_t size) override;
  void port_write(uint16_t port, const uint8_t* data, size_t size) override;
  void mmio_read(uint64_t address, uint8_t* data, size_t size) override;
  void mmio_write(uint64_t address, const uint8_t* data, size_t size) override;
  void end_vm(const VmExit& exit) override;
  Status dirty_ring_full() override;

 private:
  Vm(kvm::KvmSystem system, kvm::VmFd vm_fd, GuestMemory memory);
  Status register_memory();
  Status add_devices(const VmConfig& config);
  Status create_vcpus(unsigned count);
  Status setup_dirty_tracking(const VmConfig& config);
  Status setup_user_irqchip(unsigned vcpus);

  kvm::KvmSystem system_;
  kvm::VmFd vm_fd_;
  GuestMemory memory_;
  PortIoBus port_bus_;
  std::shared_ptr<Serial8250> serial_;
  std::shared_ptr<CmosRtc> rtc_;
  VmConfig config_;
  boot::BootEntry boot_entry_;
  std::unique_ptr<DirtyPages> dirty_pages_;  // before the vCPUs: they hold its rings
  // Before the vCPUs too (they call into it), and after them in destruction order.
  std::unique_ptr<vlapic::UserIrqchip> user_irqchip_;
  std::vector<std::unique_ptr<Vcpu>> vcpus_;
  std::vector<std::optional<kvm::StatsReader>> vcpu_stats_;
  std::atomic<bool> unhandled_mmio_reported_{false};

  mutable std::mutex mu_;
  std::condition_variable ended_cv_;
  std::optional<VmExit> exit_;
  bool started_ = false;
  std::mutex pause_mu_;
  int pause_depth_ = 0;
};

// Pauses a VM for the lifetime of the guard, so an early error return cannot leave it frozen.
class PauseGuard {
 public:
  explicit PauseGuard(Vm& vm) : vm_(vm) { vm_.pause(); }
  ~PauseGuard() { vm_.resume(); }
  PauseGuard(const PauseGuard&) = delete;
  PauseGuard& operator=(const PauseGuard&) = delete;

 private:
  Vm& vm_;
};

}  // namespace vmctl::vmm
