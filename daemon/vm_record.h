// The saved form of a VM that vmctld manages: STATE_DIR/vms/NAME/vm.json. The manager's runtime
// entry (process, watcher thread, version) is built from it at start and written back to it on
// every change (daemon/vm_manager.cc).
//
// vm.json is a JSON object:
//   name             string, the VM's name (also its directory's)
//   state_code       integer, a v1::VmState; "state" is the same as text, for people
//   config           object: kernel, initrd, cmdline, dirty_tracking (strings), memory_bytes,
//                    cpus, dirty_ring_entries (unsigned integers)
//   pid, exit_code   integers; created_unix_ms, integer milliseconds since the epoch
//   error, migrated_to  strings
// `name` and `state_code` are required; a missing other field takes its default, a field of the
// wrong type is an error; unknown fields are ignored (a newer daemon may add some).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "base/error.h"
#include "proto/vmctl.pb.h"

namespace vmctl::daemon {

struct VmRecord {
  std::string name;
  ::vmctl::v1::VmConfig config;
  ::vmctl::v1::VmState state = ::vmctl::v1::VM_STATE_CREATED;
  int32_t pid = 0;
  int32_t exit_code = 0;
  std::string error;
  std::string migrated_to;
  int64_t created_unix_ms = 0;
  std::string migration_id;  // the migration the VM takes part in (see migrate/journal.h)
};

// No vm.json is larger than this; a bigger file is refused before it is read.
inline constexpr size_t kMaxVmRecordBytes = 1 << 20;

// vm.json's text. Never throws: bytes that are not UTF-8 (an error message that quotes a peer)
// are written as U+FFFD.
std::string vm_record_to_json(const VmRecord& record);

// Parses vm.json's text. A malformed text is a user error naming what is wrong ("field
// 'config.cpus' is a string, expected an unsigned integer"). Never throws.
Result<VmRecord> parse_vm_record(std::string_view text);

// Reads and parses `path`, which belongs to the VM `name`: NOT_FOUND if there is no such file,
// else a user error "vm.json is malformed: ... (delete the VM or fix the file)" for a file that is
// unreadable, too large, not a record, or a record of another VM.
Result<VmRecord> load_vm_record(const std::string& path, const std::string& name);

}  // namespace vmctl::daemon
