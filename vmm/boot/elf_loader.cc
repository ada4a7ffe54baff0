// ELF kernels with a Xen PVH entry note, and multiboot v1 kernels (ELF or flat a.out-kludge).
#include <elf.h>

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

// Where the PVH and multiboot info structures go (all inside the page at kStartInfoAddress and
// the next one).
constexpr uint64_t kMemmapAddress = kStartInfoAddress + 0x100;
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
  bool is64;
  uint64_t entry;
  std::vector<Segment> segments;
};

// Returns nullopt when the bytes are not an ELF at all; an error when it is one we cannot load.
std::optional<Result<ElfImage>> parse_elf(const std::vector<uint8_t>& bytes,
                                          const std::string& name) {
  if (bytes.size() < EI_NIDENT || std::memcmp(bytes.data(), ELFMAG, SELFMAG) != 0) {
    return std::nullopt;
  }
  auto bad = [&](const std::string& what) -> Result<ElfImage> {
    return Error::user(fmt::format("{} is not a loadable kernel ELF: {}", name, what));
  };
  ElfImage image;
  uint8_t elf_class = bytes[EI_CLASS];
  if (elf_class != ELFCLASS64 && elf_class != ELFCLASS32) return bad("unknown ELF class");
  if (bytes[EI_DATA] != ELFDATA2LSB) return bad("not little-endian");
  image.is64 = elf_class == ELFCLASS64;
  uint64_t phoff, phnum, phentsize;
  if (image.is64) {
    if (!in_file(bytes, 0, sizeof(Elf64_Ehdr))) return bad("truncated ELF header");
    auto eh = load<Elf64_Ehdr>(bytes, 0);
    if (eh.e_machine != EM_X86_64) return bad("not an x86-64 image");
    if (eh.e_type != ET_EXEC) return bad("not an executable (ET_EXEC) image");
    image.entry = eh.e_entry;
    phoff = eh.e_phoff, phnum = eh.e_phnum, phentsize = eh.e_phentsize;
    if (phentsize != sizeof(Elf64_Phdr)) return bad("unexpected program header size");
  } else {
    if (!in_file(bytes, 0, sizeof(Elf32_Ehdr))) return bad("truncated ELF header");
    auto eh = load<Elf32_Ehdr>(bytes, 0);
    if (eh.e_machine != EM_386 && eh.e_machine != EM_X86_64) return bad("not an x86 image");
    if (eh.e_type != ET_EXEC) return bad("not an executable (ET_EXEC) image");
    image.entry = eh.e_entry;
    phoff = eh.e_phoff, phnum = eh.e_phnum, phentsize = eh.e_phentsize;
    if (phentsize != sizeof(Elf32_Phdr)) return bad("unexpected program header size");
  }
  if (!in_file(bytes, phoff, phnum * phentsize)) return bad("program headers past end of file");
  for (uint64_t i = 0; i < phnum; ++i) {
    Segment s;
    if (image.is64) {
      auto ph = load<Elf64_Phdr>(bytes, phoff + i * phentsize);
      s = {ph.p_type, ph.p_offset, ph.p_paddr, ph.p_filesz, ph.p_memsz};
    } else {
      auto ph = load<Elf32_Phdr>(bytes, phoff + i * phentsize);
      s = {ph.p_type, ph.p_offset, ph.p_paddr, ph.p_filesz, ph.p_memsz};
    }
    if ((s.type == PT_LOAD || s.type == PT_NOTE) && !in_file(bytes, s.offset, s.filesz)) {
      return bad(fmt::format("segment {} lies past the end of the file", i));
    }
    if (s.type == PT_LOAD && s.filesz > s.memsz) return bad("segment file size > memory size");
    image.segments.push_back(s);
  }
  return image;
}

std::optional<uint64_t> find_pvh_entry(const std::vector<uint8_t>& bytes, const ElfImage& elf) {
  for (const Segment& s : elf.segments) {
    if (s.type != PT_NOTE) continue;
    uint64_t p = s.offset, end = s.offset + s.filesz;
    while (p + 12 <= end) {
      uint32_t namesz = load<uint32_t>(bytes, p), descsz = load<uint32_t>(bytes, p + 4),
               type = load<uint32_t>(bytes, p + 8);
      uint64_t name = p + 12, desc = name + ((namesz + 3ull) & ~3ull);
      uint64_t next = desc + ((descsz + 3ull) & ~3ull);
      if (next > end) break;
      if (type == kXenElfnotePhys32Entry && namesz == 4 &&
          std::memcmp(bytes.data() + name, "Xen", 4) == 0 && (descsz == 4 || descsz == 8)) {
        return descsz == 4 ? load<uint32_t>(bytes, desc) : load<uint64_t>(bytes, desc);
      }
      p = next;
    }
  }
  return std::nullopt;
}

