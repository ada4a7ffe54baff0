// Image detection and file reading; the loaders live in elf_loader.cc and linux_loader.cc.
#include <cerrno>
#include <cstring>
#include <fstream>

#include <fmt/format.h>

#include "vmm/boot/boot.h"
#include "vmm/boot/loader_internal.h"

namespace vmctl::vmm::boot {
namespace {

constexpr uint64_t kMaxFileSize = uint64_t{4} << 30;

Result<std::vector<uint8_t>> read_file(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) {
    return Error::user(fmt::format("cannot read {} {}: {}", what, path, std::strerror(errno)));
  }
  std::streamoff size = in.tellg();
  if (size < 0 || static_cast<uint64_t>(size) > kMaxFileSize) {
    return Error::user(
        fmt::format("cannot read {} {}: not a regular file under 4 GiB", what, path));
  }
  std::vector<uint8_t> bytes(static_cast<size_t>(size));
  in.seekg(0);
  if (!in.read(reinterpret_cast<char*>(bytes.data()), size)) {
    return Error::user(fmt::format("cannot read {} {}: read failed", what, path));
  }
  return bytes;
}

Result<BootEntry> load(GuestMemory& memory, const std::vector<uint8_t>& kernel,
                       const std::string& kernel_name,
                       const std::optional<std::vector<uint8_t>>& initrd,
                       const BootConfig& config) {
  if (kernel.empty()) {
    return Error::user(fmt::format("{} is not a bootable kernel: the file is empty", kernel_name));
  }
  std::string initrd_name = config.initrd_path.value_or("initrd");
  BootImages images{kernel, kernel_name, initrd, initrd_name};
  BootEntry entry;
  TRY(write_boot_gdt(memory, entry));
  TRY(write_cmdline(memory, config.cmdline));
  TRY(write_mp_table(memory, config.num_cpus));
  // The order matters: a PVH note wins over a multiboot header in the same ELF.
  for (auto loader : {try_load_linux, try_load_pvh, try_load_multiboot}) {
    std::optional<Result<BootEntry>> loaded = loader(memory, images, config);
    if (!loaded) continue;
    if (!loaded->ok()) return std::move(*loaded).error();
    BootEntry result = std::move(*loaded).value();
    result.gdt_base = entry.gdt_base;
    result.gdt_limit = entry.gdt_limit;
    return result;
  }
  return Error::user(fmt::format(
      "{} is not a bootable kernel: not an ELF with a PVH note or multiboot header, nor a Linux "
      "bzImage",
      kernel_name));
}

}  // namespace

Result<BootEntry> load_kernel(GuestMemory& memory, const BootConfig& config) {
  std::vector<uint8_t> kernel = TRY(read_file(config.kernel_path, "kernel"));
  std::optional<std::vector<uint8_t>> initrd;
  if (config.initrd_path) initrd = TRY(read_file(*config.initrd_path, "initrd"));
  return load(memory, kernel, config.kernel_path, initrd, config);
}

Result<BootEntry> load_kernel_image(GuestMemory& memory, const std::vector<uint8_t>& image,
                                    const std::string& name, const BootConfig& config) {
  std::optional<std::vector<uint8_t>> initrd;
  if (config.initrd_path) initrd = TRY(read_file(*config.initrd_path, "initrd"));
  return load(memory, image, name, initrd, config);
}

}  // namespace vmctl::vmm::boot
