// Allocator settings for processes that stream guest memory.
#pragma once

#include <malloc.h>

namespace vmctl {

// Records and migration chunks are ~1 MiB buffers allocated and freed for every MiB of guest
// memory sent or received. With glibc's defaults such buffers come from mmap and go back with
// munmap (or are trimmed off the heap), so every one costs 256 page faults, each zeroing a page,
// on both ends of a migration: on a paravirtual host that is more CPU than the copy itself.
// Serving them from the heap and keeping freed memory for the next one (a few MiB at most are
// live at once) removes the faults.
inline void keep_streaming_buffers() {
  mallopt(M_MMAP_THRESHOLD, 64 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
}

}  // namespace vmctl
