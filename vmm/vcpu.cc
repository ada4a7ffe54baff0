#include "vmm/vcpu.h"

#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "vmm/vlapic/user_irqchip.h"

namespace vmctl::vmm {

namespace {

// The kick signal interrupts KVM_RUN; its handler does nothing (the EINTR is the message).
const int kKickSignal = SIGRTMIN + 1;

void on_kick(int) {}

// Initial MSR values for a vCPU at power-on that an x86-64 boot path expects (SDM Vol. 3A 9.1 and
// what Firecracker/QEMU program): fast strings enabled, MTRRs on with write-back default.
constexpr uint32_t kMsrIa32SysenterCs = 0x174;
constexpr uint32_t kMsrIa32SysenterEsp = 0x175;
constexpr uint32_t kMsrIa32SysenterEip = 0x176;
constexpr uint32_t kMsrStar = 0xc0000081;
constexpr uint32_t kMsrLstar = 0xc0000082;
constexpr uint32_t kMsrCstar = 0xc0000083;
constexpr uint32_t kMsrSyscallMask = 0xc0000084;
constexpr uint32_t kMsrKernelGsBase = 0xc0000102;
constexpr uint32_t kMsrIa32Tsc = 0x10;
constexpr uint32_t kMsrIa32MiscEnable = 0x1a0;
constexpr uint32_t kMsrMtrrDefType = 0x2ff;

// LAPIC register offsets (SDM Vol. 3A 11.4.1, Table 11-1) and LVT delivery modes.
constexpr size_t kApicLvtLint0 = 0x350;
constexpr size_t kApicLvtLint1 = 0x360;
constexpr uint32_t kApicDeliveryExtInt = 0x7 << 8;
constexpr uint32_t kApicDeliveryNmi = 0x4 << 8;

uint32_t apic_reg(const kvm_lapic_state& lapic, size_t offset) {
  uint32_t v;
  std::memcpy(&v, lapic.regs + offset, sizeof v);
  return v;
}
void set_apic_reg(kvm_lapic_state& lapic, size_t offset, uint32_t v) {
  std::memcpy(lapic.regs + offset, &v, sizeof v);
}

kvm_segment flat_segment(uint16_t selector, uint8_t type, bool code64, bool big) {
  kvm_segment s{};
  s.base = 0;
  s.limit = 0xffffffff;
  s.selector = selector;
  s.type = type;
  s.present = 1;
  s.dpl = 0;
  s.db = big ? 1 : 0;
  s.s = 1;
  s.l = code64 ? 1 : 0;
  s.g = 1;
  return s;
}

}  // namespace

int VmExit::exit_code() const {
  switch (kind) {
    case Kind::kDebugExit:
      return static_cast<int>(status & 0xff);
    case Kind::kError:
      return 1;
    default:
      return 0;
  }
}

std::string VmExit::describe() const {
  switch (kind) {
    case Kind::kDebugExit:
      return fmt::format("guest exited with status {}", status);
    case Kind::kPowerOff:
      return "guest powered off";
    case Kind::kReset:
      return "guest requested a reset";
    case Kind::kTripleFault:
      return "guest triple-faulted (KVM_EXIT_SHUTDOWN)";
    case Kind::kStopped:
      return "stopped";
    case Kind::kError:
      return message;
  }
  return "unknown";
}

void Vcpu::install_kick_handler() {
  struct sigaction sa {};
  sa.sa_handler = on_kick;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: KVM_RUN must return EINTR
  sigaction(kKickSignal, &sa, nullptr);
}

Vcpu::~Vcpu() {
  request_stop();
  join();
}

kvm::VcpuFd& Vcpu::fd() {
  std::lock_guard lock(mu_);
  bool safe = !thread_.joinable() || parked_ || thread_ended_ ||
              std::this_thread::get_id() == thread_.get_id();
  if (!safe) {
    // Waiting here could take as long as the guest stays in the guest (forever for `cli; hlt`).
    spdlog::critical(
        "vCPU {}: a vCPU ioctl from another thread while the vCPU runs (a bug: pause the VM "
        "first)",
        index());
    std::abort();
  }
  return fd_;
}

Status Vcpu::set_cpuid(const std::vector<CpuidEntry>& cpuid) {
  TRY(fd().set_cpuid2(cpuid));
  cpuid_ = TRY(fd().get_cpuid2());
  return ok_status();
}

Status Vcpu::set_tsc_khz(uint32_t khz) {
  TRY(fd().set_tsc_khz(khz));
  tsc_khz_ = khz;
  return ok_status();
}

Status Vcpu::configure(const std::vector<CpuidEntry>& cpuid) {
  TRY(set_cpuid(cpuid));
  Result<uint32_t> khz = fd_.get_tsc_khz();
  tsc_khz_ = khz.ok() ? khz.value() : 0;
  TRY(fd_.set_msrs({
      {kMsrIa32SysenterCs, 0},
      {kMsrIa32SysenterEsp, 0},
      {kMsrIa32SysenterEip, 0},
      {kMsrStar, 0},
      {kMsrLstar, 0},
      {kMsrCstar, 0},
      {kMsrSyscallMask, 0},
      {kMsrKernelGsBase, 0},
      {kMsrIa32Tsc, 0},
      {kMsrIa32MiscEnable, 1},            // fast-string enable
      {kMsrMtrrDefType, (1u << 11) | 6},  // MTRRs enabled, default type write-back
  }));
  // Wire LINT0 to the PIC (ExtINT) and LINT1 to NMI, as the MP table says (virtual wire mode).
  // (The userspace LAPIC comes up wired so: vlapic/local_apic.h.)
  if (irqchip_) return ok_status();
  kvm_lapic_state lapic = TRY(fd_.get_lapic());
  set_apic_reg(lapic, kApicLvtLint0,
               (apic_reg(lapic, kApicLvtLint0) & ~0x700u) | kApicDeliveryExtInt);
  set_apic_reg(lapic, kApicLvtLint1, (apic_reg(lapic, kApicLvtLint1) & ~0x700u) | kApicDeliveryNmi);
  TRY(fd_.set_lapic(lapic));
  return ok_status();
}

Status Vcpu::set_boot_state(const boot::BootEntry& entry) {
  kvm_sregs sregs = TRY(fd_.get_sregs());
  const bool long_mode = entry.mode == boot::CpuMode::kLong64;
  constexpr uint8_t kCodeExecuteReadAccessed = 0xb;
  constexpr uint8_t kDataReadWriteAccessed = 0x3;
  if (long_mode) {
    sregs.cs = flat_segment(boot::kCode64Selector, kCodeExecuteReadAccessed, true, false);
  } else {
    sregs.cs = flat_segment(boot::kCode32Selector, kCodeExecuteReadAccessed, false, true);
  }
  kvm_segment data = flat_segment(boot::kDataSelector, kDataReadWriteAccessed, false, true);
  sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data;
  sregs.gdt.base = entry.gdt_base;
  sregs.gdt.limit = entry.gdt_limit;
  constexpr uint64_t kCr0Pe = 1, kCr0Et = 1 << 4, kCr0Pg = 1ull << 31;
  constexpr uint64_t kCr4Pae = 1 << 5;
  constexpr uint64_t kEferLme = 1 << 8, kEferLma = 1 << 10;
  sregs.cr0 = kCr0Pe | kCr0Et;
  sregs.cr4 = 0;
  sregs.efer = 0;
  if (long_mode) {
    sregs.cr0 |= kCr0Pg;
    sregs.cr3 = entry.page_table_root;
    sregs.cr4 = kCr4Pae;
    sregs.efer = kEferLme | kEferLma;
  }
  TRY(fd_.set_sregs(sregs));

  kvm_regs regs{};
  regs.rflags = 0x2;  // bit 1 is reserved and always set
  regs.rip = entry.rip;
  regs.rsp = entry.rsp;
  regs.rax = entry.rax;
  regs.rbx = entry.rbx;
  regs.rsi = entry.rsi;
  TRY(fd_.set_regs(regs));
  return ok_status();
}

void Vcpu::start() {
  thread_ = std::thread([this] { thread_main(); });
}

void Vcpu::kick() {
  // immediate_exit first: if the thread is between exits it will not re-enter the guest, and if it
  // is inside KVM_RUN the signal makes it return.
  std::atomic_ref<uint8_t>(fd_.run_struct()->immediate_exit).store(1, std::memory_order_release);
  if (thread_.joinable()) pthread_kill(thread_.native_handle(), kKickSignal);
  // A vCPU halted or waiting for its SIPI in userspace waits on the irqchip, not in KVM_RUN.
  if (irqchip_) irqchip_->wake_for_control(static_cast<unsigned>(index()));
}

void Vcpu::kick_for_interrupt() {
  std::atomic_ref<uint8_t>(fd_.run_struct()->immediate_exit).store(1, std::memory_order_release);
  std::lock_guard lock(kick_mu_);
  if (native_) pthread_kill(native_, kKickSignal);
}

void Vcpu::request_pause() {
  std::lock_guard lock(mu_);
  if (control_ == Control::kStop) return;
  control_ = Control::kPause;
  kick();
}

void Vcpu::wait_paused() {
  std::unique_lock lock(mu_);
  cv_.wait(lock, [&] { return parked_ || control_ == Control::kStop || !thread_.joinable(); });
}

void Vcpu::resume() {
  std::lock_guard lock(mu_);
  if (control_ == Control::kPause) control_ = Control::kRun;
  cv_.notify_all();
}

void Vcpu::request_stop() {
  std::lock_guard lock(mu_);
  control_ = Control::kStop;
  cv_.notify_all();
  kick();
}

void Vcpu::join() {
  if (thread_.joinable()) thread_.join();
}

void Vcpu::thread_main() {
  // The kick signal is blocked in threads that do not run vCPUs; unblock it here.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, kKickSignal);
  pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
  pthread_setname_np(pthread_self(), fmt::format("vcpu{}", index()).c_str());
  {
    std::lock_guard lock(kick_mu_);
    native_ = pthread_self();
  }

  kvm_run* run = fd_.run_struct();
  const unsigned me = static_cast<unsigned>(index());
  for (;;) {
    {
      std::unique_lock lock(mu_);
      if (control_ == Control::kStop) break;
    }
    if (irqchip_) {
      // Halted, or an AP before its SIPI: wait here, in userspace, until there is work.
      vlapic::UserIrqchip::Wake wake = irqchip_->wait_runnable(me);
      if (wake.kind == vlapic::UserIrqchip::Wake::Kind::kControl) {
        if (!safe_point()) break;
        continue;
      }
      Status ready = wake.kind == vlapic::UserIrqchip::Wake::Kind::kStart
                         ? enter_at_sipi(wake.start_address)
                         : ok_status();
      if (ready.ok()) ready = irqchip_->prepare_entry(me, fd_);
      if (!ready.ok()) {
        handler_.end_vm(error_exit(ready.error().message()));
        break;
      }
    }
    Status s = fd_.run();
    if (irqchip_) irqchip_->after_exit(me, *run);
    if (!s.ok()) {
      if (s.error().sys_errno() != EINTR && s.error().sys_errno() != EAGAIN) {
        handler_.end_vm(error_exit(s.error().message()));
        break;
      }
      if (!safe_point()) break;
      continue;
    }
    if (!handle_exit()) break;
  }
  {
    std::lock_guard lock(kick_mu_);
    native_ = 0;
  }
  std::lock_guard lock(mu_);
  control_ = Control::kStop;
  thread_ended_ = true;
  cv_.notify_all();
}

bool Vcpu::safe_point() {
  kvm_run* run = fd_.run_struct();
  // EINTR: a safe point. Park here while paused.
  std::unique_lock lock(mu_);
  if (control_ == Control::kPause) {
    parked_ = true;
    cv_.notify_all();
    cv_.wait(lock, [&] { return control_ != Control::kPause; });
    parked_ = false;
  }
  if (control_ == Control::kStop) return false;
  std::atomic_ref<uint8_t>(run->immediate_exit).store(0, std::memory_order_release);
  // A kick may have raced with the store above; re-check before entering the guest.
  if (control_ != Control::kRun) {
    std::atomic_ref<uint8_t>(run->immediate_exit).store(1, std::memory_order_release);
  }
  return true;
}

Status Vcpu::enter_at_sipi(uint64_t start) {
  // The AP is still in its reset state (real mode); SIPI only moves CS:IP to the start page.
  kvm_sregs sregs = TRY(fd_.get_sregs());
  sregs.cs.selector = static_cast<uint16_t>(start >> 4);
  sregs.cs.base = start;
  TRY(fd_.set_sregs(sregs));
  kvm_regs regs = TRY(fd_.get_regs());
  regs.rip = 0;
  TRY(fd_.set_regs(regs));
  return ok_status();
}

bool Vcpu::handle_irqchip_exit(bool& keep_running) {
  kvm_run* run = fd_.run_struct();
  const unsigned me = static_cast<unsigned>(index());
  keep_running = true;
  switch (run->exit_reason) {
    case KVM_EXIT_MMIO:
      return irqchip_->mmio(me, run->mmio.phys_addr, run->mmio.data, run->mmio.len,
                            run->mmio.is_write);
    case KVM_EXIT_X86_RDMSR: {
      uint64_t value = 0;
      run->msr.error = irqchip_->rdmsr(me, run->msr.index, &value) ? 0 : 1;
      run->msr.data = value;
      return true;
    }
    case KVM_EXIT_X86_WRMSR:
      run->msr.error = irqchip_->wrmsr(me, run->msr.index, run->msr.data) ? 0 : 1;
      return true;
    case KVM_EXIT_HLT:
      // With interrupts off (and no NMI to come) the vCPU would sleep for good: on a PC that
      // ends the machine, as with the in-kernel LAPIC.
      if (!run->if_flag) {
        handler_.end_vm(VmExit{VmExit::Kind::kPowerOff, 0, ""});
        keep_running = false;
        return true;
      }
      irqchip_->halt(me);
      return true;
    case KVM_EXIT_IRQ_WINDOW_OPEN:  // the guest can take the interrupt prepare_entry() holds
    case KVM_EXIT_SET_TPR:          // the TPR dropped: after_exit() has it already
      return true;
    default:
      return false;
  }
}

VmExit Vcpu::error_exit(const std::string& message) {
  VmExit exit;
  exit.kind = VmExit::Kind::kError;
  exit.message = message;
  return exit;
}

std::string Vcpu::describe_internal_error() {
  kvm_run* run = fd_.run_struct();
  std::string text =
      fmt::format("vCPU {}: KVM internal error (suberror {})", index(), run->internal.suberror);
  if (run->internal.suberror == KVM_INTERNAL_ERROR_EMULATION) {
    text = fmt::format("vCPU {}: KVM could not emulate an instruction", index());
  }
  Result<kvm_regs> regs = fd_.get_regs();
  Result<kvm_sregs> sregs = fd_.get_sregs();
  if (regs.ok() && sregs.ok()) {
    uint64_t linear = sregs->cs.base + regs->rip;
    text += fmt::format(" at RIP 0x{:x} (CS base 0x{:x})", regs->rip, sregs->cs.base);
    // x86 instructions are at most 15 bytes; show what lies at RIP (up to the page end).
    Result<kvm_translation> tr = fd_.translate(linear);
    if (tr.ok() && tr->valid) {
      uint64_t len = std::min<uint64_t>(15, kPageSize - (tr->physical_address % kPageSize));
      if (const uint8_t* p = memory_.host_address(tr->physical_address, len)) {
        text += ", instruction bytes";
        for (uint64_t i = 0; i < len; ++i) text += fmt::format(" {:02x}", p[i]);
      } else {
        text += fmt::format(", which is guest-physical 0x{:x} where there is no RAM",
                            tr->physical_address);
      }
    }
  }
  return text;
}

bool Vcpu::handle_exit() {
  kvm_run* run = fd_.run_struct();
  if (irqchip_) {
    bool keep_running = true;
    if (handle_irqchip_exit(keep_running)) return keep_running;
  }
  switch (run->exit_reason) {
    case KVM_EXIT_IO: {
      uint8_t* data = reinterpret_cast<uint8_t*>(run) + run->io.data_offset;
      for (uint32_t i = 0; i < run->io.count; ++i) {
        uint8_t* item = data + i * run->io.size;
        if (run->io.direction == KVM_EXIT_IO_OUT) {
          handler_.port_write(run->io.port, item, run->io.size);
        } else {
          handler_.port_read(run->io.port, item, run->io.size);
        }
      }
      return true;
    }
    case KVM_EXIT_MMIO:
      if (run->mmio.is_write) {
        handler_.mmio_write(run->mmio.phys_addr, run->mmio.data, run->mmio.len);
      } else {
        handler_.mmio_read(run->mmio.phys_addr, run->mmio.data, run->mmio.len);
      }
      return true;
    case KVM_EXIT_HLT:
      // With the in-kernel LAPIC, HLT is handled inside KVM; seeing it means interrupts are off
      // for good, which on a PC ends the machine.
      handler_.end_vm(VmExit{VmExit::Kind::kPowerOff, 0, ""});
      return false;
    case KVM_EXIT_SHUTDOWN:
      handler_.end_vm(VmExit{VmExit::Kind::kTripleFault, 0, ""});
      return false;
    case KVM_EXIT_SYSTEM_EVENT:
      switch (run->system_event.type) {
        case KVM_SYSTEM_EVENT_RESET:
          handler_.end_vm(VmExit{VmExit::Kind::kReset, 0, ""});
          return false;
        case KVM_SYSTEM_EVENT_SHUTDOWN:
          handler_.end_vm(VmExit{VmExit::Kind::kPowerOff, 0, ""});
          return false;
        default:
          handler_.end_vm(error_exit(fmt::format("vCPU {}: guest crashed (system event {})",
                                                 index(), run->system_event.type)));
          return false;
      }
    case KVM_EXIT_INTERNAL_ERROR:
      handler_.end_vm(error_exit(describe_internal_error()));
      return false;
    case KVM_EXIT_FAIL_ENTRY:
      handler_.end_vm(error_exit(fmt::format(
          "vCPU {}: KVM could not enter the guest (hardware entry failure reason 0x{:x})", index(),
          run->fail_entry.hardware_entry_failure_reason)));
      return false;
    case KVM_EXIT_INTR:
      return true;
    case KVM_EXIT_DIRTY_RING_FULL: {
      Status harvested = handler_.dirty_ring_full();
      if (!harvested.ok()) {
        handler_.end_vm(error_exit(fmt::format("vCPU {}: emptying the full dirty ring: {}", index(),
                                               harvested.error().message())));
        return false;
      }
      return true;
    }
    default:
      handler_.end_vm(error_exit(
          fmt::format("vCPU {}: unexpected KVM exit reason {}", index(), run->exit_reason)));
      return false;
  }
}

}  // namespace vmctl::vmm
