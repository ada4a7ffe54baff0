// Port I/O devices and the bus that dispatches KVM_EXIT_IO to them.
//
// vCPU threads call into devices concurrently; each device guards its own state. A device raises
// interrupts through an IrqLine that the VM connects to the in-kernel irqchip (KVM_IRQ_LINE).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

namespace vmctl::vmm {

// A level-triggered interrupt line into the irqchip (ISA IRQ n = GSI n).
using IrqLine = std::function<void(bool level)>;

class PortIoDevice {
 public:
  virtual ~PortIoDevice() = default;
  // `offset` is relative to the device's base port; `size` is 1, 2 or 4.
  virtual void read(uint16_t offset, uint8_t* data, size_t size) = 0;
  virtual void write(uint16_t offset, const uint8_t* data, size_t size) = 0;
};

class PortIoBus {
 public:
  // Registers [base, base+count). Overlaps are a programming error (returns false).
  bool add(uint16_t base, uint16_t count, std::shared_ptr<PortIoDevice> device);
  // Unclaimed reads return all ones and unclaimed writes are dropped, as on real hardware.
  void read(uint16_t port, uint8_t* data, size_t size) const;
  void write(uint16_t port, const uint8_t* data, size_t size) const;

 private:
  struct Range {
    uint16_t base;
    uint16_t count;
    std::shared_ptr<PortIoDevice> device;
  };
  const Range* find(uint16_t port) const;
  std::vector<Range> ranges_;
};

}  // namespace vmctl::vmm