Result<uint64_t> load_segments(GuestMemory& memory, const std::vector<uint8_t>& bytes,
                               const ElfImage& elf, const std::string& name) {
  uint64_t image_end = 0;
  for (const Segment& s : elf.segments) {
    if (s.type != PT_LOAD || s.memsz == 0) continue;
    if (s.paddr < kKernelMinAddress || !memory.host_address(s.paddr, s.memsz)) {
      return Error::user(fmt::format(
          "{}: segment at guest-physical 0x{:x} (+0x{:x}) is outside guest RAM from 1 MiB to "
          "0x{:x}: give more --memory or link the kernel higher",
          name, s.paddr, s.memsz, memory.low_ram_end()));
    }
    TRY(memory.write(s.paddr, bytes.data() + s.offset, s.filesz));
    std::memset(memory.host_address(s.paddr + s.filesz, s.memsz - s.filesz), 0, s.memsz - s.filesz);
    image_end = std::max(image_end, s.paddr + s.memsz);
  }
  if (image_end == 0) return Error::user(fmt::format("{}: ELF has no loadable segments", name));
  return image_end;
}

Status write_pvh_start_info(GuestMemory& memory,
                            std::optional<std::pair<uint64_t, uint64_t>> initrd) {
  std::vector<E820Entry> map = build_e820(memory);
  struct __attribute__((packed)) {
    uint32_t magic, version, flags, nr_modules;
    uint64_t modlist_paddr, cmdline_paddr, rsdp_paddr, memmap_paddr;
    uint32_t memmap_entries, reserved;
  } info{kPvhStartInfoMagic,
         1,
         0,
         0,
         0,
         kCmdlineAddress,
         0,
         kMemmapAddress,
         static_cast<uint32_t>(map.size()),
         0};
  static_assert(sizeof(info) == 56);
  if (initrd) {
    struct __attribute__((packed)) {
      uint64_t paddr, size, cmdline_paddr, reserved;
    } module{initrd->first, initrd->second, 0, 0};
    TRY(memory.write_obj(kModulesAddress, module));
    info.nr_modules = 1;
    info.modlist_paddr = kModulesAddress;
  }
  for (size_t i = 0; i < map.size(); ++i) {
    struct __attribute__((packed)) {
      uint64_t addr, size;
      uint32_t type, reserved;
    } entry{map[i].addr, map[i].size, map[i].type, 0};
    TRY(memory.write_obj(kMemmapAddress + i * sizeof(entry), entry));
  }
  return memory.write_obj(kStartInfoAddress, info);
}

Status write_multiboot_info(GuestMemory& memory,
                            std::optional<std::pair<uint64_t, uint64_t>> initrd) {
  std::vector<E820Entry> map = build_e820(memory);
  uint32_t mmap_length = 0;
  for (const E820Entry& e : map) {
    struct __attribute__((packed)) {
      uint32_t size;
      uint64_t addr, len;
      uint32_t type;
    } entry{20, e.addr, e.size, e.type};
    TRY(memory.write_obj(kMemmapAddress + mmap_length, entry));
    mmap_length += sizeof(entry);
  }
  struct __attribute__((packed)) {
    uint32_t flags, mem_lower, mem_upper, boot_device, cmdline, mods_count, mods_addr;
    uint32_t syms[4];
    uint32_t mmap_length, mmap_addr;
  } info{};
  info.flags = 1u << 0 | 1u << 2 | 1u << 6;  // MEM, CMDLINE, MMAP
  info.mem_lower = static_cast<uint32_t>(kEbdaStart / 1024);
  info.mem_upper = static_cast<uint32_t>((memory.low_ram_end() - kKernelMinAddress) / 1024);
  info.cmdline = static_cast<uint32_t>(kCmdlineAddress);
  info.mmap_length = mmap_length;
  info.mmap_addr = static_cast<uint32_t>(kMemmapAddress);
  if (initrd) {
    struct __attribute__((packed)) {
      uint32_t start, end, string, reserved;
    } module{static_cast<uint32_t>(initrd->first),
             static_cast<uint32_t>(initrd->first + initrd->second),
             static_cast<uint32_t>(kModuleNameAddress), 0};
    TRY(memory.write(kModuleNameAddress, "initrd", 7));
    TRY(memory.write_obj(kModulesAddress, module));
    info.flags |= 1u << 3;
    info.mods_count = 1;
    info.mods_addr = static_cast<uint32_t>(kModulesAddress);
  }
  return memory.write_obj(kStartInfoAddress, info);
}

Result<std::optional<std::pair<uint64_t, uint64_t>>> load_initrd(GuestMemory& memory,
                                                                 const BootImages& images,
                                                                 uint64_t image_end) {
  if (!images.initrd) return std::optional<std::pair<uint64_t, uint64_t>>();
  // 32-bit entry protocols: everything must stay below 4 GiB, which low RAM always is.
  uint64_t at = TRY(
      place_initrd(memory, *images.initrd, image_end, memory.low_ram_end(), images.initrd_name));
  return std::optional(std::pair<uint64_t, uint64_t>(at, images.initrd->size()));
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
  uint32_t header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr;
};

