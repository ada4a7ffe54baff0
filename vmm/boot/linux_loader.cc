// Linux bzImage through the 64-bit boot protocol (Documentation/arch/x86/boot.rst): the
// protected-mode kernel is loaded at its preferred address and entered at +0x200 in long mode with
// identity-mapped page tables and a zero page (struct boot_params) in RSI.
#include <cstring>

#include <fmt/format.h>

#include "vmm/boot/loader_internal.h"

namespace vmctl::vmm::boot {
namespace {

// struct setup_header and struct boot_params offsets.
constexpr uint64_t kSetupSects = 0x1f1;
constexpr uint64_t kSetupHeaderStart = 0x1f1;
constexpr uint64_t kJumpOffset = 0x201;  // header length: 0x202 + this byte
constexpr uint64_t kHeaderMagic = 0x202;
constexpr uint64_t kVersion = 0x206;
constexpr uint64_t kVidMode = 0x1fa;
constexpr uint64_t kTypeOfLoader = 0x210;
constexpr uint64_t kLoadflags = 0x211;
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
constexpr uint64_t kExtRamdiskImage = 0x0c0;
constexpr uint64_t kExtRamdiskSize = 0x0c4;
constexpr uint64_t kExtCmdLinePtr = 0x0c8;
constexpr uint64_t kE820Entries = 0x1e8;
constexpr uint64_t kE820Table = 0x2d0;
constexpr size_t kE820Max = 128;
constexpr size_t kBootParamsSize = 4096;

constexpr uint32_t kHdrS = 0x53726448;  // "HdrS"
constexpr uint16_t kMinimumVersion = 0x206;
constexpr uint8_t kLoadedHigh = 0x01, kCanUseHeap = 0x80;
constexpr uint16_t kXlfKernel64 = 0x01;
constexpr uint64_t kEntry64Offset = 0x200;
constexpr uint64_t kDefaultLoadAddress = 0x1000000;  // 16 MiB, Linux's usual LOAD_PHYSICAL_ADDR
constexpr uint64_t kStackTop = 0x8ff0;  // in the free page between the zero page and the PML4

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

// PML4 -> one PDPT -> four page directories of 2 MiB pages: the low 4 GiB identity mapped.
Status write_identity_page_tables(GuestMemory& memory) {
  const uint64_t pml4 = kPml4Address, pdpt = pml4 + 0x1000, pd = pml4 + 0x2000;
  constexpr uint64_t kPresentWritable = 0x3, kLargePage = 0x80;
  std::vector<uint64_t> tables(6 * 512, 0);
  tables[0] = pdpt | kPresentWritable;
  for (uint64_t i = 0; i < 4; ++i) tables[512 + i] = (pd + i * 0x1000) | kPresentWritable;
  for (uint64_t i = 0; i < 2048; ++i) tables[1024 + i] = (i << 21) | kPresentWritable | kLargePage;
  return memory.write(pml4, tables.data(), tables.size() * sizeof(uint64_t));
}

}  // namespace

std::optional<Result<BootEntry>> try_load_linux(GuestMemory& memory, const BootImages& images,
                                                const BootConfig& config) {
  const std::vector<uint8_t>& k = images.kernel;
  if (k.size() < 0x268 || get<uint32_t>(k, kHeaderMagic) != kHdrS) return std::nullopt;
  auto load = [&]() -> Result<BootEntry> {
    const std::string& name = images.kernel_name;
    uint16_t version = get<uint16_t>(k, kVersion);
    if (version < kMinimumVersion) {
      return Error::user(
          fmt::format("{}: Linux boot protocol {}.{:02} is too old: 2.06 or newer is needed", name,
                      version >> 8, version & 0xff));
    }
    if (!(get<uint16_t>(k, kXloadflags) & kXlfKernel64) || !(k[kLoadflags] & kLoadedHigh)) {
      return Error::user(
          fmt::format("{}: only 64-bit kernels with the 64-bit entry point are supported", name));
    }
    uint64_t setup_sects = k[kSetupSects] ? k[kSetupSects] : 4;
    uint64_t kernel_offset = (setup_sects + 1) * 512;
    if (kernel_offset >= k.size()) {
      return Error::user(fmt::format("{}: truncated bzImage (no protected-mode kernel)", name));
    }
    uint64_t load_address = version >= 0x20a ? get<uint64_t>(k, kPrefAddress) : kDefaultLoadAddress;
    if (load_address < kKernelMinAddress) load_address = kDefaultLoadAddress;
    uint64_t payload = k.size() - kernel_offset;
    uint64_t init_size = version >= 0x20a ? get<uint32_t>(k, kInitSize) : 0;
    uint64_t footprint = std::max(payload, init_size);
    if (!memory.host_address(load_address, footprint)) {
      return Error::user(fmt::format(
          "{}: the kernel needs guest RAM at 0x{:x}-0x{:x} but the guest's low RAM ends at "
          "0x{:x}: give more --memory",
          name, load_address, load_address + footprint, memory.low_ram_end()));
    }
    TRY(memory.write(load_address, k.data() + kernel_offset, payload));

    uint32_t cmdline_size = version >= 0x206 ? get<uint32_t>(k, kCmdlineSize) : 255;
    if (config.cmdline.size() > cmdline_size) {
      return Error::user(fmt::format("the command line is {} bytes; {} accepts at most {}",
                                     config.cmdline.size(), name, cmdline_size));
    }

    // The zero page: the image's setup header copied in, then what the loader fills in.
    std::vector<uint8_t> params(kBootParamsSize, 0);
    uint64_t header_end = std::min<uint64_t>(0x202 + k[kJumpOffset], kBootParamsSize);
    header_end = std::min<uint64_t>(header_end, k.size());
    std::memcpy(params.data() + kSetupHeaderStart, k.data() + kSetupHeaderStart,
                header_end - kSetupHeaderStart);
    set<uint16_t>(params, kVidMode, 0xffff);  // "normal" text mode: no video setup
    params[kTypeOfLoader] = 0xff;             // undefined boot loader
    params[kLoadflags] |= kCanUseHeap;
    set<uint16_t>(params, kHeapEndPtr, 0xfe00);
    set<uint32_t>(params, kCmdLinePtr, static_cast<uint32_t>(kCmdlineAddress));
    set<uint32_t>(params, kExtCmdLinePtr, static_cast<uint32_t>(kCmdlineAddress >> 32));
    (void)kRelocatableKernel;

    if (images.initrd) {
      uint64_t max = get<uint32_t>(k, kInitrdAddrMax);
      if (max == 0) max = 0x37ffffff;
      uint64_t at = TRY(place_initrd(memory, *images.initrd, load_address + footprint, max + 1,
                                     images.initrd_name));
      set<uint32_t>(params, kRamdiskImage, static_cast<uint32_t>(at));
      set<uint32_t>(params, kRamdiskSize, static_cast<uint32_t>(images.initrd->size()));
      set<uint32_t>(params, kExtRamdiskImage, static_cast<uint32_t>(at >> 32));
      set<uint32_t>(params, kExtRamdiskSize, static_cast<uint32_t>(images.initrd->size() >> 32));
    }

    std::vector<E820Entry> map = build_e820(memory);
    if (map.size() > kE820Max) return Error::failure("too many e820 entries");
    params[kE820Entries] = static_cast<uint8_t>(map.size());
    for (size_t i = 0; i < map.size(); ++i) {
      uint64_t at = kE820Table + i * 20;
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
