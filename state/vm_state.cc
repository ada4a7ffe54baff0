#include "state/vm_state.h"

#include <cpuid.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <thread>

#include <capnp/message.h>
#include <fmt/format.h>
#include <kj/exception.h>
#include <spdlog/spdlog.h>

#include "base/crash_point.h"
#include "base/path.h"
#include "base/text.h"
#include "state/cpu_features.h"
#include "state/lapic.h"
#include "state/lapic_probe.h"
#include "state/memory_file.h"
#include "state/page_runs.h"
#include "state/restore_budget.h"
#include "state/stream_contents.h"
#include "state/stream_limits.h"
#include "state/user_irqchip_state.h"
#include "state/vm_records.h"
#include "vmm/absent_pages.h"
#include "vmm/devices/cmos_rtc.h"
#include "vmm/devices/serial.h"
#include "vmm/vlapic/user_irqchip.h"

namespace vmctl::state {
namespace {

namespace ps = proto::state;
using Clock = std::chrono::steady_clock;

constexpr uint64_t kPageSize = 4096;
constexpr uint32_t kPagesPerRecord = kPagesPerMemoryRecord;  // readers bound records by it
constexpr uint32_t kMsrTscDeadline = 0x6e0;
constexpr uint32_t kMsrApicBase = 0x1b;
// MTRRs are not in KVM_GET_MSR_INDEX_LIST but are guest state (KVM-STATE.md).
constexpr uint32_t kMtrrMsrs[] = {0x2ff, 0x250, 0x258, 0x259, 0x268, 0x269, 0x26a,
                                  0x26b, 0x26c, 0x26d, 0x26e, 0x26f, 0x200, 0x201,
                                  0x202, 0x203, 0x204, 0x205, 0x206, 0x207, 0x208,
                                  0x209, 0x20a, 0x20b, 0x20c, 0x20d, 0x20e, 0x20f};

std::string new_snapshot_id() {
  std::random_device rd;
  std::mt19937_64 rng((static_cast<uint64_t>(rd()) << 32) ^ rd() ^
                      static_cast<uint64_t>(Clock::now().time_since_epoch().count()));
  return fmt::format("{:016x}{:016x}", rng(), rng());
}

// ------------------------------------------------------------------ header

void fill_host_facts(vmm::Vm& vm, ps::HostFacts::Builder host) {
  char hostname[256] = {};
  gethostname(hostname, sizeof(hostname) - 1);
  host.setHostname(hostname);
  struct utsname uts {};
  if (uname(&uts) == 0) host.setKernelRelease(uts.release);
  HostCpu cpu = host_cpu();
  host.setCpuVendor(cpu.vendor);
  host.setCpuFamily(cpu.family);
  host.setCpuModel(cpu.model);
  host.setCpuStepping(cpu.stepping);
  host.setKvmApiVersion(KVM_API_VERSION);
  const std::pair<const char*, long> caps[] = {
      {"KVM_CAP_IRQCHIP", KVM_CAP_IRQCHIP},
      {"KVM_CAP_PIT2", KVM_CAP_PIT2},
      {"KVM_CAP_XSAVE2", KVM_CAP_XSAVE2},
      {"KVM_CAP_XCRS", KVM_CAP_XCRS},
      {"KVM_CAP_VCPU_EVENTS", KVM_CAP_VCPU_EVENTS},
      {"KVM_CAP_DEBUGREGS", KVM_CAP_DEBUGREGS},
      {"KVM_CAP_ADJUST_CLOCK", KVM_CAP_ADJUST_CLOCK},
      {"KVM_CAP_TSC_CONTROL", KVM_CAP_TSC_CONTROL},
  };
  auto list = host.initCapabilities(std::size(caps));
  for (size_t i = 0; i < std::size(caps); ++i) {
    list[i].setName(caps[i].first);
    list[i].setValue(vm.kvm_system().check_extension(caps[i].second));
  }
  // Kept by the vCPU: the header is written while the VM runs, and a vCPU ioctl would wait for
  // a halted guest to wake up.
  host.setTscKhz(vm.vcpu(0).tsc_khz());
}

Status write_header(vmm::Vm& vm, RecordWriter& writer, const CaptureOptions& options,
                    const std::string& id) {
  capnp::MallocMessageBuilder message;
  auto header = message.initRoot<ps::Header>();
  header.setFormatMajor(format_major());
  header.setFormatMinor(format_minor());
  header.setProducer("vmctl " VMCTL_VERSION);
  header.setCreatedUnixNs(
      static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                std::chrono::system_clock::now().time_since_epoch())
                                .count()));
  header.setKind(options.kind);
  header.setSnapshotId(id);
  header.setParentId(options.parent_id);
  auto guest = header.initGuest();
  guest.setMemorySize(vm.memory().ram_size());
  guest.setVcpuCount(vm.num_cpus());
  auto regions = guest.initRegions(static_cast<unsigned>(vm.memory().regions().size()));
  for (size_t i = 0; i < vm.memory().regions().size(); ++i) {
    const vmm::MemoryRegion& r = vm.memory().regions()[i];
    regions[i].setSlot(r.slot);
    regions[i].setGuestPhys(r.guest_phys);
    regions[i].setSize(r.size);
  }
  auto devices = guest.initDevices(2);
  devices.set(0, "serial8250@0x3f8");
  devices.set(1, "cmos-rtc@0x70");
  guest.setCmdline(vm.config().boot.cmdline);
  fill_host_facts(vm, header.initHost());
  return writer.write(ps::RecordType::HEADER, message);
}

// ------------------------------------------------------------------ memory

struct MemoryStats {
  uint64_t pages = 0, zero_pages = 0;
};

class PageBatch {
 public:
  PageBatch(RecordWriter& writer, vmm::GuestMemory& memory, MemoryStats& stats)
      : writer_(writer), memory_(memory), stats_(stats) {}

  Status add(uint64_t frame) {
    if (!runs_.empty() && runs_.back().first + runs_.back().second == frame) {
      ++runs_.back().second;
    } else {
      runs_.emplace_back(frame, 1);
    }
    if (++pages_ == kPagesPerRecord) return flush();
    return ok_status();
  }

  Status flush() {
    if (pages_ == 0) return ok_status();
    capnp::MallocMessageBuilder message(static_cast<unsigned>(pages_ * kPageSize / 8 + 1024));
    auto record = message.initRoot<ps::MemoryPages>();
    auto runs = record.initRuns(static_cast<unsigned>(runs_.size()));
    auto data = record.initData(pages_ * kPageSize);
    uint8_t* out = data.begin();
    for (size_t i = 0; i < runs_.size(); ++i) {
      runs[i].setFirstPage(runs_[i].first);
      runs[i].setCount(runs_[i].second);
      uint64_t len = uint64_t{runs_[i].second} * kPageSize;
      std::memcpy(out, memory_.host_address(runs_[i].first * kPageSize, len), len);
      out += len;
    }
    TRY(writer_.write(ps::RecordType::MEMORY_PAGES, message, /*compress=*/true));
    stats_.pages += pages_;
    runs_.clear();
    pages_ = 0;
    return ok_status();
  }

 private:
  RecordWriter& writer_;
  vmm::GuestMemory& memory_;
  MemoryStats& stats_;
  std::vector<std::pair<uint64_t, uint32_t>> runs_;
  uint32_t pages_ = 0;
};

