// Who models a VM's interrupt controllers: KVM's in-kernel irqchip (local APICs, IOAPIC, PIC) and
// PIT, or vmctl in userspace (vlapic/user_irqchip.h: the local APICs; no IOAPIC, PIC or PIT yet,
// so guests that need legacy interrupts need the kernel's).
#pragma once

#include <string>

#include "base/error.h"

namespace vmctl::vmm {

enum class IrqchipMode { kKernel, kUser };
const char* irqchip_mode_name(IrqchipMode mode);
// "kernel" or "user"; anything else is a one-line error naming both.
Result<IrqchipMode> parse_irqchip_mode(const std::string& text);

}  // namespace vmctl::vmm