std::optional<MultibootHeader> find_multiboot_header(const std::vector<uint8_t>& bytes) {
  size_t limit = std::min(bytes.size(), kMultibootSearchBytes);
  for (size_t off = 0; off + 12 <= limit; off += 4) {
    uint32_t magic = load<uint32_t>(bytes, off);
    if (magic != kMultibootHeaderMagic) continue;
    uint32_t flags = load<uint32_t>(bytes, off + 4), check = load<uint32_t>(bytes, off + 8);
    if (static_cast<uint32_t>(magic + flags + check) != 0) continue;
    MultibootHeader h{off, flags, 0, 0, 0, 0, 0};
    if ((flags & kMultibootAoutKludge) && in_file(bytes, off, 32)) {
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

Result<uint64_t> load_aout_kludge(GuestMemory& memory, const std::vector<uint8_t>& bytes,
                                  const MultibootHeader& h, const std::string& name) {
  auto bad = [&](const std::string& what) -> Result<uint64_t> {
    return Error::user(fmt::format("{}: bad multiboot load addresses: {}", name, what));
  };
  if (h.header_addr < h.load_addr || h.header_addr - h.load_addr > h.offset) {
    return bad("header_addr is not inside the loaded image");
  }
  uint64_t file_start = h.offset - (h.header_addr - h.load_addr);
  uint64_t load_end = h.load_end_addr ? h.load_end_addr : h.load_addr + (bytes.size() - file_start);
  if (load_end < h.load_addr || !in_file(bytes, file_start, load_end - h.load_addr)) {
    return bad("load_end_addr lies past the end of the file");
  }
  uint64_t bss_end = h.bss_end_addr ? h.bss_end_addr : load_end;
  if (bss_end < load_end) return bad("bss_end_addr is below load_end_addr");
  if (h.load_addr < kKernelMinAddress || !memory.host_address(h.load_addr, bss_end - h.load_addr)) {
    return Error::user(fmt::format(
        "{}: image at guest-physical 0x{:x}-0x{:x} is outside guest RAM from 1 MiB to 0x{:x}", name,
        h.load_addr, bss_end, memory.low_ram_end()));
  }
  TRY(memory.write(h.load_addr, bytes.data() + file_start, load_end - h.load_addr));
  std::memset(memory.host_address(load_end, bss_end - load_end), 0, bss_end - load_end);
  return bss_end;
}

}  // namespace

std::optional<Result<BootEntry>> try_load_pvh(GuestMemory& memory, const BootImages& images,
                                              const BootConfig& config) {
  (void)config;
  auto parsed = parse_elf(images.kernel, images.kernel_name);
  if (!parsed) return std::nullopt;
  if (!parsed->ok()) {
    // Not loadable as ELF: a multiboot a.out kludge may still describe it.
    if (find_multiboot_header(images.kernel)) return std::nullopt;
    return Result<BootEntry>(std::move(*parsed).error());
  }
  const ElfImage& elf = parsed->value();
  std::optional<uint64_t> entry_point = find_pvh_entry(images.kernel, elf);
  if (!entry_point) return std::nullopt;
  auto load = [&]() -> Result<BootEntry> {
    uint64_t image_end = TRY(load_segments(memory, images.kernel, elf, images.kernel_name));
    auto initrd = TRY(load_initrd(memory, images, image_end));
    TRY(write_pvh_start_info(memory, initrd));
    BootEntry entry = protected_mode_entry(ImageKind::kPvhElf, *entry_point);
    entry.rbx = kStartInfoAddress;
    return entry;
  };
  return load();
}

std::optional<Result<BootEntry>> try_load_multiboot(GuestMemory& memory, const BootImages& images,
                                                    const BootConfig& config) {
  (void)config;
  std::optional<MultibootHeader> header = find_multiboot_header(images.kernel);
  if (!header) return std::nullopt;
  auto load = [&]() -> Result<BootEntry> {
    uint32_t unknown = header->flags & 0xffff & ~kMultibootKnownRequired;
    if (unknown) {
      return Error::user(fmt::format(
          "{}: the multiboot header requires features this loader does not provide (flags "
          "0x{:x})",
          images.kernel_name, unknown));
    }
    auto elf = parse_elf(images.kernel, images.kernel_name);
    bool is_elf = elf.has_value();
    uint64_t image_end, entry_point;
    if (header->flags & kMultibootAoutKludge) {
      image_end = TRY(load_aout_kludge(memory, images.kernel, *header, images.kernel_name));
      entry_point = header->entry_addr;
    } else {
      if (!is_elf) {
        return Error::user(fmt::format(
            "{}: multiboot image is neither ELF nor carries load addresses (a.out kludge)",
            images.kernel_name));
      }
      if (!elf->ok()) return std::move(*elf).error();
      image_end = TRY(load_segments(memory, images.kernel, elf->value(), images.kernel_name));
      entry_point = elf->value().entry;
    }
    auto initrd = TRY(load_initrd(memory, images, image_end));
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
