#include "vmm/vm.h"

#include <signal.h>
#include <x86intrin.h>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "base/size.h"
#include "vmm/devices/cmos_rtc.h"
#include "vmm/devices/debug_exit.h"
#include "vmm/devices/i8042.h"
#include "vmm/devices/serial.h"
#include "vmm/vlapic/user_irqchip.h"

extern "C" const uint8_t vmctl_demo_guest_start[];
extern "C" const uint8_t vmctl_demo_guest_end[];

namespace vmctl::vmm {

namespace {

// Addresses KVM needs on Intel hosts for real-mode emulation: three pages for a TSS and one for an
// identity page table, inside the MMIO hole below 4 GiB where no RAM lives (the values QEMU uses).
constexpr uint64_t kTssAddress = 0xfffbd000;
constexpr uint64_t kIdentityMapAddress = 0xfffbc000;

constexpr uint16_t kCom1Port = 0x3f8;
constexpr uint32_t kCom1Irq = 4;
constexpr uint16_t kI8042Port = 0x60;
constexpr uint16_t kCmosPort = 0x70;
constexpr uint16_t kDebugExitPort = 0xf4;

}  // namespace

Result<std::unique_ptr<Vm>> Vm::create(const VmConfig& config) {
  if (config.num_cpus == 0 || config.num_cpus > kMaxVcpus) {
    return Error::user(
        fmt::format("--cpus {} is out of range: give 1 to {}", config.num_cpus, kMaxVcpus));
  }
  kvm::KvmSystem system = TRY(kvm::KvmSystem::open());
  int max_vcpus = system.check_extension(KVM_CAP_MAX_VCPUS);
  if (max_vcpus > 0 && config.num_cpus > static_cast<unsigned>(max_vcpus)) {
    return Error::user(fmt::format("--cpus {}: this host's KVM allows at most {} vCPUs per VM",
                                   config.num_cpus, max_vcpus));
  }
  GuestMemory memory = TRY(
      GuestMemory::create(config.memory_size, config.memory_file ? &*config.memory_file : nullptr));
  kvm::VmFd vm_fd = TRY(system.create_vm());

  std::unique_ptr<Vm> vm(new Vm(std::move(system), std::move(vm_fd), std::move(memory)));
  TRY(vm->vm_fd_.set_tss_addr(kTssAddress));
  TRY(vm->vm_fd_.set_identity_map_addr(kIdentityMapAddress));
  if (config.irqchip == IrqchipMode::kKernel) {
    TRY(vm->vm_fd_.create_irqchip());
    TRY(vm->vm_fd_.create_pit2());
  } else {
    TRY(vm->setup_user_irqchip(config.num_cpus));
  }
  TRY(vm->register_memory());
  TRY(vm->add_devices(config));
  TRY(vm->setup_dirty_tracking(config));

  vm->config_ = config;
  vm->config_.console_output = nullptr;  // the device holds it; the copy is for inspection
  if (config.for_restore) {
    TRY(vm->create_vcpus(config.num_cpus));
    return vm;
  }
  if (config.boot.kernel_path.empty()) {
    std::vector<uint8_t> image(vmctl_demo_guest_start, vmctl_demo_guest_end);
    vm->boot_entry_ =
        TRY(boot::load_kernel_image(vm->memory_, image, "built-in demo guest", config.boot));
  } else {
    vm->boot_entry_ = TRY(boot::load_kernel(vm->memory_, config.boot));
  }
  TRY(vm->create_vcpus(config.num_cpus));
  TRY_CTX(vm->vcpus_[0]->set_boot_state(vm->boot_entry_), "setting up the boot vCPU");
  return vm;
}

Vm::Vm(kvm::KvmSystem system, kvm::VmFd vm_fd, GuestMemory memory)
    : system_(std::move(system)), vm_fd_(std::move(vm_fd)), memory_(std::move(memory)) {}

Vm::~Vm() {
  if (user_irqchip_) user_irqchip_->stop();  // its timer thread kicks vCPUs
  for (auto& vcpu : vcpus_) vcpu->request_stop();
  for (auto& vcpu : vcpus_) vcpu->join();
  vcpus_.clear();  // before the irqchip they call into
}

Status Vm::setup_user_irqchip(unsigned vcpus) {
  // The LAPIC's MSRs must reach userspace: the x2APIC range fails in KVM without its LAPIC
  // (KVM_MSR_EXIT_REASON_INVAL), IA32_APIC_BASE and IA32_TSC_DEADLINE KVM would take itself
  // (an MSR filter sends them out).
  if (vm_fd_.check_extension(KVM_CAP_X86_USER_SPACE_MSR) <= 0 ||
      vm_fd_.check_extension(KVM_CAP_X86_MSR_FILTER) <= 0) {
    return Error::user(
        "--irqchip user: this host's KVM cannot send MSR accesses to userspace "
        "(KVM_CAP_X86_USER_SPACE_MSR, KVM_CAP_X86_MSR_FILTER; Linux 5.10 or later): use "
        "--irqchip kernel");
  }
  TRY(vm_fd_.enable_cap(KVM_CAP_X86_USER_SPACE_MSR, KVM_MSR_EXIT_REASON_INVAL |
                                                        KVM_MSR_EXIT_REASON_UNKNOWN |
                                                        KVM_MSR_EXIT_REASON_FILTER));
  TRY(vm_fd_.deny_msrs(vlapic::UserIrqchip::filtered_msrs()));
  user_irqchip_ = std::make_unique<vlapic::UserIrqchip>(vcpus);
  return ok_status();
}

Status Vm::register_memory() {
  for (MemoryRegion& region : memory_.regions()) {
    TRY(vm_fd_.set_user_memory_region(region.slot, 0, region.guest_phys, region.size,
                                      region.host.data()));
  }
  return ok_status();
}

Status Vm::setup_dirty_tracking(const VmConfig& config) {
  // KVM_CHECK_EXTENSION answers the largest ring in bytes (0: no ring).
  int ring_max_bytes = std::max(vm_fd_.check_extension(KVM_CAP_DIRTY_LOG_RING_ACQ_REL),
                                vm_fd_.check_extension(KVM_CAP_DIRTY_LOG_RING));
  DirtyTracking mode = config.dirty_tracking;
  if (mode == DirtyTracking::kAuto) {
    bool ring = ring_max_bytes > 0 && !host_overruns_dirty_rings();
    mode = ring ? DirtyTracking::kRing : DirtyTracking::kBitmap;
  } else if (mode == DirtyTracking::kRing && ring_max_bytes > 0 && host_overruns_dirty_rings()) {
    spdlog::warn(
        "this host's KVM (PVM) can overrun dirty rings while it emulates guest kernel code; lost "
        "entries make every page count as dirty, and a vCPU whose ring is wrecked ends the VM "
        "(--dirty-tracking bitmap avoids both)");
  }
  if (mode == DirtyTracking::kRing) {
    if (ring_max_bytes <= 0) {
      return Error::user(
          "--dirty-tracking ring: this host's KVM has no dirty ring (KVM_CAP_DIRTY_LOG_RING); "
          "use --dirty-tracking bitmap or auto");
    }
    uint32_t entries =
        config.dirty_ring_entries == 0 ? kDefaultDirtyRingEntries : config.dirty_ring_entries;
    uint32_t max_entries = static_cast<uint32_t>(ring_max_bytes) / sizeof(kvm_dirty_gfn);
    if (config.dirty_tracking == DirtyTracking::kAuto) entries = std::min(entries, max_entries);
    if ((entries & (entries - 1)) != 0 || entries > max_entries) {
      return Error::user(fmt::format(
          "--dirty-ring-entries {}: give a power of two up to {} (this host's largest ring)",
          entries, max_entries));
    }
    Status enabled = vm_fd_.enable_dirty_ring(entries);
    if (!enabled.ok() && config.dirty_tracking == DirtyTracking::kAuto) {
      spdlog::warn("{}; tracking dirty pages with the bitmap instead", enabled.error().message());
      mode = DirtyTracking::kBitmap;
    } else if (!enabled.ok()) {
      if (enabled.error().sys_errno() != EINVAL) return enabled;
      return Error::user(fmt::format(
          "--dirty-ring-entries {}: this host's KVM refuses a ring that small (it keeps entries "
          "in reserve; try {})",
          entries, kDefaultDirtyRingEntries));
    }
  }
  dirty_pages_ = std::make_unique<DirtyPages>(vm_fd_, memory_, mode);
  return ok_status();
}

Status Vm::dirty_ring_full() {
  return dirty_pages_->on_ring_full();
}

Status Vm::set_dirty_logging(bool enabled) {
  for (MemoryRegion& region : memory_.regions()) {
    if (region.dirty_logging == enabled) continue;
    TRY_CTX(vm_fd_.set_user_memory_region(region.slot, enabled ? KVM_MEM_LOG_DIRTY_PAGES : 0,
                                          region.guest_phys, region.size, region.host.data()),
            enabled ? "enabling dirty logging" : "disabling dirty logging");
    region.dirty_logging = enabled;
  }
  return ok_status();
}

Status Vm::add_devices(const VmConfig& config) {
  // A failed KVM_IRQ_LINE cannot be reported to the guest; log it once with the line number.
  auto irq_line = [this, &config](uint32_t gsi) -> std::function<void(bool)> {
    // No IOAPIC or PIC under --irqchip user: the line goes nowhere (guests poll COM1 there).
    if (config.irqchip == IrqchipMode::kUser) return [](bool) {};
    return [this, gsi](bool level) {
      Status s = vm_fd_.irq_line(gsi, level);
      if (!s.ok()) spdlog::error("{}", s.error().message());
    };
  };
  auto output = config.console_output ? config.console_output : [](const uint8_t*, size_t) {};
  serial_ = std::make_shared<Serial8250>(irq_line(kCom1Irq), output);
  auto i8042 = std::make_shared<I8042>([this] { end_vm(VmExit{VmExit::Kind::kReset, 0, ""}); });
  uint64_t low = memory_.low_ram_end();
  rtc_ = std::make_shared<CmosRtc>(low, memory_.ram_size() - low);
  auto& rtc = rtc_;
  auto debug_exit = std::make_shared<DebugExit>([this](uint32_t status) {
    end_vm(VmExit{VmExit::Kind::kDebugExit, status, ""});
  });
  bool ok = port_bus_.add(kCom1Port, 8, serial_) && port_bus_.add(kI8042Port, 5, i8042) &&
            port_bus_.add(kCmosPort, 2, rtc) && port_bus_.add(kDebugExitPort, 4, debug_exit);
  if (!ok) return Error::failure("overlapping port I/O ranges in the device layout");
  return ok_status();
}

Status Vm::create_vcpus(unsigned count) {
  std::vector<CpuidEntry> supported = TRY(system_.get_supported_cpuid());
  CpuTopology topology{count};
  bool stats = system_.check_extension(KVM_CAP_BINARY_STATS_FD) > 0;
  for (unsigned i = 0; i < count; ++i) {
    kvm::VcpuFd fd = TRY(vm_fd_.create_vcpu(static_cast<int>(i)));
    auto vcpu = std::make_unique<Vcpu>(std::move(fd), *this, memory_, user_irqchip_.get());
    if (vcpu->fd().dirty_ring().enabled()) dirty_pages_->add_ring(&vcpu->fd().dirty_ring());
    TRY_CTX(vcpu->configure(filter_cpuid(supported, i, topology)),
            fmt::format("configuring vCPU {}", i));
    std::optional<kvm::StatsReader> reader;
    if (stats) {
      Result<Fd> stats_fd = vcpu->fd().get_stats_fd();
      if (stats_fd.ok()) {
        Result<kvm::StatsReader> r = kvm::StatsReader::open(std::move(stats_fd).value());
        if (r.ok()) reader = std::move(r).value();
      }
    }
    vcpu_stats_.push_back(std::move(reader));
    vcpus_.push_back(std::move(vcpu));
  }
  return ok_status();
}

void Vm::start() {
  Vcpu::install_kick_handler();
  {
    std::lock_guard lock(mu_);
    started_ = true;
  }
  if (user_irqchip_) {
    // The guest's TSC (for TSC-deadline timers) is the host's plus KVM's offset: read it once.
    constexpr uint32_t kMsrIa32Tsc = 0x10;
    uint64_t host_tsc = __rdtsc();
    Result<std::vector<kvm::MsrEntry>> tsc = vcpus_[0]->fd().get_msrs({kMsrIa32Tsc});
    uint64_t guest_tsc = tsc.ok() && !tsc->empty() ? (*tsc)[0].value : host_tsc;
    user_irqchip_->start([this](unsigned i) { vcpus_[i]->kick_for_interrupt(); }, guest_tsc,
                         host_tsc, uint64_t{vcpus_[0]->tsc_khz()} * 1000);
  }
  for (auto& vcpu : vcpus_) vcpu->start();
}

void Vm::pause() {
  std::lock_guard lock(pause_mu_);
  if (pause_depth_++ > 0) return;
  for (auto& vcpu : vcpus_) vcpu->request_pause();
  for (auto& vcpu : vcpus_) vcpu->wait_paused();
}

void Vm::resume() {
  std::lock_guard lock(pause_mu_);
  if (pause_depth_ == 0 || --pause_depth_ > 0) return;
  for (auto& vcpu : vcpus_) vcpu->resume();
}

void Vm::stop() {
  end_vm(VmExit{VmExit::Kind::kStopped, 0, ""});
}

void Vm::end_vm(const VmExit& exit) {
  {
    std::lock_guard lock(mu_);
    if (exit_) return;  // the first outcome wins
    exit_ = exit;
  }
  for (auto& vcpu : vcpus_) vcpu->request_stop();
  ended_cv_.notify_all();
}

bool Vm::ended() const {
  std::lock_guard lock(mu_);
  return exit_.has_value();
}

VmExit Vm::wait() {
  {
    std::unique_lock lock(mu_);
    ended_cv_.wait(lock, [&] { return exit_.has_value(); });
  }
  for (auto& vcpu : vcpus_) vcpu->join();
  std::lock_guard lock(mu_);
  return *exit_;
}

void Vm::console_input(const uint8_t* data, size_t len) {
  serial_->enqueue_input(data, len);
}

Result<std::vector<VcpuStats>> Vm::exit_stats() const {
  std::vector<VcpuStats> out;
  for (size_t i = 0; i < vcpu_stats_.size(); ++i) {
    if (!vcpu_stats_[i]) continue;
    VcpuStats stats{static_cast<int>(i), TRY(vcpu_stats_[i]->sample())};
    out.push_back(std::move(stats));
  }
  return out;
}

void Vm::port_read(uint16_t port, uint8_t* data, size_t size) {
  port_bus_.read(port, data, size);
}

void Vm::port_write(uint16_t port, const uint8_t* data, size_t size) {
  port_bus_.write(port, data, size);
}

void Vm::mmio_read(uint64_t address, uint8_t* data, size_t size) {
  // No MMIO devices yet: reads float high, as on an unclaimed bus.
  std::memset(data, 0xff, size);
  if (!unhandled_mmio_reported_.exchange(true)) {
    spdlog::debug("unclaimed MMIO read at 0x{:x} ({} bytes)", address, size);
  }
}

void Vm::mmio_write(uint64_t address, const uint8_t*, size_t size) {
  if (!unhandled_mmio_reported_.exchange(true)) {
    spdlog::debug("unclaimed MMIO write at 0x{:x} ({} bytes)", address, size);
  }
}

}  // namespace vmctl::vmm