Status write_dirty_log(vmm::Vm& vm, RecordWriter& writer, const DirtyBitmaps& dirty) {
  capnp::MallocMessageBuilder message;
  auto log = message.initRoot<ps::DirtyLog>();
  const auto& regions = vm.memory().regions();
  auto out = log.initRegions(static_cast<unsigned>(regions.size()));
  for (size_t i = 0; i < regions.size(); ++i) {
    uint64_t pages = regions[i].size / kPageSize;
    out[i].setSlot(regions[i].slot);
    out[i].setGuestPhys(regions[i].guest_phys);
    out[i].setPages(pages);
    std::vector<uint64_t> runs = encode_runs(dirty[i], pages);
    auto list = out[i].initRuns(static_cast<unsigned>(runs.size()));
    for (size_t k = 0; k < runs.size(); ++k) list.set(static_cast<unsigned>(k), runs[k]);
  }
  return writer.write(ps::RecordType::DIRTY_LOG, message, /*compress=*/true);
}

// Full streams: every non-zero page. Diff streams: the dirty-log record, then the dirty pages
// that are not zero (a dirty page no record carries is zero).
Result<MemoryStats> write_memory_to_file(vmm::Vm& vm, RecordWriter& writer,
                                         const CaptureOptions& options,
                                         const std::string& snapshot_id) {
  MemoryFileStats file = TRY(write_memory_file(vm.memory(), *options.memory_file, snapshot_id));
  capnp::MallocMessageBuilder message;
  auto record = message.initRoot<ps::MemoryFile>();
  record.setPath(options.memory_file_name);
  record.setRamSize(vm.memory().ram_size());
  record.setHeaderSize(kMemoryFileHeaderSize);
  record.setFileSize(file.file_size);
  TRY(writer.write(ps::RecordType::MEMORY_FILE, message));
  return MemoryStats{file.pages, file.zero_pages};
}

Result<MemoryStats> write_memory(vmm::Vm& vm, RecordWriter& writer, const DirtyBitmaps* dirty) {
  if (dirty) TRY(write_dirty_log(vm, writer, *dirty));
  const auto& regions = vm.memory().regions();
  // The pages of one region in [first, end) worth sending, in order, into `batch`.
  auto scan = [&](size_t r, uint64_t first, uint64_t end, PageBatch& batch,
                  MemoryStats& stats) -> Status {
    const vmm::MemoryRegion& region = regions[r];
    const uint8_t* base = region.host.data();
    // A full snapshot reads every page: those nothing backs yet are zero without reading them.
    std::optional<vmm::AbsentPages> absent;
    if (!dirty) absent.emplace();
    std::vector<uint64_t> absent_bits;
    constexpr uint64_t kChunk = 512;  // 2 MiB of pagemap entries at a time
    for (uint64_t chunk = first; chunk < end; chunk += kChunk) {
      const uint64_t chunk_end = std::min(end, chunk + kChunk);
      if (absent) absent->find(region, chunk, chunk_end - chunk, absent_bits);
      for (uint64_t page = chunk; page < chunk_end; ++page) {
        if (dirty && !test_bit((*dirty)[r], page)) continue;
        if ((absent && test_bit(absent_bits, page - chunk)) ||
            vmm::page_is_zero(base + page * kPageSize)) {
          ++stats.zero_pages;
          continue;
        }
        TRY(batch.add(region.guest_phys / kPageSize + page));
      }
    }
    return ok_status();
  };
  // Compression is the slow part of a compressed snapshot, and the guest is paused meanwhile:
  // compress on every core (up to 4). Uncompressed, one thread keeps up with the sink.
  unsigned parts = 1;
  if (writer.compresses()) parts = std::clamp(std::thread::hardware_concurrency(), 1u, 4u);
  if (parts == 1) {
    MemoryStats stats;
    PageBatch batch(writer, vm.memory(), stats);
    for (size_t r = 0; r < regions.size(); ++r) {
      TRY(scan(r, 0, regions[r].size / kPageSize, batch, stats));
    }
    TRY(batch.flush());
    return stats;
  }

  // In parallel: guest RAM in 8 MiB shares dealt round-robin to the threads. Each share is
  // encoded into memory as records of its own and appended to the stream in share order, so the
  // stream is the same whatever the number of threads and however they are scheduled.
  constexpr uint64_t kPagesPerShare = 2048;
  struct Share {
    size_t region;
    uint64_t first, end;
  };
  std::vector<Share> shares;
  for (size_t r = 0; r < regions.size(); ++r) {
    uint64_t pages = regions[r].size / kPageSize;
    for (uint64_t first = 0; first < pages; first += kPagesPerShare) {
      shares.push_back({r, first, std::min(pages, first + kPagesPerShare)});
    }
  }
  std::mutex mu;
  std::condition_variable turn;
  size_t next_share = 0;  // the share whose records go to the stream next
  bool stopped = false;   // a thread failed: the others stop
  std::vector<MemoryStats> stats(parts);
  std::vector<Status> results(parts, ok_status());
  auto work = [&](unsigned part) -> Status {
    for (size_t i = part; i < shares.size(); i += parts) {
      MemorySink encoded;
      RecordWriter share_writer(encoded, writer.options());
      PageBatch batch(share_writer, vm.memory(), stats[part]);
      Status done = scan(shares[i].region, shares[i].first, shares[i].end, batch, stats[part]);
      if (done.ok()) done = batch.flush();
      std::unique_lock lock(mu);
      turn.wait(lock, [&] { return next_share == i || stopped; });
      if (stopped) return ok_status();
      if (done.ok()) done = writer.append_encoded(encoded.bytes(), share_writer.records());
      if (!done.ok()) {
        stopped = true;
        turn.notify_all();
        return done;
      }
      ++next_share;
      turn.notify_all();
    }
    return ok_status();
  };
  std::vector<std::thread> helpers;
  for (unsigned p = 1; p < parts; ++p) helpers.emplace_back([&, p] { results[p] = work(p); });
  results[0] = work(0);
  for (std::thread& t : helpers) t.join();
  MemoryStats total;
  for (unsigned p = 0; p < parts; ++p) {
    if (!results[p].ok()) return std::move(results[p]).error();
    total.pages += stats[p].pages;
    total.zero_pages += stats[p].zero_pages;
  }
  return total;
}

// ------------------------------------------------------------------ VM-level records

// ------------------------------------------------------------------ vCPU records

void segment_to_record(const kvm_segment& s, ps::Segment::Builder out) {
  out.setBase(s.base);
  out.setLimit(s.limit);
  out.setSelector(s.selector);
  out.setType(s.type);
  out.setPresent(s.present);
  out.setDpl(s.dpl);
  out.setDb(s.db);
  out.setS(s.s);
  out.setL(s.l);
  out.setG(s.g);
  out.setAvl(s.avl);
  out.setUnusable(s.unusable);
}

kvm_segment segment_from_record(ps::Segment::Reader in) {
  kvm_segment s{};
  s.base = in.getBase();
  s.limit = in.getLimit();
  s.selector = in.getSelector();
  s.type = in.getType();
  s.present = in.getPresent();
  s.dpl = in.getDpl();
  s.db = in.getDb();
  s.s = in.getS();
  s.l = in.getL();
  s.g = in.getG();
  s.avl = in.getAvl();
  s.unusable = in.getUnusable();
  return s;
}

