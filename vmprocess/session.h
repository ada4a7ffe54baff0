// The life of a VM process once its VM exists (`vmctl run`, `restore`, `receive`): terminal,
// signals, stdin, the control socket, running to the end and reporting the outcome.
#pragma once

#include <memory>
#include <string>

#include "vmm/vm.h"
#include "vmprocess/control_server.h"

namespace vmctl::vmprocess {

// What `run` and `restore` share once a VM exists: terminal, signals, stdin, the control socket,
// running to the end and reporting the outcome.
struct SessionOptions {
  bool stats = false;
  bool quiet = false;
  bool start_paused = false;
  std::string control;
};
// `server`: a control server started already (a receiving VM opens its socket before it says
// READY), for a VM its caller paused already if it is to start paused; otherwise one is started
// on `options.control` if that is set.
int run_session(vmm::Vm& vm, const SessionOptions& options,
                std::unique_ptr<ControlServer> server = nullptr);

// Blocks SIGINT/SIGTERM/SIGHUP in this and every later thread (the session's watcher takes them).
void block_stop_signals();

}  // namespace vmctl::vmprocess
