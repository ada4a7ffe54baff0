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

// A snapshot with a memory file is two files, and they commit as a pair: after a crash at any
// point a restore finds both old or both new, never one of each. The snapshot's rename is the one
// commit point (state/vm_state.cc, save_snapshot):
//   1. the new memory file is written and fsynced (as "<memory file>.tmp-<pid>-<random>") and
//      renamed to its pending name, "<memory file>.pending-<new snapshot id>";
//   2. the new snapshot is written, fsynced and renamed over the old one: the pair is committed;
//   3. the pending memory file is renamed over the old memory file, and any other pending files
//      of that memory file are removed.
// A crash before 2 leaves the old pair in place (and leftovers the next snapshot removes). A crash
// between 2 and 3 leaves the new snapshot beside the old memory file and the new one's pending
// file: whoever opens the pair next finishes step 3 (roll_forward_memory_file).
std::string pending_memory_file(const std::string& path, const std::string& snapshot_id);

// Step 3: moves the pending memory file of `snapshot_id` over `path` (fsyncing the directory) and
// removes the pending files other snapshots left.
Status install_pending_memory_file(const std::string& path, const std::string& snapshot_id);

// Restore: when the memory file at `path` is not the one of `snapshot_id` but that snapshot's
// pending file is there (a snapshot interrupted between steps 2 and 3), checks the pending file
// and moves it into place. Does nothing otherwise (open_memory_file then reports any mismatch).
Status roll_forward_memory_file(const std::string& path, uint64_t ram_size,
                                const std::string& snapshot_id);

}  // namespace vmctl::state
