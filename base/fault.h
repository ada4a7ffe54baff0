// Fault injection for the test suite's fault matrix: named points where a process can be made to
// wait, so a test can kill a process or cut a link at an exact step of a protocol. Configured
// through the environment of the process (vmctld passes its own to its VM processes); never set
// in production.
//
//   VMCTL_FAULT_HOLD=POINT:MS[,POINT:MS...]   wait MS milliseconds at POINT, logging
//                                             "fault: holding at POINT for MS ms" first
#pragma once

namespace vmctl {

// Waits at `point` if the environment asks for it.
void fault_hold(const char* point);
// Whether the environment variable `name` is set and not empty.
bool fault_enabled(const char* name);

}  // namespace vmctl
