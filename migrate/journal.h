// What each daemon remembers of every migration it takes part in, on disk, so that a restart of
// either daemon (or both) still ends with the VM running exactly once (migrate/protocol.md, rule
// 5). One small file per migration, durable at every phase change (two slots written in turn,
// one fdatasync each: see journal.cc).
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "base/error.h"

namespace vmctl::migrate {

enum class MigrationRole { kSource, kDestination };

// The phases of migrate/protocol.md, for both roles.
enum class MigrationPhase {
  // source
  kStarting,    // offered, not accepted yet
  kSending,     // the VM process sends rounds
  kSent,        // everything sent, the VM paused here, waiting for READY
  kSwitchover,  // SWITCHOVER written (maybe sent): the source never resumes on its own now
  kInDoubt,     // SWITCHOVER sent, outcome unknown: settled with Resolve
  kDone,        // the destination owns the VM
  kRolledBack,  // the VM runs (or stays paused) here
  // destination
  kAccepted,   // the receiving VM process is started, data may flow
  kReady,      // restored and paused, waiting for SWITCHOVER
  kCommitted,  // SWITCHOVER taken: the VM is the destination's now
  kResumed,    // the VM runs there
  kDiscarded,  // the copy is gone; the source resumes
  kFailed,     // committed, then lost (the VM process died): the destination owned it
};

const char* phase_name(MigrationPhase phase);
std::optional<MigrationPhase> parse_phase(const std::string& name);
// No further transitions: done, rolled back, resumed, discarded, failed.
bool is_final(MigrationPhase phase);

struct MigrationRecord {
  std::string id;  // 32 lower-case hex digits
  MigrationRole role = MigrationRole::kSource;
  MigrationPhase phase = MigrationPhase::kStarting;
  std::string vm;      // the VM's name on this host
  std::string peer;    // source: the destination address; destination: the source host
  std::string detail;  // why it ended as it did, for operators
  int64_t created_unix_ms = 0;
  int64_t updated_unix_ms = 0;
};

// Ids come from peers: only this shape reaches a file name.
Status validate_migration_id(const std::string& id);
// A fresh random id.
std::string new_migration_id();

class MigrationJournal {
 public:
  // `dir` is created (mode 0700) if missing.
  static Result<MigrationJournal> open(const std::string& dir);

  // Writes the record durably: temporary file, fsync, rename, fsync of the directory. An error
  // means the phase change did not happen as far as a restart will know.
  Status save(MigrationRecord record);
  Result<std::optional<MigrationRecord>> load(const std::string& id) const;
  // Every record; malformed files are reported in `problems` (one line each), not fatal.
  std::vector<MigrationRecord> load_all(std::vector<std::string>* problems = nullptr) const;
  // Records that reached a final phase more than `max_age_ms` ago go away.
  void prune(int64_t max_age_ms);
  const std::string& dir() const { return dir_; }

 private:
  explicit MigrationJournal(std::string dir) : dir_(std::move(dir)) {}
  std::string dir_;
};

// Parses one record's JSON, and a whole record file (its two slots, see journal.cc); exposed for
// tests and the fuzzer.
Result<MigrationRecord> parse_migration_record(const std::string& text);
Result<MigrationRecord> parse_journal_file(const std::string& text);
std::string format_migration_record(const MigrationRecord& record);

}  // namespace vmctl::migrate
