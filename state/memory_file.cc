#include "state/memory_file.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "base/atomic_file.h"
#include "base/text.h"

namespace vmctl::state {
namespace {

constexpr char kMagic[8] = {'V', 'M', 'C', 'T', 'L', 'M', 'E', 'M'};
constexpr uint32_t kVersion = 1;

struct MemoryFileHeader {
  char magic[8];
  uint32_t version;
  uint32_t header_size;
  uint64_t ram_size;
  char snapshot_id[32];
};
static_assert(sizeof(MemoryFileHeader) == 56, "the on-disk layout has no padding");

constexpr char kPendingInfix[] = ".pending-";

// The snapshot id a memory file is bound to, or "" if `path` is missing or not a memory file.
std::string bound_snapshot_id(const std::string& path) {
  int raw = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (raw < 0) return "";
  Fd fd(raw);
  MemoryFileHeader header{};
  if (::pread(fd.get(), &header, sizeof header, 0) != static_cast<ssize_t>(sizeof header) ||
      std::memcmp(header.magic, kMagic, sizeof kMagic) != 0) {
    return "";
  }
  return std::string(header.snapshot_id, strnlen(header.snapshot_id, sizeof header.snapshot_id));
}

// Snapshot ids are 32 hex digits (state/vm_state.cc, new_snapshot_id).
bool is_snapshot_id(std::string_view id) {
  if (id.size() != 32) return false;
  for (char c : id) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

}  // namespace

Result<MemoryFileStats> write_memory_file(const vmm::GuestMemory& memory, FileSink& sink,
                                          const std::string& snapshot_id) {
  MemoryFileStats stats;
  std::vector<uint8_t> header_page(kMemoryFileHeaderSize, 0);
  MemoryFileHeader header{};
  std::memcpy(header.magic, kMagic, sizeof kMagic);
  header.version = kVersion;
  header.header_size = kMemoryFileHeaderSize;
  header.ram_size = memory.ram_size();
  std::memcpy(header.snapshot_id, snapshot_id.data(),
              std::min(snapshot_id.size(), sizeof header.snapshot_id));
  std::memcpy(header_page.data(), &header, sizeof header);
  TRY(sink.write(header_page.data(), header_page.size()));
  for (const vmm::MemoryRegion& region : memory.regions()) {
    const uint8_t* base = region.host.data();
    uint64_t off = 0;
    bool zero = region.size > 0 && vmm::page_is_zero(base);
    while (off < region.size) {
      // One run of zero or non-zero pages at a time: holes for the former, one write for the
      // latter. The page that ends a run starts the next, so each page is looked at once.
      uint64_t end = off + vmm::kPageSize;
      bool next_zero = zero;
      while (end < region.size && (next_zero = vmm::page_is_zero(base + end)) == zero) {
        end += vmm::kPageSize;
      }
      uint64_t pages = (end - off) / vmm::kPageSize;
      if (zero) {
        TRY(sink.skip(end - off));
        stats.zero_pages += pages;
      } else {
        TRY(sink.write(base + off, end - off));
        stats.pages += pages;
      }
      off = end;
      zero = next_zero;
    }
  }
  stats.file_size = kMemoryFileHeaderSize + memory.ram_size();
  return stats;
}

Result<Fd> open_memory_file(const std::string& path, uint64_t ram_size,
                            const std::string& snapshot_id) {
  // The path comes from the snapshot and the id from the memory file: sanitised for messages.
  const std::string shown = sanitize_text(path, 4096);
  int raw = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (raw < 0) {
    return Error::user(
        fmt::format("cannot open the snapshot's memory file {}: {}", shown, std::strerror(errno)));
  }
  Fd fd(raw);
  MemoryFileHeader header{};
  ssize_t n = ::pread(fd.get(), &header, sizeof header, 0);
  if (n != static_cast<ssize_t>(sizeof header) ||
      std::memcmp(header.magic, kMagic, sizeof kMagic) != 0) {
    return Error::user(fmt::format("{} is not a vmctl memory file", shown));
  }
  if (header.version != kVersion || header.header_size != kMemoryFileHeaderSize) {
    return Error::user(
        fmt::format("memory file {} has layout version {} (this vmctl reads {}): upgrade vmctl",
                    shown, header.version, kVersion));
  }
  std::string id(header.snapshot_id, strnlen(header.snapshot_id, sizeof header.snapshot_id));
  if (id != snapshot_id) {
    return Error::user(fmt::format(
        "memory file {} belongs to snapshot {}, not to this snapshot ({}): it was overwritten "
        "by a later snapshot; restore that snapshot or the matching memory file",
        shown, sanitize_text(id, 80), sanitize_text(snapshot_id, 80)));
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) {
    return Error::from_errno(fmt::format("fstat {}", shown), errno);
  }
  uint64_t expected = kMemoryFileHeaderSize + ram_size;
  if (header.ram_size != ram_size || static_cast<uint64_t>(st.st_size) != expected) {
    return Error::user(fmt::format(
        "memory file {} is {} bytes for {} bytes of RAM, but the snapshot needs {} bytes: it is "
        "truncated or from another machine",
        shown, st.st_size, header.ram_size, expected));
  }
  return fd;
}

Status read_memory_file(int fd, const std::string& path, vmm::GuestMemory& memory) {
  uint64_t file_offset = kMemoryFileHeaderSize;
  for (vmm::MemoryRegion& region : memory.regions()) {
    uint8_t* base = region.host.data();
    uint64_t done = 0;
    while (done < region.size) {
      // Holes read as zeros, and fresh anonymous memory already is: skip them without touching
      // (and so allocating) the guest pages.
      off_t data = ::lseek(fd, static_cast<off_t>(file_offset + done), SEEK_DATA);
      if (data < 0 && errno == ENXIO) break;  // only holes remain
      if (data < 0) {
        return Error::from_errno(fmt::format("reading {}", sanitize_text(path, 4096)), errno);
      }
      uint64_t start = static_cast<uint64_t>(data) - file_offset;
      if (start >= region.size) break;
      off_t hole = ::lseek(fd, data, SEEK_HOLE);
      uint64_t end =
          hole < 0 ? region.size
                   : std::min<uint64_t>(region.size, static_cast<uint64_t>(hole) - file_offset);
      while (start < end) {
        ssize_t n = ::pread(fd, base + start, end - start, static_cast<off_t>(file_offset + start));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
          return Error::user(fmt::format("reading memory file {}: {}", sanitize_text(path, 4096),
                                         n < 0 ? std::strerror(errno) : "unexpected end"));
        }
        start += static_cast<uint64_t>(n);
      }
      done = end;
    }
    file_offset += region.size;
  }
  return ok_status();
}

std::string pending_memory_file(const std::string& path, const std::string& snapshot_id) {
  return path + kPendingInfix + snapshot_id;
}

Status install_pending_memory_file(const std::string& path, const std::string& snapshot_id) {
  std::string pending = pending_memory_file(path, snapshot_id);
  if (::rename(pending.c_str(), path.c_str()) != 0) {
    return Error::from_errno(fmt::format("moving {} into place as {}", pending, path), errno);
  }
  TRY(fsync_directory(directory_of(path)));
  // Pending files of other snapshots of this memory file: a crashed snapshot's (never committed),
  // or one whose roll-forward would now replace this snapshot's memory file.
  std::string dir = directory_of(path);
  size_t slash = path.rfind('/');
  std::string prefix = (slash == std::string::npos ? path : path.substr(slash + 1)) + kPendingInfix;
  DIR* d = ::opendir(dir.c_str());
  if (!d) return ok_status();
  std::vector<std::string> stale;
  while (dirent* entry = ::readdir(d)) {
    std::string_view name = entry->d_name;
    if (name.substr(0, prefix.size()) == prefix && is_snapshot_id(name.substr(prefix.size()))) {
      stale.emplace_back(name);
    }
  }
  ::closedir(d);
  for (const std::string& name : stale) ::unlink((dir + "/" + name).c_str());
  return ok_status();
}

Status roll_forward_memory_file(const std::string& path, uint64_t ram_size,
                                const std::string& snapshot_id) {
  std::string pending = pending_memory_file(path, snapshot_id);
  struct stat st {};
  if (::lstat(pending.c_str(), &st) != 0) return ok_status();  // nothing was left half-done
  if (bound_snapshot_id(path) == snapshot_id) return ok_status();
  // The snapshot was committed but its memory file was not moved into place. Check the pending
  // file before it replaces anything: it must be this snapshot's, whole.
  TRY_CTX(open_memory_file(pending, ram_size, snapshot_id),
          fmt::format("finishing the interrupted snapshot {}", snapshot_id));
  TRY_CTX(install_pending_memory_file(path, snapshot_id),
          fmt::format("finishing the interrupted snapshot {} (its memory file waits as {})",
                      snapshot_id, pending));
  return ok_status();
}

}  // namespace vmctl::state
