// A migration source the test writes itself: what a hostile or broken peer could send to a
// destination vmctld's MigrationReceiver (Control, through the daemon's unix socket, which serves
// the same services as its TLS listener) and to the receiving VM process's data connections.
#pragma once

#include <functional>
#include <optional>
#include <string>

#include "state/stream.h"
#include "tests/integration/daemon_fixture.h"

namespace vmctl::testing {

struct CraftedMigration {
  std::string vm = "crafted";
  unsigned streams = 1;
  uint32_t format_major = 0;            // 0: this build's
  uint64_t memory_bytes = 32ull << 20;  // the golden snapshot's guest
  unsigned vcpus = 1;
  std::string join_id;  // join the data streams to this id instead
  bool wrong_secret = false;
  std::optional<unsigned> data_index;  // a hello that claims this connection index
  // Runs with the data endpoint once the offer is accepted, before the data connections open.
  std::function<void(const std::string& endpoint)> before_data;
  bool switchover = true;  // send SWITCHOVER once READY
};

struct CraftedOutcome {
  std::string refused;  // the offer's or a data stream's refusal
  std::string failed;   // the destination's FAILED after acceptance
  bool ready = false;
  bool resumed = false;
};

CraftedOutcome send_crafted(Daemon& to, const CraftedMigration& how, const std::string& bytes);

// The golden snapshot's records re-encoded, with `edit` applied to each (it writes what it keeps).
std::string golden_stream(const std::function<void(state::Record&, state::RecordWriter&)>& edit);
void copy_record(state::Record& record, state::RecordWriter& writer);
// Rewrites every frame header of a record stream with `edit` (checksums recomputed).
std::string reframe(const std::string& stream,
                    const std::function<void(state::FrameHeader&)>& edit);

}  // namespace vmctl::testing
