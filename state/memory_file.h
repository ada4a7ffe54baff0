// Guest RAM as a separate raw file next to a snapshot, so restore can map it instead of reading it
// (`vmctl snapshot --memory-file`, `vmctl restore --lazy`). Layout in proto/state.capnp
// (MemoryFile).
#pragma once

#include <cstdint>
#include <string>

#include "base/error.h"
#include "base/fd.h"
#include "state/stream.h"
#include "vmm/memory.h"

namespace vmctl::state {

inline constexpr uint64_t kMemoryFileHeaderSize = 4096;

struct MemoryFileStats {
  uint64_t pages = 0;       // non-zero pages written
  uint64_t zero_pages = 0;  // left as holes
  uint64_t file_size = 0;
};

// Writes the header and every region to `sink`, zero pages as holes. The caller commits the sink.
Result<MemoryFileStats> write_memory_file(const vmm::GuestMemory& memory, FileSink& sink,
                                          const std::string& snapshot_id);

// Opens a memory file and checks it belongs to the snapshot `snapshot_id` and holds `ram_size`
// bytes of RAM; a mismatch is a user error naming both files' facts.
Result<Fd> open_memory_file(const std::string& path, uint64_t ram_size,
                            const std::string& snapshot_id);

// Reads a checked memory file into anonymous guest memory (restore without --lazy).
Status read_memory_file(int fd, const std::string& path, vmm::GuestMemory& memory);

}  // namespace vmctl::state
