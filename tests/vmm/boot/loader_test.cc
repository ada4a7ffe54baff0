// Loader tests on synthetic images: what lands in guest memory and how the boot vCPU starts.
#include <elf.h>

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>

#include "vmm/boot/boot.h"

namespace vmctl::vmm::boot {
namespace {

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kGiB = 1ull << 30;

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
  EXPECT_TRUE(v.ok()) << "reading 0x" << std::hex << gpa;
  return v.ok() ? v.value() : T{};
}

std::string peek_string(const GuestMemory& m, uint64_t gpa, size_t max = 256) {
  std::string s;
  for (size_t i = 0; i < max; ++i) {
    char c = static_cast<char>(peek<uint8_t>(m, gpa + i));
    if (c == '\0') break;
    s += c;
  }
  return s;
}

std::string write_temp_file(const std::string& name, const std::string& contents) {
  std::string path = ::testing::TempDir() + "/" + name;
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << contents;
  return path;
}

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

struct TestSegment {
  uint64_t paddr;
  std::vector<uint8_t> bytes;
  uint64_t memsz;
};

struct ElfOptions {
  bool elf32 = false;
  uint16_t type = ET_EXEC;
  uint64_t entry = 0x100000;
  std::optional<uint64_t> pvh_entry;
  uint32_t pvh_desc_size = 4;
};

// An ELF executable with the given PT_LOAD segments (file data from offset 0x1000) and,
// optionally, a PT_NOTE with a Xen PVH entry note.
std::vector<uint8_t> make_elf(const std::vector<TestSegment>& segments, const ElfOptions& o) {
  std::vector<uint8_t> file(0x1000, 0);
  const uint16_t phnum = static_cast<uint16_t>(segments.size() + (o.pvh_entry ? 1 : 0));
  std::vector<Elf64_Phdr> phdrs;
  uint64_t data_at = 0x1000;
  for (const TestSegment& s : segments) {
    Elf64_Phdr p{};
    p.p_type = PT_LOAD;
    p.p_offset = data_at;
    p.p_paddr = p.p_vaddr = s.paddr;
    p.p_filesz = s.bytes.size();
    p.p_memsz = s.memsz;
    phdrs.push_back(p);
    file.resize(data_at + s.bytes.size());
    std::memcpy(file.data() + data_at, s.bytes.data(), s.bytes.size());
    data_at = (file.size() + 15) & ~15ull;
  }
  if (o.pvh_entry) {
    Elf64_Phdr p{};
    p.p_type = PT_NOTE;
    p.p_offset = data_at;
    file.resize(data_at + 20 + 16 + o.pvh_desc_size);
    // An unrelated note first, so the parser has to walk past it.
    put<uint32_t>(file, data_at, 4);
    put<uint32_t>(file, data_at + 4, 4);
    put<uint32_t>(file, data_at + 8, 1);
    std::memcpy(file.data() + data_at + 12, "GNU", 4);
    put<uint32_t>(file, data_at + 16, 0);
    uint64_t note = data_at + 20;
    put<uint32_t>(file, note, 4);
    put<uint32_t>(file, note + 4, o.pvh_desc_size);
    put<uint32_t>(file, note + 8, 18);
    std::memcpy(file.data() + note + 12, "Xen", 4);
    if (o.pvh_desc_size == 8) {
      put<uint64_t>(file, note + 16, *o.pvh_entry);
    } else {
      put<uint32_t>(file, note + 16, static_cast<uint32_t>(*o.pvh_entry));
    }
    p.p_filesz = file.size() - data_at;
    phdrs.push_back(p);
  }
  if (o.elf32) {
    Elf32_Ehdr eh{};
    std::memcpy(eh.e_ident, ELFMAG, SELFMAG);
    eh.e_ident[EI_CLASS] = ELFCLASS32;
    eh.e_ident[EI_DATA] = ELFDATA2LSB;
    eh.e_ident[EI_VERSION] = EV_CURRENT;
    eh.e_type = o.type;
    eh.e_machine = EM_386;
    eh.e_version = EV_CURRENT;
    eh.e_entry = static_cast<uint32_t>(o.entry);
    eh.e_phoff = sizeof(Elf32_Ehdr);
    eh.e_ehsize = sizeof(Elf32_Ehdr);
    eh.e_phentsize = sizeof(Elf32_Phdr);
    eh.e_phnum = phnum;
    put(file, 0, eh);
    for (size_t i = 0; i < phdrs.size(); ++i) {
      Elf32_Phdr p{};
      p.p_type = phdrs[i].p_type;
      p.p_offset = static_cast<uint32_t>(phdrs[i].p_offset);
      p.p_vaddr = p.p_paddr = static_cast<uint32_t>(phdrs[i].p_paddr);
      p.p_filesz = static_cast<uint32_t>(phdrs[i].p_filesz);
      p.p_memsz = static_cast<uint32_t>(phdrs[i].p_memsz);
      put(file, sizeof(Elf32_Ehdr) + i * sizeof(Elf32_Phdr), p);
    }
  } else {
    Elf64_Ehdr eh{};
    std::memcpy(eh.e_ident, ELFMAG, SELFMAG);
    eh.e_ident[EI_CLASS] = ELFCLASS64;
    eh.e_ident[EI_DATA] = ELFDATA2LSB;
    eh.e_ident[EI_VERSION] = EV_CURRENT;
    eh.e_type = o.type;
    eh.e_machine = EM_X86_64;
    eh.e_version = EV_CURRENT;
    eh.e_entry = o.entry;
    eh.e_phoff = sizeof(Elf64_Ehdr);
    eh.e_ehsize = sizeof(Elf64_Ehdr);
    eh.e_phentsize = sizeof(Elf64_Phdr);
    eh.e_phnum = phnum;
    put(file, 0, eh);
    for (size_t i = 0; i < phdrs.size(); ++i) {
      put(file, sizeof(Elf64_Ehdr) + i * sizeof(Elf64_Phdr), phdrs[i]);
    }
  }
  return file;
}

std::vector<uint8_t> make_pvh_elf(const std::vector<TestSegment>& segments, uint64_t entry) {
  ElfOptions o;
  o.pvh_entry = entry;
  return make_elf(segments, o);
}

Result<BootEntry> load(GuestMemory& m, const std::vector<uint8_t>& image,
                       const std::string& cmdline = "", unsigned cpus = 1,
                       std::optional<std::string> initrd = std::nullopt) {
  BootConfig config;
  config.cmdline = cmdline;
  config.num_cpus = cpus;
  config.initrd_path = std::move(initrd);
  return load_kernel_image(m, image, "test-image", config);
}

// --- PVH ---------------------------------------------------------------------------------------

TEST(PvhLoader, LoadsSegmentsZeroesBssAndPassesStartInfo) {
  GuestMemory m = make_memory();
  std::vector<uint8_t> text(100, 0xaa), data(50, 0xbb);
  auto image = make_pvh_elf({{0x100000, text, 100}, {0x200000, data, 0x3000}}, 0x100010);
  // Dirty the bss area first: the loader must zero it.
  std::vector<uint8_t> junk(0x4000, 0xcc);
  ASSERT_TRUE(m.write(0x200000, junk.data(), junk.size()).ok());

  Result<BootEntry> entry = load(m, image, "hello=1");
  ASSERT_TRUE(entry.ok()) << entry.error().message();
  EXPECT_EQ(entry->kind, ImageKind::kPvhElf);
  EXPECT_EQ(entry->mode, CpuMode::kProtected32);
  EXPECT_EQ(entry->rip, 0x100010u);
  EXPECT_EQ(entry->rbx, kStartInfoAddress);
  EXPECT_EQ(entry->gdt_base, kGdtAddress);
  EXPECT_EQ(entry->gdt_limit, 31);
  EXPECT_EQ(peek<uint8_t>(m, 0x100000), 0xaa);
  EXPECT_EQ(peek<uint8_t>(m, 0x100000 + 99), 0xaa);
  EXPECT_EQ(peek<uint8_t>(m, 0x200000), 0xbb);
  EXPECT_EQ(peek<uint8_t>(m, 0x200000 + 49), 0xbb);
  EXPECT_EQ(peek<uint8_t>(m, 0x200000 + 50), 0) << "bss zeroed";
  EXPECT_EQ(peek<uint8_t>(m, 0x200000 + 0x2fff), 0) << "bss zeroed";
  EXPECT_EQ(peek<uint8_t>(m, 0x200000 + 0x3000), 0xcc) << "nothing past memsz touched";

  EXPECT_EQ(peek<uint32_t>(m, kStartInfoAddress), 0x336ec578u) << "hvm_start_info magic";
  EXPECT_EQ(peek<uint32_t>(m, kStartInfoAddress + 4), 1u) << "version";
  EXPECT_EQ(peek<uint32_t>(m, kStartInfoAddress + 12), 0u) << "nr_modules";
  EXPECT_EQ(peek<uint64_t>(m, kStartInfoAddress + 24), kCmdlineAddress);
  EXPECT_EQ(peek<uint64_t>(m, kStartInfoAddress + 32), 0u) << "rsdp_paddr";
  EXPECT_EQ(peek_string(m, kCmdlineAddress), "hello=1");
  uint64_t memmap = peek<uint64_t>(m, kStartInfoAddress + 40);
  EXPECT_EQ(memmap, kStartInfoAddress + 56) << "memmap right after start_info";
  ASSERT_EQ(peek<uint32_t>(m, kStartInfoAddress + 48), 3u) << "memmap_entries";
  EXPECT_EQ(peek<uint64_t>(m, memmap), 0u);
  EXPECT_EQ(peek<uint64_t>(m, memmap + 8), kEbdaStart);
  EXPECT_EQ(peek<uint32_t>(m, memmap + 16), kE820Ram);
  EXPECT_EQ(peek<uint32_t>(m, memmap + 24 + 16), kE820Reserved);
  EXPECT_EQ(peek<uint64_t>(m, memmap + 2 * 24), 0x100000u);
  EXPECT_EQ(peek<uint64_t>(m, memmap + 2 * 24 + 8), 63 * kMiB);
  EXPECT_EQ(peek<uint32_t>(m, memmap + 2 * 24 + 16), kE820Ram);
}

TEST(PvhLoader, BootGdtHasFlatCodeAndDataAtTheSelectorsVcpuUses) {
  GuestMemory m = make_memory();
  auto image = make_pvh_elf({{0x100000, std::vector<uint8_t>(16, 1), 16}}, 0x100000);
  ASSERT_TRUE(load(m, image).ok());
  EXPECT_EQ(peek<uint64_t>(m, kGdtAddress), 0u);
  EXPECT_EQ(peek<uint64_t>(m, kGdtAddress + kCode64Selector), 0x00af9b000000ffffu);
  EXPECT_EQ(peek<uint64_t>(m, kGdtAddress + kDataSelector), 0x00cf93000000ffffu);
  EXPECT_EQ(peek<uint64_t>(m, kGdtAddress + kCode32Selector), 0x00cf9b000000ffffu);
}

TEST(PvhLoader, Elf32AndEightByteEntryNoteAreAccepted) {
  GuestMemory m = make_memory();
  ElfOptions o;
  o.elf32 = true;
  o.pvh_entry = 0x100020;
  Result<BootEntry> e32 = load(m, make_elf({{0x100000, std::vector<uint8_t>(64, 7), 64}}, o));
  ASSERT_TRUE(e32.ok()) << e32.error().message();
  EXPECT_EQ(e32->kind, ImageKind::kPvhElf);
  EXPECT_EQ(e32->rip, 0x100020u);
  EXPECT_EQ(peek<uint8_t>(m, 0x100000 + 63), 7);

  ElfOptions o8;
  o8.pvh_entry = 0x100030;
  o8.pvh_desc_size = 8;
  Result<BootEntry> e8 = load(m, make_elf({{0x100000, std::vector<uint8_t>(64, 7), 64}}, o8));
  ASSERT_TRUE(e8.ok()) << e8.error().message();
  EXPECT_EQ(e8->rip, 0x100030u);
}

TEST(PvhLoader, InitrdIsTheOnlyModule) {
  GuestMemory m = make_memory();
  std::string initrd = write_temp_file("pvh-initrd", std::string(5000, 'r'));
  auto image = make_pvh_elf({{0x100000, std::vector<uint8_t>(16, 1), 0x10000}}, 0x100000);
  Result<BootEntry> entry = load(m, image, "", 1, initrd);
  ASSERT_TRUE(entry.ok()) << entry.error().message();
  ASSERT_EQ(peek<uint32_t>(m, kStartInfoAddress + 12), 1u) << "nr_modules";
  uint64_t modlist = peek<uint64_t>(m, kStartInfoAddress + 16);
  uint64_t paddr = peek<uint64_t>(m, modlist);
  EXPECT_EQ(peek<uint64_t>(m, modlist + 8), 5000u);
  EXPECT_EQ(paddr % 4096, 0u);
  EXPECT_GE(paddr, 0x110000u) << "above the kernel";
  EXPECT_LE(paddr + 5000, 64 * kMiB);
  EXPECT_EQ(peek<uint8_t>(m, paddr), 'r');
  EXPECT_EQ(peek<uint8_t>(m, paddr + 4999), 'r');
}

TEST(PvhLoader, SegmentOutsideRamIsAUserErrorNamingTheImage) {
  GuestMemory m = make_memory();
  auto image = make_pvh_elf({{0x8000000, std::vector<uint8_t>(16, 1), 16}}, 0x8000000);
  Result<BootEntry> entry = load(m, image);
  ASSERT_FALSE(entry.ok());
  EXPECT_EQ(entry.error().kind(), ErrorKind::kUser);
  EXPECT_TRUE(contains(entry.error().message(), "test-image")) << entry.error().message();
  EXPECT_TRUE(contains(entry.error().message(), "outside guest RAM")) << entry.error().message();
}

TEST(PvhLoader, SegmentStraddlingTheEndOfRamIsRefused) {
  GuestMemory m = make_memory();
  auto image = make_pvh_elf({{64 * kMiB - 0x1000, std::vector<uint8_t>(16, 1), 0x2000}}, 0x100000);
  EXPECT_FALSE(load(m, image).ok());
}

TEST(PvhLoader, SegmentBelowOneMebibyteIsRefused) {
  GuestMemory m = make_memory();
  auto image = make_pvh_elf({{0x8000, std::vector<uint8_t>(16, 1), 16}}, 0x8000);
  Result<BootEntry> entry = load(m, image);
  ASSERT_FALSE(entry.ok()) << "it would overwrite the boot tables";
  EXPECT_EQ(entry.error().kind(), ErrorKind::kUser);
}

TEST(PvhLoader, SharedObjectWithPvhNoteIsRefusedAsNotExecutable) {
  GuestMemory m = make_memory();
  ElfOptions o;
  o.type = ET_DYN;
  o.pvh_entry = 0x100000;
  Result<BootEntry> entry = load(m, make_elf({{0x100000, std::vector<uint8_t>(16, 1), 16}}, o));
  ASSERT_FALSE(entry.ok());
  EXPECT_TRUE(contains(entry.error().message(), "ET_EXEC")) << entry.error().message();
}

// --- Multiboot ---------------------------------------------------------------------------------

constexpr uint32_t kMultibootMagic = 0x1badb002;

// Multiboot header with the a.out kludge at file offset `at`, describing a flat image loaded at
// `load_addr` whose first byte is file offset 0.
std::vector<uint8_t> make_flat_multiboot(size_t at, uint32_t flags = 0x00010003,
                                         uint32_t load_addr = 0x100000) {
  std::vector<uint8_t> file(0x2000, 0x90);
  put<uint32_t>(file, at, kMultibootMagic);
  put<uint32_t>(file, at + 4, flags);
  put<uint32_t>(file, at + 8, static_cast<uint32_t>(-(kMultibootMagic + flags)));
  put<uint32_t>(file, at + 12, static_cast<uint32_t>(load_addr + at));  // header_addr
  put<uint32_t>(file, at + 16, load_addr);
  put<uint32_t>(file, at + 20, load_addr + 0x2000);  // load_end_addr
  put<uint32_t>(file, at + 24, load_addr + 0x5000);  // bss_end_addr
  put<uint32_t>(file, at + 28, load_addr + 0x40);    // entry
  return file;
}

std::vector<uint8_t> text_with_multiboot_header(uint32_t flags = 0x3) {
  std::vector<uint8_t> text(0x200, 0x90);
  put<uint32_t>(text, 0x10, kMultibootMagic);
  put<uint32_t>(text, 0x14, flags);
  put<uint32_t>(text, 0x18, static_cast<uint32_t>(-(kMultibootMagic + flags)));
  return text;
}

TEST(MultibootLoader, FlatImageWithAoutKludge) {
  GuestMemory m = make_memory();
  std::vector<uint8_t> junk(0x4000, 0xcc);
  ASSERT_TRUE(m.write(0x102000, junk.data(), junk.size()).ok());
  Result<BootEntry> entry = load(m, make_flat_multiboot(0x100), "mb=1");
  ASSERT_TRUE(entry.ok()) << entry.error().message();
  EXPECT_EQ(entry->kind, ImageKind::kMultibootFlat);
  EXPECT_EQ(entry->mode, CpuMode::kProtected32);
  EXPECT_EQ(entry->rip, 0x100040u);
  EXPECT_EQ(entry->rax, 0x2badb002u);
  EXPECT_EQ(entry->rbx, kStartInfoAddress);
  EXPECT_EQ(entry->gdt_limit, 31);
  EXPECT_EQ(peek<uint32_t>(m, 0x100100), kMultibootMagic) << "file offset 0 at load_addr";
  EXPECT_EQ(peek<uint8_t>(m, 0x101fff), 0x90);
  EXPECT_EQ(peek<uint8_t>(m, 0x102000), 0) << "bss zeroed";
  EXPECT_EQ(peek<uint8_t>(m, 0x104fff), 0) << "bss zeroed";
  EXPECT_EQ(peek<uint8_t>(m, 0x105000), 0xcc) << "nothing past bss_end touched";

  const uint32_t flags = peek<uint32_t>(m, kStartInfoAddress);
  EXPECT_EQ(flags & 0x45, 0x45u) << "MEM, CMDLINE and MMAP";
  EXPECT_EQ(flags & 0x8, 0u) << "no MODS without an initrd";
  EXPECT_EQ(peek<uint32_t>(m, kStartInfoAddress + 4), kEbdaStart / 1024) << "mem_lower KiB";
  EXPECT_EQ(peek<uint32_t>(m, kStartInfoAddress + 8), (64 - 1) * 1024u) << "mem_upper KiB";
  EXPECT_EQ(peek<uint32_t>(m, kStartInfoAddress + 16), kCmdlineAddress);
  EXPECT_EQ(peek_string(m, kCmdlineAddress), "mb=1");
  const uint32_t mmap_length = peek<uint32_t>(m, kStartInfoAddress + 44);
  const uint32_t mmap_addr = peek<uint32_t>(m, kStartInfoAddress + 48);
  ASSERT_EQ(mmap_length, 3 * 24u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(peek<uint32_t>(m, mmap_addr + i * 24), 20u) << "size";
  EXPECT_EQ(peek<uint64_t>(m, mmap_addr + 4), 0u);
  EXPECT_EQ(peek<uint64_t>(m, mmap_addr + 12), kEbdaStart);
  EXPECT_EQ(peek<uint32_t>(m, mmap_addr + 20), kE820Ram);
  EXPECT_EQ(peek<uint32_t>(m, mmap_addr + 24 + 20), kE820Reserved);
  EXPECT_EQ(peek<uint64_t>(m, mmap_addr + 48 + 4), kMiB);
  EXPECT_EQ(peek<uint64_t>(m, mmap_addr + 48 + 12), 63 * kMiB);
}

TEST(MultibootLoader, InitrdIsOneModuleNamedInitrd) {
  GuestMemory m = make_memory();
  std::string initrd = write_temp_file("mb-initrd", std::string(3000, 'm'));
  Result<BootEntry> entry = load(m, make_flat_multiboot(0x100), "", 1, initrd);
  ASSERT_TRUE(entry.ok()) << entry.error().message();
  EXPECT_EQ(peek<uint32_t>(m, kStartInfoAddress) & 0x8, 0x8u) << "MODS";
  ASSERT_EQ(peek<uint32_t>(m, kStartInfoAddress + 20), 1u) << "mods_count";
  const uint32_t mods = peek<uint32_t>(m, kStartInfoAddress + 24);
  const uint32_t start = peek<uint32_t>(m, mods), end = peek<uint32_t>(m, mods + 4);
  EXPECT_EQ(end - start, 3000u);
  EXPECT_EQ(start % 4096, 0u) << "page aligned";
  EXPECT_GE(start, 0x105000u) << "above the image and its bss";
  EXPECT_EQ(peek<uint8_t>(m, start), 'm');
  EXPECT_EQ(peek_string(m, peek<uint32_t>(m, mods + 8)), "initrd");
}

TEST(MultibootLoader, ElfWithMultibootHeaderOnly) {
  GuestMemory m = make_memory();
  ElfOptions o;
  o.entry = 0x100080;
  auto image = make_elf({{0x100000, text_with_multiboot_header(), 0x1000}}, o);
  Result<BootEntry> entry = load(m, image);
  ASSERT_TRUE(entry.ok()) << entry.error().message();
  EXPECT_EQ(entry->kind, ImageKind::kMultibootElf);
  EXPECT_EQ(entry->mode, CpuMode::kProtected32);
  EXPECT_EQ(entry->rip, 0x100080u);
  EXPECT_EQ(entry->rax, 0x2badb002u);
  EXPECT_EQ(entry->rbx, kStartInfoAddress);
  EXPECT_EQ(peek<uint32_t>(m, 0x100010), kMultibootMagic) << "loaded from the ELF segment";
  EXPECT_EQ(peek<uint8_t>(m, 0x100fff), 0) << "bss zeroed";
}

TEST(MultibootLoader, ElfWithAoutKludgeUsesTheKludgeAddresses) {
  GuestMemory m = make_memory();
  // The ELF segment says 1 MiB; the kludge says 2 MiB: the kludge wins when bit 16 is set.
  std::vector<uint8_t> text = text_with_multiboot_header(0x00010003);
  ElfOptions o;
  o.entry = 0x100000;
  auto image = make_elf({{0x100000, text, 0x200}}, o);
  const uint64_t header_offset = 0x1000 + 0x10;  // segment data starts at file offset 0x1000
  put<uint32_t>(image, header_offset + 12, 0x200000 + 0x10);  // header_addr
  put<uint32_t>(image, header_offset + 16, 0x200000);         // load_addr = file offset 0x1000
  put<uint32_t>(image, header_offset + 20, 0);                // load to the end of the file
  put<uint32_t>(image, header_offset + 24, 0);                // no bss
  put<uint32_t>(image, header_offset + 28, 0x200040);         // entry
  Result<BootEntry> entry = load(m, image);
  ASSERT_TRUE(entry.ok()) << entry.error().message();
  EXPECT_EQ(entry->kind, ImageKind::kMultibootElf);
  EXPECT_EQ(entry->rip, 0x200040u);
  EXPECT_EQ(peek<uint32_t>(m, 0x200010), kMultibootMagic);
  EXPECT_EQ(peek<uint32_t>(m, 0x100010), 0u) << "the ELF segment address is not used";
}

TEST(MultibootLoader, PvhNoteWinsOverMultibootHeader) {
  GuestMemory m = make_memory();
  ElfOptions o;
  o.entry = 0x100080;
  o.pvh_entry = 0x100100;
  Result<BootEntry> entry = load(m, make_elf({{0x100000, text_with_multiboot_header(), 0x200}}, o));
  ASSERT_TRUE(entry.ok()) << entry.error().message();
  EXPECT_EQ(entry->kind, ImageKind::kPvhElf);
  EXPECT_EQ(entry->rip, 0x100100u);
  EXPECT_EQ(entry->rax, 0u);
}

TEST(MultibootLoader, HeaderMustBeAlignedAndInTheFirst8KiB) {
  GuestMemory m = make_memory();
  std::vector<uint8_t> late(0x4000, 0);
  std::vector<uint8_t> flat = make_flat_multiboot(0);
  std::copy(flat.begin(), flat.begin() + 32, late.begin() + 0x2000);
  Result<BootEntry> entry = load(m, late);
  ASSERT_FALSE(entry.ok());
  EXPECT_TRUE(contains(entry.error().message(), "not a bootable kernel"));

  std::vector<uint8_t> misaligned(0x2000, 0);
  std::copy(flat.begin(), flat.begin() + 32, misaligned.begin() + 0x102);
  entry = load(m, misaligned);
  ASSERT_FALSE(entry.ok());
  EXPECT_TRUE(contains(entry.error().message(), "not a bootable kernel"));
}

TEST(MultibootLoader, BadChecksumIsNotAMultibootHeader) {
  GuestMemory m = make_memory();
  auto image = make_flat_multiboot(0x100);
  image[0x108] ^= 1;
  Result<BootEntry> entry = load(m, image);
  ASSERT_FALSE(entry.ok());
  EXPECT_TRUE(contains(entry.error().message(), "not a bootable kernel"));
}

TEST(MultibootLoader, VideoModeRequestIsAcceptedOtherRequiredFlagsAreRefused) {
  GuestMemory m = make_memory();
  EXPECT_TRUE(load(m, make_flat_multiboot(0x100, 0x00010007)).ok());
  Result<BootEntry> entry = load(m, make_flat_multiboot(0x100, 0x00010013));
  ASSERT_FALSE(entry.ok());
  EXPECT_EQ(entry.error().kind(), ErrorKind::kUser);
  EXPECT_TRUE(contains(entry.error().message(), "requires features")) << entry.error().message();
}

TEST(MultibootLoader, KludgeAddressesOutsideRamAreRefused) {
  GuestMemory m = make_memory();
  Result<BootEntry> entry = load(m, make_flat_multiboot(0x100, 0x00010003, 0x8000000));
  ASSERT_FALSE(entry.ok());
  EXPECT_TRUE(contains(entry.error().message(), "outside guest RAM")) << entry.error().message();
}

// --- Linux bzImage -----------------------------------------------------------------------------

struct BzImageOptions {
  uint16_t version = 0x20f;
  uint16_t xloadflags = 0x1;  // XLF_KERNEL_64
  bool relocatable = true;
  uint32_t code32_start = 0x100000;
  uint32_t init_size = 0x200000;
  uint32_t cmdline_size = 2048;
};

// A minimal bzImage: boot sector + setup sectors + a "protected-mode kernel" of 0x5a bytes.
std::vector<uint8_t> make_bzimage(const BzImageOptions& o = {}) {
  const uint8_t setup_sects = 4;
  std::vector<uint8_t> file((setup_sects + 1) * 512 + 0x1000, 0);
  file[0x1f1] = setup_sects;
  file[0x1f0] = 0xee;  // boot sector code, not part of the setup header
  put<uint16_t>(file, 0x1fe, 0xaa55);
  file[0x200] = 0xeb;  // jmp short
  file[0x201] = 0x66;  // header length: up to 0x268
  put<uint32_t>(file, 0x202, 0x53726448);
  put<uint16_t>(file, 0x206, o.version);
  file[0x211] = 0x01;  // LOADED_HIGH
  put<uint32_t>(file, 0x214, o.code32_start);
  put<uint32_t>(file, 0x22c, 0x37ffffff);
  put<uint32_t>(file, 0x230, 0x200000);  // kernel_alignment
  file[0x234] = o.relocatable ? 1 : 0;
  put<uint16_t>(file, 0x236, o.xloadflags);
  put<uint32_t>(file, 0x238, o.cmdline_size);
  put<uint64_t>(file, 0x258, 0x1000000);
  put<uint32_t>(file, 0x260, o.init_size);
  for (size_t i = (setup_sects + 1) * 512; i < file.size(); ++i) file[i] = 0x5a;
  return file;
}

TEST(LinuxLoader, BzImageEntersLongModeWithZeroPageAndE820) {
  GuestMemory m = make_memory();
  Result<BootEntry> entry = load(m, make_bzimage(), "console=ttyS0");
  ASSERT_TRUE(entry.ok()) << entry.error().message();
  EXPECT_EQ(entry->kind, ImageKind::kLinuxBzImage);
  EXPECT_EQ(entry->mode, CpuMode::kLong64);
  EXPECT_EQ(entry->rip, 0x1000200u) << "pref_address + 0x200";
  EXPECT_EQ(entry->rsi, kZeroPageAddress);
  EXPECT_EQ(entry->page_table_root, kPml4Address);
  EXPECT_EQ(entry->gdt_base, kGdtAddress);
  EXPECT_EQ(entry->gdt_limit, 31);
  // The stack must not overlap the zero page or the page tables.
  EXPECT_GT(entry->rsp, kZeroPageAddress + 0x1000);
  EXPECT_LE(entry->rsp, kPml4Address);
  EXPECT_EQ(peek<uint8_t>(m, 0x1000000), 0x5a) << "protected-mode kernel at the load address";
  EXPECT_EQ(peek<uint8_t>(m, 0x1000fff), 0x5a);

  EXPECT_EQ(peek<uint32_t>(m, kZeroPageAddress + 0x202), 0x53726448u) << "setup header copied";
  EXPECT_EQ(peek<uint16_t>(m, kZeroPageAddress + 0x206), 0x20fu);
  EXPECT_EQ(peek<uint64_t>(m, kZeroPageAddress + 0x258), 0x1000000u) << "pref_address copied";
  EXPECT_EQ(peek<uint16_t>(m, kZeroPageAddress + 0x1fe), 0xaa55u) << "boot_flag copied";
  EXPECT_EQ(peek<uint8_t>(m, kZeroPageAddress + 0x1f0), 0) << "nothing before 0x1f1 copied";
  EXPECT_EQ(peek<uint16_t>(m, kZeroPageAddress + 0x1fa), 0xffffu) << "vid_mode";
  EXPECT_EQ(peek<uint8_t>(m, kZeroPageAddress + 0x210), 0xff) << "type_of_loader";
  EXPECT_EQ(peek<uint8_t>(m, kZeroPageAddress + 0x211), 0x81) << "LOADED_HIGH|CAN_USE_HEAP";
  EXPECT_EQ(peek<uint16_t>(m, kZeroPageAddress + 0x224), 0xfe00u) << "heap_end_ptr";
  EXPECT_EQ(peek<uint32_t>(m, kZeroPageAddress + 0x228), kCmdlineAddress);
  EXPECT_EQ(peek<uint32_t>(m, kZeroPageAddress + 0xc8), 0u) << "ext_cmd_line_ptr";
  EXPECT_EQ(peek_string(m, kCmdlineAddress), "console=ttyS0");
  EXPECT_EQ(peek<uint32_t>(m, kZeroPageAddress + 0x218), 0u) << "no initrd";
  ASSERT_EQ(peek<uint8_t>(m, kZeroPageAddress + 0x1e8), 3) << "e820 entries";
  const uint64_t e820 = kZeroPageAddress + 0x2d0;
  EXPECT_EQ(peek<uint64_t>(m, e820), 0u);
  EXPECT_EQ(peek<uint64_t>(m, e820 + 8), kEbdaStart);
  EXPECT_EQ(peek<uint32_t>(m, e820 + 16), kE820Ram);
  EXPECT_EQ(peek<uint64_t>(m, e820 + 20), kEbdaStart);
  EXPECT_EQ(peek<uint32_t>(m, e820 + 20 + 16), kE820Reserved);
  EXPECT_EQ(peek<uint64_t>(m, e820 + 40), kMiB);
  EXPECT_EQ(peek<uint64_t>(m, e820 + 40 + 8), 63 * kMiB);
  EXPECT_EQ(peek<uint32_t>(m, e820 + 40 + 16), kE820Ram);

  // Identity map: PML4[0] -> PDPT, PDPT[0..3] -> PDs, PD entries are 2 MiB pages.
  EXPECT_EQ(peek<uint64_t>(m, kPml4Address), (kPml4Address + 0x1000) | 0x3);
  EXPECT_EQ(peek<uint64_t>(m, kPml4Address + 8), 0u);
  EXPECT_EQ(peek<uint64_t>(m, kPml4Address + 0x1000 + 3 * 8), (kPml4Address + 0x5000) | 0x3);
  EXPECT_EQ(peek<uint64_t>(m, kPml4Address + 0x1000 + 4 * 8), 0u);
  EXPECT_EQ(peek<uint64_t>(m, kPml4Address + 0x2000 + 8 * 5), (5ull << 21) | 0x83);
  EXPECT_EQ(peek<uint64_t>(m, kPml4Address + 0x2000 + 8 * 2047), (2047ull << 21) | 0x83)
      << "the last 2 MiB below 4 GiB";
}

TEST(LinuxLoader, FiveGibibyteGuestGetsTheHighRegionInE820) {
  GuestMemory m = make_memory(5 * kGiB);
  Result<BootEntry> entry = load(m, make_bzimage());
  ASSERT_TRUE(entry.ok()) << entry.error().message();
  ASSERT_EQ(peek<uint8_t>(m, kZeroPageAddress + 0x1e8), 4);
  const uint64_t e820 = kZeroPageAddress + 0x2d0;
  EXPECT_EQ(peek<uint64_t>(m, e820 + 40 + 8), 3 * kGiB - kMiB);
  EXPECT_EQ(peek<uint64_t>(m, e820 + 60), 4 * kGiB);
  EXPECT_EQ(peek<uint64_t>(m, e820 + 60 + 8), 2 * kGiB);
  EXPECT_EQ(peek<uint32_t>(m, e820 + 60 + 16), kE820Ram);
}

TEST(LinuxLoader, NonRelocatableKernelLoadsAtCode32Start) {
  GuestMemory m = make_memory();
  BzImageOptions o;
  o.relocatable = false;
  Result<BootEntry> entry = load(m, make_bzimage(o));
  ASSERT_TRUE(entry.ok()) << entry.error().message();
  EXPECT_EQ(entry->rip, 0x100200u);
  EXPECT_EQ(peek<uint8_t>(m, 0x100000), 0x5a);

  o.code32_start = 0x10000;
  Result<BootEntry> low = load(m, make_bzimage(o));
  ASSERT_FALSE(low.ok());
  EXPECT_TRUE(contains(low.error().message(), "below 1 MiB")) << low.error().message();
}

TEST(LinuxLoader, InitrdGoesBelowTheLimitAndIsDescribed) {
  GuestMemory m = make_memory();
  std::string path = write_temp_file("test-initrd", std::string(10000, 'i'));
  Result<BootEntry> entry = load(m, make_bzimage(), "", 1, path);
  ASSERT_TRUE(entry.ok()) << entry.error().message();
  const uint32_t at = peek<uint32_t>(m, kZeroPageAddress + 0x218);
  EXPECT_EQ(peek<uint32_t>(m, kZeroPageAddress + 0x21c), 10000u);
  EXPECT_EQ(peek<uint32_t>(m, kZeroPageAddress + 0xc0), 0u) << "ext_ramdisk_image";
  EXPECT_EQ(peek<uint32_t>(m, kZeroPageAddress + 0xc4), 0u) << "ext_ramdisk_size";
  EXPECT_EQ(at % 4096, 0u);
  EXPECT_LE(at + 10000, 64 * kMiB);
  EXPECT_GT(at + 10000, 64 * kMiB - 2 * 4096) << "from the top of low RAM";
  EXPECT_GE(at, 0x1000000u + 0x200000u) << "above the kernel's init_size";
  EXPECT_EQ(peek<uint8_t>(m, at), 'i');
  EXPECT_EQ(peek<uint8_t>(m, at + 9999), 'i');
}

TEST(LinuxLoader, InitrdThatDoesNotFitIsAUserError) {
  GuestMemory m = make_memory(32 * kMiB);
  // Kernel [16 MiB, 18 MiB) leaves 14 MiB: a 15 MiB initrd cannot fit.
  std::string path = write_temp_file("big-initrd", std::string(15 * kMiB, 'i'));
  Result<BootEntry> entry = load(m, make_bzimage(), "", 1, path);
  ASSERT_FALSE(entry.ok());
  EXPECT_EQ(entry.error().kind(), ErrorKind::kUser);
  EXPECT_TRUE(contains(entry.error().message(), path)) << entry.error().message();
}

TEST(LinuxLoader, KernelBiggerThanRamIsAUserError) {
  GuestMemory m = make_memory(16 * kMiB);
  Result<BootEntry> entry = load(m, make_bzimage());
  ASSERT_FALSE(entry.ok());
  EXPECT_EQ(entry.error().kind(), ErrorKind::kUser);
  EXPECT_TRUE(contains(entry.error().message(), "--memory")) << entry.error().message();
}

TEST(LinuxLoader, CommandLineLongerThanTheKernelAcceptsIsRefused) {
  GuestMemory m = make_memory();
  BzImageOptions o;
  o.cmdline_size = 10;
  Result<BootEntry> entry = load(m, make_bzimage(o), "console=ttyS0");
  ASSERT_FALSE(entry.ok());
  EXPECT_TRUE(contains(entry.error().message(), "at most 10")) << entry.error().message();
}

TEST(LinuxLoader, OldProtocolAndMissing64BitEntryAreRefused) {
  GuestMemory m = make_memory();
  BzImageOptions old_protocol;
  old_protocol.version = 0x204;
  Result<BootEntry> old = load(m, make_bzimage(old_protocol));
  ASSERT_FALSE(old.ok());
  EXPECT_EQ(old.error().kind(), ErrorKind::kUser);
  EXPECT_TRUE(contains(old.error().message(), "2.04 is too old")) << old.error().message();

  BzImageOptions no64;
  no64.xloadflags = 0;
  Result<BootEntry> entry = load(m, make_bzimage(no64));
  ASSERT_FALSE(entry.ok());
  EXPECT_EQ(entry.error().kind(), ErrorKind::kUser);
  EXPECT_TRUE(contains(entry.error().message(),
                       "test-image: only 64-bit kernels with the 64-bit entry point are supported"))
      << entry.error().message();
}

// The real thing: the Debian kernel scripts/dev.sh fetches before the tests (as for the Linux
// integration test). Its header must parse and its protected-mode kernel must land where it asks.
TEST(LinuxLoader, DebianCloudKernelParses) {
  const std::string path = VMCTL_LINUX_KERNEL;
  ASSERT_FALSE(std::ifstream(path).fail())
      << path << " is missing: run scripts/fetch-debian-kernel.sh "
      << path.substr(0, path.rfind('/'));
  GuestMemory m = make_memory(256 * kMiB);
  BootConfig config;
  config.kernel_path = path;
  config.cmdline = "console=ttyS0";
  config.num_cpus = 2;
  Result<BootEntry> entry = load_kernel(m, config);
  ASSERT_TRUE(entry.ok()) << entry.error().message();
  EXPECT_EQ(entry->kind, ImageKind::kLinuxBzImage);
  EXPECT_EQ(entry->mode, CpuMode::kLong64);
  const uint64_t pref_address = peek<uint64_t>(m, kZeroPageAddress + 0x258);
  EXPECT_EQ(entry->rip, pref_address + 0x200);
  EXPECT_GE(peek<uint16_t>(m, kZeroPageAddress + 0x206), 0x20cu) << "boot protocol";
  EXPECT_NE(peek<uint16_t>(m, kZeroPageAddress + 0x236) & 1, 0) << "XLF_KERNEL_64";
  EXPECT_EQ(peek<uint8_t>(m, kZeroPageAddress + 0x1e8), 3);
  EXPECT_EQ(peek_string(m, kCmdlineAddress), "console=ttyS0");
}

// --- Detection and files -----------------------------------------------------------------------

TEST(Loader, GarbageEmptyAndForeignElfAreNotBootable) {
  GuestMemory m = make_memory();
  const std::string expected =
      "test-image is not a bootable kernel: not an ELF with a PVH note or multiboot header, nor a "
      "Linux bzImage";
  std::vector<uint8_t> garbage(4096);
  for (size_t i = 0; i < garbage.size(); ++i) garbage[i] = static_cast<uint8_t>(i * 7 % 251);
  Result<BootEntry> entry = load(m, garbage);
  ASSERT_FALSE(entry.ok());
  EXPECT_EQ(entry.error().kind(), ErrorKind::kUser);
  EXPECT_EQ(entry.error().message(), expected);

  entry = load(m, {});
  ASSERT_FALSE(entry.ok());
  EXPECT_EQ(entry.error().message(), expected);

  // An ELF with neither a PVH note nor a multiboot header (say, a shared library).
  ElfOptions o;
  o.type = ET_DYN;
  entry = load(m, make_elf({{0x100000, std::vector<uint8_t>(16, 1), 16}}, o));
  ASSERT_FALSE(entry.ok());
  EXPECT_EQ(entry.error().message(), expected);
}

TEST(Loader, MissingAndUnreadableFilesAreUserErrorsNamingThePath) {
  GuestMemory m = make_memory();
  BootConfig config;
  config.kernel_path = "/nonexistent/kernel";
  Result<BootEntry> missing = load_kernel(m, config);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().kind(), ErrorKind::kUser);
  EXPECT_TRUE(contains(missing.error().message(), "/nonexistent/kernel"));
  EXPECT_TRUE(contains(missing.error().message(), "No such file")) << missing.error().message();

  config.kernel_path = ::testing::TempDir();
  Result<BootEntry> directory = load_kernel(m, config);
  ASSERT_FALSE(directory.ok());
  EXPECT_EQ(directory.error().kind(), ErrorKind::kUser);
  EXPECT_TRUE(contains(directory.error().message(), "Is a directory"))
      << directory.error().message();

  config.kernel_path = write_temp_file("empty-kernel", "");
  Result<BootEntry> empty = load_kernel(m, config);
  ASSERT_FALSE(empty.ok());
  EXPECT_TRUE(contains(empty.error().message(), config.kernel_path + " is not a bootable kernel"))
      << empty.error().message();

  config.kernel_path = write_temp_file(
      "kernel.bin",
      std::string(reinterpret_cast<const char*>(make_bzimage().data()), make_bzimage().size()));
  config.initrd_path = "/nonexistent/initrd";
  Result<BootEntry> no_initrd = load_kernel(m, config);
  ASSERT_FALSE(no_initrd.ok());
  EXPECT_TRUE(contains(no_initrd.error().message(), "initrd /nonexistent/initrd"))
      << no_initrd.error().message();

  config.initrd_path.reset();
  Result<BootEntry> from_file = load_kernel(m, config);
  ASSERT_TRUE(from_file.ok()) << from_file.error().message();
  EXPECT_EQ(from_file->kind, ImageKind::kLinuxBzImage);
}

TEST(Loader, CommandLineTooLongIsRefused) {
  GuestMemory m = make_memory();
  auto image = make_pvh_elf({{0x100000, std::vector<uint8_t>(16, 1), 16}}, 0x100000);
  Result<BootEntry> entry = load(m, image, std::string(kCmdlineMax, 'x'));
  ASSERT_FALSE(entry.ok());
  EXPECT_EQ(entry.error().kind(), ErrorKind::kUser);
  EXPECT_TRUE(contains(entry.error().message(), "command line")) << entry.error().message();
  // One byte shorter leaves room for the NUL.
  Result<BootEntry> longest = load(m, image, std::string(kCmdlineMax - 1, 'x'));
  ASSERT_TRUE(longest.ok()) << longest.error().message();
  EXPECT_EQ(peek<uint8_t>(m, kCmdlineAddress + kCmdlineMax - 2), 'x');
  EXPECT_EQ(peek<uint8_t>(m, kCmdlineAddress + kCmdlineMax - 1), 0);
}

TEST(Loader, ImageKindNames) {
  EXPECT_STRNE(image_kind_name(ImageKind::kPvhElf), image_kind_name(ImageKind::kMultibootElf));
  EXPECT_TRUE(contains(image_kind_name(ImageKind::kLinuxBzImage), "bzImage"));
  EXPECT_TRUE(contains(image_kind_name(ImageKind::kPvhElf), "PVH"));
  EXPECT_TRUE(contains(image_kind_name(ImageKind::kMultibootFlat), "multiboot"));
}

// --- e820 --------------------------------------------------------------------------------------

TEST(E820, SmallGuestHasLowRamReservedAreaAndRamFromOneMebibyte) {
  GuestMemory m = make_memory(64 * kMiB);
  std::vector<E820Entry> map = build_e820(m);
  ASSERT_EQ(map.size(), 3u);
  EXPECT_EQ(map[0].addr, 0u);
  EXPECT_EQ(map[0].size, kEbdaStart);
  EXPECT_EQ(map[0].type, kE820Ram);
  EXPECT_EQ(map[1].addr, kEbdaStart);
  EXPECT_EQ(map[1].addr + map[1].size, kMiB);
  EXPECT_EQ(map[1].type, kE820Reserved);
  EXPECT_EQ(map[2].addr, kMiB);
  EXPECT_EQ(map[2].addr + map[2].size, 64 * kMiB);
  EXPECT_EQ(map[2].type, kE820Ram);
}

TEST(E820, LargeGuestSkipsTheMmioHoleBelowFourGibibytes) {
  GuestMemory m = make_memory(5 * kGiB);
  std::vector<E820Entry> map = build_e820(m);
  ASSERT_EQ(map.size(), 4u);
  EXPECT_EQ(map[2].addr, kMiB);
  EXPECT_EQ(map[2].addr + map[2].size, 3 * kGiB);
  EXPECT_EQ(map[3].addr, 4 * kGiB);
  EXPECT_EQ(map[3].size, 2 * kGiB);
  EXPECT_EQ(map[3].type, kE820Ram);
  uint64_t ram = 0;
  for (const E820Entry& e : map) ram += e.type == kE820Ram ? e.size : 0;
  EXPECT_EQ(ram, 5 * kGiB - (kMiB - kEbdaStart));
}

// --- MP table ----------------------------------------------------------------------------------

uint8_t byte_sum(const GuestMemory& m, uint64_t at, size_t len) {
  std::vector<uint8_t> bytes(len);
  EXPECT_TRUE(m.read(at, bytes.data(), len).ok());
  uint8_t s = 0;
  for (uint8_t b : bytes) s = static_cast<uint8_t>(s + b);
  return s;
}

TEST(MpTable, ChecksumsAndEntriesForOneAndFourCpus) {
  for (unsigned cpus : {1u, 4u}) {
    SCOPED_TRACE(cpus);
    GuestMemory m = make_memory();
    ASSERT_TRUE(write_mp_table(m, cpus).ok());
    char sig[4];
    ASSERT_TRUE(m.read(kMpTableAddress, sig, 4).ok());
    EXPECT_EQ(std::string(sig, 4), "_MP_");
    EXPECT_EQ(peek<uint8_t>(m, kMpTableAddress + 8), 1) << "length in paragraphs";
    EXPECT_EQ(peek<uint8_t>(m, kMpTableAddress + 9), 4) << "spec revision 1.4";
    EXPECT_EQ(byte_sum(m, kMpTableAddress, 16), 0) << "floating pointer checksum";
    const uint32_t table = peek<uint32_t>(m, kMpTableAddress + 4);
    EXPECT_EQ(table, kMpTableAddress + 16);
    ASSERT_TRUE(m.read(table, sig, 4).ok());
    EXPECT_EQ(std::string(sig, 4), "PCMP");
    const uint16_t length = peek<uint16_t>(m, table + 4);
    EXPECT_EQ(byte_sum(m, table, length), 0) << "configuration table checksum";
    EXPECT_EQ(peek<uint32_t>(m, table + 36), 0xfee00000u) << "local APIC";
    const uint16_t count = peek<uint16_t>(m, table + 34);
    EXPECT_EQ(count, cpus + 1 + 1 + 16 + 2);

    unsigned processors = 0, bsp = 0, buses = 0, ioapics = 0, lints = 0;
    std::vector<int> pin_of_irq(16, -1);
    uint64_t e = table + 44;
    for (uint16_t i = 0; i < count; ++i) {
      const uint8_t type = peek<uint8_t>(m, e);
      switch (type) {
        case 0:
          EXPECT_EQ(peek<uint8_t>(m, e + 1), processors) << "APIC id";
          EXPECT_NE(peek<uint8_t>(m, e + 3) & 1, 0) << "enabled";
          if (peek<uint8_t>(m, e + 3) & 2) ++bsp;
          ++processors;
          e += 20;
          break;
        case 1:
          ++buses;
          EXPECT_EQ(peek<uint8_t>(m, e + 1), 0);
          EXPECT_EQ(peek_string(m, e + 2, 3), "ISA");
          e += 8;
          break;
        case 2:
          ++ioapics;
          EXPECT_EQ(peek<uint8_t>(m, e + 1), cpus) << "IOAPIC id after the CPUs";
          EXPECT_EQ(peek<uint8_t>(m, e + 3) & 1, 1) << "enabled";
          EXPECT_EQ(peek<uint32_t>(m, e + 4), 0xfec00000u);
          e += 8;
          break;
        case 3: {
          EXPECT_EQ(peek<uint8_t>(m, e + 1), 0) << "INT";
          EXPECT_EQ(peek<uint8_t>(m, e + 6), cpus) << "to the IOAPIC";
          const uint8_t irq = peek<uint8_t>(m, e + 5);
          ASSERT_LT(irq, 16);
          pin_of_irq[irq] = peek<uint8_t>(m, e + 7);
          e += 8;
          break;
        }
        case 4:
          ++lints;
          EXPECT_EQ(peek<uint8_t>(m, e + 6), 0xff) << "all local APICs";
          EXPECT_EQ(peek<uint8_t>(m, e + 1), peek<uint8_t>(m, e + 7) == 0 ? 3 : 1)
              << "LINT0 ExtINT, LINT1 NMI";
          e += 8;
          break;
        default:
          FAIL() << "unknown MP entry type " << int{type};
      }
    }
    EXPECT_EQ(processors, cpus);
    EXPECT_EQ(bsp, 1u);
    EXPECT_EQ(buses, 1u);
    EXPECT_EQ(ioapics, 1u);
    EXPECT_EQ(lints, 2u);
    // KVM's default routing: ISA IRQ n on IOAPIC pin n, IRQ 0 included.
    for (int irq = 0; irq < 16; ++irq) EXPECT_EQ(pin_of_irq[irq], irq) << "IRQ " << irq;
    EXPECT_EQ(e, table + length);
    EXPECT_LE(e, kMiB);
  }
}

TEST(MpTable, WrittenByEveryLoad) {
  GuestMemory m = make_memory();
  ASSERT_TRUE(load(m, make_bzimage(), "", 4).ok());
  const uint32_t table = peek<uint32_t>(m, kMpTableAddress + 4);
  EXPECT_EQ(peek<uint16_t>(m, table + 34), 4 + 1 + 1 + 16 + 2);
}

}  // namespace
}  // namespace vmctl::vmm::boot
