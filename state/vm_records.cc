#include "state/vm_records.h"

#include <algorithm>
#include <cstring>
#include <optional>

#include <capnp/message.h>
#include <fmt/format.h>

#include "proto/state.capnp.h"
#include "state/user_irqchip_state.h"
#include "vmm/devices/cmos_rtc.h"
#include "vmm/devices/serial.h"
#include "vmm/vlapic/user_irqchip.h"

namespace vmctl::state {
namespace {

namespace ps = proto::state;

void pic_to_record(const kvm_pic_state& p, ps::Pic::Builder out) {
  out.setLastIrr(p.last_irr);
  out.setIrr(p.irr);
  out.setImr(p.imr);
  out.setIsr(p.isr);
  out.setPriorityAdd(p.priority_add);
  out.setIrqBase(p.irq_base);
  out.setReadRegSelect(p.read_reg_select);
  out.setPoll(p.poll);
  out.setSpecialMask(p.special_mask);
  out.setInitState(p.init_state);
  out.setAutoEoi(p.auto_eoi);
  out.setRotateOnAutoEoi(p.rotate_on_auto_eoi);
  out.setSpecialFullyNestedMode(p.special_fully_nested_mode);
  out.setInit4(p.init4);
  out.setElcr(p.elcr);
  out.setElcrMask(p.elcr_mask);
}

kvm_pic_state pic_from_record(ps::Pic::Reader in) {
  kvm_pic_state p{};
  p.last_irr = in.getLastIrr();
  p.irr = in.getIrr();
  p.imr = in.getImr();
  p.isr = in.getIsr();
  p.priority_add = in.getPriorityAdd();
  p.irq_base = in.getIrqBase();
  p.read_reg_select = in.getReadRegSelect();
  p.poll = in.getPoll();
  p.special_mask = in.getSpecialMask();
  p.init_state = in.getInitState();
  p.auto_eoi = in.getAutoEoi();
  p.rotate_on_auto_eoi = in.getRotateOnAutoEoi();
  p.special_fully_nested_mode = in.getSpecialFullyNestedMode();
  p.init4 = in.getInit4();
  p.elcr = in.getElcr();
  p.elcr_mask = in.getElcrMask();
  return p;
}

}  // namespace

Status write_vm_records(vmm::Vm& vm, RecordWriter& writer) {
  vmm::kvm::VmFd& fd = vm.vm_fd();
  {
    capnp::MallocMessageBuilder message;
    auto chip = message.initRoot<ps::Irqchip>();
    // A VM with the userspace irqchip has no IOAPIC or PIC: they are saved masked, in their
    // reset state (user_irqchip_state.h).
    const bool user = vm.user_irqchip() != nullptr;
    kvm_irqchip master = user ? reset_pic(true) : TRY(fd.get_irqchip(KVM_IRQCHIP_PIC_MASTER));
    kvm_irqchip slave = user ? reset_pic(false) : TRY(fd.get_irqchip(KVM_IRQCHIP_PIC_SLAVE));
    kvm_irqchip ioapic = user ? reset_ioapic() : TRY(fd.get_irqchip(KVM_IRQCHIP_IOAPIC));
    pic_to_record(master.chip.pic, chip.initPicMaster());
    pic_to_record(slave.chip.pic, chip.initPicSlave());
    auto io = chip.initIoapic();
    io.setBaseAddress(ioapic.chip.ioapic.base_address);
    io.setIoregsel(ioapic.chip.ioapic.ioregsel);
    io.setId(ioapic.chip.ioapic.id);
    io.setIrr(ioapic.chip.ioapic.irr);
    auto redir = io.initRedirection(KVM_IOAPIC_NUM_PINS);
    for (unsigned i = 0; i < KVM_IOAPIC_NUM_PINS; ++i) {
      redir.set(i, ioapic.chip.ioapic.redirtbl[i].bits);
    }
    TRY(writer.write(ps::RecordType::IRQCHIP, message));
  }
  {
    capnp::MallocMessageBuilder message;
    auto pit = message.initRoot<ps::Pit>();
    kvm_pit_state2 state = vm.user_irqchip() ? reset_pit() : TRY(fd.get_pit2());
    pit.setFlags(state.flags);
    auto channels = pit.initChannels(3);
    for (unsigned i = 0; i < 3; ++i) {
      const kvm_pit_channel_state& c = state.channels[i];
      auto out = channels[i];
      out.setCount(c.count);
      out.setLatchedCount(c.latched_count);
      out.setCountLatched(c.count_latched);
      out.setStatusLatched(c.status_latched);
      out.setStatus(c.status);
      out.setReadState(c.read_state);
      out.setWriteState(c.write_state);
      out.setWriteLatch(c.write_latch);
      out.setRwMode(c.rw_mode);
      out.setMode(c.mode);
      out.setBcd(c.bcd);
      out.setGate(c.gate);
      out.setCountLoadTime(c.count_load_time);
    }
    TRY(writer.write(ps::RecordType::PIT, message));
  }
  {
    capnp::MallocMessageBuilder message;
    auto clock = message.initRoot<ps::Clock>();
    kvm_clock_data data = TRY(fd.get_clock());
    clock.setClock(data.clock);
    clock.setFlags(data.flags);
    clock.setRealtime(data.realtime);
    clock.setHostTsc(data.host_tsc);
    TRY(writer.write(ps::RecordType::CLOCK, message));
  }
  {
    capnp::MallocMessageBuilder message;
    auto device = message.initRoot<ps::Device>();
    device.setName("serial8250@0x3f8");
    vmm::Serial8250State s = vm.serial().save();
    auto out = device.initSerial8250();
    out.setIer(s.ier);
    out.setLcr(s.lcr);
    out.setMcr(s.mcr);
    out.setScr(s.scr);
    out.setDll(s.dll);
    out.setDlm(s.dlm);
    out.setFcr(s.fcr);
    out.setThrePending(s.thre_pending);
    out.setRxFifo(kj::arrayPtr(s.rx_fifo.data(), s.rx_fifo.size()));
    TRY(writer.write(ps::RecordType::DEVICE, message));
  }
  {
    capnp::MallocMessageBuilder message;
    auto device = message.initRoot<ps::Device>();
    device.setName("cmos-rtc@0x70");
    vmm::CmosRtcState s = vm.rtc().save();
    auto out = device.initCmosRtc();
    out.setBytes(kj::arrayPtr(s.bytes.data(), s.bytes.size()));
    out.setIndex(s.index);
    TRY(writer.write(ps::RecordType::DEVICE, message));
  }
  return ok_status();
}

Status restore_vm_records(vmm::Vm& vm, const std::map<int, std::vector<Record>>& records) {
  vmm::kvm::VmFd& fd = vm.vm_fd();
  auto find = [&](ps::RecordType t) -> const std::vector<Record>* {
    auto it = records.find(static_cast<int>(t));
    return it == records.end() ? nullptr : &it->second;
  };
  // Under --irqchip user the snapshot's IOAPIC, PIC and PIT have nowhere to go; they are checked
  // to be unused and dropped (user_irqchip_state.h).
  const bool user = vm.user_irqchip() != nullptr;
  std::optional<kvm_pit_state2> pit_state;
  if (auto* pits = find(ps::RecordType::PIT)) {
    auto msg = pits->front().message();
    auto pit = msg->getRoot<ps::Pit>();
    kvm_pit_state2 state{};
    state.flags = pit.getFlags();
    for (unsigned i = 0; i < pit.getChannels().size() && i < 3; ++i) {
      auto c = pit.getChannels()[i];
      kvm_pit_channel_state& s = state.channels[i];
      s.count = c.getCount();
      s.latched_count = c.getLatchedCount();
      s.count_latched = c.getCountLatched();
      s.status_latched = c.getStatusLatched();
      s.status = c.getStatus();
      s.read_state = c.getReadState();
      s.write_state = c.getWriteState();
      s.write_latch = c.getWriteLatch();
      s.rw_mode = c.getRwMode();
      s.mode = c.getMode();
      s.bcd = c.getBcd();
      s.gate = c.getGate();
      s.count_load_time = c.getCountLoadTime();
    }
    pit_state = state;
    if (!user) TRY_CTX(fd.set_pit2(state), "restoring the PIT");
  }
  if (auto* clocks = find(ps::RecordType::CLOCK)) {
    auto msg = clocks->front().message();
    auto clock = msg->getRoot<ps::Clock>();
    kvm_clock_data data{};
    data.clock = clock.getClock();
    // The guest's clock resumes where it was saved: time spent in the file is not guest time.
    data.flags = 0;
    TRY_CTX(fd.set_clock(data), "restoring kvmclock");
  }
  if (auto* chips = find(ps::RecordType::IRQCHIP)) {
    auto msg = chips->front().message();
    auto chip = msg->getRoot<ps::Irqchip>();
    kvm_irqchip master{}, slave{}, ioapic{};
    master.chip_id = KVM_IRQCHIP_PIC_MASTER;
    master.chip.pic = pic_from_record(chip.getPicMaster());
    slave.chip_id = KVM_IRQCHIP_PIC_SLAVE;
    slave.chip.pic = pic_from_record(chip.getPicSlave());
    ioapic.chip_id = KVM_IRQCHIP_IOAPIC;
    auto io = chip.getIoapic();
    ioapic.chip.ioapic.base_address = io.getBaseAddress();
    ioapic.chip.ioapic.ioregsel = io.getIoregsel();
    ioapic.chip.ioapic.id = io.getId();
    ioapic.chip.ioapic.irr = io.getIrr();
    for (unsigned i = 0; i < io.getRedirection().size() && i < KVM_IOAPIC_NUM_PINS; ++i) {
      ioapic.chip.ioapic.redirtbl[i].bits = io.getRedirection()[i];
    }
    if (user) {
      TRY(check_legacy_devices_unused(ioapic, pit_state.value_or(reset_pit())));
    } else {
      TRY_CTX(fd.set_irqchip(master), "restoring the master PIC");
      TRY_CTX(fd.set_irqchip(slave), "restoring the slave PIC");
      TRY_CTX(fd.set_irqchip(ioapic), "restoring the IOAPIC");
    }
  }
  if (auto* devices = find(ps::RecordType::DEVICE)) {
    for (const Record& r : *devices) {
      auto msg = r.message();
      auto device = msg->getRoot<ps::Device>();
      if (device.isSerial8250()) {
        auto s = device.getSerial8250();
        vmm::Serial8250State state;
        state.ier = s.getIer();
        state.lcr = s.getLcr();
        state.mcr = s.getMcr();
        state.scr = s.getScr();
        state.dll = s.getDll();
        state.dlm = s.getDlm();
        state.fcr = s.getFcr();
        state.thre_pending = s.getThrePending();
        state.rx_fifo.assign(s.getRxFifo().begin(), s.getRxFifo().end());
        vm.serial().restore(state);
      } else if (device.isCmosRtc()) {
        auto c = device.getCmosRtc();
        vmm::CmosRtcState state;
        auto bytes = c.getBytes();
        std::memcpy(state.bytes.data(), bytes.begin(), std::min<size_t>(bytes.size(), 128));
        state.index = c.getIndex();
        vm.rtc().restore(state);
      }
      // Devices this version does not know come from a newer minor version: skip them.
    }
  }
  return ok_status();
}

}  // namespace vmctl::state
