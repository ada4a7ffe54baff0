#include "vmm/vlapic/user_irqchip.h"

#include <time.h>
#include <x86intrin.h>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace vmctl::vmm::vlapic {
namespace {

constexpr uint64_t kPage = 4096;

uint64_t monotonic_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000ull + static_cast<uint64_t>(ts.tv_nsec);
}

}  // namespace

GuestTime HostGuestClock::now() const {
  GuestTime t;
  t.ns = monotonic_ns();
  t.tsc = static_cast<uint64_t>(static_cast<int64_t>(__rdtsc()) + offset_);
  return t;
}

void HostGuestClock::calibrate(uint64_t guest_tsc, uint64_t host_tsc, uint64_t tsc_hz) {
  offset_ = static_cast<int64_t>(guest_tsc - host_tsc);
  if (tsc_hz) tsc_hz_ = tsc_hz;
}

UserIrqchip::UserIrqchip(unsigned vcpus) {
  for (unsigned i = 0; i < vcpus; ++i) {
    auto v = std::make_unique<PerVcpu>();
    // APIC IDs are the vCPU indexes (what the MP table says, vmm/boot); vCPU 0 is the BSP.
    v->apic = std::make_unique<LocalApic>(LocalApicConfig{i, i == 0, false}, clock_);
    // LINT0 to the PIC (ExtINT) and LINT1 to NMI, as the MP table says (virtual wire mode) and
    // as Vcpu::configure wires KVM's LAPIC: the two implementations start alike.
    for (auto [offset, delivery] : {std::pair{0x350u, 0x700u}, std::pair{0x360u, 0x400u}}) {
      // (A write while the APIC is software-disabled masks the pin: only where it changes.)
      if ((v->apic->lvt(offset) & 0x700u) == delivery) continue;
      uint32_t value = (v->apic->lvt(offset) & ~0x700u) | delivery;
      v->apic->write_mmio(offset, &value, sizeof value);
    }
    bus_.attach(*v->apic);
    vcpus_.push_back(std::move(v));
  }
}

UserIrqchip::~UserIrqchip() {
  stop();
}

void UserIrqchip::stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    kick_ = nullptr;
  }
  timer_cv_.notify_all();
  if (timer_.joinable()) timer_.join();
}

std::vector<uint32_t> UserIrqchip::filtered_msrs() {
  return {kMsrApicBase, kMsrTscDeadline};
}

void UserIrqchip::start(std::function<void(unsigned)> kick, uint64_t guest_tsc, uint64_t host_tsc,
                        uint64_t tsc_hz) {
  {
    std::lock_guard lock(mu_);
    kick_ = std::move(kick);
    clock_.calibrate(guest_tsc, host_tsc, tsc_hz);
  }
  if (!timer_.joinable()) timer_ = std::thread([this] { timer_loop(); });
}

void UserIrqchip::timer_loop() {
  pthread_setname_np(pthread_self(), "lapic-timers");
  std::unique_lock lock(mu_);
  while (!stopping_) {
    std::optional<uint64_t> earliest;
    for (unsigned i = 0; i < vcpus_.size(); ++i) {
      LocalApic& apic = *vcpus_[i]->apic;
      bool had = apic.pending_interrupt().has_value();
      apic.on_time();
      // A timer that fired: the vCPU must come out of the guest (or its HLT) to take it.
      if (!had && apic.pending_interrupt()) notify(i, true);
      if (std::optional<uint64_t> d = apic.next_timer_deadline_ns()) {
        earliest = earliest ? std::min(*earliest, *d) : *d;
      }
    }
    if (!earliest) {
      timer_cv_.wait(lock);
      continue;
    }
    uint64_t now = monotonic_ns();
    if (*earliest > now) {
      timer_cv_.wait_for(lock, std::chrono::nanoseconds(*earliest - now));
    }
  }
}

void UserIrqchip::notify(unsigned index, bool kick) {
  PerVcpu& v = *vcpus_[index];
  v.cv.notify_all();
  if (kick && kick_) kick_(index);
}

UserIrqchip::Wake UserIrqchip::wait_runnable(unsigned index) {
  PerVcpu& v = *vcpus_[index];
  std::unique_lock lock(mu_);
  while (true) {
    if (v.control_wake) {
      v.control_wake = false;
      return {Wake::Kind::kControl, 0};
    }
    LocalApic& apic = *v.apic;
    apic.on_time();
    if (std::optional<uint64_t> start = apic.take_sipi()) {
      v.halted = false;
      return {Wake::Kind::kStart, *start};
    }
    // take_nmi() consumes: put it back for prepare_entry() to inject.
    const bool nmi = apic.take_nmi();
    if (nmi) apic.receive_nmi();
    if (apic.mp_state() == MpState::kRunnable && (!v.halted || apic.pending_interrupt() || nmi)) {
      v.halted = false;
      return {Wake::Kind::kRun, 0};
    }
    v.cv.wait(lock);
  }
}

void UserIrqchip::halt(unsigned index) {
  std::lock_guard lock(mu_);
  vcpus_[index]->halted = true;
}

void UserIrqchip::wake_for_control(unsigned index) {
  std::lock_guard lock(mu_);
  vcpus_[index]->control_wake = true;
  vcpus_[index]->cv.notify_all();
}

