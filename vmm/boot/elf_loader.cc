// ELF kernels with a Xen PVH entry note, and multiboot v1 kernels (ELF or flat a.out-kludge).
#include <elf.h>

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

#include "vmm/boot/loader_internal.h"

namespace vmctl::vmm::boot {
namespace {

constexpr uint32_t kXenElfnotePhys32Entry = 18;
constexpr uint32_t kPvhStartInfoMagic = 0x336ec578;
constexpr uint32_t kMultibootHeaderMagic = 0x1badb002;
constexpr uint32_t kMultibootBootloaderMagic = 0x2badb002;
constexpr size_t kMultibootSearchBytes = 8192;
// Header flags a loader must understand (bits 0-15): 0 page-align modules, 1 memory info,
// 2 video mode (we have no framebuffer; the request is ignored, as QEMU does).
constexpr uint32_t kMultibootKnownRequired = 0x7;
constexpr uint32_t kMultibootAoutKludge = 1u << 16;
constexpr size_t kMultibootAoutHeaderSize = 32;

// struct hvm_start_info and friends (xen/include/public/arch-x86/hvm/start_info.h), version 1.
struct __attribute__((packed)) HvmStartInfo {
  uint32_t magic;
  uint32_t version;
  uint32_t flags;
  uint32_t nr_modules;
  uint64_t modlist_paddr;
  uint64_t cmdline_paddr;
  uint64_t rsdp_paddr;
  uint64_t memmap_paddr;
  uint32_t memmap_entries;
  uint32_t reserved;
};
struct __attribute__((packed)) HvmModlistEntry {
  uint64_t paddr;
  uint64_t size;
  uint64_t cmdline_paddr;
  uint64_t reserved;
};
struct __attribute__((packed)) HvmMemmapEntry {
  uint64_t addr;
  uint64_t size;
  uint32_t type;
  uint32_t reserved;
};
static_assert(sizeof(HvmStartInfo) == 56 && sizeof(HvmModlistEntry) == 32 &&
              sizeof(HvmMemmapEntry) == 24);

// The multiboot v1 information structure, complete so a kernel that peeks at fields we do not
// flag reads zeros rather than whatever follows.
struct __attribute__((packed)) MultibootInfo {
  uint32_t flags;
  uint32_t mem_lower, mem_upper;  // KiB below 640 KiB / above 1 MiB
  uint32_t boot_device;
  uint32_t cmdline;
  uint32_t mods_count, mods_addr;
  uint32_t syms[4];
  uint32_t mmap_length, mmap_addr;
  uint32_t drives_length, drives_addr;
  uint32_t config_table;
  uint32_t boot_loader_name;
  uint32_t apm_table;
  uint8_t vbe_and_framebuffer[120 - 72];
};
struct __attribute__((packed)) MultibootModule {
  uint32_t mod_start, mod_end, string, reserved;
};
// `size` does not count itself, hence 20 for a 24-byte entry.
struct __attribute__((packed)) MultibootMmapEntry {
  uint32_t size;
  uint64_t addr, len;
  uint32_t type;
};
static_assert(sizeof(MultibootInfo) == 120 && sizeof(MultibootModule) == 16 &&
              sizeof(MultibootMmapEntry) == 24);
constexpr uint32_t kMultibootInfoMem = 1u << 0, kMultibootInfoCmdline = 1u << 2,
                   kMultibootInfoMods = 1u << 3, kMultibootInfoMmap = 1u << 6;

// Layout of the info page(s) at kStartInfoAddress: the info structure, the memory map right after
// it, then the module list and the module name. A handful of e820 entries fits easily.
constexpr uint64_t kPvhMemmapAddress = kStartInfoAddress + sizeof(HvmStartInfo);
constexpr uint64_t kMultibootMmapAddress = kStartInfoAddress + sizeof(MultibootInfo);
constexpr uint64_t kModulesAddress = kStartInfoAddress + 0x800;
constexpr uint64_t kModuleNameAddress = kStartInfoAddress + 0x900;

template <typename T>
T load(const std::vector<uint8_t>& bytes, uint64_t offset) {
  T value;
  std::memcpy(&value, bytes.data() + offset, sizeof(T));
  return value;
}

bool in_file(const std::vector<uint8_t>& bytes, uint64_t offset, uint64_t len) {
  return offset <= bytes.size() && len <= bytes.size() - offset;
}

// A program header reduced to what loading needs (ELF32 and ELF64 alike).
struct Segment {
  uint32_t type;
  uint64_t offset, paddr, filesz, memsz;
};

struct ElfImage {
  uint16_t machine;
  uint16_t type;
  uint64_t entry;
  std::vector<Segment> segments;
};

Error elf_error(const std::string& name, const std::string& what) {
  return Error::user(fmt::format("{} is not a loadable kernel ELF: {}", name, what));
}

// Returns nullopt when the bytes are not an ELF at all and an error when the file is structurally
// broken. Whether it is an x86 executable is checked separately (check_kernel_elf), once we know
// the file claims to be a kernel: an arbitrary ELF should get the generic "not bootable" message.
std::optional<Result<ElfImage>> parse_elf(const std::vector<uint8_t>& bytes,
                                          const std::string& name) {
  if (bytes.size() < EI_NIDENT || std::memcmp(bytes.data(), ELFMAG, SELFMAG) != 0) {
    return std::nullopt;
  }
  using R = Result<ElfImage>;
  uint8_t elf_class = bytes[EI_CLASS];
  if (elf_class != ELFCLASS64 && elf_class != ELFCLASS32) return R(elf_error(name, "bad class"));
  if (bytes[EI_DATA] != ELFDATA2LSB) return R(elf_error(name, "not little-endian"));
  const bool is64 = elf_class == ELFCLASS64;
  ElfImage image;
  uint64_t phoff, phnum, phentsize, expected_phentsize;
  if (is64) {
    if (!in_file(bytes, 0, sizeof(Elf64_Ehdr))) return R(elf_error(name, "truncated header"));
    auto eh = load<Elf64_Ehdr>(bytes, 0);
    image.machine = eh.e_machine, image.type = eh.e_type, image.entry = eh.e_entry;
    phoff = eh.e_phoff, phnum = eh.e_phnum, phentsize = eh.e_phentsize;
    expected_phentsize = sizeof(Elf64_Phdr);
  } else {
    if (!in_file(bytes, 0, sizeof(Elf32_Ehdr))) return R(elf_error(name, "truncated header"));
    auto eh = load<Elf32_Ehdr>(bytes, 0);
    image.machine = eh.e_machine, image.type = eh.e_type, image.entry = eh.e_entry;
    phoff = eh.e_phoff, phnum = eh.e_phnum, phentsize = eh.e_phentsize;
    expected_phentsize = sizeof(Elf32_Phdr);
  }
  if (phnum != 0 && phentsize != expected_phentsize) {
    return R(elf_error(name, "unexpected program header size"));
  }
  if (!in_file(bytes, phoff, phnum * phentsize)) {
    return R(elf_error(name, "program headers lie past the end of the file"));
  }
  for (uint64_t i = 0; i < phnum; ++i) {
    Segment s;
    if (is64) {
      auto ph = load<Elf64_Phdr>(bytes, phoff + i * phentsize);
      s = {ph.p_type, ph.p_offset, ph.p_paddr, ph.p_filesz, ph.p_memsz};
    } else {
      auto ph = load<Elf32_Phdr>(bytes, phoff + i * phentsize);
      s = {ph.p_type, ph.p_offset, ph.p_paddr, ph.p_filesz, ph.p_memsz};
    }
    if ((s.type == PT_LOAD || s.type == PT_NOTE) && !in_file(bytes, s.offset, s.filesz)) {
      return R(elf_error(name, fmt::format("segment {} lies past the end of the file", i)));
    }
    if (s.type == PT_LOAD && s.filesz > s.memsz) {
      return R(elf_error(name, fmt::format("segment {} has a file size above its memory size", i)));
    }
    image.segments.push_back(s);
  }
  return image;
}

Status check_kernel_elf(const ElfImage& elf, const std::string& name) {
  if (elf.machine != EM_X86_64 && elf.machine != EM_386) {
    return elf_error(name, fmt::format("machine {} is not x86", elf.machine));
  }
  if (elf.type != ET_EXEC) return elf_error(name, "not an executable (ET_EXEC)");
  return ok_status();
}

// The PVH entry point from a "Xen" note of type XEN_ELFNOTE_PHYS32_ENTRY, if there is one.
std::optional<uint64_t> find_pvh_entry(const std::vector<uint8_t>& bytes, const ElfImage& elf) {
  for (const Segment& s : elf.segments) {
    if (s.type != PT_NOTE) continue;
    uint64_t p = s.offset;
    const uint64_t end = s.offset + s.filesz;
    while (end - p >= 12) {
      uint32_t namesz = load<uint32_t>(bytes, p), descsz = load<uint32_t>(bytes, p + 4),
               type = load<uint32_t>(bytes, p + 8);
      // Name and descriptor are each padded to 4 bytes; 64-bit sums cannot overflow here.
      uint64_t name = p + 12, desc = name + ((namesz + 3ull) & ~3ull);
      uint64_t next = desc + ((descsz + 3ull) & ~3ull);
      if (next > end) break;
      if (type == kXenElfnotePhys32Entry && namesz == 4 &&
          std::memcmp(bytes.data() + name, "Xen", 4) == 0) {
        // The ABI says 4 bytes; 64-bit Linux emits a pointer-sized (8-byte) field.
        if (descsz == 4) return load<uint32_t>(bytes, desc);
        if (descsz == 8) return load<uint64_t>(bytes, desc);
      }
      p = next;
    }
  }
  return std::nullopt;
}

// Copies the PT_LOAD segments to their physical addresses and zeroes their bss; returns the end
// of the highest one.
Result<uint64_t> load_segments(GuestMemory& memory, const std::vector<uint8_t>& bytes,
                               const ElfImage& elf, const std::string& name) {
  uint64_t image_end = 0;
  for (const Segment& s : elf.segments) {
    if (s.type != PT_LOAD || s.memsz == 0) continue;
    // Below 1 MiB live the boot tables (GDT, start info, cmdline, MP table): refuse to overwrite.
    if (s.paddr < kKernelMinAddress || memory.host_address(s.paddr, s.memsz) == nullptr) {
      return Error::user(fmt::format(
          "{}: segment at guest-physical 0x{:x}-0x{:x} is outside guest RAM from 1 MiB to "
          "0x{:x}: give more --memory or link the kernel at 1 MiB or above",
          name, s.paddr, s.paddr + s.memsz, memory.low_ram_end()));
    }
    TRY(memory.write(s.paddr, bytes.data() + s.offset, s.filesz));
    TRY(memory.fill(s.paddr + s.filesz, 0, s.memsz - s.filesz));
    image_end = std::max(image_end, s.paddr + s.memsz);
  }
  if (image_end == 0) return Error::user(fmt::format("{}: the ELF has nothing to load", name));
  return image_end;
}

struct LoadedInitrd {
  uint64_t address;
  uint64_t size;
};

// 32-bit entry protocols: the initrd must sit below 4 GiB, which all of low RAM is.
Result<std::optional<LoadedInitrd>> load_initrd(GuestMemory& memory, const BootImages& images,
                                                uint64_t image_end) {
  if (!images.initrd) return std::optional<LoadedInitrd>();
  uint64_t at = TRY(
      place_initrd(memory, *images.initrd, image_end, memory.low_ram_end(), images.initrd_name));
  return std::optional<LoadedInitrd>(LoadedInitrd{at, images.initrd->size()});
}

Status write_pvh_start_info(GuestMemory& memory, const std::optional<LoadedInitrd>& initrd) {
  std::vector<E820Entry> map = build_e820(memory);
  HvmStartInfo info{};
  info.magic = kPvhStartInfoMagic;
  info.version = 1;
  info.cmdline_paddr = kCmdlineAddress;
  info.memmap_paddr = kPvhMemmapAddress;
  info.memmap_entries = static_cast<uint32_t>(map.size());
  if (kPvhMemmapAddress + map.size() * sizeof(HvmMemmapEntry) > kModulesAddress) {
    return Error::failure("the PVH memory map does not fit in the start info page");
  }
  for (size_t i = 0; i < map.size(); ++i) {
    HvmMemmapEntry entry{map[i].addr, map[i].size, map[i].type, 0};
    TRY(memory.write_obj(kPvhMemmapAddress + i * sizeof(entry), entry));
  }
  if (initrd) {
    HvmModlistEntry module{initrd->address, initrd->size, 0, 0};
    TRY(memory.write_obj(kModulesAddress, module));
    info.nr_modules = 1;
    info.modlist_paddr = kModulesAddress;
  }
  return memory.write_obj(kStartInfoAddress, info);
}

Status write_multiboot_info(GuestMemory& memory, const std::optional<LoadedInitrd>& initrd) {
  std::vector<E820Entry> map = build_e820(memory);
  if (kMultibootMmapAddress + map.size() * sizeof(MultibootMmapEntry) > kModulesAddress) {
    return Error::failure("the multiboot memory map does not fit in the info page");
  }
  uint32_t mmap_length = 0;
  for (const E820Entry& e : map) {
    MultibootMmapEntry entry{sizeof(MultibootMmapEntry) - 4, e.addr, e.size, e.type};
    TRY(memory.write_obj(kMultibootMmapAddress + mmap_length, entry));
    mmap_length += sizeof(entry);
  }
  MultibootInfo info{};
  info.flags = kMultibootInfoMem | kMultibootInfoCmdline | kMultibootInfoMmap;
  info.mem_lower = static_cast<uint32_t>(kEbdaStart / 1024);
  // Up to the first hole above 1 MiB, i.e. the end of low RAM.
  info.mem_upper = static_cast<uint32_t>((memory.low_ram_end() - kKernelMinAddress) / 1024);
  info.cmdline = static_cast<uint32_t>(kCmdlineAddress);
  info.mmap_length = mmap_length;
  info.mmap_addr = static_cast<uint32_t>(kMultibootMmapAddress);
  if (initrd) {
    static constexpr char kName[] = "initrd";
    TRY(memory.write(kModuleNameAddress, kName, sizeof(kName)));
    MultibootModule module{static_cast<uint32_t>(initrd->address),
                           static_cast<uint32_t>(initrd->address + initrd->size),
                           static_cast<uint32_t>(kModuleNameAddress), 0};
    TRY(memory.write_obj(kModulesAddress, module));
    info.flags |= kMultibootInfoMods;
    info.mods_count = 1;
    info.mods_addr = static_cast<uint32_t>(kModulesAddress);
  }
  return memory.write_obj(kStartInfoAddress, info);
}

BootEntry protected_mode_entry(ImageKind kind, uint64_t rip) {
  BootEntry entry;
  entry.kind = kind;
  entry.mode = CpuMode::kProtected32;
  entry.rip = rip;
  return entry;
}

struct MultibootHeader {
  uint64_t offset;  // in the file
  uint32_t flags;
  // The a.out kludge fields, valid when flags has kMultibootAoutKludge.
  uint32_t header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr;
};

std::optional<MultibootHeader> find_multiboot_header(const std::vector<uint8_t>& bytes) {
  const size_t limit = std::min(bytes.size(), kMultibootSearchBytes);
  for (size_t off = 0; off + 12 <= limit; off += 4) {
    uint32_t magic = load<uint32_t>(bytes, off);
    if (magic != kMultibootHeaderMagic) continue;
    uint32_t flags = load<uint32_t>(bytes, off + 4), check = load<uint32_t>(bytes, off + 8);
    if (static_cast<uint32_t>(magic + flags + check) != 0) continue;
    MultibootHeader h{off, flags, 0, 0, 0, 0, 0};
    if ((flags & kMultibootAoutKludge) && in_file(bytes, off, kMultibootAoutHeaderSize)) {
      h.header_addr = load<uint32_t>(bytes, off + 12);
      h.load_addr = load<uint32_t>(bytes, off + 16);
      h.load_end_addr = load<uint32_t>(bytes, off + 20);
      h.bss_end_addr = load<uint32_t>(bytes, off + 24);
      h.entry_addr = load<uint32_t>(bytes, off + 28);
    }
    return h;
  }
  return std::nullopt;
}

// Loads the file as the a.out kludge fields describe: header_addr is where the header itself
// lands, which fixes the file offset that load_addr corresponds to.
Result<uint64_t> load_aout_kludge(GuestMemory& memory, const std::vector<uint8_t>& bytes,
                                  const MultibootHeader& h, const std::string& name) {
  auto bad = [&](const std::string& what) -> Result<uint64_t> {
    return Error::user(fmt::format("{}: bad multiboot load addresses: {}", name, what));
  };
  if (!in_file(bytes, h.offset, kMultibootAoutHeaderSize)) {
    return bad("the header is cut off by the end of the file");
  }
  if (h.header_addr < h.load_addr || h.header_addr - h.load_addr > h.offset) {
    return bad("header_addr is not inside the loaded image");
  }
  const uint64_t file_start = h.offset - (h.header_addr - h.load_addr);
  // load_end_addr 0 means "to the end of the file", bss_end_addr 0 means "no bss".
  const uint64_t load_end =
      h.load_end_addr ? h.load_end_addr : h.load_addr + (bytes.size() - file_start);
  if (load_end < h.load_addr || !in_file(bytes, file_start, load_end - h.load_addr)) {
    return bad("load_end_addr lies past the end of the file");
  }
  const uint64_t bss_end = h.bss_end_addr ? h.bss_end_addr : load_end;
  if (bss_end < load_end) return bad("bss_end_addr is below load_end_addr");
  if (h.load_addr < kKernelMinAddress ||
      memory.host_address(h.load_addr, bss_end - h.load_addr) == nullptr) {
    return Error::user(fmt::format(
        "{}: image at guest-physical 0x{:x}-0x{:x} is outside guest RAM from 1 MiB to 0x{:x}", name,
        h.load_addr, bss_end, memory.low_ram_end()));
  }
  TRY(memory.write(h.load_addr, bytes.data() + file_start, load_end - h.load_addr));
  TRY(memory.fill(load_end, 0, bss_end - load_end));
  return bss_end;
}

}  // namespace

std::optional<Result<BootEntry>> try_load_pvh(GuestMemory& memory, const BootImages& images,
                                              const BootConfig& /*config*/) {
  auto parsed = parse_elf(images.kernel, images.kernel_name);
  if (!parsed) return std::nullopt;
  if (!parsed->ok()) {
    // A broken ELF may still be a multiboot kernel loaded through the a.out kludge; otherwise the
    // structural problem is the most useful thing to report.
    if (find_multiboot_header(images.kernel)) return std::nullopt;
    return Result<BootEntry>(std::move(*parsed).error());
  }
  const ElfImage& elf = parsed->value();
  std::optional<uint64_t> entry_point = find_pvh_entry(images.kernel, elf);
  if (!entry_point) return std::nullopt;
  auto load = [&]() -> Result<BootEntry> {
    TRY(check_kernel_elf(elf, images.kernel_name));
    uint64_t image_end = TRY(load_segments(memory, images.kernel, elf, images.kernel_name));
    std::optional<LoadedInitrd> initrd = TRY(load_initrd(memory, images, image_end));
    TRY(write_pvh_start_info(memory, initrd));
    BootEntry entry = protected_mode_entry(ImageKind::kPvhElf, *entry_point);
    entry.rbx = kStartInfoAddress;
    return entry;
  };
  return load();
}

std::optional<Result<BootEntry>> try_load_multiboot(GuestMemory& memory, const BootImages& images,
                                                    const BootConfig& /*config*/) {
  std::optional<MultibootHeader> header = find_multiboot_header(images.kernel);
  if (!header) return std::nullopt;
  auto load = [&]() -> Result<BootEntry> {
    const std::string& name = images.kernel_name;
    uint32_t unknown = header->flags & 0xffff & ~kMultibootKnownRequired;
    if (unknown != 0) {
      return Error::user(fmt::format(
          "{}: the multiboot header requires features this loader does not provide (flags "
          "0x{:x})",
          name, unknown));
    }
    auto elf = parse_elf(images.kernel, name);
    const bool is_elf = elf.has_value();
    uint64_t image_end, entry_point;
    if (header->flags & kMultibootAoutKludge) {
      // The kludge addresses win even for ELF files: that is what the kernel asked for.
      image_end = TRY(load_aout_kludge(memory, images.kernel, *header, name));
      entry_point = header->entry_addr;
    } else {
      if (!is_elf) {
        return Error::user(fmt::format(
            "{}: the multiboot image is not an ELF and has no load addresses (a.out kludge)",
            name));
      }
      if (!elf->ok()) return std::move(*elf).error();
      TRY(check_kernel_elf(elf->value(), name));
      image_end = TRY(load_segments(memory, images.kernel, elf->value(), name));
      entry_point = elf->value().entry;
    }
    std::optional<LoadedInitrd> initrd = TRY(load_initrd(memory, images, image_end));
    TRY(write_multiboot_info(memory, initrd));
    BootEntry entry = protected_mode_entry(
        is_elf ? ImageKind::kMultibootElf : ImageKind::kMultibootFlat, entry_point);
    entry.rax = kMultibootBootloaderMagic;
    entry.rbx = kStartInfoAddress;
    return entry;
  };
  return load();
}

}  // namespace vmctl::vmm::boot