// The MSRs worth saving on this host: KVM's list plus the MTRRs, minus those this vCPU cannot
// read, minus TSC_DEADLINE (it belongs to the LAPIC record and is restored after it).
Result<std::vector<uint32_t>> saveable_msrs(vmm::Vm& vm) {
  std::vector<uint32_t> candidates = TRY(vm.kvm_system().get_msr_index_list());
  candidates.insert(candidates.end(), std::begin(kMtrrMsrs), std::end(kMtrrMsrs));
  std::vector<uint32_t> out;
  vmm::kvm::VcpuFd& probe = vm.vcpu(0).fd();
  for (uint32_t index : candidates) {
    if (index == kMsrTscDeadline || index == kMsrApicBase) continue;
    if (std::find(out.begin(), out.end(), index) != out.end()) continue;
    if (probe.get_msrs({index}).ok()) out.push_back(index);
  }
  return out;
}

Status write_vcpu(vmm::Vm& vm, unsigned index, const std::vector<uint32_t>& msr_indices,
                  size_t xsave_size, RecordWriter& writer) {
  vmm::kvm::VcpuFd& fd = vm.vcpu(index).fd();
  auto context = [&](const char* what) { return fmt::format("saving vCPU {} {}", index, what); };
  // MP state first: reading it may process a pending INIT/SIPI and move RIP.
  vmm::vlapic::UserIrqchip* irqchip = vm.user_irqchip();
  kvm_mp_state mp{};
  if (irqchip) {
    mp.mp_state = irqchip->kvm_mp_state(index);
  } else {
    mp = TRY_CTX(fd.get_mp_state(), context("MP state"));
  }
  kvm_regs regs = TRY_CTX(fd.get_regs(), context("registers"));
  kvm_sregs sregs = TRY_CTX(fd.get_sregs(), context("special registers"));
  kvm_xcrs xcrs = TRY_CTX(fd.get_xcrs(), context("XCRs"));
  std::vector<uint8_t> xsave = TRY_CTX(fd.get_xsave2(xsave_size), context("XSAVE"));
  kvm_debugregs dbg = TRY_CTX(fd.get_debugregs(), context("debug registers"));
  std::vector<vmm::kvm::MsrEntry> msrs = TRY_CTX(fd.get_msrs(msr_indices), context("MSRs"));
  kvm_vcpu_events events = TRY_CTX(fd.get_vcpu_events(), context("events"));
  std::vector<vmm::CpuidEntry> cpuid = TRY_CTX(fd.get_cpuid2(), context("CPUID"));
  Result<uint32_t> tsc_khz = fd.get_tsc_khz();
  kvm_lapic_state lapic_page{};
  std::vector<vmm::kvm::MsrEntry> apic_msrs;
  if (irqchip) {
    vmm::vlapic::LapicSnapshot saved = irqchip->save(index);
    lapic_page = saved.page;
    apic_msrs = {{kMsrApicBase, saved.apic_base}, {kMsrTscDeadline, saved.tsc_deadline}};
    // KVM never sees the guest's IA32_APIC_BASE writes (they are filtered to the model): the
    // model's value is the vCPU's, in the special registers too (KVM_SET_SREGS restores it).
    sregs.apic_base = saved.apic_base;
  } else {
    lapic_page = TRY_CTX(fd.get_lapic(), context("local APIC"));
    apic_msrs = TRY_CTX(fd.get_msrs({kMsrApicBase, kMsrTscDeadline}), context("APIC MSRs"));
  }

  {
    capnp::MallocMessageBuilder message;
    auto v = message.initRoot<ps::Vcpu>();
    v.setIndex(index);
    v.setMpState(mp.mp_state);
    auto r = v.initRegs();
    r.setRax(regs.rax);
    r.setRbx(regs.rbx);
    r.setRcx(regs.rcx);
    r.setRdx(regs.rdx);
    r.setRsi(regs.rsi);
    r.setRdi(regs.rdi);
    r.setRsp(regs.rsp);
    r.setRbp(regs.rbp);
    r.setR8(regs.r8);
    r.setR9(regs.r9);
    r.setR10(regs.r10);
    r.setR11(regs.r11);
    r.setR12(regs.r12);
    r.setR13(regs.r13);
    r.setR14(regs.r14);
    r.setR15(regs.r15);
    r.setRip(regs.rip);
    r.setRflags(regs.rflags);
    auto s = v.initSregs();
    segment_to_record(sregs.cs, s.initCs());
    segment_to_record(sregs.ds, s.initDs());
    segment_to_record(sregs.es, s.initEs());
    segment_to_record(sregs.fs, s.initFs());
    segment_to_record(sregs.gs, s.initGs());
    segment_to_record(sregs.ss, s.initSs());
    segment_to_record(sregs.tr, s.initTr());
    segment_to_record(sregs.ldt, s.initLdt());
    s.initGdt().setBase(sregs.gdt.base);
    s.getGdt().setLimit(sregs.gdt.limit);
    s.initIdt().setBase(sregs.idt.base);
    s.getIdt().setLimit(sregs.idt.limit);
    s.setCr0(sregs.cr0);
    s.setCr2(sregs.cr2);
    s.setCr3(sregs.cr3);
    s.setCr4(sregs.cr4);
    s.setCr8(sregs.cr8);
    s.setEfer(sregs.efer);
    s.setApicBase(sregs.apic_base);
    auto bitmap = s.initInterruptBitmap(4);
    for (unsigned i = 0; i < 4; ++i) bitmap.set(i, sregs.interrupt_bitmap[i]);
    auto x = v.initXcrs(xcrs.nr_xcrs);
    for (uint32_t i = 0; i < xcrs.nr_xcrs; ++i) {
      x[i].setIndex(xcrs.xcrs[i].xcr);
      x[i].setValue(xcrs.xcrs[i].value);
    }
    v.setXsave(kj::arrayPtr(xsave.data(), xsave.size()));
    auto d = v.initDebugRegs();
    auto db = d.initDb(4);
    for (unsigned i = 0; i < 4; ++i) db.set(i, dbg.db[i]);
    d.setDr6(dbg.dr6);
    d.setDr7(dbg.dr7);
    d.setFlags(dbg.flags);
    auto m = v.initMsrs(static_cast<unsigned>(msrs.size()));
    for (size_t i = 0; i < msrs.size(); ++i) {
      m[i].setIndex(msrs[i].index);
      m[i].setValue(msrs[i].value);
    }
    auto e = v.initEvents();
    e.setExceptionInjected(events.exception.injected);
    e.setExceptionNr(events.exception.nr);
    e.setExceptionHasErrorCode(events.exception.has_error_code);
    e.setExceptionPending(events.exception.pending);
    e.setExceptionErrorCode(events.exception.error_code);
    e.setInterruptInjected(events.interrupt.injected);
    e.setInterruptNr(events.interrupt.nr);
    e.setInterruptSoft(events.interrupt.soft);
    e.setInterruptShadow(events.interrupt.shadow);
    e.setNmiInjected(events.nmi.injected);
    e.setNmiPending(events.nmi.pending);
    e.setNmiMasked(events.nmi.masked);
    e.setSipiVector(events.sipi_vector);
    e.setFlags(events.flags);
    e.setSmiSmm(events.smi.smm);
    e.setSmiPending(events.smi.pending);
    e.setSmiInsideNmi(events.smi.smm_inside_nmi);
    e.setSmiLatchedInit(events.smi.latched_init);
    e.setTripleFaultPending(events.triple_fault.pending);
    e.setExceptionHasPayload(events.exception_has_payload);
    e.setExceptionPayload(events.exception_payload);
    auto c = v.initCpuid(static_cast<unsigned>(cpuid.size()));
    for (size_t i = 0; i < cpuid.size(); ++i) {
      c[i].setFunction(cpuid[i].function);
      c[i].setIndex(cpuid[i].index);
      c[i].setFlags(cpuid[i].flags);
      c[i].setEax(cpuid[i].eax);
      c[i].setEbx(cpuid[i].ebx);
      c[i].setEcx(cpuid[i].ecx);
      c[i].setEdx(cpuid[i].edx);
    }
    v.setTscKhz(tsc_khz.ok() ? tsc_khz.value() : 0);
    TRY(writer.write(ps::RecordType::VCPU, message));
  }
  {
    capnp::MallocMessageBuilder message;
    LapicState lapic = decode_lapic(lapic_page, apic_msrs[0].value, apic_msrs[1].value,
                                    /*x2apic_ids=*/false);
    // PPR is recorded as derived from TPR and ISR, not as KVM's page shows it: some KVMs update
    // the page's PPR lazily (only when the vCPU next runs), so a vCPU paused right after a
    // restore would otherwise record a PPR that no APIC with this ISR could have.
    lapic.ppr = derive_ppr(lapic.tpr, lapic.isr);
    to_record(lapic, index, message.initRoot<ps::Lapic>());
    TRY(writer.write(ps::RecordType::LAPIC, message));
  }
  return ok_status();
}

