// Crash points for fault-injection tests of multi-step file updates.
//
// With VMCTL_FAULT_CRASH_AFTER=<step> in its environment, a process ends at once with
// _exit(kCrashPointExitCode) when it reaches crash_point("<step>"): no destructors, no cleanup, its
// files left exactly as they were at that step, as a crash of the process would leave them. Tests
// crash a writer at each step in turn and check what a reader makes of the files. Without the
// variable a crash point does nothing.
#pragma once

namespace vmctl {

inline constexpr int kCrashPointExitCode = 86;
inline constexpr const char* kCrashPointVariable = "VMCTL_FAULT_CRASH_AFTER";

void crash_point(const char* step);

}  // namespace vmctl
