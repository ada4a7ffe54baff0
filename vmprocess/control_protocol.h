// The control socket protocol of a VM process: what vmctld (and `vmctl ... --control`) may ask
// of the process that runs a VM.
//
// A unix stream socket (mode 0600: only its owner may drive the VM). Each connection carries one
// request line (JSON object, at most 1 MiB) and gets one answer line, {"ok":true,...} or
// {"ok":false,"error":"..."} — except "migrate", whose connection carries progress lines until
// its last one (phase sent, failed or cancelled). Requests:
//
//   {"op":"status"}                  paused, vCPUs, memory, dirty tracking, pid, and the
//                                    migration this VM takes part in: {"migration":{"id",
//                                    "role":"source|destination","stage":...}}
//   {"op":"stats"}                   KVM exit statistics per vCPU
//   {"op":"guest_cpu_features"}      the CPU features the guest was given (no vCPU ioctl)
//   {"op":"console","data":S}        bytes for the guest's COM1 receiver
//   {"op":"pause"} {"op":"resume"} {"op":"stop"}
//   {"op":"snapshot","path":P,"stop":B,"diff":B,"compression":N,"memory_file":M}
//   {"op":"migrate","migration_id":ID,"secret":S,"destination":D,"streams":N,"tls":{"ca","cert",
//    "key"},"plaintext":B,"downtime_ms":N,"max_rounds":N,"max_seconds":N,"auto_converge":B,"compression":N,
//    "stall_timeout_ms":N}          source: send the VM (migration_sender.h)
//   {"op":"cancel_migration"}        source, while sending
//   {"op":"migration_decision","migration_id":ID,"decision":"commit|rollback"}
//                                    source, after "sent": end here, or run on here
//   {"op":"switchover","migration_id":ID}   destination: the VM is ours now: resume it
//   {"op":"discard","migration_id":ID}      destination: throw the copy away (the VM ends)
//
// While a migration's switchover is pending (source: sent; destination: waiting), the process
// refuses everything that would run, stop or change the VM except the decision for that id.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "base/error.h"
#include "migrate/channel.h"

namespace vmctl::vmprocess {

enum class ControlOp {
  kStatus,
  kStats,
  kGuestCpuFeatures,
  kConsole,
  kPause,
  kResume,
  kStop,
  kSnapshot,
  kMigrate,
  kCancelMigration,
  kMigrationDecision,
  kSwitchover,
  kDiscard,
};

struct SnapshotArgs {
  std::string path;
  bool stop = false;
  bool diff = false;
  int compression = 0;
  std::string memory_file;
};

struct MigrateArgs {
  std::string migration_id, secret, destination;
  unsigned streams = 1;
  migrate::TlsConfig tls;
  bool plaintext = false;  // no TLS on TCP data connections: both daemons trust the network
  double downtime_ms = 30;
  unsigned max_rounds = 30;
  double max_seconds = 120;
  bool auto_converge = false;
  int compression = 0;
  uint32_t stall_timeout_ms = 15000;
};

struct ControlRequest {
  ControlOp op = ControlOp::kStatus;
  std::string console_data;
  SnapshotArgs snapshot;
  MigrateArgs migrate;
  std::string migration_id;  // decision, switchover, discard
  bool commit = false;       // decision
};

// Parses and checks one request line; a line that is not a well-formed request is a clear error,
// never an exception.
Result<ControlRequest> parse_control_request(std::string_view line);

}  // namespace vmctl::vmprocess
