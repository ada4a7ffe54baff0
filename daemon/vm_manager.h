// The VMs one vmctld manages. Each VM runs in its own `vmctl` process (run, restore or receive)
// with a control socket, so a VM that crashes or is killed takes neither the daemon nor other VMs
// with it, and VMs keep running while the daemon restarts. What the daemon knows about each VM is
// kept in STATE_DIR/vms/NAME/vm.json; on start it adopts the VMs whose processes still answer and
// reports the others as LOST.
#pragma once

#include <sys/types.h>

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "daemon/state_dir_lock.h"
#include "proto/names.h"
#include "proto/vmctl.pb.h"
#include "vmprocess/control_client.h"

namespace vmctl::daemon {

namespace v1 = ::vmctl::v1;

// How VM processes are confined ([sandbox] of daemon/config.md; vmprocess/jail.h).
struct VmSandbox {
  bool jail = false;  // own PID and mount namespace, capabilities dropped
  std::string seccomp = "enforce";
  std::string user;  // "" = the daemon's user
  uid_t uid = 0;
  gid_t gid = 0;
  // Bound read-write into every VM's new root besides its folder: the allowed directories and
  // the receiving data sockets' folder. Empty: the paths are unrestricted, so the VM process
  // keeps the host's file system (a new root would have to hold all of it).
  std::vector<std::string> writable;
  std::vector<std::string> read_only;  // the daemon's TLS files
};

struct ManagerOptions {
  std::string state_dir;
  std::string vmctl_binary;            // the `vmctl` that runs each VM
  std::string console_log_max = "8M";  // each VM's console.log cap (vmctl --console-log-max)
  uint64_t max_guest_memory = 0;       // the largest guest this host runs; 0: its RAM
  VmSandbox sandbox;
};

// How a VM process is started: the vmctl verb and its arguments (without the control socket and
// console log, which the manager adds).
struct Launch {
  std::vector<std::string> args;
  std::string description;  // for errors: "booting", "restoring from ..."
  // Wait for the control socket before returning. A receiving VM opens it only once its state
  // has arrived, so it is not waited for (its state stays CREATED until then).
  bool wait_ready = true;
};

class VmManager {
 public:
  static Result<std::unique_ptr<VmManager>> open(const ManagerOptions& options);
  // Leaves the VM processes running: they outlive the daemon.
  ~VmManager();

  Result<v1::VmInfo> create(const std::string& name, const v1::VmConfig& config);
  Result<v1::VmInfo> start(const std::string& name);
  Result<v1::VmInfo> pause(const std::string& name) { return set_paused(name, true); }
  Result<v1::VmInfo> resume(const std::string& name) { return set_paused(name, false); }
  Result<v1::VmInfo> stop(const std::string& name);
  Result<v1::VmInfo> remove(const std::string& name);
  std::vector<v1::VmInfo> list();
  Result<v1::VmInfo> get(const std::string& name, bool with_stats = false);
  Result<v1::SnapshotResponse> snapshot(const v1::SnapshotRequest& request);
  Result<v1::VmInfo> restore(const v1::RestoreRequest& request);
  Status console_input(const std::string& name, const std::string& data);

