#include "vmm/kvm/kvm.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>

#include <fmt/format.h>

namespace vmctl::vmm::kvm {

namespace {

// Capabilities the VMM cannot run without, with the reason it needs each.
struct RequiredCapability {
  long capability;
  const char* name;
  const char* why;
};
constexpr RequiredCapability kRequiredCapabilities[] = {
    {KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY", "guest memory slots"},
    {KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP", "the in-kernel local APIC, IOAPIC and PIC"},
    {KVM_CAP_PIT2, "KVM_CAP_PIT2", "the in-kernel PIT"},
    {KVM_CAP_SET_TSS_ADDR, "KVM_CAP_SET_TSS_ADDR", "real-mode support on Intel hosts"},
    {KVM_CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID", "KVM_GET_SUPPORTED_CPUID"},
    {KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT", "pausing vCPUs at a safe point"},
    {KVM_CAP_MP_STATE, "KVM_CAP_MP_STATE", "SMP start and vCPU state capture"},
};

int retry_ioctl(int fd, unsigned long request, void* arg) {
  int r;
  do {
    r = ::ioctl(fd, request, arg);
  } while (r < 0 && errno == EINTR);
  return r;
}

// Allocates a variable-length KVM struct (header followed by an array), zeroed.
template <typename Header, typename Entry>
std::unique_ptr<Header, void (*)(void*)> make_flex(size_t n) {
  size_t bytes = sizeof(Header) + n * sizeof(Entry);
  void* p = std::calloc(1, bytes);
  return {static_cast<Header*>(p), std::free};
}

// The descriptor open_early() kept, or -1.
int early_device = -1;

}  // namespace

Status KvmSystem::open_early(const std::string& path) {
  if (early_device >= 0) return ok_status();
  KvmSystem checked = TRY(open(path));
  early_device = checked.fd_.release();
  return ok_status();
}

Result<KvmSystem> KvmSystem::open(const std::string& path) {
  int raw = early_device >= 0 && path == "/dev/kvm" ? ::fcntl(early_device, F_DUPFD_CLOEXEC, 0)
                                                    : ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (raw < 0) {
    int err = errno;
    if (err == ENOENT) {
      return Error::user(path +
                         " does not exist: KVM is not available on this host (enable "
                         "virtualization in firmware and load kvm_intel or kvm_amd)");
    }
    if (err == EACCES || err == EPERM) {
      return Error::user("no permission to open " + path +
                         ": run as root or add this user to the group that owns it (usually kvm)");
    }
    return Error::from_errno("open " + path, err);
  }
  KvmSystem system{Fd(raw)};
  int version = ::ioctl(raw, KVM_GET_API_VERSION, 0);
  if (version != KVM_API_VERSION) {
    return Error::user(
        fmt::format("{}: KVM API version {} (expected {}); this kernel's KVM is not "
                    "supported",
                    path, version, KVM_API_VERSION));
  }
  for (const RequiredCapability& cap : kRequiredCapabilities) {
    if (system.check_extension(cap.capability) <= 0) {
      return Error::user(
          fmt::format("{}: the host's KVM lacks {} (needed for {}); use a newer "
                      "kernel or a host with hardware virtualization",
                      path, cap.name, cap.why));
    }
  }
  system.vcpu_mmap_size_ = ::ioctl(raw, KVM_GET_VCPU_MMAP_SIZE, 0);
  if (system.vcpu_mmap_size_ <= 0) return Error::from_errno("KVM_GET_VCPU_MMAP_SIZE", errno);
  return system;
}

int KvmSystem::check_extension(long capability) const {
  int r = ::ioctl(fd_.get(), KVM_CHECK_EXTENSION, capability);
  return r < 0 ? 0 : r;
}

Result<std::vector<CpuidEntry>> KvmSystem::get_supported_cpuid() const {
  // KVM answers E2BIG until the buffer is large enough.
  for (size_t n = 128; n <= 4096; n *= 2) {
    auto cpuid = make_flex<kvm_cpuid2, kvm_cpuid_entry2>(n);
    cpuid->nent = static_cast<uint32_t>(n);
    if (::ioctl(fd_.get(), KVM_GET_SUPPORTED_CPUID, cpuid.get()) < 0) {
      if (errno == E2BIG) continue;
      return Error::from_errno("KVM_GET_SUPPORTED_CPUID", errno);
    }
    std::vector<CpuidEntry> entries;
    entries.reserve(cpuid->nent);
    for (uint32_t i = 0; i < cpuid->nent; ++i) {
      const kvm_cpuid_entry2& e = cpuid->entries[i];
      entries.push_back(CpuidEntry{e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx});
    }
    return entries;
  }
  return Error::failure("KVM_GET_SUPPORTED_CPUID: more than 4096 entries");
}

Result<std::vector<uint32_t>> KvmSystem::get_msr_index_list() const {
  kvm_msr_list probe{};
  probe.nmsrs = 0;
  if (::ioctl(fd_.get(), KVM_GET_MSR_INDEX_LIST, &probe) < 0 && errno != E2BIG) {
    return Error::from_errno("KVM_GET_MSR_INDEX_LIST", errno);
  }
  auto list = make_flex<kvm_msr_list, uint32_t>(probe.nmsrs);
  list->nmsrs = probe.nmsrs;
  if (::ioctl(fd_.get(), KVM_GET_MSR_INDEX_LIST, list.get()) < 0) {
    return Error::from_errno("KVM_GET_MSR_INDEX_LIST", errno);
  }
  return std::vector<uint32_t>(list->indices, list->indices + list->nmsrs);
}

Result<VmFd> KvmSystem::create_vm() const {
  int r = retry_ioctl(fd_.get(), KVM_CREATE_VM, nullptr);
  if (r < 0) return Error::from_errno("KVM_CREATE_VM", errno);
  return VmFd(Fd(r), vcpu_mmap_size_);
}

int VmFd::check_extension(long capability) const {
  int r = ::ioctl(fd_.get(), KVM_CHECK_EXTENSION, capability);
  return r < 0 ? 0 : r;
}

Status VmFd::enable_cap(uint32_t capability, uint64_t arg0) {
  kvm_enable_cap cap{};
  cap.cap = capability;
  cap.args[0] = arg0;
  if (::ioctl(fd_.get(), KVM_ENABLE_CAP, &cap) < 0) {
    return Error::from_errno(fmt::format("KVM_ENABLE_CAP({})", capability), errno);
  }
  return ok_status();
}

Status VmFd::enable_dirty_ring(uint32_t entries) {
  // Acquire/release ordering of the entries' flags is what the VMM implements; hosts that only
  // offer the older capability (x86 before 6.1) have the same ring with x86's strong ordering.
  uint32_t capability = check_extension(KVM_CAP_DIRTY_LOG_RING_ACQ_REL) > 0
                            ? KVM_CAP_DIRTY_LOG_RING_ACQ_REL
                            : KVM_CAP_DIRTY_LOG_RING;
  kvm_enable_cap cap{};
  cap.cap = capability;
  cap.args[0] = static_cast<uint64_t>(entries) * sizeof(kvm_dirty_gfn);
  if (::ioctl(fd_.get(), KVM_ENABLE_CAP, &cap) < 0) {
    return Error::from_errno(
        fmt::format("KVM_ENABLE_CAP(KVM_CAP_DIRTY_LOG_RING{}) with {} entries per vCPU",
                    capability == KVM_CAP_DIRTY_LOG_RING_ACQ_REL ? "_ACQ_REL" : "", entries),
        errno);
  }
  dirty_ring_entries_ = entries;
  return ok_status();
}

Result<uint32_t> VmFd::reset_dirty_rings() {
  int r = retry_ioctl(fd_.get(), KVM_RESET_DIRTY_RINGS, nullptr);
  if (r < 0) return Error::from_errno("KVM_RESET_DIRTY_RINGS", errno);
  return static_cast<uint32_t>(r);
}

Status VmFd::set_tss_addr(uint64_t address) {
  if (::ioctl(fd_.get(), KVM_SET_TSS_ADDR, address) < 0) {
    return Error::from_errno("KVM_SET_TSS_ADDR", errno);
  }
  return ok_status();
}

Status VmFd::set_identity_map_addr(uint64_t address) {
  if (::ioctl(fd_.get(), KVM_SET_IDENTITY_MAP_ADDR, &address) < 0) {
    return Error::from_errno("KVM_SET_IDENTITY_MAP_ADDR", errno);
  }
  return ok_status();
}

Status VmFd::create_irqchip() {
  if (::ioctl(fd_.get(), KVM_CREATE_IRQCHIP, 0) < 0) {
    return Error::from_errno("KVM_CREATE_IRQCHIP", errno);
  }
  return ok_status();
}

Status VmFd::create_pit2() {
  kvm_pit_config config{};
  config.flags = KVM_PIT_SPEAKER_DUMMY;
  if (::ioctl(fd_.get(), KVM_CREATE_PIT2, &config) < 0) {
    return Error::from_errno("KVM_CREATE_PIT2", errno);
  }
  return ok_status();
}

Status VmFd::set_user_memory_region(uint32_t slot, uint32_t flags, uint64_t guest_phys,
                                    uint64_t size, void* host) {
  kvm_userspace_memory_region region{};
  region.slot = slot;
  region.flags = flags;
  region.guest_phys_addr = guest_phys;
  region.memory_size = size;
  region.userspace_addr = reinterpret_cast<uint64_t>(host);
  if (::ioctl(fd_.get(), KVM_SET_USER_MEMORY_REGION, &region) < 0) {
    return Error::from_errno(fmt::format("KVM_SET_USER_MEMORY_REGION slot {} at 0x{:x} ({} bytes)",
                                         slot, guest_phys, size),
                             errno);
  }
  return ok_status();
}

Status VmFd::deny_msrs(const std::vector<uint32_t>& denied) {
  kvm_msr_filter filter{};
  filter.flags = KVM_MSR_FILTER_DEFAULT_ALLOW;
  if (denied.size() > KVM_MSR_FILTER_MAX_RANGES) {
    return Error::failure(fmt::format("{} MSRs to filter: at most {} ranges", denied.size(),
                                      KVM_MSR_FILTER_MAX_RANGES));
  }
  // One range per MSR, its one-bit bitmap 0: denied, for reads and writes.
  std::vector<uint8_t> bitmaps(denied.size(), 0);
  for (size_t i = 0; i < denied.size(); ++i) {
    filter.ranges[i].flags = KVM_MSR_FILTER_READ | KVM_MSR_FILTER_WRITE;
    filter.ranges[i].nmsrs = 1;
    filter.ranges[i].base = denied[i];
    filter.ranges[i].bitmap = &bitmaps[i];
  }
  if (::ioctl(fd_.get(), KVM_X86_SET_MSR_FILTER, &filter) < 0) {
    return Error::from_errno("KVM_X86_SET_MSR_FILTER", errno);
  }
  return ok_status();
}

Status VmFd::irq_line(uint32_t gsi, bool level) {
  kvm_irq_level irq{};
  irq.irq = gsi;
  irq.level = level ? 1 : 0;
  if (::ioctl(fd_.get(), KVM_IRQ_LINE, &irq) < 0) {
    return Error::from_errno(fmt::format("KVM_IRQ_LINE gsi {}", gsi), errno);
  }
  return ok_status();
}

Result<VcpuFd> VmFd::create_vcpu(int index) {
  int raw =
      retry_ioctl(fd_.get(), KVM_CREATE_VCPU, reinterpret_cast<void*>(static_cast<long>(index)));
  if (raw < 0) return Error::from_errno(fmt::format("KVM_CREATE_VCPU {}", index), errno);
  Fd fd(raw);
  Mapping run = TRY(Mapping::map(vcpu_mmap_size_, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0,
                                 fmt::format("kvm_run of vCPU {}", index)));
  DirtyRing ring;
  if (dirty_ring_entries_ > 0) {
    size_t bytes = static_cast<size_t>(dirty_ring_entries_) * sizeof(kvm_dirty_gfn);
    long page = ::sysconf(_SC_PAGESIZE);
    Mapping gfns = TRY(Mapping::map(bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(),
                                    static_cast<off_t>(KVM_DIRTY_LOG_PAGE_OFFSET) * page,
                                    fmt::format("dirty ring of vCPU {}", index)));
    ring = DirtyRing(std::move(gfns), dirty_ring_entries_);
  }
  return VcpuFd(std::move(fd), std::move(run), index, std::move(ring));
}

Result<Fd> VmFd::get_stats_fd() const {
  int r = ::ioctl(fd_.get(), KVM_GET_STATS_FD, 0);
  if (r < 0) return Error::from_errno("KVM_GET_STATS_FD on the VM", errno);
  return Fd(r);
}

Result<kvm_irqchip> VmFd::get_irqchip(uint32_t chip_id) const {
  kvm_irqchip chip{};
  chip.chip_id = chip_id;
  if (retry_ioctl(fd_.get(), KVM_GET_IRQCHIP, &chip) < 0) {
    return Error::from_errno(fmt::format("KVM_GET_IRQCHIP chip {}", chip_id), errno);
  }
  return chip;
}

Status VmFd::set_irqchip(const kvm_irqchip& chip) {
  if (retry_ioctl(fd_.get(), KVM_SET_IRQCHIP, const_cast<kvm_irqchip*>(&chip)) < 0) {
    return Error::from_errno(fmt::format("KVM_SET_IRQCHIP chip {}", chip.chip_id), errno);
  }
  return ok_status();
}

Result<kvm_pit_state2> VmFd::get_pit2() const {
  kvm_pit_state2 pit{};
  if (retry_ioctl(fd_.get(), KVM_GET_PIT2, &pit) < 0)
    return Error::from_errno("KVM_GET_PIT2", errno);
  return pit;
}

Status VmFd::set_pit2(const kvm_pit_state2& pit) {
  if (retry_ioctl(fd_.get(), KVM_SET_PIT2, const_cast<kvm_pit_state2*>(&pit)) < 0) {
    return Error::from_errno("KVM_SET_PIT2", errno);
  }
  return ok_status();
}

Result<kvm_clock_data> VmFd::get_clock() const {
  kvm_clock_data clock{};
  if (retry_ioctl(fd_.get(), KVM_GET_CLOCK, &clock) < 0)
    return Error::from_errno("KVM_GET_CLOCK", errno);
  return clock;
}

Status VmFd::set_clock(const kvm_clock_data& clock) {
  if (retry_ioctl(fd_.get(), KVM_SET_CLOCK, const_cast<kvm_clock_data*>(&clock)) < 0) {
    return Error::from_errno("KVM_SET_CLOCK", errno);
  }
  return ok_status();
}

Status VmFd::get_dirty_log(uint32_t slot, uint64_t* bitmap) {
  kvm_dirty_log log{};
  log.slot = slot;
  log.dirty_bitmap = bitmap;
  if (retry_ioctl(fd_.get(), KVM_GET_DIRTY_LOG, &log) < 0) {
    return Error::from_errno(fmt::format("KVM_GET_DIRTY_LOG slot {}", slot), errno);
  }
  return ok_status();
}

Status VmFd::clear_dirty_log(uint32_t slot, uint64_t first_page, uint32_t num_pages,
                             uint64_t* bitmap) {
  kvm_clear_dirty_log clear{};
  clear.slot = slot;
  clear.first_page = first_page;
  clear.num_pages = num_pages;
  clear.dirty_bitmap = bitmap;
  if (retry_ioctl(fd_.get(), KVM_CLEAR_DIRTY_LOG, &clear) < 0) {
    return Error::from_errno(
        fmt::format("KVM_CLEAR_DIRTY_LOG slot {} pages {}+{}", slot, first_page, num_pages), errno);
  }
  return ok_status();
}

std::string VcpuFd::what(const char* ioctl_name) const {
  return fmt::format("{} on vCPU {}", ioctl_name, index_);
}

Status VcpuFd::run() {
  if (::ioctl(fd_.get(), KVM_RUN, 0) < 0) return Error::from_errno(what("KVM_RUN"), errno);
  return ok_status();
}

Status VcpuFd::interrupt(uint32_t vector) {
  kvm_interrupt irq{};
  irq.irq = vector;
  if (retry_ioctl(fd_.get(), KVM_INTERRUPT, &irq) < 0) {
    return Error::from_errno(what(fmt::format("KVM_INTERRUPT(0x{:x})", vector).c_str()), errno);
  }
  return ok_status();
}

Status VcpuFd::nmi() {
  if (::ioctl(fd_.get(), KVM_NMI, 0) < 0) return Error::from_errno(what("KVM_NMI"), errno);
  return ok_status();
}

#define VMCTL_VCPU_GET(Type, method, IOCTL)          \
  Result<Type> VcpuFd::method() const {              \
    Type value{};                                    \
    if (retry_ioctl(fd_.get(), IOCTL, &value) < 0) { \
      return Error::from_errno(what(#IOCTL), errno); \
    }                                                \
    return value;                                    \
  }
#define VMCTL_VCPU_SET(Type, method, IOCTL)                             \
  Status VcpuFd::method(const Type& value) {                            \
    if (retry_ioctl(fd_.get(), IOCTL, const_cast<Type*>(&value)) < 0) { \
      return Error::from_errno(what(#IOCTL), errno);                    \
    }                                                                   \
    return ok_status();                                                 \
  }

VMCTL_VCPU_GET(kvm_regs, get_regs, KVM_GET_REGS)
VMCTL_VCPU_SET(kvm_regs, set_regs, KVM_SET_REGS)
VMCTL_VCPU_GET(kvm_sregs, get_sregs, KVM_GET_SREGS)
VMCTL_VCPU_SET(kvm_sregs, set_sregs, KVM_SET_SREGS)
VMCTL_VCPU_GET(kvm_lapic_state, get_lapic, KVM_GET_LAPIC)
VMCTL_VCPU_SET(kvm_lapic_state, set_lapic, KVM_SET_LAPIC)
VMCTL_VCPU_GET(kvm_mp_state, get_mp_state, KVM_GET_MP_STATE)
VMCTL_VCPU_SET(kvm_mp_state, set_mp_state, KVM_SET_MP_STATE)
VMCTL_VCPU_GET(kvm_vcpu_events, get_vcpu_events, KVM_GET_VCPU_EVENTS)
VMCTL_VCPU_SET(kvm_vcpu_events, set_vcpu_events, KVM_SET_VCPU_EVENTS)
VMCTL_VCPU_GET(kvm_debugregs, get_debugregs, KVM_GET_DEBUGREGS)
VMCTL_VCPU_SET(kvm_debugregs, set_debugregs, KVM_SET_DEBUGREGS)
VMCTL_VCPU_GET(kvm_xcrs, get_xcrs, KVM_GET_XCRS)
VMCTL_VCPU_SET(kvm_xcrs, set_xcrs, KVM_SET_XCRS)

#undef VMCTL_VCPU_GET
#undef VMCTL_VCPU_SET

Status VcpuFd::set_cpuid2(const std::vector<CpuidEntry>& entries) {
  auto cpuid = make_flex<kvm_cpuid2, kvm_cpuid_entry2>(entries.size());
  cpuid->nent = static_cast<uint32_t>(entries.size());
  for (size_t i = 0; i < entries.size(); ++i) {
    const CpuidEntry& e = entries[i];
    kvm_cpuid_entry2& k = cpuid->entries[i];
    k.function = e.function;
    k.index = e.index;
    k.flags = e.flags;
    k.eax = e.eax;
    k.ebx = e.ebx;
    k.ecx = e.ecx;
    k.edx = e.edx;
  }
  if (retry_ioctl(fd_.get(), KVM_SET_CPUID2, cpuid.get()) < 0) {
    return Error::from_errno(what("KVM_SET_CPUID2"), errno);
  }
  return ok_status();
}

Status VcpuFd::set_msrs(const std::vector<MsrEntry>& msrs) {
  auto list = make_flex<kvm_msrs, kvm_msr_entry>(msrs.size());
  list->nmsrs = static_cast<uint32_t>(msrs.size());
  for (size_t i = 0; i < msrs.size(); ++i) {
    list->entries[i].index = msrs[i].index;
    list->entries[i].data = msrs[i].value;
  }
  int r = retry_ioctl(fd_.get(), KVM_SET_MSRS, list.get());
  if (r < 0) return Error::from_errno(what("KVM_SET_MSRS"), errno);
  if (static_cast<size_t>(r) != msrs.size()) {
    // KVM stops at the first MSR it refuses and returns how many it set before it.
    return Error::failure(fmt::format("{}: set {} of {} MSRs (first failing: 0x{:x})",
                                      what("KVM_SET_MSRS"), r, msrs.size(), msrs[r].index));
  }
  return ok_status();
}

Result<std::vector<MsrEntry>> VcpuFd::get_msrs(const std::vector<uint32_t>& indices) const {
  auto list = make_flex<kvm_msrs, kvm_msr_entry>(indices.size());
  list->nmsrs = static_cast<uint32_t>(indices.size());
  for (size_t i = 0; i < indices.size(); ++i) list->entries[i].index = indices[i];
  int r = retry_ioctl(fd_.get(), KVM_GET_MSRS, list.get());
  if (r < 0) return Error::from_errno(what("KVM_GET_MSRS"), errno);
  if (static_cast<size_t>(r) != indices.size()) {
    return Error::failure(fmt::format("{}: read {} of {} MSRs (first failing: 0x{:x})",
                                      what("KVM_GET_MSRS"), r, indices.size(), indices[r]));
  }
  std::vector<MsrEntry> out;
  out.reserve(indices.size());
  for (size_t i = 0; i < indices.size(); ++i) {
    out.push_back(MsrEntry{list->entries[i].index, list->entries[i].data});
  }
  return out;
}

Result<std::vector<uint8_t>> VcpuFd::get_xsave2(size_t size) const {
  std::vector<uint8_t> buf(std::max<size_t>(size, sizeof(kvm_xsave)));
  if (retry_ioctl(fd_.get(), KVM_GET_XSAVE2, buf.data()) < 0) {
    return Error::from_errno(what("KVM_GET_XSAVE2"), errno);
  }
  return buf;
}

Status VcpuFd::set_xsave(const std::vector<uint8_t>& xsave) {
  if (xsave.size() < sizeof(kvm_xsave)) {
    return Error::failure(fmt::format("{}: XSAVE area of {} bytes is smaller than {}",
                                      what("KVM_SET_XSAVE"), xsave.size(), sizeof(kvm_xsave)));
  }
  // KVM_SET_XSAVE reads as many bytes as KVM_CAP_XSAVE2 reports; the buffer carries them all.
  if (retry_ioctl(fd_.get(), KVM_SET_XSAVE, const_cast<uint8_t*>(xsave.data())) < 0) {
    return Error::from_errno(what("KVM_SET_XSAVE"), errno);
  }
  return ok_status();
}

Result<std::vector<CpuidEntry>> VcpuFd::get_cpuid2() const {
  for (size_t n = 64; n <= 4096; n *= 2) {
    auto cpuid = make_flex<kvm_cpuid2, kvm_cpuid_entry2>(n);
    cpuid->nent = static_cast<uint32_t>(n);
    if (retry_ioctl(fd_.get(), KVM_GET_CPUID2, cpuid.get()) < 0) {
      if (errno == E2BIG) continue;
      return Error::from_errno(what("KVM_GET_CPUID2"), errno);
    }
    std::vector<CpuidEntry> entries;
    for (uint32_t i = 0; i < cpuid->nent; ++i) {
      const kvm_cpuid_entry2& e = cpuid->entries[i];
      entries.push_back(CpuidEntry{e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx});
    }
    return entries;
  }
  return Error::failure(what("KVM_GET_CPUID2") + ": more than 4096 entries");
}

Result<uint32_t> VcpuFd::get_tsc_khz() const {
  int r = ::ioctl(fd_.get(), KVM_GET_TSC_KHZ, 0);
  if (r < 0) return Error::from_errno(what("KVM_GET_TSC_KHZ"), errno);
  return static_cast<uint32_t>(r);
}

Status VcpuFd::set_tsc_khz(uint32_t khz) {
  if (::ioctl(fd_.get(), KVM_SET_TSC_KHZ, static_cast<unsigned long>(khz)) < 0) {
    return Error::from_errno(fmt::format("{} ({} kHz)", what("KVM_SET_TSC_KHZ"), khz), errno);
  }
  return ok_status();
}

Status VcpuFd::kvmclock_ctrl() {
  // EINVAL only means the guest has not enabled kvmclock; nothing to tell it then.
  if (::ioctl(fd_.get(), KVM_KVMCLOCK_CTRL, 0) < 0 && errno != EINVAL) {
    return Error::from_errno(what("KVM_KVMCLOCK_CTRL"), errno);
  }
  return ok_status();
}

Result<kvm_translation> VcpuFd::translate(uint64_t linear_address) const {
  kvm_translation tr{};
  tr.linear_address = linear_address;
  if (retry_ioctl(fd_.get(), KVM_TRANSLATE, &tr) < 0)
    return Error::from_errno(what("KVM_TRANSLATE"), errno);
  return tr;
}

Result<Fd> VcpuFd::get_stats_fd() const {
  int r = ::ioctl(fd_.get(), KVM_GET_STATS_FD, 0);
  if (r < 0) return Error::from_errno(what("KVM_GET_STATS_FD"), errno);
  return Fd(r);
}

}  // namespace vmctl::vmm::kvm
