// The receiving end of a live migration, inside the VM process vmctld starts for it
// (`vmctl receive`; the "destination VM process" of migrate/protocol.md): it builds the offered
// machine, takes the source VM process's data connections itself (migrate/data_plane.md), restores
// the VM from them PAUSED, says the verdict to its daemon ("READY <ms>" or "FAILED <why>", one
// line), and the VM runs only once vmctld sends the switchover over the control socket (which is
// open before READY is said). A daemon that goes away before that leaves the VM paused for its
// restarted self to settle; one that goes away (or discards) before READY ends the restore.
#pragma once

#include <cstdint>
#include <string>

#include "migrate/channel.h"

namespace vmctl::vmprocess {

struct ReceiveOptions {
  // The daemon's end: the secret in, then LISTENING, READY or FAILED out (migrate/data_plane.md).
  int stream_fd = -1;
  unsigned data_connections = 1;
  std::string data_socket;      // unix socket for the data connections, or ...
  std::string data_listen;      // ... the TCP address (host) to listen on, with TLS unless ...
  bool data_plaintext = false;  // ... both daemons trust each other's network
  migrate::TlsConfig tls;
  std::string migration_id;
  uint64_t memory_bytes = 0;  // the offered machine: built before the stream arrives
  unsigned vcpus = 0;
  bool stay_paused = false;  // the VM was paused at the source
  std::string control;
  std::string console_log;
  std::string console_log_max;  // e.g. "8M" (console.h)
  std::string dirty_tracking = "auto";
  uint32_t dirty_ring_entries = 0;
  std::string irqchip = "kernel";  // vmm::IrqchipMode
  uint64_t max_guest_memory = 0;   // 0: the host's RAM
};

// Restores the VM from the stream and runs it; returns the process exit code.
int receive_migration(const ReceiveOptions& options);

}  // namespace vmctl::vmprocess
