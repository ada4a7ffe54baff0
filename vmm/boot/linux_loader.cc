// Linux bzImage through the 64-bit boot protocol (Documentation/arch/x86/boot.rst): the
// protected-mode kernel is loaded at its preferred address and entered at +0x200 in long mode with
// identity-mapped page tables and a zero page (struct boot_params) in RSI.
#include <algorithm>
#include <cstring>

#include <fmt/format.h>

#include "vmm/boot/loader_internal.h"

namespace vmctl::vmm::boot {
namespace {

// struct setup_header fields, at the same offsets in the image and in struct boot_params.
constexpr uint64_t kSetupSects = 0x1f1;  // also where the setup header starts
constexpr uint64_t kVidMode = 0x1fa;
constexpr uint64_t kJumpOffset = 0x201;  // the header ends at 0x202 + this byte
constexpr uint64_t kHeaderMagic = 0x202;
constexpr uint64_t kVersion = 0x206;
constexpr uint64_t kTypeOfLoader = 0x210;
constexpr uint64_t kLoadflags = 0x211;
constexpr uint64_t kCode32Start = 0x214;
constexpr uint64_t kRamdiskImage = 0x218;
constexpr uint64_t kRamdiskSize = 0x21c;
constexpr uint64_t kHeapEndPtr = 0x224;
constexpr uint64_t kCmdLinePtr = 0x228;
constexpr uint64_t kInitrdAddrMax = 0x22c;
constexpr uint64_t kRelocatableKernel = 0x234;
constexpr uint64_t kXloadflags = 0x236;
constexpr uint64_t kCmdlineSize = 0x238;
constexpr uint64_t kPrefAddress = 0x258;
constexpr uint64_t kInitSize = 0x260;
constexpr uint64_t kHeaderMinimumEnd = 0x268;  // through init_size
// struct boot_params fields outside the setup header.
constexpr uint64_t kExtRamdiskImage = 0x0c0;
constexpr uint64_t kExtRamdiskSize = 0x0c4;
constexpr uint64_t kExtCmdLinePtr = 0x0c8;
constexpr uint64_t kE820Entries = 0x1e8;
constexpr uint64_t kE820Table = 0x2d0;
constexpr size_t kE820Max = 128;
constexpr size_t kE820EntrySize = 20;  // packed {u64 addr, u64 size, u32 type}
constexpr size_t kBootParamsSize = 4096;

constexpr uint32_t kHdrS = 0x53726448;  // "HdrS"
constexpr uint16_t kMinimumVersion = 0x206;
constexpr uint16_t kPrefAddressVersion = 0x20a;  // pref_address and init_size exist from 2.10
constexpr uint8_t kLoadedHigh = 0x01, kCanUseHeap = 0x80;
constexpr uint16_t kXlfKernel64 = 0x01;
constexpr uint64_t kEntry64Offset = 0x200;
constexpr uint64_t kDefaultLoadAddress = 0x1000000;     // 16 MiB, Linux's usual LOAD_PHYSICAL_ADDR
constexpr uint32_t kDefaultInitrdAddrMax = 0x37ffffff;  // protocols before 2.03
constexpr uint64_t kStackTop = 0x8ff0;  // in the free page between the zero page and the PML4
static_assert(kStackTop > kZeroPageAddress + kBootParamsSize && kStackTop < kPml4Address);

template <typename T>
T get(const std::vector<uint8_t>& b, uint64_t off) {
  T v;
  std::memcpy(&v, b.data() + off, sizeof(T));
  return v;
}
template <typename T>
void set(std::vector<uint8_t>& b, uint64_t off, T v) {
  std::memcpy(b.data() + off, &v, sizeof(T));
}

// PML4 -> one PDPT -> four page directories of 2 MiB pages: the low 4 GiB identity mapped, which
// covers the kernel, the zero page, the command line and the initrd wherever they are.
Status write_identity_page_tables(GuestMemory& memory) {
  constexpr uint64_t kPdpt = kPml4Address + 0x1000, kPd = kPml4Address + 0x2000;
  constexpr uint64_t kPresentWritable = 0x3, kLargePage = 0x80;
  constexpr uint64_t kEntries = 512, kDirectories = 4;
  std::vector<uint64_t> tables((2 + kDirectories) * kEntries, 0);
  tables[0] = kPdpt | kPresentWritable;
  for (uint64_t i = 0; i < kDirectories; ++i) {
    tables[kEntries + i] = (kPd + i * 0x1000) | kPresentWritable;
  }
  for (uint64_t i = 0; i < kDirectories * kEntries; ++i) {
    tables[2 * kEntries + i] = (i << 21) | kPresentWritable | kLargePage;
  }
  static_assert(kPml4Address + (2 + kDirectories) * 0x1000 <= kCmdlineAddress);
  return memory.write(kPml4Address, tables.data(), tables.size() * sizeof(uint64_t));
}

Error too_little_memory(const std::string& name, uint64_t start, uint64_t len,
                        const GuestMemory& memory) {
  return Error::user(
      fmt::format("{}: the kernel needs guest RAM at 0x{:x}-0x{:x} but the guest's low RAM ends at "
                  "0x{:x}: give more --memory",
                  name, start, start + len, memory.low_ram_end()));
}

}  // namespace

std::optional<Result<BootEntry>> try_load_linux(GuestMemory& memory, const BootImages& images,
                                                const BootConfig& config) {
  const std::vector<uint8_t>& k = images.kernel;
  if (k.size() < kHeaderMinimumEnd || get<uint32_t>(k, kHeaderMagic) != kHdrS) return std::nullopt;
  auto load = [&]() -> Result<BootEntry> {
    const std::string& name = images.kernel_name;
    const uint16_t version = get<uint16_t>(k, kVersion);
    if (version < kMinimumVersion) {
      return Error::user(
          fmt::format("{}: Linux boot protocol {}.{:02} is too old: 2.06 or newer is needed", name,
                      version >> 8, version & 0xff));
    }
    // The 64-bit entry point (XLF_KERNEL_64, protocol 2.12) is the only one we enter: a 32-bit
    // entry would need the setup code's GDT and a different register contract.
    if (!(get<uint16_t>(k, kXloadflags) & kXlfKernel64) || !(k[kLoadflags] & kLoadedHigh)) {
      return Error::user(
          fmt::format("{}: only 64-bit kernels with the 64-bit entry point are supported", name));
    }
    const uint64_t setup_sects = k[kSetupSects] ? k[kSetupSects] : 4;
    const uint64_t kernel_offset = (setup_sects + 1) * 512;
    if (kernel_offset >= k.size()) {
      return Error::user(fmt::format("{}: truncated bzImage (no protected-mode kernel)", name));
    }
    const uint64_t payload = k.size() - kernel_offset;
    const bool has_pref_address = version >= kPrefAddressVersion;
    const uint64_t pref_address =
        has_pref_address ? get<uint64_t>(k, kPrefAddress) : kDefaultLoadAddress;
    const uint64_t init_size = has_pref_address ? get<uint32_t>(k, kInitSize) : 0;

    // A relocatable kernel runs where it is loaded, so load it where it prefers to run. A fixed
    // one is loaded at code32_start and decompresses itself to its link address (pref_address).
    const bool relocatable = k[kRelocatableKernel] != 0;
    uint64_t load_address, run_address;
    if (relocatable) {
      load_address = pref_address >= kKernelMinAddress ? pref_address : kDefaultLoadAddress;
      run_address = load_address;
    } else {
      load_address = get<uint32_t>(k, kCode32Start);
      if (load_address < kKernelMinAddress) {
        return Error::user(fmt::format(
            "{}: the kernel is not relocatable and asks to be loaded at 0x{:x}, below 1 MiB", name,
            load_address));
      }
      run_address = has_pref_address ? pref_address : load_address;
    }
    if (memory.host_address(load_address, payload) == nullptr) {
      return too_little_memory(name, load_address, payload, memory);
    }
    if (init_size != 0 && memory.host_address(run_address, init_size) == nullptr) {
      return too_little_memory(name, run_address, init_size, memory);
    }
    const uint64_t image_end = std::max(load_address + payload, run_address + init_size);

    const uint32_t cmdline_size = get<uint32_t>(k, kCmdlineSize);
    if (config.cmdline.size() > cmdline_size) {
      return Error::user(fmt::format("the kernel command line is {} bytes; {} accepts at most {}",
                                     config.cmdline.size(), name, cmdline_size));
    }
    TRY(memory.write(load_address, k.data() + kernel_offset, payload));

    // The zero page: the image's setup header copied in, then what the loader fills in.
    std::vector<uint8_t> params(kBootParamsSize, 0);
    const uint64_t header_end =
        std::min<uint64_t>({kHeaderMagic + k[kJumpOffset], kBootParamsSize, k.size()});
    std::memcpy(params.data() + kSetupSects, k.data() + kSetupSects, header_end - kSetupSects);
    set<uint16_t>(params, kVidMode, 0xffff);  // "normal": no video mode switch
    params[kTypeOfLoader] = 0xff;             // no registered boot loader id
    params[kLoadflags] |= kCanUseHeap;
    set<uint16_t>(params, kHeapEndPtr, 0xfe00);
    set<uint32_t>(params, kCmdLinePtr, static_cast<uint32_t>(kCmdlineAddress));
    set<uint32_t>(params, kExtCmdLinePtr, static_cast<uint32_t>(kCmdlineAddress >> 32));

    if (images.initrd) {
      uint64_t max = get<uint32_t>(k, kInitrdAddrMax);
      if (max == 0) max = kDefaultInitrdAddrMax;
      const uint64_t at =
          TRY(place_initrd(memory, *images.initrd, image_end, max + 1, images.initrd_name));
      const uint64_t size = images.initrd->size();
      set<uint32_t>(params, kRamdiskImage, static_cast<uint32_t>(at));
      set<uint32_t>(params, kRamdiskSize, static_cast<uint32_t>(size));
      set<uint32_t>(params, kExtRamdiskImage, static_cast<uint32_t>(at >> 32));
      set<uint32_t>(params, kExtRamdiskSize, static_cast<uint32_t>(size >> 32));
    }

    std::vector<E820Entry> map = build_e820(memory);
    if (map.size() > kE820Max) return Error::failure("too many e820 entries for the zero page");
    params[kE820Entries] = static_cast<uint8_t>(map.size());
    for (size_t i = 0; i < map.size(); ++i) {
      const uint64_t at = kE820Table + i * kE820EntrySize;
      set<uint64_t>(params, at, map[i].addr);
      set<uint64_t>(params, at + 8, map[i].size);
      set<uint32_t>(params, at + 16, map[i].type);
    }
    TRY(memory.write(kZeroPageAddress, params.data(), params.size()));
    TRY(write_identity_page_tables(memory));

    BootEntry entry;
    entry.kind = ImageKind::kLinuxBzImage;
    entry.mode = CpuMode::kLong64;
    entry.rip = load_address + kEntry64Offset;
    entry.rsp = kStackTop;
    entry.rsi = kZeroPageAddress;
    entry.page_table_root = kPml4Address;
    return entry;
  };
  return load();
}

}  // namespace vmctl::vmm::boot