Status write_trailer(RecordWriter& writer, const MemoryStats& memory) {
  capnp::MallocMessageBuilder message;
  auto trailer = message.initRoot<ps::Trailer>();
  trailer.setRecordCount(writer.records());
  trailer.setMemoryPages(memory.pages);
  trailer.setZeroPagesElided(memory.zero_pages);
  return writer.write(ps::RecordType::TRAILER, message);
}

}  // namespace

Status write_stream_header(vmm::Vm& vm, RecordWriter& writer, const CaptureOptions& options,
                           const std::string& stream_id) {
  TRY_CTX(write_header(vm, writer, options, stream_id), "writing the header");
  return ok_status();
}

std::string new_stream_id() {
  return new_snapshot_id();
}

Result<PageStats> write_pages(vmm::Vm& vm, RecordWriter& writer, const DirtyBitmaps* dirty) {
  MemoryStats memory = TRY_CTX(write_memory(vm, writer, dirty), "writing guest memory");
  return PageStats{memory.pages, memory.zero_pages};
}

Status write_machine_state(vmm::Vm& vm, RecordWriter& writer, const PageStats& pages) {
  for (unsigned i = 0; i < vm.num_cpus(); ++i) {
    // Tell a kvmclock guest it was stopped on purpose (no soft-lockup reports); EINVAL only means
    // the guest does not use kvmclock.
    (void)vm.vcpu(i).fd().kvmclock_ctrl();
  }
  TRY_CTX(write_vm_records(vm, writer), "writing VM state");
  std::vector<uint32_t> msrs = TRY(saveable_msrs(vm));
  int xsave_size = vm.kvm_system().check_extension(KVM_CAP_XSAVE2);
  for (unsigned i = 0; i < vm.num_cpus(); ++i) {
    TRY(write_vcpu(vm, i, msrs, xsave_size > 0 ? static_cast<size_t>(xsave_size) : 0, writer));
  }
  TRY(write_trailer(writer, MemoryStats{pages.pages, pages.zero_pages}));
  return ok_status();
}

Result<CaptureStats> capture_vm(vmm::Vm& vm, RecordWriter& writer, const CaptureOptions& options) {
  Clock::time_point start = Clock::now();
  CaptureStats stats;
  stats.snapshot_id = options.snapshot_id.empty() ? new_snapshot_id() : options.snapshot_id;
  TRY(write_stream_header(vm, writer, options, stats.snapshot_id));
  MemoryStats memory =
      options.memory_file
          ? TRY_CTX(write_memory_to_file(vm, writer, options, stats.snapshot_id),
                    "writing the memory file")
          : TRY_CTX(write_memory(vm, writer, options.dirty), "writing guest memory");
  TRY(write_machine_state(vm, writer, PageStats{memory.pages, memory.zero_pages}));
  stats.records = writer.records();
  stats.bytes = writer.bytes();
  stats.pages = memory.pages;
  stats.zero_pages = memory.zero_pages;
  stats.duration = Clock::now() - start;
  return stats;
}

namespace {

std::string directory_part(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash == 0 ? 1 : slash);
}

// How the snapshot names its memory file: by file name when both sit in one directory (so the
// pair can be moved together), else by absolute path.
std::string memory_file_reference(const std::string& snapshot, const std::string& memory_file) {
  std::string snap_dir = directory_part(absolute_path(snapshot));
  std::string mem_abs = absolute_path(memory_file);
  if (directory_part(mem_abs) == snap_dir) return mem_abs.substr(mem_abs.rfind('/') + 1);
  return mem_abs;
}

}  // namespace

Result<CaptureStats> save_snapshot(vmm::Vm& vm, const std::string& path,
                                   const SnapshotOptions& options) {
  if (options.diff && (!options.tracker || !options.tracker->active())) {
    return Error::user(fmt::format(
        "snapshot {}: no parent to diff against: take a full snapshot of this VM first", path));
  }
  if (options.diff && !options.memory_file.empty()) {
    return Error::user(fmt::format(
        "snapshot {}: a diff snapshot keeps its pages in the snapshot file; --memory-file is for "
        "full snapshots",
        path));
  }
  // The id is known before anything is written: the memory file's pending name carries it.
  const std::string id = new_snapshot_id();
  std::unique_ptr<FileSink> sink = TRY(FileSink::create(path));
  std::unique_ptr<FileSink> memory_sink;
  std::string pending_memory;
  if (!options.memory_file.empty()) {
    pending_memory = pending_memory_file(options.memory_file, id);
    memory_sink = TRY(FileSink::create(pending_memory, options.memory_file));
  }
  vm.pause();
  auto result = [&]() -> Result<CaptureStats> {
    RecordWriter writer(*sink, WriterOptions{options.compression_level});
    CaptureOptions capture;
    capture.snapshot_id = id;
    if (memory_sink) {
      capture.memory_file = memory_sink.get();
      capture.memory_file_name = memory_file_reference(path, options.memory_file);
    }
    if (options.diff) {
      capture.kind = proto::state::StreamKind::DIFF_SNAPSHOT;
      capture.parent_id = options.tracker->parent_id();
      capture.dirty = TRY(options.tracker->collect(vm));
    }
    CaptureStats stats = TRY(capture_vm(vm, writer, capture));
    crash_point("snapshot-written");
    // The pair commits at the snapshot's rename (memory_file.h): the memory file waits under its
    // pending name until then, and moves into place after.
    if (memory_sink) {
      TRY_CTX(memory_sink->commit(), fmt::format("writing memory file {}", options.memory_file));
      crash_point("memory-file-pending");
    }
    Status committed = sink->commit();
    if (!committed.ok()) {
      if (memory_sink) ::unlink(pending_memory.c_str());
      return std::move(committed).error().with_context(fmt::format("writing snapshot {}", path));
    }
    crash_point("snapshot-committed");
    // Durable: the next diff is relative to this snapshot.
    if (options.tracker) TRY(options.tracker->restart(vm, stats.snapshot_id));
    if (memory_sink) {
      TRY_CTX(install_pending_memory_file(options.memory_file, id),
              fmt::format("snapshot {} is in place, but its memory file is not (the next restore "
                          "moves it there)",
                          path));
      crash_point("memory-file-installed");
    }
    return stats;
  }();
  if (!options.leave_paused || !result.ok()) vm.resume();
  if (!result.ok()) return std::move(result).error().with_context(fmt::format("snapshot {}", path));
  return result;
}

// ------------------------------------------------------------------ restore

