// Loading a guest kernel into guest memory and describing how the boot vCPU must start.
//
// Supported images (the same set QEMU's -kernel accepts for x86 direct boot):
//   - ELF with a Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY): 32-bit protected mode, paging off,
//     EBX = guest physical address of a struct hvm_start_info (v1, with memory map and command
//     line).
//   - ELF (or flat image) with a multiboot v1 header in its first 8 KiB: 32-bit protected mode,
//     EAX = 0x2BADB002, EBX = multiboot info (with mmap and cmdline).
//   - Linux bzImage (boot protocol >= 2.06 with XLF_KERNEL_64): 64-bit entry with a zero page
//   (RSI),
//     identity-mapped page tables, e820, optional initrd.
// A PVH note wins over a multiboot header when an ELF has both.
//
// Every loader also writes an MP table (Intel MultiProcessor Spec 1.4) in the BIOS area so guests
// find the vCPUs and the IOAPIC without ACPI.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "base/error.h"
#include "vmm/memory.h"

namespace vmctl::vmm::boot {

// Fixed guest-physical layout used by the loaders (all below 1 MiB, inside RAM).
inline constexpr uint64_t kGdtAddress = 0x500;         // boot GDT (null, code64, data, code32)
inline constexpr uint64_t kStartInfoAddress = 0x6000;  // PVH start_info / multiboot info
inline constexpr uint64_t kZeroPageAddress = 0x7000;   // Linux boot_params
inline constexpr uint64_t kPml4Address = 0x9000;  // Linux identity page tables (PML4, PDPT, PDs)
inline constexpr uint64_t kCmdlineAddress = 0x20000;
inline constexpr uint64_t kCmdlineMax = 0x10000;         // 64 KiB
inline constexpr uint64_t kEbdaStart = 0x9fc00;          // start of the reserved area below 1 MiB
inline constexpr uint64_t kMpTableAddress = 0xf0000;     // MP floating pointer + config table
inline constexpr uint64_t kKernelMinAddress = 0x100000;  // 1 MiB

// GDT selectors the loaders install at kGdtAddress (both 32- and 64-bit entries use them).
inline constexpr uint16_t kCode64Selector = 0x08;
inline constexpr uint16_t kDataSelector = 0x10;
inline constexpr uint16_t kCode32Selector = 0x18;

enum class ImageKind { kPvhElf, kMultibootElf, kMultibootFlat, kLinuxBzImage };
const char* image_kind_name(ImageKind kind);

enum class CpuMode {
  kProtected32,  // flat 32-bit segments, CR0.PE, paging off
  kLong64,       // CR0.PE|PG, CR4.PAE, EFER.LME|LMA, CR3 = page_table_root, 64-bit code segment
};

// How the boot vCPU (vCPU 0) starts. Application processors start in the in-kernel LAPIC's
// wait-for-SIPI state and are woken by the guest itself.
struct BootEntry {
  ImageKind kind = ImageKind::kPvhElf;
  CpuMode mode = CpuMode::kProtected32;
  uint64_t rip = 0;
  uint64_t rsp = 0;
  uint64_t rax = 0;
  uint64_t rbx = 0;
  uint64_t rsi = 0;
  uint64_t page_table_root = 0;  // CR3, for kLong64
  uint64_t gdt_base = kGdtAddress;
  uint16_t gdt_limit = 0;
};

// One entry of the guest's physical memory map (e820 types).
struct E820Entry {
  uint64_t addr;
  uint64_t size;
  uint32_t type;  // 1 = RAM, 2 = reserved
};
inline constexpr uint32_t kE820Ram = 1;
inline constexpr uint32_t kE820Reserved = 2;

// The memory map every loader hands the guest: low RAM below the EBDA, reserved EBDA/BIOS area,
// RAM from 1 MiB to the MMIO hole, and RAM above 4 GiB when there is any.
std::vector<E820Entry> build_e820(const GuestMemory& memory);

struct BootConfig {
  std::string kernel_path;
  std::optional<std::string> initrd_path;
  std::string cmdline;
  unsigned num_cpus = 1;
};

// Detects the image kind, loads it and every boot table, and returns the boot vCPU's entry state.
// Errors are user errors naming the file and what is wrong with it ("... is not an ELF with a PVH
// note or multiboot header, nor a Linux bzImage").
Result<BootEntry> load_kernel(GuestMemory& memory, const BootConfig& config);

// Loads an image already in memory (the built-in demo guest); `name` is used in messages.
Result<BootEntry> load_kernel_image(GuestMemory& memory, const std::vector<uint8_t>& image,
                                    const std::string& name, const BootConfig& config);

// Writes the MP floating pointer and configuration table at kMpTableAddress: one processor entry
// per vCPU (APIC IDs 0..n-1, vCPU 0 is the BSP), an ISA bus, the IOAPIC (ID n, 0xFEC00000) and
// ISA IRQ n routed to IOAPIC pin n for n in 0..15, matching KVM's default GSI routing (IRQ 0
// included: KVM, unlike QEMU's own routing table, has no IRQ 0 -> pin 2 override).
Status write_mp_table(GuestMemory& memory, unsigned num_cpus);

}  // namespace vmctl::vmm::boot
