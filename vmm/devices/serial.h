// A 16550A UART (the PC's COM1): enough of the register model for Linux's 8250 driver and the
// test guests, with the transmitter always ready (output goes straight to a sink).
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <vector>

#include "vmm/devices/port_io.h"

namespace vmctl::vmm {

// The registers and receive FIFO a snapshot must carry. The transmitter has no state: bytes leave
// the moment the guest writes them.
struct Serial8250State {
  uint8_t ier = 0;
  uint8_t lcr = 0;
  uint8_t mcr = 0;
  uint8_t scr = 0;
  uint8_t dll = 0;
  uint8_t dlm = 0;
  uint8_t fcr = 0;
  bool thre_pending = false;
  std::vector<uint8_t> rx_fifo;
};

class Serial8250 : public PortIoDevice {
 public:
  using OutputSink = std::function<void(const uint8_t* data, size_t len)>;
  // Host input beyond this many unread bytes is dropped (and counted), as a real UART overruns.
  static constexpr size_t kInputCapacity = 4096;

  Serial8250(IrqLine irq, OutputSink output);

  void read(uint16_t offset, uint8_t* data, size_t size) override;
  void write(uint16_t offset, const uint8_t* data, size_t size) override;

  // Host to guest bytes (the console's stdin, a socket).
  void enqueue_input(const uint8_t* data, size_t len);
  uint64_t dropped_input_bytes() const;

  Serial8250State save() const;
  void restore(const Serial8250State& state);

 private:
  uint8_t read_register(uint16_t offset);
  void write_register(uint16_t offset, uint8_t value, std::vector<uint8_t>& output);
  uint8_t interrupt_identification() const;
  // Computes the IRQ level under the lock; the caller drives the line after unlocking.
  bool irq_level() const;
  void update_irq(std::unique_lock<std::mutex>& lock);

  IrqLine irq_;
  OutputSink output_;
  mutable std::mutex mu_;
  uint8_t ier_ = 0, lcr_ = 0, mcr_ = 0, scr_ = 0, dll_ = 0x0c, dlm_ = 0, fcr_ = 0;
  bool thre_pending_ = false;
  std::deque<uint8_t> rx_;
  uint64_t dropped_ = 0;
  bool irq_raised_ = false;
};

}  // namespace vmctl::vmm