namespace {

struct PendingVcpu {
  std::optional<Record> vcpu;
  std::optional<Record> lapic;
};

Status apply_memory(vmm::GuestMemory& memory, ps::MemoryPages::Reader pages, RecordReader& reader) {
  auto data = pages.getData();
  uint64_t offset = 0;
  for (auto run : pages.getRuns()) {
    uint64_t len = uint64_t{run.getCount()} * kPageSize;
    uint64_t gpa = run.getFirstPage() * kPageSize;
    if (run.getFirstPage() > (~0ull / kPageSize) || offset + len > data.size()) {
      return Error::user(
          fmt::format("{}: memory record runs describe more pages than it carries", reader.name()));
    }
    uint8_t* host = memory.host_address(gpa, len);
    if (!host) {
      return Error::user(
          fmt::format("{}: memory record writes guest-physical 0x{:x}+0x{:x}, outside guest RAM",
                      reader.name(), gpa, len));
    }
    std::memcpy(host, data.begin() + offset, len);
    offset += len;
  }
  if (offset != data.size()) {
    return Error::user(fmt::format("{}: memory record carries {} bytes its runs do not describe",
                                   reader.name(), data.size() - offset));
  }
  return ok_status();
}

}  // namespace

const char* vcpu_restore_step_name(VcpuRestoreStep step) {
  switch (step) {
    case VcpuRestoreStep::kTscRate:
      return "TSC rate";
    case VcpuRestoreStep::kCpuid:
      return "CPUID";
    case VcpuRestoreStep::kMpState:
      return "MP state";
    case VcpuRestoreStep::kRegs:
      return "registers";
    case VcpuRestoreStep::kSregs:
      return "special registers";
    case VcpuRestoreStep::kXcrs:
      return "XCRs";
    case VcpuRestoreStep::kXsave:
      return "XSAVE";
    case VcpuRestoreStep::kDebugRegs:
      return "debug registers";
    case VcpuRestoreStep::kLapic:
      return "local APIC";
    case VcpuRestoreStep::kMsrs:
      return "MSRs";
    case VcpuRestoreStep::kTscDeadline:
      return "TSC deadline";
    case VcpuRestoreStep::kEvents:
      return "events";
    case VcpuRestoreStep::kVerifyPpr:
      return "PPR check";
  }
  return "?";
}

