// libFuzzer target: a migration journal file (migrate/journal.h), read back at daemon start after
// a crash may have torn it, and one record's JSON. Must hold: any bytes give a record or a clear
// error; an accepted record formats back to JSON that parses to the same id, role and phase.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "migrate/journal.h"

namespace {

void check_round_trip(const vmctl::migrate::MigrationRecord& r) {
  auto again = vmctl::migrate::parse_migration_record(vmctl::migrate::format_migration_record(r));
  if (!again.ok() || again->id != r.id || again->role != r.role || again->phase != r.phase ||
      again->created_unix_ms != r.created_unix_ms || again->updated_unix_ms != r.updated_unix_ms) {
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace vmctl::migrate;
  std::string text(reinterpret_cast<const char*>(data), size);
  for (auto parse : {parse_journal_file, parse_migration_record}) {
    auto record = parse(text);
    if (!record.ok()) {
      if (record.error().message().empty()) std::abort();
      continue;
    }
    check_round_trip(*record);
  }
  return 0;
}
