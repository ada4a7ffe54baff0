// Helpers shared by the loaders in vmm/boot/ (not part of the boot interface).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "vmm/boot/boot.h"

namespace vmctl::vmm::boot {

// The files a loader works from: the kernel image, the initrd (if any) and names for messages.
struct BootImages {
  const std::vector<uint8_t>& kernel;
  const std::string& kernel_name;
  const std::optional<std::vector<uint8_t>>& initrd;
  const std::string& initrd_name;
};

Status write_boot_gdt(GuestMemory& memory, BootEntry& entry);
Status write_cmdline(GuestMemory& memory, const std::string& cmdline);
// Copies the initrd page-aligned to the top of low RAM below `highest_end`, above `lowest`.
Result<uint64_t> place_initrd(GuestMemory& memory, const std::vector<uint8_t>& initrd,
                              uint64_t lowest, uint64_t highest_end, const std::string& name);

// Each returns std::nullopt when the image is not of its kind, or the loaded entry / an error.
std::optional<Result<BootEntry>> try_load_linux(GuestMemory& memory, const BootImages& images,
                                                const BootConfig& config);
std::optional<Result<BootEntry>> try_load_pvh(GuestMemory& memory, const BootImages& images,
                                              const BootConfig& config);
std::optional<Result<BootEntry>> try_load_multiboot(GuestMemory& memory, const BootImages& images,
                                                    const BootConfig& config);

}  // namespace vmctl::vmm::boot
