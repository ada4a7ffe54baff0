// libFuzzer target: a VM's vm.json (daemon/vm_record.h), read at daemon start from a state
// directory a crash, a full disk or a person may have damaged. Must hold: any bytes give a record
// or a clear error, never an exception; an accepted record writes back to JSON that parses to the
// same numbers (text that is not UTF-8 is written as U+FFFD, so texts may differ).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "daemon/vm_record.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace vmctl::daemon;
  if (size > kMaxVmRecordBytes) return 0;  // load_vm_record refuses it unread
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto record = parse_vm_record(text);
  if (!record.ok()) {
    if (record.error().message().empty()) std::abort();
    return 0;
  }
  auto again = parse_vm_record(vm_record_to_json(*record));
  if (!again.ok() || again->state != record->state || again->pid != record->pid ||
      again->exit_code != record->exit_code || again->created_unix_ms != record->created_unix_ms ||
      again->config.memory_bytes() != record->config.memory_bytes() ||
      again->config.cpus() != record->config.cpus() ||
      again->config.dirty_ring_entries() != record->config.dirty_ring_entries()) {
    std::abort();
  }
  return 0;
}
