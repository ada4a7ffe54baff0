// What this host's KVM offers the project (`vmctl host-info`), and whether a guest can move
// between two hosts (`vmctl host-check`, and vmctld before a migration).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/error.h"

namespace vmctl::state {

// KVM API version and the capabilities the VMM uses; CPU vendor/family/model and TSC rate; the
// CPU features KVM can give guests; the virtualization features that decide guest speed (TPR
// shadow, APIC virtualization, EPT/NPT, VPID, PML) from what the kernel publishes, "unknown" where
// nothing tells.
Result<nlohmann::json> host_report();
// For people; a report that does not validate is formatted as the reason.
std::string format_host_report(const nlohmann::json& report);

struct MoveVerdict {
  bool can_move = true;
  std::vector<std::string> reasons;  // one line each: "ok: ..." / "blocks: ..." / "note: ..."
};

// Checks a report (from a peer, a file) field by field: presence, types, ranges, sizes (names and
// lists are bounded), valid UTF-8. `whose` starts the message: "the destination's host report is
// malformed: field kvm.capabilities.xsave2 is not a number". Only a report that passes is read by
// the functions here; none of them throws.
Status validate_host_report(const nlohmann::json& report,
                            std::string_view whose = "the host report");
// Parses (at most 1 MiB, without exceptions) and validates.
Result<nlohmann::json> parse_host_report(std::string_view text,
                                         std::string_view whose = "the host report");

// Can a guest move from host `from` to host `to` (reports from host_report)? With
// `guest_features` (the features the guest was given), only those matter; without, every
// feature `from` offers does (a guest there may have been given any of them). A report that does
// not validate blocks the move with the reason (`to` is "the destination's", `from` "this
// host's"). Names from the reports are sanitised in the reasons.
MoveVerdict check_move(const nlohmann::json& from, const nlohmann::json& to,
                       const std::vector<std::string>* guest_features = nullptr);

// The CPU features (names as above) the guest in a snapshot file was given (its first vCPU).
Result<std::vector<std::string>> snapshot_cpu_features(const std::string& path);

}  // namespace vmctl::state
