// The control socket of a foreground VM (`vmctl run --control PATH`, `vmctl restore --control`):
// a unix socket that accepts one JSON request per connection and answers with one JSON line.
// Requests: {"op":"snapshot","path":P,"stop":bool,"diff":bool,"compression":N}, {"op":"pause"},
// {"op":"resume"}, {"op":"status"}. Answers: {"ok":true,...} or {"ok":false,"error":"..."}.
// The socket file is created with mode 0600: only its owner may drive the VM.
#pragma once

#include <atomic>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "base/fd.h"
#include "state/dirty_tracker.h"
#include "vmm/vm.h"

namespace vmctl::cli {

class ControlServer {
 public:
  // `vm_paused`: the VM starts paused on the caller's behalf; a "resume" request releases it.
  static Result<std::unique_ptr<ControlServer>> start(vmm::Vm& vm, const std::string& path,
                                                      bool vm_paused = false);
  ~ControlServer();

 private:
  ControlServer(vmm::Vm& vm, std::string path, Fd listener)
      : vm_(vm), path_(std::move(path)), listener_(std::move(listener)) {}
  void serve();
  nlohmann::json handle(const nlohmann::json& request);

  vmm::Vm& vm_;
  std::string path_;
  Fd listener_;
  Fd wake_;  // eventfd that ends serve()
  std::thread thread_;
  bool paused_by_us_ = false;
  state::DirtyTracker dirty_;  // for --diff snapshots
};

// Sends one request to the control socket at `path` and returns the parsed answer (an error if the
// socket is unreachable or the answer says ok=false).
Result<nlohmann::json> control_request(const std::string& path, const nlohmann::json& request);

}  // namespace vmctl::cli