  // Starts a VM process under a new name that is not yet a VM (restore; migration's receiving
  // side, with `migration_id`: the entry is RECEIVING): the entry exists while `launch` runs.
  Result<v1::VmInfo> start_new(const std::string& name, const Launch& launch,
                               std::vector<int> inherit_fds = {},
                               const std::string& migration_id = "");
  // The VM's control socket, for operations the manager does not wrap (migration).
  Result<std::string> control_socket(const std::string& name);
  // One request to the VM's process, without holding the manager's lock (a slow VM delays only
  // its own callers). `delivered`: see vmprocess::control_request.
  Result<nlohmann::json> control(const std::string& name, const nlohmann::json& request,
                                 const vmprocess::ControlTimeouts& timeouts = {},
                                 bool* delivered = nullptr);
  // The VM's process id (0: none), and whether that process still exists.
  pid_t pid(const std::string& name);
  // Waits until process `pid` of the VM has ended; after `timeout` it is killed (a copy that
  // must not live on: its VM runs elsewhere now) and waited for again. False if it had to be.
  bool end_process(const std::string& name, pid_t pid, std::chrono::milliseconds timeout);
  // Called (from a watcher thread, without the manager's lock) when a VM's process ends.
  void set_exit_listener(std::function<void(const std::string& name, pid_t pid)> listener);
  // Forgets a VM that never became one here (a discarded incoming migration): its process, if
  // any, is killed; its directory goes.
  void forget(const std::string& name, pid_t pid);
  // Migration states (MIGRATING, MIGRATION_IN_DOUBT, RECEIVING, MIGRATED, back to RUNNING or
  // PAUSED) with the migration's id (empty: none).
  Status set_migration_state(const std::string& name, v1::VmState state,
                             const std::string& migration_id, const std::string& detail = "");
  // Reads the machine's shape (memory, vCPUs, paused) from a VM process that was started from a
  // snapshot or a migration stream rather than from a config.
  Status refresh_from_process(const std::string& name);
  // Records a state change made outside the manager's own operations (migration phases).
  Status set_state(const std::string& name, v1::VmState state, const std::string& detail = "");

  // Waits until the VM's state changes after `version` (or the timeout passes); returns the
  // current info and its version. For WatchVm.
  Result<std::pair<v1::VmInfo, uint64_t>> wait_for_change(const std::string& name, uint64_t version,
                                                          int timeout_ms);

 private:
  struct Entry {
    std::string name;
    v1::VmConfig config;
    v1::VmState state = v1::VM_STATE_CREATED;
    pid_t pid = 0;
    bool our_child = false;  // false for processes adopted after a daemon restart
    int exit_code = 0;
    std::string error;
    std::string migrated_to;
    std::string migration_id;  // the migration this VM takes part in
    int64_t created_unix_ms = 0;
    uint64_t version = 0;
    std::thread watcher;
    std::mutex op_mu;  // one pause/resume/stop at a time per VM, without the manager's lock
    bool record_malformed = false;  // its vm.json could not be read: shown LOST, never rewritten
  };

  explicit VmManager(ManagerOptions options) : options_(std::move(options)) {}
  Status load();
  std::string vm_dir(const std::string& name) const;
  std::string socket_path(const std::string& name) const;
  std::string console_path(const std::string& name) const;
  std::string log_path(const std::string& name) const;
  // Removes a VM's folder with everything the daemon and its VM process put there.
  void remove_vm_folder(const std::string& name) const;
  Entry* find(const std::string& name);                         // with mu_ held
  std::shared_ptr<Entry> find_shared(const std::string& name);  // with mu_ held
  Result<Entry*> find_or_error(const std::string& name);
  v1::VmInfo info(const Entry& e) const;
  Status persist(const Entry& e) const;
  void changed(Entry& e);  // with mu_ held: bump the version, persist, wake watchers
  Result<pid_t> spawn(const std::string& name, const std::vector<std::string>& args,
                      const std::vector<int>& inherit_fds);
  Status wait_until_ready(const std::string& name, pid_t pid);
  void watch_child(std::string name, pid_t pid);
  void watch_adopted(std::string name, pid_t pid);
  std::string last_log_line(const std::string& name) const;
  Result<v1::VmInfo> set_paused(const std::string& name, bool pause);
  Result<v1::VmInfo> launch(Entry& e, const Launch& launch, std::unique_lock<std::mutex>& lock,
                            const std::vector<int>& inherit_fds);

  ManagerOptions options_;
  StateDirLock state_dir_lock_;  // held for the daemon's life
  std::mutex mu_;
  std::condition_variable cv_;
  // Shared: an operation that released the lock to wait for a VM process keeps its entry alive.
  std::map<std::string, std::shared_ptr<Entry>> vms_;
  bool shutting_down_ = false;
  std::function<void(const std::string&, pid_t)> exit_listener_;
};

// [A-Za-z0-9_.-], 1 to 64 characters, not starting with a dot.
Status validate_vm_name(const std::string& name);

}  // namespace vmctl::daemon
