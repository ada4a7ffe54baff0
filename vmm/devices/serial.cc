#include "vmm/devices/serial.h"

namespace vmctl::vmm {
namespace {

// Register offsets (DLAB selects the divisor latch at 0 and 1).
constexpr uint16_t kData = 0, kIer = 1, kIirFcr = 2, kLcr = 3, kMcr = 4, kLsr = 5, kMsr = 6,
                   kScr = 7;
constexpr uint8_t kLcrDlab = 0x80;
constexpr uint8_t kIerRxData = 0x01, kIerThre = 0x02;
constexpr uint8_t kIirNone = 0x01, kIirThre = 0x02, kIirRxData = 0x04, kIirFifoEnabled = 0xc0;
constexpr uint8_t kFcrEnable = 0x01, kFcrClearRx = 0x02;
constexpr uint8_t kLsrDataReady = 0x01, kLsrThre = 0x20, kLsrTemt = 0x40;
constexpr uint8_t kMcrOut2 = 0x08, kMcrLoop = 0x10;
constexpr uint8_t kMsrCts = 0x10, kMsrDsr = 0x20, kMsrRi = 0x40, kMsrDcd = 0x80;

}  // namespace

Serial8250::Serial8250(IrqLine irq, OutputSink output)
    : irq_(std::move(irq)), output_(std::move(output)) {}

void Serial8250::read(uint16_t offset, uint8_t* data, size_t size) {
  std::unique_lock lock(mu_);
  uint8_t value = read_register(offset);
  for (size_t i = 0; i < size; ++i) data[i] = i == 0 ? value : 0;
  update_irq(lock);
}

void Serial8250::write(uint16_t offset, const uint8_t* data, size_t size) {
  if (size == 0) return;
  std::vector<uint8_t> output;
  std::unique_lock lock(mu_);
  write_register(offset, data[0], output);
  update_irq(lock);  // unlocks
  if (!output.empty() && output_) output_(output.data(), output.size());
}

uint8_t Serial8250::read_register(uint16_t offset) {
  switch (offset) {
    case kData:
      if (lcr_ & kLcrDlab) return dll_;
      if (rx_.empty()) return 0;
      {
        uint8_t byte = rx_.front();
        rx_.pop_front();
        return byte;
      }
    case kIer:
      return (lcr_ & kLcrDlab) ? dlm_ : ier_;
    case kIirFcr: {
      uint8_t iir = interrupt_identification();
      // Reading IIR while it reports "transmitter empty" acknowledges that interrupt.
      if ((iir & 0x0f) == kIirThre) thre_pending_ = false;
      return iir | ((fcr_ & kFcrEnable) ? kIirFifoEnabled : 0);
    }
    case kLcr:
      return lcr_;
    case kMcr:
      return mcr_;
    case kLsr:
      return (rx_.empty() ? 0 : kLsrDataReady) | kLsrThre | kLsrTemt;
    case kMsr:
      if (mcr_ & kMcrLoop) {
        // Loopback wires DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD.
        return ((mcr_ & 0x01) ? kMsrDsr : 0) | ((mcr_ & 0x02) ? kMsrCts : 0) |
               ((mcr_ & 0x04) ? kMsrRi : 0) | ((mcr_ & 0x08) ? kMsrDcd : 0);
      }
      return kMsrCts | kMsrDsr | kMsrDcd;
    case kScr:
      return scr_;
    default:
      return 0xff;
  }
}

void Serial8250::write_register(uint16_t offset, uint8_t value, std::vector<uint8_t>& output) {
  switch (offset) {
    case kData:
      if (lcr_ & kLcrDlab) {
        dll_ = value;
      } else if (mcr_ & kMcrLoop) {
        if (rx_.size() < kInputCapacity) rx_.push_back(value);
        thre_pending_ = true;
      } else {
        output.push_back(value);
        thre_pending_ = true;
      }
      break;
    case kIer:
      if (lcr_ & kLcrDlab) {
        dlm_ = value;
      } else {
        // Enabling the THRE interrupt while the transmitter is empty raises it at once; Linux's
        // driver relies on this to start transmission.
        if ((value & kIerThre) && !(ier_ & kIerThre)) thre_pending_ = true;
        ier_ = value & 0x0f;
      }
      break;
    case kIirFcr:
      if (value & kFcrClearRx) rx_.clear();
      fcr_ = value & 0xc9;  // enable, DMA mode and trigger level persist; clear bits do not
      break;
    case kLcr:
      lcr_ = value;
      break;
    case kMcr:
      mcr_ = value & 0x1f;
      break;
    case kScr:
      scr_ = value;
      break;
    default:
      break;  // LSR and MSR are read-only
  }
}

uint8_t Serial8250::interrupt_identification() const {
  if ((ier_ & kIerRxData) && !rx_.empty()) return kIirRxData;
  if ((ier_ & kIerThre) && thre_pending_) return kIirThre;
  return kIirNone;
}

bool Serial8250::irq_level() const {
  // On the PC the UART's interrupt reaches the PIC only through OUT2.
  return interrupt_identification() != kIirNone && (mcr_ & kMcrOut2);
}

void Serial8250::update_irq(std::unique_lock<std::mutex>& lock) {
  bool level = irq_level();
  bool changed = level != irq_raised_;
  irq_raised_ = level;
  lock.unlock();
  if (changed && irq_) irq_(level);
}

void Serial8250::enqueue_input(const uint8_t* data, size_t len) {
  std::unique_lock lock(mu_);
  for (size_t i = 0; i < len; ++i) {
    if (rx_.size() < kInputCapacity) {
      rx_.push_back(data[i]);
    } else {
      ++dropped_;
    }
  }
  update_irq(lock);
}

uint64_t Serial8250::dropped_input_bytes() const {
  std::lock_guard lock(mu_);
  return dropped_;
}

Serial8250State Serial8250::save() const {
  std::lock_guard lock(mu_);
  Serial8250State state;
  state.ier = ier_;
  state.lcr = lcr_;
  state.mcr = mcr_;
  state.scr = scr_;
  state.dll = dll_;
  state.dlm = dlm_;
  state.fcr = fcr_;
  state.thre_pending = thre_pending_;
  state.rx_fifo.assign(rx_.begin(), rx_.end());
  return state;
}

void Serial8250::restore(const Serial8250State& state) {
  std::unique_lock lock(mu_);
  ier_ = state.ier & 0x0f;
  lcr_ = state.lcr;
  mcr_ = state.mcr & 0x1f;
  scr_ = state.scr;
  dll_ = state.dll;
  dlm_ = state.dlm;
  fcr_ = state.fcr;
  thre_pending_ = state.thre_pending;
  rx_.assign(state.rx_fifo.begin(), state.rx_fifo.end());
  if (rx_.size() > kInputCapacity) rx_.resize(kInputCapacity);
  // The restored line level must reach the irqchip even if this object last saw the same level.
  irq_raised_ = !irq_level();
  update_irq(lock);
}

}  // namespace vmctl::vmm