namespace {

// A vCPU's saved state with the parts used by more than one restore step decoded once.
struct VcpuRestoreInput {
  ps::Vcpu::Reader v;
  LapicState lapic;
  std::vector<vmm::CpuidEntry> cpuid;
  unsigned index;
};

// One piece of a vCPU's state; restore_vcpu applies them in kVcpuRestoreOrder.
Status restore_vcpu_step(VcpuRestoreStep step, vmm::Vm& vm, const VcpuRestoreInput& in,
                         bool strict_tsc) {
  using Step = VcpuRestoreStep;
  const ps::Vcpu::Reader& v = in.v;
  const unsigned index = in.index;
  vmm::kvm::VcpuFd& fd = vm.vcpu(index).fd();
  auto context = [&](const char* what) { return fmt::format("restoring vCPU {} {}", index, what); };

  switch (step) {
    case Step::kTscRate: {
      if (v.getTscKhz() == 0) return ok_status();
      Result<uint32_t> current = fd.get_tsc_khz();
      if (!current.ok() || current.value() == v.getTscKhz()) return ok_status();
      Status scaled = vm.vcpu(index).set_tsc_khz(v.getTscKhz());
      if (scaled.ok()) return ok_status();
      std::string what = fmt::format(
          "vCPU {}: the guest's TSC ran at {} kHz, this host runs at {} kHz and cannot scale it",
          index, v.getTscKhz(), current.value());
      if (strict_tsc) {
        return Error::user(what + " (restore without --strict-tsc to accept the host's rate)");
      }
      // Once per VM is enough: every vCPU has the same rate.
      if (index == 0) spdlog::warn("{}; the guest's TSC now runs at the host's rate", what);
      return ok_status();
    }
    case Step::kCpuid:
      TRY_CTX(vm.vcpu(index).set_cpuid(in.cpuid), context("CPUID"));
      return ok_status();
    case Step::kMpState: {
      kvm_mp_state mp{};
      mp.mp_state = v.getMpState();
      if (vm.user_irqchip()) return vm.user_irqchip()->set_kvm_mp_state(index, mp.mp_state);
      TRY_CTX(fd.set_mp_state(mp), context("MP state"));
      return ok_status();
    }
    case Step::kRegs: {
      auto r = v.getRegs();
      kvm_regs regs{};
      regs.rax = r.getRax();
      regs.rbx = r.getRbx();
      regs.rcx = r.getRcx();
      regs.rdx = r.getRdx();
      regs.rsi = r.getRsi();
      regs.rdi = r.getRdi();
      regs.rsp = r.getRsp();
      regs.rbp = r.getRbp();
      regs.r8 = r.getR8();
      regs.r9 = r.getR9();
      regs.r10 = r.getR10();
      regs.r11 = r.getR11();
      regs.r12 = r.getR12();
      regs.r13 = r.getR13();
      regs.r14 = r.getR14();
      regs.r15 = r.getR15();
      regs.rip = r.getRip();
      regs.rflags = r.getRflags();
      TRY_CTX(fd.set_regs(regs), context("registers"));
      return ok_status();
    }
    case Step::kSregs: {
      auto s = v.getSregs();
      kvm_sregs sregs{};
      sregs.cs = segment_from_record(s.getCs());
      sregs.ds = segment_from_record(s.getDs());
      sregs.es = segment_from_record(s.getEs());
      sregs.fs = segment_from_record(s.getFs());
      sregs.gs = segment_from_record(s.getGs());
      sregs.ss = segment_from_record(s.getSs());
      sregs.tr = segment_from_record(s.getTr());
      sregs.ldt = segment_from_record(s.getLdt());
      sregs.gdt.base = s.getGdt().getBase();
      sregs.gdt.limit = s.getGdt().getLimit();
      sregs.idt.base = s.getIdt().getBase();
      sregs.idt.limit = s.getIdt().getLimit();
      sregs.cr0 = s.getCr0();
      sregs.cr2 = s.getCr2();
      sregs.cr3 = s.getCr3();
      sregs.cr4 = s.getCr4();
      sregs.cr8 = s.getCr8();
      sregs.efer = s.getEfer();
      sregs.apic_base = s.getApicBase();
      for (unsigned i = 0; i < s.getInterruptBitmap().size() && i < 4; ++i) {
        sregs.interrupt_bitmap[i] = s.getInterruptBitmap()[i];
      }
      TRY_CTX(fd.set_sregs(sregs), context("special registers"));
      return ok_status();
    }
    case Step::kXcrs: {
      kvm_xcrs xcrs{};
      xcrs.nr_xcrs = std::min<uint32_t>(v.getXcrs().size(), KVM_MAX_XCRS);
      for (uint32_t i = 0; i < xcrs.nr_xcrs; ++i) {
        xcrs.xcrs[i].xcr = v.getXcrs()[i].getIndex();
        xcrs.xcrs[i].value = v.getXcrs()[i].getValue();
      }
      TRY_CTX(fd.set_xcrs(xcrs), context("XCRs"));
      return ok_status();
    }
    case Step::kXsave: {
      auto xsave_data = v.getXsave();
      std::vector<uint8_t> xsave(xsave_data.begin(), xsave_data.end());
      int host_xsave = vm.kvm_system().check_extension(KVM_CAP_XSAVE2);
      if (host_xsave > 0 && xsave.size() < static_cast<size_t>(host_xsave)) {
        xsave.resize(host_xsave);
      }
      TRY_CTX(fd.set_xsave(xsave), context("XSAVE"));
      return ok_status();
    }
    case Step::kDebugRegs: {
      auto d = v.getDebugRegs();
      kvm_debugregs dbg{};
      for (unsigned i = 0; i < d.getDb().size() && i < 4; ++i) dbg.db[i] = d.getDb()[i];
      dbg.dr6 = d.getDr6();
      dbg.dr7 = d.getDr7();
      dbg.flags = d.getFlags();
      TRY_CTX(fd.set_debugregs(dbg), context("debug registers"));
      return ok_status();
    }
    case Step::kLapic:
      if (vm.user_irqchip()) {
        // The model takes the page, the APIC base and the TSC deadline together.
        TRY_CTX(vm.user_irqchip()->load(index, encode_lapic(in.lapic, /*x2apic_ids=*/false),
                                        in.lapic.apic_base, in.lapic.tsc_deadline),
                context("local APIC"));
        return ok_status();
      }
      TRY_CTX(fd.set_lapic(encode_lapic(in.lapic, /*x2apic_ids=*/false)), context("local APIC"));
      return ok_status();
    case Step::kMsrs: {
      // KVM's paravirtual async-page-fault interrupt MSRs need its in-kernel LAPIC: under
      // --irqchip user they can only be off (0), and KVM refuses even that.
      constexpr uint32_t kMsrKvmAsyncPfInt = 0x4b564d06, kMsrKvmAsyncPfAck = 0x4b564d07;
      std::vector<vmm::kvm::MsrEntry> msrs;
      for (auto m : v.getMsrs()) {
        bool needs_kernel_lapic =
            m.getIndex() == kMsrKvmAsyncPfInt || m.getIndex() == kMsrKvmAsyncPfAck;
        if (vm.user_irqchip() && needs_kernel_lapic) {
          if (m.getValue() == 0) continue;
          return Error::user(fmt::format(
              "vCPU {}: the guest uses KVM's async page fault interrupt (MSR 0x{:x}), which needs "
              "the in-kernel LAPIC: restore it with --irqchip kernel",
              index, m.getIndex()));
        }
        msrs.push_back(vmm::kvm::MsrEntry{m.getIndex(), m.getValue()});
      }
      TRY_CTX(fd.set_msrs(msrs), context("MSRs"));
      return ok_status();
    }
    case Step::kTscDeadline:
      if (in.lapic.tsc_deadline == 0 || vm.user_irqchip()) return ok_status();
      TRY_CTX(fd.set_msrs({vmm::kvm::MsrEntry{kMsrTscDeadline, in.lapic.tsc_deadline}}),
              context("TSC deadline"));
      return ok_status();
    case Step::kEvents: {
      auto e = v.getEvents();
      kvm_vcpu_events events{};
      events.exception.injected = e.getExceptionInjected();
      events.exception.nr = e.getExceptionNr();
      events.exception.has_error_code = e.getExceptionHasErrorCode();
      events.exception.pending = e.getExceptionPending();
      events.exception.error_code = e.getExceptionErrorCode();
      events.interrupt.injected = e.getInterruptInjected();
      events.interrupt.nr = e.getInterruptNr();
      events.interrupt.soft = e.getInterruptSoft();
      events.interrupt.shadow = e.getInterruptShadow();
      events.nmi.injected = e.getNmiInjected();
      events.nmi.pending = e.getNmiPending();
      events.nmi.masked = e.getNmiMasked();
      events.sipi_vector = e.getSipiVector();
      // Only the validity flags that need no capability this VM has not enabled.
      events.flags =
          e.getFlags() & (KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR |
                          KVM_VCPUEVENT_VALID_SHADOW | KVM_VCPUEVENT_VALID_SMM);
      events.smi.smm = e.getSmiSmm();
      events.smi.pending = e.getSmiPending();
      events.smi.smm_inside_nmi = e.getSmiInsideNmi();
      events.smi.latched_init = e.getSmiLatchedInit();
      TRY_CTX(fd.set_vcpu_events(events), context("events"));
      return ok_status();
    }
    case Step::kVerifyPpr: {
      // The userspace LAPIC derives PPR on every read: nothing to verify.
      if (vm.user_irqchip()) return ok_status();
      // PPR is derived state: check KVM derived the same value from the restored TPR and ISR.
      kvm_lapic_state after = TRY_CTX(fd.get_lapic(), context("local APIC (verifying)"));
      LapicState restored = decode_lapic(after, in.lapic.apic_base, 0, false);
      uint8_t expected = derive_ppr(in.lapic.tpr, in.lapic.isr);
      if (restored.ppr == expected) return ok_status();
      // Some KVMs (a paravirtual one) keep the in-service vectors but derive PPR from them only
      // once the vCPU runs. Whether this one does is found by running a throwaway vCPU.
      Result<bool> keeps = kvm_keeps_in_service_vectors();
      if (restored.isr == in.lapic.isr && keeps.ok() && *keeps) return ok_status();
      // A guest restored where KVM ignores them would take interrupts its handlers still block.
      // Refuse, as for a missing CPU feature.
      return Error::user(fmt::format(
          "restoring vCPU {} local APIC: KVM reports PPR 0x{:02x} but TPR 0x{:02x} and ISR "
          "give 0x{:02x}{}: this host's KVM does not honour the snapshot's in-service vectors; "
          "restore it on a host whose KVM does, or snapshot again when no interrupt handler runs",
          index, restored.ppr, in.lapic.tpr, expected,
          keeps.ok() ? "" : " (" + keeps.error().message() + ")"));
    }
  }
  return ok_status();
}

Status restore_vcpu(vmm::Vm& vm, const Record& vcpu_record, const Record& lapic_record,
                    const std::vector<vmm::CpuidEntry>& host_cpuid, bool strict_tsc) {
  auto vmsg = vcpu_record.message();
  auto lmsg = lapic_record.message();
  VcpuRestoreInput in{vmsg->getRoot<ps::Vcpu>(), from_record(lmsg->getRoot<ps::Lapic>()), {}, 0};
  in.index = in.v.getIndex();
  TRY(validate_lapic(in.lapic, in.index));
  for (auto e : in.v.getCpuid()) {
    in.cpuid.push_back(vmm::CpuidEntry{e.getFunction(), e.getIndex(), e.getFlags(), e.getEax(),
                                       e.getEbx(), e.getEcx(), e.getEdx()});
  }
  std::vector<std::string> missing = missing_cpu_features(in.cpuid, host_cpuid);
  if (!missing.empty()) {
    std::string list;
    for (const std::string& m : missing) list += (list.empty() ? "" : ", ") + m;
    return Error::user(fmt::format(
        "this host's CPU (as KVM exposes it) lacks features the guest was given: {}; restore on a "
        "host that has them",
        list));
  }
  for (VcpuRestoreStep step : kVcpuRestoreOrder) {
    TRY(restore_vcpu_step(step, vm, in, strict_tsc));
  }
  return ok_status();
}

}  // namespace

