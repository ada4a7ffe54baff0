// The receiving end of a live migration, inside the VM process vmctld starts for it
// (`vmctl receive`): the record stream arrives on a descriptor, the VM is restored from it, and the
// verdict goes back on the same descriptor.
#pragma once

#include <cstdint>
#include <string>

namespace vmctl::vmprocess {

struct ReceiveOptions {
  int stream_fd = -1;  // the record stream in, the verdict out
  std::string control;
  std::string console_log;
  std::string dirty_tracking = "auto";
  uint32_t dirty_ring_entries = 0;
};

// Restores the VM from the stream and runs it; returns the process exit code.
int receive_migration(const ReceiveOptions& options);

}  // namespace vmctl::vmprocess