Status UserIrqchip::prepare_entry(unsigned index, kvm::VcpuFd& fd) {
  std::lock_guard lock(mu_);
  LocalApic& apic = *vcpus_[index]->apic;
  kvm_run* run = fd.run_struct();
  apic.on_time();
  if (apic.take_nmi()) TRY(fd.nmi());
  std::optional<uint8_t> vector = apic.pending_interrupt();
  if (vector && run->ready_for_interrupt_injection) {
    TRY(fd.interrupt(*vector));
    apic.acknowledge(*vector);
    vector = apic.pending_interrupt();
  }
  // More to deliver: KVM exits (KVM_EXIT_IRQ_WINDOW_OPEN) as soon as the guest can take it.
  run->request_interrupt_window = vector ? 1 : 0;
  run->cr8 = apic.cr8();
  return ok_status();
}

void UserIrqchip::after_exit(unsigned index, const kvm_run& run) {
  std::lock_guard lock(mu_);
  vcpus_[index]->apic->set_cr8(run.cr8);
}

bool UserIrqchip::mmio(unsigned index, uint64_t address, uint8_t* data, size_t len, bool write) {
  std::lock_guard lock(mu_);
  LocalApic& apic = *vcpus_[index]->apic;
  if (apic.mode() != ApicMode::kXapic || address < apic.mmio_base() ||
      address >= apic.mmio_base() + kPage) {
    return false;
  }
  uint64_t offset = address - apic.mmio_base();
  if (!write) {
    apic.read_mmio(offset, data, len);
    return true;
  }
  std::optional<uint64_t> deadline = apic.next_timer_deadline_ns();
  apply(index, apic.write_mmio(offset, data, len), deadline);
  return true;
}

bool UserIrqchip::rdmsr(unsigned index, uint32_t msr, uint64_t* value) {
  std::lock_guard lock(mu_);
  std::optional<uint64_t> v = vcpus_[index]->apic->read_msr(msr);
  if (!v) return false;
  *value = *v;
  return true;
}

bool UserIrqchip::wrmsr(unsigned index, uint32_t msr, uint64_t value) {
  std::lock_guard lock(mu_);
  LocalApic& apic = *vcpus_[index]->apic;
  std::optional<uint64_t> deadline = apic.next_timer_deadline_ns();
  std::optional<ApicWriteEffect> effect = apic.write_msr(msr, value);
  if (!effect) return false;
  apply(index, *effect, deadline);
  return true;
}

void UserIrqchip::apply(unsigned index, const ApicWriteEffect& effect,
                        std::optional<uint64_t> deadline_before) {
  // The timer thread looks again only when this APIC's deadline moved (not on every EOI or TPR
  // write, which are the hot ones).
  if (vcpus_[index]->apic->next_timer_deadline_ns() != deadline_before) timer_cv_.notify_all();
  if (!effect.ipi) return;
  DeliveryReport report = bus_.send(*vcpus_[index]->apic, *effect.ipi);
  for (uint32_t id : report.initial_ids) {
    // A self-IPI is taken at this vCPU's next entry; others may be in the guest right now.
    if (id < vcpus_.size()) notify(id, id != index);
  }
  // level_eoi: there is no IOAPIC behind this LAPIC yet; nothing waits for a level EOI.
}

uint32_t UserIrqchip::kvm_mp_state(unsigned index) {
  std::lock_guard lock(mu_);
  const PerVcpu& v = *vcpus_[index];
  if (v.apic->mp_state() == MpState::kWaitForSipi) return KVM_MP_STATE_INIT_RECEIVED;
  return v.halted ? KVM_MP_STATE_HALTED : KVM_MP_STATE_RUNNABLE;
}

Status UserIrqchip::set_kvm_mp_state(unsigned index, uint32_t mp_state) {
  std::lock_guard lock(mu_);
  PerVcpu& v = *vcpus_[index];
  switch (mp_state) {
    case KVM_MP_STATE_RUNNABLE:
      v.apic->set_mp_state(MpState::kRunnable);
      v.halted = false;
      return ok_status();
    case KVM_MP_STATE_HALTED:
      // Resumed as running, just past its HLT (KVM advanced RIP before it halted): the saved
      // vCPU events may hold an interrupt KVM had already taken from its LAPIC, which only a
      // vCPU that enters the guest receives. A guest sees a wake-up from HLT, which it must
      // allow for anyway.
      v.apic->set_mp_state(MpState::kRunnable);
      v.halted = false;
      return ok_status();
    case KVM_MP_STATE_UNINITIALIZED:
    case KVM_MP_STATE_INIT_RECEIVED:
      v.apic->set_mp_state(MpState::kWaitForSipi);
      v.halted = false;
      return ok_status();
    default:
      return Error::user(fmt::format(
          "vCPU {} was saved in MP state {} (between a SIPI and its start), which --irqchip user "
          "cannot resume: restore it with --irqchip kernel",
          index, mp_state));
  }
}

LapicSnapshot UserIrqchip::save(unsigned index) {
  std::lock_guard lock(mu_);
  return vcpus_[index]->apic->save_page(ApicIdFormat::kLegacy);
}

Status UserIrqchip::load(unsigned index, const kvm_lapic_state& page, uint64_t apic_base,
                         uint64_t tsc_deadline) {
  std::lock_guard lock(mu_);
  TRY(vcpus_[index]->apic->load_page(page, apic_base, tsc_deadline, ApicIdFormat::kLegacy));
  timer_cv_.notify_all();
  return ok_status();
}

}  // namespace vmctl::vmm::vlapic