namespace {

// Zeroes the pages a diff stream's dirty log names; the stream's memory records then rewrite
// those that are not zero.
Status apply_dirty_log(vmm::GuestMemory& memory, ps::DirtyLog::Reader log, RecordReader& reader) {
  for (auto region : log.getRegions()) {
    uint64_t pages = region.getPages();
    if (pages > (~0ull / kPageSize) ||
        !memory.host_address(region.getGuestPhys(), pages * kPageSize)) {
      return Error::user(
          fmt::format("{}: dirty log names a region outside guest RAM", reader.name()));
    }
    std::vector<uint64_t> runs;
    for (uint64_t run : region.getRuns()) runs.push_back(run);
    std::vector<uint64_t> bitmap =
        TRY_CTX(decode_runs(runs, pages), fmt::format("{}: dirty log", reader.name()));
    uint8_t* base = memory.host_address(region.getGuestPhys(), pages * kPageSize);
    for (uint64_t p = 0; p < pages; ++p) {
      if (test_bit(bitmap, p)) std::memset(base + p * kPageSize, 0, kPageSize);
    }
  }
  return ok_status();
}

// Builds a VM from one stream or a chain of them: the first creates the VM and fills memory,
// each diff rewrites the pages it names, and the CPU and device state of the last is applied.
class Restorer {
 public:
  Restorer(const RestoreOptions& options, StreamOrigin origin)
      : options_(options), origin_(origin) {}
  // A VM made beforehand (a migration's prepared destination): the stream must describe it.
  void prepare(std::unique_ptr<vmm::Vm> vm) { prepared_ = std::move(vm); }

  // `directory` resolves a memory file the stream names by a relative path.
  Status read(RecordReader& reader, const std::string& directory = ".") {
    std::optional<Record> first = TRY(reader.next());
    if (!first) return Error::user(fmt::format("{} is empty", reader.name()));
    if (first->type != ps::RecordType::HEADER) {
      return Error::user(fmt::format("{}: the first record is {}, not a header", reader.name(),
                                     record_type_name(first->type)));
    }
    StreamInfo info = TRY(read_header(*first, reader));
    reader.set_guest_memory_size(info.memory_size);
    if (!vm_) {
      if (info.kind == ps::StreamKind::DIFF_SNAPSHOT) {
        return Error::user(fmt::format(
            "{} is a diff snapshot of {}: restore its whole chain (vmctl restore BASE DIFF...)",
            reader.name(), info.parent_id));
      }
      TRY(check_guest_fits_host(reader.name(), info.memory_size, info.vcpus, options_.budget));
      if (prepared_ && (prepared_->memory().ram_size() != info.memory_size ||
                        prepared_->num_cpus() != info.vcpus)) {
        return Error::user(fmt::format(
            "{}: the stream describes a guest of {} MiB and {} vCPUs, but {} MiB and {} vCPUs were "
            "offered: corrupt or hostile",
            reader.name(), info.memory_size >> 20, info.vcpus, prepared_->memory().ram_size() >> 20,
            prepared_->num_cpus()));
      }
      // The VM is created at the first record after the header, which says whether guest RAM
      // comes from a memory file.
      config_ = vmm::VmConfig{};
      config_.memory_size = info.memory_size;
      config_.num_cpus = info.vcpus;
      config_.boot.cmdline = info.cmdline;
      config_.console_output = options_.console_output;
      config_.for_restore = true;
      config_.dirty_tracking = options_.dirty_tracking;
      config_.dirty_ring_entries = options_.dirty_ring_entries;
      config_.irqchip = options_.irqchip;
      directory_ = directory;
    } else {
      if (info.kind != ps::StreamKind::DIFF_SNAPSHOT) {
        return Error::user(fmt::format(
            "{} is a full snapshot: only diff snapshots can follow the first file", reader.name()));
      }
      if (info.parent_id != info_.snapshot_id) {
        return Error::user(fmt::format("{} is a diff of {}, not of the file before it ({})",
                                       reader.name(), info.parent_id, info_.snapshot_id));
      }
      if (info.memory_size != info_.memory_size || info.vcpus != info_.vcpus) {
        return Error::user(
            fmt::format("{} describes a different machine than its parent", reader.name()));
      }
    }
    // Only now, with the machine checked against the host (or the parent), is anything sized by
    // the header's vCPU count: a hostile header claiming 2^32 vCPUs would otherwise cost 1 GiB
    // before it is refused.
    contents_.emplace(reader.name(), info.kind, origin_, info.vcpus, options_.budget);
    TRY(contents_->check_numbering(reader.numbered()));
    info_ = info;
    records_.clear();
    vcpus_.clear();
    return read_records(reader);
  }

  Result<std::unique_ptr<vmm::Vm>> finish() {
    if (!vm_) return Error::user("the snapshot holds no records after its header");
    vmm::Vm& vm = *vm_;
    // What this host offers: KVM's supported table, and what a vCPU configured from it actually
    // reports (some hosts' KVM widens the table it was given, and the guest sees that).
    std::vector<vmm::CpuidEntry> supported = TRY(vm.kvm_system().get_supported_cpuid());
    std::vector<vmm::CpuidEntry> effective = TRY(vm.vcpu(0).fd().get_cpuid2());
    std::vector<vmm::CpuidEntry> host_cpuid = supported;
    for (vmm::CpuidEntry& e : host_cpuid) {
      if (const vmm::CpuidEntry* w = vmm::find_cpuid(effective, e.function, e.index)) {
        e.eax |= w->eax;
        e.ebx |= w->ebx;
        e.ecx |= w->ecx;
        e.edx |= w->edx;
      }
    }
    for (unsigned i = 0; i < vm.num_cpus(); ++i) {
      auto it = vcpus_.find(i);
      if (it == vcpus_.end() || !it->second.vcpu || !it->second.lapic) {
        return Error::user(fmt::format("no vCPU or LAPIC record for vCPU {}", i));
      }
      TRY(restore_vcpu(vm, *it->second.vcpu, *it->second.lapic, host_cpuid, options_.strict_tsc));
    }
    TRY(restore_vm_records(vm, records_));
    return std::move(vm_);
  }

  const StreamInfo& info() const { return info_; }

 private:
  Result<StreamInfo> read_header(const Record& record, RecordReader& reader) {
    auto msg = record.message();
    auto header = msg->getRoot<ps::Header>();
    StreamInfo info;
    info.major = header.getFormatMajor();
    info.minor = header.getFormatMinor();
    if (info.major > format_major()) {
      return Error::user(fmt::format(
          "{}: written by state format {}.{}, but this vmctl reads format {}.x: upgrade vmctl",
          reader.name(), info.major, info.minor, format_major()));
    }
    // Text from the stream goes into messages and to callers (the daemon's JSON and protobuf):
    // valid UTF-8 on one line only. Ids are compared, so they must be plain text already.
    auto text = [](capnp::Text::Reader t) { return std::string(t.begin(), t.size()); };
    auto id = [&](capnp::Text::Reader t, const char* what) -> Result<std::string> {
      std::string raw = text(t);
      if (raw.size() > 64 || sanitize_text(raw) != raw) {
        return Error::user(
            fmt::format("{}: the header's {} \"{}\" is not an id (printable, at most 64 bytes): "
                        "corrupt",
                        reader.name(), what, sanitize_text(raw, 80)));
      }
      return raw;
    };
    info.producer = sanitize_text(text(header.getProducer()));
    info.snapshot_id = TRY(id(header.getSnapshotId(), "snapshot id"));
    info.parent_id = TRY(id(header.getParentId(), "parent id"));
    info.kind = header.getKind();
    info.memory_size = header.getGuest().getMemorySize();
    info.vcpus = header.getGuest().getVcpuCount();
    info.cmdline = sanitize_text(text(header.getGuest().getCmdline()), 4096);
    return info;
  }

