// Loader tests on synthetic images: what lands in guest memory and how the boot vCPU starts.
#include <elf.h>

#include <gtest/gtest.h>

#include <cstring>
#include <fstream>

#include "vmm/boot/boot.h"

namespace vmctl::vmm::boot {
namespace {

constexpr uint64_t kMiB = 1 << 20;

GuestMemory make_memory(uint64_t size = 64 * kMiB) {
  Result<GuestMemory> memory = GuestMemory::create(size);
  EXPECT_TRUE(memory.ok()) << memory.error().message();
  return std::move(memory).value();
}

template <typename T>
void put(std::vector<uint8_t>& b, size_t at, const T& v) {
  if (b.size() < at + sizeof(T)) b.resize(at + sizeof(T));
  std::memcpy(b.data() + at, &v, sizeof(T));
}

template <typename T>
T peek(const GuestMemory& m, uint64_t gpa) {
  Result<T> v = m.read_obj<T>(gpa);
  EXPECT_TRUE(v.ok());
  return v.ok() ? v.value() : T{};
}

struct TestSegment {
  uint64_t paddr;
  std::vector<uint8_t> bytes;
  uint64_t memsz;
};

// An ELF64 executable with the given PT_LOAD segments and, optionally, a PVH entry note.
std::vector<uint8_t> make_elf(const std::vector<TestSegment>& segments,
                              std::optional<uint32_t> pvh_entry, uint64_t e_entry = 0x100000) {
  std::vector<uint8_t> file(0x1000, 0);
  Elf64_Ehdr eh{};
  std::memcpy(eh.e_ident, ELFMAG, SELFMAG);
  eh.e_ident[EI_CLASS] = ELFCLASS64;
  eh.e_ident[EI_DATA] = ELFDATA2LSB;
  eh.e_ident[EI_VERSION] = EV_CURRENT;
  eh.e_type = ET_EXEC;
  eh.e_machine = EM_X86_64;
  eh.e_version = EV_CURRENT;
  eh.e_entry = e_entry;
  eh.e_phoff = sizeof(Elf64_Ehdr);
  eh.e_ehsize = sizeof(Elf64_Ehdr);
  eh.e_phentsize = sizeof(Elf64_Phdr);
  eh.e_phnum = static_cast<uint16_t>(segments.size() + (pvh_entry ? 1 : 0));
  put(file, 0, eh);
  size_t ph = sizeof(Elf64_Ehdr);
  uint64_t data_at = 0x1000;
  for (const TestSegment& s : segments) {
    Elf64_Phdr p{};
    p.p_type = PT_LOAD;
    p.p_offset = data_at;
    p.p_paddr = p.p_vaddr = s.paddr;
    p.p_filesz = s.bytes.size();
    p.p_memsz = s.memsz;
    put(file, ph, p);
    ph += sizeof(p);
    file.resize(data_at + s.bytes.size());
    std::memcpy(file.data() + data_at, s.bytes.data(), s.bytes.size());
    data_at = (file.size() + 15) & ~15ull;
  }
  if (pvh_entry) {
    Elf64_Phdr p{};
    p.p_type = PT_NOTE;
    p.p_offset = data_at;
    p.p_filesz = 20;
    put(file, ph, p);
    file.resize(data_at + 20);
    put<uint32_t>(file, data_at, 4);
    put<uint32_t>(file, data_at + 4, 4);
    put<uint32_t>(file, data_at + 8, 18);
    std::memcpy(file.data() + data_at + 12, "Xen", 4);
    put<uint32_t>(file, data_at + 16, *pvh_entry);
  }
  return file;
}

Result<BootEntry> load(GuestMemory& m, const std::vector<uint8_t>& image,
                       const std::string& cmdline = "", unsigned cpus = 1) {
  BootConfig config;
  config.cmdline = cmdline;
  config.num_cpus = cpus;
  return load_kernel_image(m, image, "test-image", config);
}

TEST(PvhLoader, LoadsSegmentsZeroesBssAndPassesStartInfo) {
  GuestMemory m = make_memory();
  std::vector<uint8_t> text(100, 0xaa), data(50, 0xbb);
  auto image = make_elf({{0x100000, text, 100}, {0x200000, data, 0x3000}}, 0x100010);
  // Dirty the bss area first: the loader must zero it.
  std::vector<uint8_t> junk(0x3000, 0xcc);
  ASSERT_TRUE(m.write(0x200000, junk.data(), junk.size()).ok());

  Result<BootEntry> entry = load(m, image, "hello=1");
  ASSERT_TRUE(entry.ok()) << entry.error().message();
  EXPECT_EQ(entry->kind, ImageKind::kPvhElf);
  EXPECT_EQ(entry->mode, CpuMode::kProtected32);
  EXPECT_EQ(entry->rip, 0x100010u);
  EXPECT_EQ(entry->rbx, kStartInfoAddress);
  EXPECT_EQ(entry->gdt_base, kGdtAddress);
  EXPECT_EQ(entry->gdt_limit, 31);
  EXPECT_EQ(peek<uint8_t>(m, 0x100000 + 99), 0xaa);
  EXPECT_EQ(peek<uint8_t>(m, 0x200000 + 49), 0xbb);
  EXPECT_EQ(peek<uint8_t>(m, 0x200000 + 50), 0);
  EXPECT_EQ(peek<uint8_t>(m, 0x200000 + 0x2fff), 0);

  EXPECT_EQ(peek<uint32_t>(m, kStartInfoAddress), 0x336ec578u) << "hvm_start_info magic";
  EXPECT_EQ(peek<uint32_t>(m, kStartInfoAddress + 4), 1u) << "version";
  EXPECT_EQ(peek<uint64_t>(m, kStartInfoAddress + 24), kCmdlineAddress);
  char cmdline[8] = {};
  ASSERT_TRUE(m.read(kCmdlineAddress, cmdline, 8).ok());
  EXPECT_STREQ(cmdline, "hello=1");
  uint64_t memmap = peek<uint64_t>(m, kStartInfoAddress + 40);
  uint32_t entries = peek<uint32_t>(m, kStartInfoAddress + 48);
  ASSERT_EQ(entries, 3u);
  EXPECT_EQ(peek<uint64_t>(m, memmap + 2 * 24), 0x100000u);
  EXPECT_EQ(peek<uint64_t>(m, memmap + 2 * 24 + 8), 63 * kMiB);
  EXPECT_EQ(peek<uint32_t>(m, memmap + 2 * 24 + 16), kE820Ram);
}

TEST(PvhLoader, SegmentOutsideRamIsAUserError) {
  GuestMemory m = make_memory();
  auto image = make_elf({{0x8000000, std::vector<uint8_t>(16, 1), 16}}, 0x8000000);
  Result<BootEntry> entry = load(m, image);
  ASSERT_FALSE(entry.ok());
  EXPECT_EQ(entry.error().kind(), ErrorKind::kUser);
  EXPECT_NE(entry.error().message().find("outside guest RAM"), std::string::npos)
      << entry.error().message();
}

TEST(PvhLoader, SegmentBelowOneMebibyteIsRefused) {
  GuestMemory m = make_memory();
  auto image = make_elf({{0x8000, std::vector<uint8_t>(16, 1), 16}}, 0x8000);
  EXPECT_FALSE(load(m, image).ok()) << "it would overwrite the boot tables";
}

// Multiboot header with the a.out kludge at file offset `at`, describing a flat image loaded at
// 1 MiB whose first byte is file offset 0.
std::vector<uint8_t> make_flat_multiboot(size_t at, uint32_t flags = 0x00010003) {
  std::vector<uint8_t> file(0x2000, 0x90);
  const uint32_t magic = 0x1badb002, load_addr = 0x100000;
  put<uint32_t>(file, at, magic);
  put<uint32_t>(file, at + 4, flags);
  put<uint32_t>(file, at + 8, static_cast<uint32_t>(-(magic + flags)));
  put<uint32_t>(file, at + 12, static_cast<uint32_t>(load_addr + at));  // header_addr
  put<uint32_t>(file, at + 16, load_addr);
  put<uint32_t>(file, at + 20, load_addr + 0x2000);  // load_end_addr
  put<uint32_t>(file, at + 24, load_addr + 0x5000);  // bss_end_addr
  put<uint32_t>(file, at + 28, load_addr + 0x40);    // entry
  return file;
}

TEST(MultibootLoader, FlatImageWithAoutKludge) {
  GuestMemory m = make_memory();
  std::vector<uint8_t> junk(0x3000, 0xcc);
  ASSERT_TRUE(m.write(0x102000, junk.data(), junk.size()).ok());
  Result<BootEntry> entry = load(m, make_flat_multiboot(0x100), "mb=1");
  ASSERT_TRUE(entry.ok()) << entry.error().message();
  EXPECT_EQ(entry->kind, ImageKind::kMultibootFlat);
  EXPECT_EQ(entry->rip, 0x100040u);
  EXPECT_EQ(entry->rax, 0x2badb002u);
  EXPECT_EQ(entry->rbx, kStartInfoAddress);
  EXPECT_EQ(peek<uint8_t>(m, 0x101fff), 0x90);
  EXPECT_EQ(peek<uint8_t>(m, 0x102000), 0) << "bss zeroed";
  EXPECT_EQ(peek<uint8_t>(m, 0x104fff), 0);
  uint32_t flags = peek<uint32_t>(m, kStartInfoAddress);
  EXPECT_EQ(flags & 0x45, 0x45u) << "MEM, CMDLINE and MMAP";
  EXPECT_EQ(peek<uint32_t>(m, kStartInfoAddress + 16), kCmdlineAddress);
  EXPECT_EQ(peek<uint32_t>(m, kStartInfoAddress + 8), (64 - 1) * 1024u) << "mem_upper KiB";
  uint32_t mmap_length = peek<uint32_t>(m, kStartInfoAddress + 44);
  EXPECT_EQ(mmap_length, 3 * 24u);
}

TEST(MultibootLoader, ElfWithMultibootHeaderOnly) {
  GuestMemory m = make_memory();
  std::vector<uint8_t> text(0x200, 0x90);
  // Header without the a.out kludge inside the first segment: the ELF headers place the image.
  const uint32_t magic = 0x1badb002, flags = 0x3;
  put<uint32_t>(text, 0x10, magic);
  put<uint32_t>(text, 0x14, flags);
  put<uint32_t>(text, 0x18, static_cast<uint32_t>(-(magic + flags)));
  auto image = make_elf({{0x100000, text, 0x200}}, std::nullopt, 0x100080);
  Result<BootEntry> entry = load(m, image);
  ASSERT_TRUE(entry.ok()) << entry.error().message();
  EXPECT_EQ(entry->kind, ImageKind::kMultibootElf);
  EXPECT_EQ(entry->rip, 0x100080u);
  EXPECT_EQ(entry->rax, 0x2badb002u);
}

TEST(MultibootLoader, PvhNoteWinsOverMultibootHeader) {
  GuestMemory m = make_memory();
  std::vector<uint8_t> text(0x200, 0x90);
  const uint32_t magic = 0x1badb002, flags = 0x3;
  put<uint32_t>(text, 0x10, magic);
  put<uint32_t>(text, 0x14, flags);
  put<uint32_t>(text, 0x18, static_cast<uint32_t>(-(magic + flags)));
  auto image = make_elf({{0x100000, text, 0x200}}, 0x100100, 0x100080);
  Result<BootEntry> entry = load(m, image);
  ASSERT_TRUE(entry.ok()) << entry.error().message();
  EXPECT_EQ(entry->kind, ImageKind::kPvhElf);
  EXPECT_EQ(entry->rip, 0x100100u);
}

TEST(MultibootLoader, BadChecksumIsNotAMultibootHeader) {
  GuestMemory m = make_memory();
  auto image = make_flat_multiboot(0x100);
  image[0x108] ^= 1;
  Result<BootEntry> entry = load(m, image);
  ASSERT_FALSE(entry.ok());
  EXPECT_NE(entry.error().message().find("not a bootable kernel"), std::string::npos);
}

TEST(MultibootLoader, UnsupportedRequiredFlagIsRefused) {
  GuestMemory m = make_memory();
  Result<BootEntry> entry = load(m, make_flat_multiboot(0x100, 0x00010013));
  ASSERT_FALSE(entry.ok());
  EXPECT_NE(entry.error().message().find("requires features"), std::string::npos)
      << entry.error().message();
}

// A minimal bzImage: boot sector + setup sectors + a "protected-mode kernel".
std::vector<uint8_t> make_bzimage(uint16_t version, uint16_t xloadflags) {
  const uint8_t setup_sects = 4;
  std::vector<uint8_t> file((setup_sects + 1) * 512 + 0x1000, 0);
  file[0x1f1] = setup_sects;
  file[0x201] = 0x66;  // header length: up to 0x268
  put<uint32_t>(file, 0x202, 0x53726448);
  put<uint16_t>(file, 0x206, version);
  file[0x211] = 0x01;  // LOADED_HIGH
  put<uint32_t>(file, 0x22c, 0x37ffffff);
  put<uint16_t>(file, 0x236, xloadflags);
  put<uint32_t>(file, 0x238, 2048);
  put<uint64_t>(file, 0x258, 0x1000000);
  put<uint32_t>(file, 0x260, 0x200000);
  for (size_t i = (setup_sects + 1) * 512; i < file.size(); ++i) file[i] = 0x5a;
  return file;
}

TEST(LinuxLoader, BzImageEntersLongModeWithZeroPageAndE820) {
  GuestMemory m = make_memory();
  Result<BootEntry> entry = load(m, make_bzimage(0x20f, 0x1), "console=ttyS0");
  ASSERT_TRUE(entry.ok()) << entry.error().message();
  EXPECT_EQ(entry->kind, ImageKind::kLinuxBzImage);
  EXPECT_EQ(entry->mode, CpuMode::kLong64);
  EXPECT_EQ(entry->rip, 0x1000200u);
  EXPECT_EQ(entry->rsi, kZeroPageAddress);
  EXPECT_EQ(entry->page_table_root, kPml4Address);
  EXPECT_EQ(peek<uint8_t>(m, 0x1000000), 0x5a);
  EXPECT_EQ(peek<uint32_t>(m, kZeroPageAddress + 0x202), 0x53726448u) << "setup header copied";
  EXPECT_EQ(peek<uint8_t>(m, kZeroPageAddress + 0x210), 0xff) << "type_of_loader";
  EXPECT_EQ(peek<uint8_t>(m, kZeroPageAddress + 0x211) & 0x80, 0x80) << "CAN_USE_HEAP";
  EXPECT_EQ(peek<uint32_t>(m, kZeroPageAddress + 0x228), kCmdlineAddress);
  ASSERT_EQ(peek<uint8_t>(m, kZeroPageAddress + 0x1e8), 3) << "e820 entries";
  EXPECT_EQ(peek<uint64_t>(m, kZeroPageAddress + 0x2d0 + 20), kEbdaStart);
  EXPECT_EQ(peek<uint32_t>(m, kZeroPageAddress + 0x2d0 + 20 + 16), kE820Reserved);
  // Identity map: PML4[0] -> PDPT, PD entries of 2 MiB pages.
  EXPECT_EQ(peek<uint64_t>(m, kPml4Address) & ~0xfffull, kPml4Address + 0x1000);
  EXPECT_EQ(peek<uint64_t>(m, kPml4Address + 0x2000 + 8 * 5), (5ull << 21) | 0x83);
}

TEST(LinuxLoader, InitrdGoesBelowTheLimitAndIsDescribed) {
  GuestMemory m = make_memory();
  std::string path = ::testing::TempDir() + "/test-initrd";
  {
    std::ofstream f(path, std::ios::binary);
    f << std::string(10000, 'i');
  }
  BootConfig config;
  config.initrd_path = path;
  Result<BootEntry> entry = load_kernel_image(m, make_bzimage(0x20f, 0x1), "k", config);
  ASSERT_TRUE(entry.ok()) << entry.error().message();
  uint32_t at = peek<uint32_t>(m, kZeroPageAddress + 0x218);
  EXPECT_EQ(peek<uint32_t>(m, kZeroPageAddress + 0x21c), 10000u);
  EXPECT_EQ(at % 4096, 0u);
  EXPECT_LE(at + 10000, 64 * kMiB);
  EXPECT_GE(at, 0x1000000u + 0x200000u) << "above the kernel's init_size";
  EXPECT_EQ(peek<uint8_t>(m, at + 9999), 'i');
}

TEST(LinuxLoader, OldProtocolAndMissing64BitEntryAreRefused) {
  GuestMemory m = make_memory();
  Result<BootEntry> old = load(m, make_bzimage(0x204, 0x1));
  ASSERT_FALSE(old.ok());
  EXPECT_NE(old.error().message().find("2.04 is too old"), std::string::npos)
      << old.error().message();
  Result<BootEntry> no64 = load(m, make_bzimage(0x20f, 0x0));
  ASSERT_FALSE(no64.ok());
  EXPECT_NE(no64.error().message().find("64-bit"), std::string::npos);
}

TEST(Loader, GarbageAndMissingFilesAreClearUserErrors) {
  GuestMemory m = make_memory();
  std::vector<uint8_t> garbage(4096);
  for (size_t i = 0; i < garbage.size(); ++i) garbage[i] = static_cast<uint8_t>(i * 7 % 251);
  Result<BootEntry> entry = load(m, garbage);
  ASSERT_FALSE(entry.ok());
  EXPECT_EQ(entry.error().kind(), ErrorKind::kUser);
  EXPECT_NE(entry.error().message().find("test-image is not a bootable kernel"), std::string::npos);

  BootConfig config;
  config.kernel_path = "/nonexistent/kernel";
  Result<BootEntry> missing = load_kernel(m, config);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.error().message().find("/nonexistent/kernel"), std::string::npos);
  EXPECT_NE(missing.error().message().find("No such file"), std::string::npos);
}

TEST(Loader, CommandLineTooLongIsRefused) {
  GuestMemory m = make_memory();
  auto image = make_elf({{0x100000, std::vector<uint8_t>(16, 1), 16}}, 0x100000);
  Result<BootEntry> entry = load(m, image, std::string(kCmdlineMax, 'x'));
  ASSERT_FALSE(entry.ok());
  EXPECT_NE(entry.error().message().find("command line"), std::string::npos);
}

TEST(E820, SmallGuestHasLowRamReservedAreaAndRamFromOneMebibyte) {
  GuestMemory m = make_memory(64 * kMiB);
  std::vector<E820Entry> map = build_e820(m);
  ASSERT_EQ(map.size(), 3u);
  EXPECT_EQ(map[0].addr, 0u);
  EXPECT_EQ(map[0].size, kEbdaStart);
  EXPECT_EQ(map[1].type, kE820Reserved);
  EXPECT_EQ(map[2].addr, kMiB);
  EXPECT_EQ(map[2].addr + map[2].size, 64 * kMiB);
}

TEST(E820, LargeGuestSkipsTheMmioHoleBelowFourGibibytes) {
  GuestMemory m = make_memory(5 * 1024 * kMiB);
  std::vector<E820Entry> map = build_e820(m);
  ASSERT_EQ(map.size(), 4u);
  EXPECT_EQ(map[2].addr + map[2].size, 3 * 1024 * kMiB);
  EXPECT_EQ(map[3].addr, 4 * 1024 * kMiB);
  EXPECT_EQ(map[3].size, 2 * 1024 * kMiB);
  uint64_t ram = 0;
  for (const E820Entry& e : map) ram += e.type == kE820Ram ? e.size : 0;
  EXPECT_EQ(ram, 5 * 1024 * kMiB - (kMiB - kEbdaStart));
}

uint8_t sum(const GuestMemory& m, uint64_t at, size_t len) {
  std::vector<uint8_t> bytes(len);
  EXPECT_TRUE(m.read(at, bytes.data(), len).ok());
  uint8_t s = 0;
  for (uint8_t b : bytes) s = static_cast<uint8_t>(s + b);
  return s;
}

TEST(MpTable, ChecksumsAndOneProcessorEntryPerCpu) {
  for (unsigned cpus : {1u, 4u}) {
    GuestMemory m = make_memory();
    ASSERT_TRUE(write_mp_table(m, cpus).ok());
    char sig[4];
    ASSERT_TRUE(m.read(kMpTableAddress, sig, 4).ok());
    EXPECT_EQ(std::string(sig, 4), "_MP_");
    EXPECT_EQ(sum(m, kMpTableAddress, 16), 0) << "floating pointer checksum";
    uint32_t table = peek<uint32_t>(m, kMpTableAddress + 4);
    uint16_t length = peek<uint16_t>(m, table + 4);
    EXPECT_EQ(sum(m, table, length), 0) << "configuration table checksum";
    uint16_t count = peek<uint16_t>(m, table + 34);
    unsigned processors = 0, bsp = 0, routes = 0;
    uint64_t e = table + 44;
    for (uint16_t i = 0; i < count; ++i) {
      uint8_t type = peek<uint8_t>(m, e);
      if (type == 0) {
        ++processors;
        if (peek<uint8_t>(m, e + 3) & 2) ++bsp;
        e += 20;
      } else {
        if (type == 3) ++routes;
        if (type == 2) {
          EXPECT_EQ(peek<uint8_t>(m, e + 1), cpus) << "IOAPIC id after the CPUs";
        }
        e += 8;
      }
    }
    EXPECT_EQ(processors, cpus);
    EXPECT_EQ(bsp, 1u);
    EXPECT_EQ(routes, 16u);
    EXPECT_EQ(e, table + length);
  }
}

}  // namespace
}  // namespace vmctl::vmm::boot
