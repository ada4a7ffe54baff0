// Image detection and file reading; the loaders live in elf_loader.cc and linux_loader.cc and the
// shared tables in tables.cc.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "base/fd.h"
#include "vmm/boot/boot.h"
#include "vmm/boot/loader_internal.h"

namespace vmctl::vmm::boot {
namespace {

// Nothing bootable is this big, and the limit keeps a mistaken path (a disk image) from eating
// host memory.
constexpr uint64_t kMaxFileSize = uint64_t{2} << 30;

Error read_error(const char* what, const std::string& path, const std::string& why) {
  return Error::user(fmt::format("cannot read {} {}: {}", what, path, why));
}

// open/fstat/read rather than iostreams so the message carries the real errno text.
Result<std::vector<uint8_t>> read_file(const std::string& path, const char* what) {
  int raw = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (raw < 0) return read_error(what, path, std::strerror(errno));
  Fd fd(raw);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return read_error(what, path, std::strerror(errno));
  if (S_ISDIR(st.st_mode)) return read_error(what, path, std::strerror(EISDIR));
  if (!S_ISREG(st.st_mode)) return read_error(what, path, "not a regular file");
  if (static_cast<uint64_t>(st.st_size) > kMaxFileSize) {
    return read_error(what, path, fmt::format("larger than {} GiB", kMaxFileSize >> 30));
  }
  std::vector<uint8_t> bytes(static_cast<size_t>(st.st_size));
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::read(fd.get(), bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return read_error(what, path, std::strerror(errno));
    if (n == 0) return read_error(what, path, "the file shrank while being read");
    done += static_cast<size_t>(n);
  }
  return bytes;
}

Result<BootEntry> load(GuestMemory& memory, const std::vector<uint8_t>& kernel,
                       const std::string& kernel_name,
                       const std::optional<std::vector<uint8_t>>& initrd,
                       const BootConfig& config) {
  const std::string not_bootable = fmt::format(
      "{} is not a bootable kernel: not an ELF with a PVH note or multiboot header, nor a Linux "
      "bzImage",
      kernel_name);
  if (kernel.empty()) return Error::user(not_bootable);
  std::string initrd_name = config.initrd_path.value_or("initrd");
  BootImages images{kernel, kernel_name, initrd, initrd_name};
  BootEntry tables;
  TRY(write_boot_gdt(memory, tables));
  TRY(write_cmdline(memory, config.cmdline));
  TRY(write_mp_table(memory, config.num_cpus));
  // The order matters: a PVH note wins over a multiboot header in the same ELF.
  for (auto loader : {try_load_linux, try_load_pvh, try_load_multiboot}) {
    std::optional<Result<BootEntry>> loaded = loader(memory, images, config);
    if (!loaded) continue;
    if (!loaded->ok()) return std::move(*loaded).error();
    BootEntry entry = std::move(*loaded).value();
    entry.gdt_base = tables.gdt_base;
    entry.gdt_limit = tables.gdt_limit;
    return entry;
  }
  return Error::user(not_bootable);
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