  Status read_records(RecordReader& reader) {
    while (true) {
      std::optional<Record> record = TRY(reader.next());
      if (!record) {
        return Error::user(
            fmt::format("{}: truncated: the stream ends after {} records without its trailer",
                        reader.name(), reader.records_read()));
      }
      TRY(contents_->admit(record->type));
      if (record->streamed) {
        // Page runs: their pages go straight from the stream into guest memory.
        if (!vm_) TRY(create_vm(*record, reader));
        uint64_t pages = TRY(apply_page_runs(reader, *record, vm_->memory()));
        contents_->add_memory_pages(pages);
        continue;
      }
      auto msg = record->message();
      if (!vm_) {
        bool consumed = TRY(create_vm(*record, reader));
        if (consumed) {
          contents_->used_memory_file();
          continue;
        }
      }
      switch (record->type) {
        case ps::RecordType::MEMORY_FILE:
          return Error::user(fmt::format(
              "{}: a memory file record after the start of the stream: corrupt", reader.name()));
        case ps::RecordType::MEMORY_PAGES: {
          auto pages = msg->getRoot<ps::MemoryPages>();
          TRY(apply_memory(vm_->memory(), pages, reader));
          contents_->add_memory_pages(pages.getData().size() / kPageSize);
          break;
        }
        case ps::RecordType::DIRTY_LOG:
          TRY(apply_dirty_log(vm_->memory(), msg->getRoot<ps::DirtyLog>(), reader));
          break;
        case ps::RecordType::VCPU: {
          unsigned index = msg->getRoot<ps::Vcpu>().getIndex();
          TRY(contents_->admit_vcpu(record->type, index));
          TRY(contents_->retain(*record));
          vcpus_[index].vcpu = std::move(record);
          break;
        }
        case ps::RecordType::LAPIC: {
          unsigned index = msg->getRoot<ps::Lapic>().getVcpuIndex();
          TRY(contents_->admit_vcpu(record->type, index));
          TRY(contents_->retain(*record));
          vcpus_[index].lapic = std::move(record);
          break;
        }
        case ps::RecordType::TRAILER:
          // The pages of the other data connections count too: all of them have arrived.
          if (options_.other_page_lanes) {
            uint64_t pages = TRY(options_.other_page_lanes());
            contents_->add_memory_pages(pages);
          }
          return contents_->check_trailer(msg->getRoot<ps::Trailer>(), reader.records_read() - 1);
        case ps::RecordType::HEADER:
          return Error::user(fmt::format("{}: a second header inside the stream", reader.name()));
        case ps::RecordType::IRQCHIP:
        case ps::RecordType::PIT:
        case ps::RecordType::CLOCK:
        case ps::RecordType::DEVICE:
          TRY(contents_->retain(*record));
          records_[static_cast<int>(record->type)].push_back(std::move(*record));
          break;
        default:
          // A record type from a newer minor that may be skipped: skipped, not kept.
          break;
      }
    }
  }

  // Creates the VM for the first stream; returns whether `first` (a memory file record) was used
  // up doing so.
  Result<bool> create_vm(const Record& first, RecordReader& reader) {
    if (first.type != ps::RecordType::MEMORY_FILE) {
      if (options_.lazy) {
        return Error::user(fmt::format(
            "{} keeps its memory inside the snapshot: --lazy needs a snapshot taken with "
            "--memory-file",
            reader.name()));
      }
      if (prepared_) {
        vm_ = std::move(prepared_);
        return false;
      }
      vm_ = TRY_CTX(vmm::Vm::create(config_), "creating the VM to restore into");
      return false;
    }
    if (prepared_) {
      return Error::user(
          fmt::format("{}: a memory file record in a migration stream: refused", reader.name()));
    }
    auto msg = first.message();
    auto record = msg->getRoot<ps::MemoryFile>();
    std::string path = record.getPath();
    if (path.empty())
      return Error::user(fmt::format("{}: memory file record without a path", reader.name()));
    if (path[0] != '/') path = directory_ + "/" + path;
    if (record.getRamSize() != info_.memory_size ||
        record.getHeaderSize() != kMemoryFileHeaderSize) {
      return Error::user(fmt::format(
          "{}: the memory file record describes {} bytes of RAM at offset {}, the header {} at {}: "
          "corrupt",
          reader.name(), record.getRamSize(), record.getHeaderSize(), info_.memory_size,
          kMemoryFileHeaderSize));
    }
    // A snapshot interrupted after its commit point left its memory file pending: finish it.
    TRY(roll_forward_memory_file(path, info_.memory_size, info_.snapshot_id));
    Fd fd = TRY(open_memory_file(path, info_.memory_size, info_.snapshot_id));
    if (options_.lazy) {
      config_.memory_file = vmm::MemoryFileBacking{fd.get(), kMemoryFileHeaderSize};
      vm_ = TRY_CTX(vmm::Vm::create(config_), "creating the VM to restore into");
    } else {
      vm_ = TRY_CTX(vmm::Vm::create(config_), "creating the VM to restore into");
      TRY(read_memory_file(fd.get(), path, vm_->memory()));
    }
    return true;
  }

  const RestoreOptions& options_;
  StreamOrigin origin_;
  std::optional<StreamContents> contents_;  // the stream being read
  vmm::VmConfig config_;
  std::string directory_ = ".";
  std::unique_ptr<vmm::Vm> vm_;
  std::unique_ptr<vmm::Vm> prepared_;
  StreamInfo info_;
  std::map<int, std::vector<Record>> records_;
  std::map<unsigned, PendingVcpu> vcpus_;
};

}  // namespace

// Cap'n Proto readers throw on a malformed message (a bad pointer in a record whose checksum is
// right, as only a crafted file has): that is bad input, reported like any other.
template <typename F>
auto catching_malformed(const std::string& name, F&& body) -> decltype(body()) {
  try {
    return body();
  } catch (const kj::Exception& e) {
    return Error::user(fmt::format("{}: malformed record: {}", sanitize_text(name),
                                   sanitize_text(e.getDescription().cStr())));
  } catch (const std::exception& e) {
    return Error::user(
        fmt::format("{}: malformed record: {}", sanitize_text(name), sanitize_text(e.what())));
  }
}

Result<std::unique_ptr<vmm::Vm>> restore_vm(RecordReader& reader, const RestoreOptions& options,
                                            StreamInfo* info, std::unique_ptr<vmm::Vm> prepared) {
  return catching_malformed(reader.name(), [&]() -> Result<std::unique_ptr<vmm::Vm>> {
    Restorer restorer(options, StreamOrigin::kPeer);
    if (prepared) restorer.prepare(std::move(prepared));
    TRY(restorer.read(reader));
    std::unique_ptr<vmm::Vm> vm = TRY(restorer.finish());
    if (info) *info = restorer.info();
    return vm;
  });
}

Result<std::unique_ptr<vmm::Vm>> restore_snapshot(const std::vector<std::string>& chain,
                                                  const RestoreOptions& options, StreamInfo* info) {
  if (chain.empty()) return Error::user("no snapshot file given");
  std::string name = fmt::format("snapshot {}", chain.back());
  return catching_malformed(name, [&]() -> Result<std::unique_ptr<vmm::Vm>> {
    Restorer restorer(options, StreamOrigin::kFile);
    for (const std::string& path : chain) {
      std::unique_ptr<FileSource> source = TRY(FileSource::open(path));
      RecordReader reader(*source, fmt::format("snapshot {}", path));
      size_t slash = path.rfind('/');
      TRY(restorer.read(reader, slash == std::string::npos ? "."
                                : slash == 0               ? ""
                                                           : path.substr(0, slash)));
    }
    std::unique_ptr<vmm::Vm> vm = TRY(restorer.finish());
    if (info) *info = restorer.info();
    return vm;
  });
}

}  // namespace vmctl::state
