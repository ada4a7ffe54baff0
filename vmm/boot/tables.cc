// Boot tables every loader writes: the boot GDT, the e820 map and the MP table.
#include <algorithm>
#include <cstring>

#include <fmt/format.h>

#include "vmm/boot/boot.h"
#include "vmm/boot/loader_internal.h"

namespace vmctl::vmm::boot {
namespace {

constexpr uint64_t kMiB = 1 << 20;
constexpr uint32_t kLocalApicAddress = 0xfee00000;
constexpr uint32_t kIoApicAddress = 0xfec00000;

uint8_t checksum(const uint8_t* bytes, size_t len) {
  uint8_t sum = 0;
  for (size_t i = 0; i < len; ++i) sum = static_cast<uint8_t>(sum + bytes[i]);
  return static_cast<uint8_t>(-sum);
}

void put(std::vector<uint8_t>& out, const void* data, size_t len) {
  const auto* p = static_cast<const uint8_t*>(data);
  out.insert(out.end(), p, p + len);
}

// MultiProcessor Specification 1.4 structures (packed, little endian).
struct __attribute__((packed)) MpFloatingPointer {
  char signature[4];
  uint32_t config_table;
  uint8_t length_paragraphs;
  uint8_t spec_rev;
  uint8_t checksum;
  uint8_t features[5];
};
struct __attribute__((packed)) MpConfigHeader {
  char signature[4];
  uint16_t base_length;
  uint8_t spec_rev;
  uint8_t checksum;
  char oem_id[8];
  char product_id[12];
  uint32_t oem_table;
  uint16_t oem_table_size;
  uint16_t entry_count;
  uint32_t local_apic;
  uint16_t extended_length;
  uint8_t extended_checksum;
  uint8_t reserved;
};
struct __attribute__((packed)) MpProcessor {
  uint8_t type;  // 0
  uint8_t apic_id;
  uint8_t apic_version;
  uint8_t cpu_flags;  // bit 0 enabled, bit 1 bootstrap processor
  uint32_t signature;
  uint32_t feature_flags;
  uint32_t reserved[2];
};
struct __attribute__((packed)) MpBus {
  uint8_t type;  // 1
  uint8_t bus_id;
  char bus_type[6];
};
struct __attribute__((packed)) MpIoApic {
  uint8_t type;  // 2
  uint8_t apic_id;
  uint8_t version;
  uint8_t flags;  // bit 0 enabled
  uint32_t address;
};
struct __attribute__((packed)) MpInterrupt {
  uint8_t type;            // 3 I/O interrupt, 4 local interrupt
  uint8_t interrupt_type;  // 0 INT, 1 NMI, 2 SMI, 3 ExtINT
  uint16_t flags;          // polarity/trigger; 0 = conforming to the bus
  uint8_t source_bus;
  uint8_t source_irq;
  uint8_t dest_apic;
  uint8_t dest_pin;
};
static_assert(sizeof(MpFloatingPointer) == 16 && sizeof(MpConfigHeader) == 44 &&
              sizeof(MpProcessor) == 20 && sizeof(MpBus) == 8 && sizeof(MpIoApic) == 8 &&
              sizeof(MpInterrupt) == 8);

}  // namespace

const char* image_kind_name(ImageKind kind) {
  switch (kind) {
    case ImageKind::kPvhElf:
      return "ELF (PVH entry)";
    case ImageKind::kMultibootElf:
      return "ELF (multiboot)";
    case ImageKind::kMultibootFlat:
      return "flat multiboot image";
    case ImageKind::kLinuxBzImage:
      return "Linux bzImage";
  }
  return "unknown";
}

std::vector<E820Entry> build_e820(const GuestMemory& memory) {
  std::vector<E820Entry> map;
  map.push_back({0, kEbdaStart, kE820Ram});
  map.push_back({kEbdaStart, kKernelMinAddress - kEbdaStart, kE820Reserved});
  for (const MemoryRegion& region : memory.regions()) {
    uint64_t start = std::max<uint64_t>(region.guest_phys, kKernelMinAddress);
    if (region.end() > start) map.push_back({start, region.end() - start, kE820Ram});
  }
  return map;
}

Status write_boot_gdt(GuestMemory& memory, BootEntry& entry) {
  const uint64_t gdt[4] = {
      0,
      0x00af9b000000ffff,  // 0x08: 64-bit code, accessed
      0x00cf93000000ffff,  // 0x10: flat data, accessed
      0x00cf9b000000ffff,  // 0x18: flat 32-bit code, accessed
  };
  TRY(memory.write(kGdtAddress, gdt, sizeof(gdt)));
  entry.gdt_base = kGdtAddress;
  entry.gdt_limit = sizeof(gdt) - 1;
  return ok_status();
}

Status write_mp_table(GuestMemory& memory, unsigned num_cpus) {
  if (num_cpus == 0 || num_cpus > 254) {
    return Error::user(fmt::format("the MP table can describe 1 to 254 CPUs, not {}", num_cpus));
  }
  const uint64_t config_address = kMpTableAddress + sizeof(MpFloatingPointer);
  const uint8_t ioapic_id = static_cast<uint8_t>(num_cpus);

  std::vector<uint8_t> entries;
  uint16_t count = 0;
  for (unsigned i = 0; i < num_cpus; ++i) {
    MpProcessor cpu{};
    cpu.type = 0;
    cpu.apic_id = static_cast<uint8_t>(i);
    cpu.apic_version = 0x14;
    cpu.cpu_flags = 0x01 | (i == 0 ? 0x02 : 0);
    cpu.signature = 0x600;
    cpu.feature_flags = 0x201;  // FPU, APIC
    put(entries, &cpu, sizeof(cpu));
    ++count;
  }
  MpBus bus{1, 0, {'I', 'S', 'A', ' ', ' ', ' '}};
  put(entries, &bus, sizeof(bus));
  ++count;
  MpIoApic ioapic{2, ioapic_id, 0x11, 0x01, kIoApicAddress};
  put(entries, &ioapic, sizeof(ioapic));
  ++count;
  // KVM's default GSI routing (kvm_setup_default_irq_routing) sends GSI n to PIC input n and
  // IOAPIC pin n for n < 16, and the in-kernel PIT raises GSI 0: so ISA IRQ 0 is on pin 0 here.
  // (The PC convention of IRQ 0 on pin 2 comes from QEMU installing its own routing table.)
  for (uint8_t irq = 0; irq < 16; ++irq) {
    MpInterrupt route{3, 0, 0, 0, irq, ioapic_id, irq};
    put(entries, &route, sizeof(route));
    ++count;
  }
  MpInterrupt lint0{4, 3, 0, 0, 0, 0xff, 0};  // ExtINT on LINT0 of every CPU
  MpInterrupt lint1{4, 1, 0, 0, 0, 0xff, 1};  // NMI on LINT1
  put(entries, &lint0, sizeof(lint0));
  put(entries, &lint1, sizeof(lint1));
  count += 2;

  MpConfigHeader header{};
  std::memcpy(header.signature, "PCMP", 4);
  header.base_length = static_cast<uint16_t>(sizeof(header) + entries.size());
  header.spec_rev = 4;
  std::memcpy(header.oem_id, "VMCTL   ", 8);
  std::memcpy(header.product_id, "VMCTL VM    ", 12);
  header.entry_count = count;
  header.local_apic = kLocalApicAddress;
  std::vector<uint8_t> table;
  put(table, &header, sizeof(header));
  table.insert(table.end(), entries.begin(), entries.end());
  table[7] = checksum(table.data(), table.size());

  MpFloatingPointer pointer{};
  std::memcpy(pointer.signature, "_MP_", 4);
  pointer.config_table = static_cast<uint32_t>(config_address);
  pointer.length_paragraphs = 1;
  pointer.spec_rev = 4;
  pointer.checksum = checksum(reinterpret_cast<uint8_t*>(&pointer), sizeof(pointer));

  if (config_address + table.size() > kKernelMinAddress) {
    return Error::failure("MP table does not fit below 1 MiB");
  }
  TRY(memory.write(kMpTableAddress, &pointer, sizeof(pointer)));
  TRY(memory.write(config_address, table.data(), table.size()));
  return ok_status();
}

Status write_cmdline(GuestMemory& memory, const std::string& cmdline) {
  if (cmdline.size() + 1 > kCmdlineMax) {
    return Error::user(fmt::format("the kernel command line is {} bytes; at most {} fit",
                                   cmdline.size(), kCmdlineMax - 1));
  }
  TRY(memory.write(kCmdlineAddress, cmdline.c_str(), cmdline.size() + 1));
  return ok_status();
}

Result<uint64_t> place_initrd(GuestMemory& memory, const std::vector<uint8_t>& initrd,
                              uint64_t lowest, uint64_t highest_end, const std::string& name) {
  constexpr uint64_t kPage = 4096;
  uint64_t top = std::min(memory.low_ram_end(), highest_end) & ~(kPage - 1);
  uint64_t size = (initrd.size() + kPage - 1) & ~(kPage - 1);
  if (size > top || top - size < lowest) {
    return Error::user(fmt::format(
        "initrd {} ({} MiB) does not fit in guest memory below {} MiB next to the kernel: give "
        "the VM more --memory",
        name, initrd.size() / kMiB, top / kMiB));
  }
  uint64_t address = top - size;
  TRY(memory.write(address, initrd.data(), initrd.size()));
  return address;
}

}  // namespace vmctl::vmm::boot
