// The copies of a guest that exist on the test's hosts, found from the processes themselves, not
// from any daemon's word: every vmctl VM process whose control socket lies under one of the
// hosts' state directories. A fault test asserts on these (exactly one copy runs), because a
// daemon that restarted, or that lost track, is exactly what is under test.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <string>
#include <vector>

namespace vmctl::testing {

struct GuestCopy {
  pid_t pid = 0;
  std::string vm;        // the VM's name (its directory under STATE/vms)
  std::string root;      // the host's state directory it lives in
  std::string control;   // its control socket
  bool answers = false;  // its control socket answered
  bool paused = false;   // it said its vCPUs are paused
  bool runs() const { return !answers || !paused; }  // one that does not answer might run
  std::string describe() const;
};

// Every VM process under `roots` (of VM `vm`, or of any VM when empty).
std::vector<GuestCopy> guest_copies(const std::vector<std::string>& roots,
                                    const std::string& vm = "");
std::string describe(const std::vector<GuestCopy>& copies);

// Sends "verify" to the dirtier in `copy` through its own control socket and waits for its
// answer in its console log: "" when every page it wrote is intact, else what was wrong.
std::string verify_dirtier(const GuestCopy& copy, std::chrono::milliseconds timeout);

// Kills every VM process under `roots`; returns what it killed (for the failure message).
std::string kill_copies(const std::vector<std::string>& roots);

}  // namespace vmctl::testing
