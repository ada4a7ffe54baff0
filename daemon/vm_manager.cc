#include "daemon/vm_manager.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <regex>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "base/atomic_file.h"
#include "base/text.h"
#include "daemon/vm_record.h"
#include "daemon/vm_spawn.h"
#include "vmm/dirty_pages.h"
#include "vmm/irqchip_mode.h"
#include "vmprocess/control_client.h"

namespace vmctl::daemon {
namespace {

using Clock = std::chrono::steady_clock;

int64_t now_unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// A VM state with a process behind it.
bool is_live(v1::VmState s) {
  return s == v1::VM_STATE_RUNNING || s == v1::VM_STATE_PAUSED || s == v1::VM_STATE_MIGRATING ||
         s == v1::VM_STATE_MIGRATION_IN_DOUBT || s == v1::VM_STATE_RECEIVING;
}

// A migration's states: the VM process holds a migration that only the migration code settles.
bool in_migration(v1::VmState s) {
  return s == v1::VM_STATE_MIGRATING || s == v1::VM_STATE_MIGRATION_IN_DOUBT ||
         s == v1::VM_STATE_RECEIVING;
}

Status make_dir(const std::string& path, mode_t mode) {
  if (::mkdir(path.c_str(), mode) == 0) return fsync_directory(directory_of(path));  // durable
  if (errno != EEXIST) {
    return Error::user(fmt::format("cannot create {}: {}", path, std::strerror(errno)));
  }
  return ok_status();
}

// The arguments of `vmctl run` for a config.
std::vector<std::string> run_args(const v1::VmConfig& c) {
  std::vector<std::string> args = {"run"};
  if (!c.kernel().empty()) args.insert(args.end(), {"--kernel", c.kernel()});
  if (!c.initrd().empty()) args.insert(args.end(), {"--initrd", c.initrd()});
  if (!c.cmdline().empty()) args.insert(args.end(), {"--cmdline", c.cmdline()});
  args.insert(args.end(), {"--memory", std::to_string(c.memory_bytes())});
  args.insert(args.end(), {"--cpus", std::to_string(c.cpus())});
  if (!c.dirty_tracking().empty())
    args.insert(args.end(), {"--dirty-tracking", c.dirty_tracking()});
  if (c.dirty_ring_entries() != 0) {
    args.insert(args.end(), {"--dirty-ring-entries", std::to_string(c.dirty_ring_entries())});
  }
  if (!c.irqchip().empty()) args.insert(args.end(), {"--irqchip", c.irqchip()});
  return args;
}

}  // namespace

Status validate_vm_name(const std::string& name) {
  static const std::regex valid("[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}");
  if (!std::regex_match(name, valid)) {
    return Error::user(fmt::format(
        "invalid VM name '{}': use 1 to 64 of A-Z a-z 0-9 _ . - (not starting with a dot)", name));
  }
  return ok_status();
}

Result<std::unique_ptr<VmManager>> VmManager::open(const ManagerOptions& options) {
  std::unique_ptr<VmManager> manager(new VmManager(options));
  TRY(make_dir(options.state_dir, 0700));
  manager->state_dir_lock_ = TRY(StateDirLock::acquire(options.state_dir));
  TRY(make_dir(options.state_dir + "/vms", 0700));
  TRY(manager->load());
  return manager;
}

VmManager::~VmManager() {
  std::vector<std::thread> watchers;
  {
    std::lock_guard lock(mu_);
    shutting_down_ = true;
    for (auto& [name, e] : vms_) {
      if (e->watcher.joinable()) watchers.push_back(std::move(e->watcher));
    }
  }
  cv_.notify_all();
  // Child watchers block in waitpid on processes that keep running: let them go with the daemon.
  for (std::thread& t : watchers) t.detach();
}

std::string VmManager::vm_dir(const std::string& name) const {
  return options_.state_dir + "/vms/" + name;
}
std::string VmManager::socket_path(const std::string& name) const {
  return vm_dir(name) + "/control.sock";
}
std::string VmManager::console_path(const std::string& name) const {
  return vm_dir(name) + "/console.log";
}
std::string VmManager::log_path(const std::string& name) const {
  return vm_dir(name) + "/vmctl.log";
}

VmManager::Entry* VmManager::find(const std::string& name) {
  auto it = vms_.find(name);
  return it == vms_.end() ? nullptr : it->second.get();
}

std::shared_ptr<VmManager::Entry> VmManager::find_shared(const std::string& name) {
  auto it = vms_.find(name);
  return it == vms_.end() ? nullptr : it->second;
}

Result<VmManager::Entry*> VmManager::find_or_error(const std::string& name) {
  Entry* e = find(name);
  if (!e) return Error::not_found(fmt::format("no VM named '{}' (vmctl list shows them)", name));
  return e;
}

v1::VmInfo VmManager::info(const Entry& e) const {
  v1::VmInfo i;
  i.set_name(e.name);
  i.set_state(e.state);
  *i.mutable_config() = e.config;
  i.set_pid(e.pid);
  i.set_console_log(console_path(e.name));
  // Errors quote VM processes and peers: protobuf strings must be UTF-8, logs must stay lines.
  i.set_error(sanitize_text(e.error, 4096));
  i.set_exit_code(e.exit_code);
  i.set_created_unix_ms(e.created_unix_ms);
  i.set_migrated_to(e.migrated_to);
  i.set_migration_id(e.migration_id);
  return i;
}

Status VmManager::persist(const Entry& e) const {
  // A malformed vm.json stays as it is: the operator fixes or deletes it (see load).
  if (e.record_malformed) return ok_status();
  VmRecord record{e.name,  e.config,      e.state,           e.pid,         e.exit_code,
                  e.error, e.migrated_to, e.created_unix_ms, e.migration_id};
  return write_file_atomically(vm_dir(e.name) + "/vm.json", vm_record_to_json(record));
}

void VmManager::changed(Entry& e) {
  ++e.version;
  Status s = persist(e);
  if (!s.ok()) spdlog::error("VM {}: {}", e.name, s.error().message());
  cv_.notify_all();
}

Status VmManager::load() {
  std::string dir = options_.state_dir + "/vms";
  DIR* d = ::opendir(dir.c_str());
  if (!d) return Error::user(fmt::format("cannot read {}: {}", dir, std::strerror(errno)));
  std::vector<std::string> names;
  while (dirent* ent = ::readdir(d)) {
    std::string n = ent->d_name;
    if (n != "." && n != "..") names.push_back(n);
  }
  ::closedir(d);
  std::lock_guard lock(mu_);
  for (const std::string& name : names) {
    Result<VmRecord> record = load_vm_record(vm_dir(name) + "/vm.json", name);
    if (!record.ok() && record.error().kind() == ErrorKind::kNotFound) {
      spdlog::warn("ignoring {}: it holds no vm.json", vm_dir(name));
      continue;
    }
    auto e = std::make_shared<Entry>();
    e->name = name;
    if (!record.ok()) {
      // Shown, not skipped and not fatal: the VM is LOST with the reason, until the operator
      // deletes it or fixes the file (it is not rewritten meanwhile).
      e->state = v1::VM_STATE_LOST;
      e->error = record.error().message();
      e->record_malformed = true;
      spdlog::error("VM {}: {}", name, e->error);
      vms_[name] = std::move(e);
      continue;
    }
    e->config = record->config;
    e->state = record->state;
    e->pid = record->pid;
    e->exit_code = record->exit_code;
    e->error = record->error;
    e->migrated_to = record->migrated_to;
    e->created_unix_ms = record->created_unix_ms;
    e->migration_id = record->migration_id;
    if (e->state == v1::VM_STATE_CREATED && e->pid > 0) {
      // A VM that was being received: its stream ran through the daemon that stopped, so that
      // process cannot finish (it ends by itself once it sees the stream closed).
      e->error = "an incoming migration was cut off when vmctld stopped";
      e->pid = 0;
    } else if (!is_live(e->state)) {
      e->pid = 0;
    }
    if (is_live(e->state)) {
      // Adopt the VM if its process is still there and answers on its control socket.
      bool alive = e->pid > 0 && ::kill(e->pid, 0) == 0;
      vmprocess::ControlTimeouts quick{std::chrono::milliseconds(1000),
                                       std::chrono::milliseconds(3000)};
      Result<nlohmann::json> status =
          alive ? vmprocess::control_request(socket_path(name), {{"op", "status"}}, quick)
                : Result<nlohmann::json>(Error::user("no process"));
      // The socket's owner as this daemon sees it (the VM process's own pid is 1 in its PID
      // namespace), so a stale socket of another process is never taken for this VM.
      Result<pid_t> owner = status.ok() ? vmprocess::control_socket_pid(socket_path(name), quick)
                                        : Result<pid_t>(Error::user("no answer"));
      if (owner.ok() && *owner == e->pid) {
        // A VM in a migration keeps its state: the migration's own recovery settles it.
        if (!in_migration(e->state)) {
          e->state = status->value("paused", false) ? v1::VM_STATE_PAUSED : v1::VM_STATE_RUNNING;
        }
        e->our_child = false;
        spdlog::info("VM {}: adopted its running process {}", name, e->pid);
        e->watcher = std::thread(&VmManager::watch_adopted, this, name, e->pid);
      } else {
        e->error = fmt::format(
            "was {} as process {} when vmctld stopped, and {}: its state is gone (restore it "
            "from a snapshot, or delete it)",
            vm_state_name(e->state), e->pid,
            alive ? "that process no longer answers on its control socket"
                  : "that process has ended");
        spdlog::warn("VM {}: lost: {}", name, e->error);
        e->state = v1::VM_STATE_LOST;
        e->pid = 0;
      }
    }
    changed(*e);
    vms_[name] = std::move(e);
  }
  return ok_status();
}

Result<v1::VmInfo> VmManager::create(const std::string& name, const v1::VmConfig& config) {
  TRY(validate_vm_name(name));
  std::lock_guard lock(mu_);
  if (find(name)) return Error::conflict(fmt::format("a VM named '{}' exists already", name));
  if (!config.kernel().empty() && ::access(config.kernel().c_str(), R_OK) != 0) {
    return Error::user(fmt::format("kernel {} is not readable on the daemon's host: {}",
                                   config.kernel(), std::strerror(errno)));
  }
  if (!config.dirty_tracking().empty()) TRY(vmm::parse_dirty_tracking(config.dirty_tracking()));
  if (!config.irqchip().empty()) TRY(vmm::parse_irqchip_mode(config.irqchip()));
  if (options_.max_guest_memory && config.memory_bytes() > options_.max_guest_memory) {
    return Error::user(
        fmt::format("VM {} asks for {} MiB of RAM; this host runs guests of at most "
                    "{} MiB (vmctld --max-guest-memory)",
                    name, config.memory_bytes() >> 20, options_.max_guest_memory >> 20));
  }
  TRY(make_dir(vm_dir(name), 0700));
  auto e = std::make_shared<Entry>();
  e->name = name;
  e->config = config;
  if (e->config.memory_bytes() == 0) e->config.set_memory_bytes(256ull << 20);
  if (e->config.cpus() == 0) e->config.set_cpus(1);
  e->created_unix_ms = now_unix_ms();
  changed(*e);
  v1::VmInfo result = info(*e);
  vms_[name] = std::move(e);
  spdlog::info("VM {}: created", name);
  return result;
}

Result<pid_t> VmManager::spawn(const std::string& name, const std::vector<std::string>& args,
                               const std::vector<int>& inherit_fds) {
  SpawnRequest request;
  request.argv = {options_.vmctl_binary};
  request.argv.insert(request.argv.end(), args.begin(), args.end());
  request.argv.insert(request.argv.end(),
                      {"--control", socket_path(name), "--console-log", console_path(name),
                       "--console-log-max", options_.console_log_max});
  if (options_.max_guest_memory) {
    request.argv.insert(request.argv.end(),
                        {"--max-guest-memory", std::to_string(options_.max_guest_memory)});
  }
  const VmSandbox& sandbox = options_.sandbox;
  request.argv.insert(request.argv.end(), {"--seccomp", sandbox.seccomp});
  if (!sandbox.user.empty()) {
    // Its folder is where it makes its control socket and console log.
    if (::chown(vm_dir(name).c_str(), sandbox.uid, sandbox.gid) != 0) {
      return Error::from_errno(
          fmt::format("chown {} to the sandbox user {}", vm_dir(name), sandbox.user), errno);
    }
    request.argv.insert(request.argv.end(),
                        {"--user", fmt::format("{}:{}", sandbox.uid, sandbox.gid)});
  }
  if (sandbox.jail) {
    request.new_namespaces = true;
    request.argv.push_back("--drop-capabilities");
    if (!sandbox.writable.empty()) {
      std::string root = vm_dir(name) + "/root";
      TRY(make_dir(root, 0700));
      request.argv.insert(request.argv.end(), {"--jail", root, "--jail-bind", vm_dir(name)});
      for (const std::string& path : sandbox.writable) {
        request.argv.insert(request.argv.end(), {"--jail-bind", path});
      }
      for (const std::string& path : sandbox.read_only) {
        request.argv.insert(request.argv.end(), {"--jail-read-only", path});
      }
    }
  }
  request.log_path = log_path(name);
  request.inherit_fds = inherit_fds;
  return TRY_CTX(spawn_vm_process(request), fmt::format("VM {}", name));
}

void VmManager::remove_vm_folder(const std::string& name) const {
  for (const char* f :
       {"/vm.json", "/console.log", "/console.log.1", "/vmctl.log", "/control.sock"}) {
    ::unlink((vm_dir(name) + f).c_str());
  }
  ::rmdir((vm_dir(name) + "/root").c_str());  // the jail's mount point (vm_spawn.h)
  ::rmdir(vm_dir(name).c_str());
}

std::string VmManager::last_log_line(const std::string& name) const {
  std::ifstream in(log_path(name));
  std::string line, last;
  while (std::getline(in, line)) {
    if (!line.empty()) last = line;
  }
  if (last.rfind("vmctl: ", 0) == 0) last = last.substr(7);
  return last;
}

void VmManager::watch_child(std::string name, pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  std::function<void(const std::string&, pid_t)> listener;
  {
    std::lock_guard lock(mu_);
    listener = exit_listener_;
  }
  // The migration code may hold its own lock while it asks the manager things: tell it first,
  // outside the manager's lock.
  if (listener) listener(name, pid);
  std::lock_guard lock(mu_);
  Entry* e = find(name);
  if (!e || e->pid != pid) return;
  e->pid = 0;
  if (e->state == v1::VM_STATE_MIGRATED) {
    // The process ended because the VM now runs elsewhere.
  } else if (WIFSIGNALED(status)) {
    e->state = v1::VM_STATE_FAILED;
    e->error = fmt::format("the VM process {} was killed by signal {} ({})", pid, WTERMSIG(status),
                           strsignal(WTERMSIG(status)));
    if (WTERMSIG(status) == SIGSYS) {
      e->error +=
          ": it made a system call outside its seccomp allowlist ([sandbox] seccomp = \"log\" "
          "in vmctld's --config lets it through and has the kernel log which)";
    }
  } else {
    e->exit_code = WEXITSTATUS(status);
    e->state = v1::VM_STATE_STOPPED;
    e->error = e->exit_code == 0 ? "" : last_log_line(name);
  }
  spdlog::info("VM {}: process {} ended: {}{}", name, pid, vm_state_name(e->state),
               e->error.empty() ? "" : " (" + e->error + ")");
  changed(*e);
}

void VmManager::watch_adopted(std::string name, pid_t pid) {
  // Not our child: no exit status, only whether it is still there.
  while (true) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    {
      std::lock_guard lock(mu_);
      if (shutting_down_) return;
      Entry* e = find(name);
      if (!e || e->pid != pid) return;
      if (::kill(pid, 0) == 0) continue;
    }
    std::function<void(const std::string&, pid_t)> listener;
    {
      std::lock_guard lock(mu_);
      listener = exit_listener_;
    }
    if (listener) listener(name, pid);
    std::lock_guard lock(mu_);
    Entry* e = find(name);
    if (!e || e->pid != pid) return;
    e->pid = 0;
    if (e->state != v1::VM_STATE_MIGRATED) {
      e->state = v1::VM_STATE_STOPPED;
      e->error =
          "the VM process ended; its exit status is unknown (it was adopted after a "
          "vmctld restart)";
    }
    changed(*e);
    return;
  }
}

Result<nlohmann::json> VmManager::control(const std::string& name, const nlohmann::json& request,
                                          const vmprocess::ControlTimeouts& timeouts,
                                          bool* delivered) {
  return vmprocess::control_request(socket_path(name), request, timeouts, delivered);
}

pid_t VmManager::pid(const std::string& name) {
  std::lock_guard lock(mu_);
  Entry* e = find(name);
  return e ? e->pid : 0;
}

bool VmManager::end_process(const std::string& name, pid_t pid, std::chrono::milliseconds timeout) {
  if (pid <= 0) return true;
  std::unique_lock lock(mu_);
  auto gone = [&] {
    Entry* e = find(name);
    return !e || e->pid != pid;
  };
  if (cv_.wait_for(lock, timeout, gone)) return true;
  spdlog::warn("VM {}: process {} did not end within {} ms; killing it", name, pid,
               timeout.count());
  ::kill(pid, SIGKILL);
  cv_.wait_for(lock, std::chrono::seconds(10), gone);
  return false;
}

void VmManager::set_exit_listener(std::function<void(const std::string&, pid_t)> listener) {
  std::lock_guard lock(mu_);
  exit_listener_ = std::move(listener);
}

void VmManager::forget(const std::string& name, pid_t pid) {
  std::unique_lock lock(mu_);
  std::shared_ptr<Entry> e = find_shared(name);
  if (!e || (pid != 0 && e->pid != 0 && e->pid != pid)) return;
  if (e->pid > 0) ::kill(e->pid, SIGKILL);
  std::thread watcher = std::move(e->watcher);
  lock.unlock();
  if (watcher.joinable()) watcher.join();
  // The name stays taken until its folder is gone: a VM of the same name accepted meanwhile
  // would otherwise lose its fresh folder (and control socket) to this clean-up.
  remove_vm_folder(name);
  lock.lock();
  if (find_shared(name) == e) vms_.erase(name);
  spdlog::info("VM {}: forgotten (its incoming migration was discarded)", name);
}

Status VmManager::set_migration_state(const std::string& name, v1::VmState state,
                                      const std::string& migration_id, const std::string& detail) {
  std::lock_guard lock(mu_);
  Entry* e = TRY(find_or_error(name));
  if (is_live(state) && e->pid == 0) {
    // Its process ended meanwhile (the watcher recorded how): a migration that finishes after
    // that must not report a VM running that no process runs.
    return Error::conflict(fmt::format("VM {}: its process has ended ({}): it is not {}", name,
                                       e->error.empty() ? vm_state_name(e->state) : e->error,
                                       vm_state_name(state)));
  }
  e->state = state;
  e->migration_id = migration_id;
  if (state == v1::VM_STATE_MIGRATED) e->migrated_to = detail;
  if (!detail.empty() && state != v1::VM_STATE_MIGRATED) e->error = detail;
  changed(*e);
  return ok_status();
}

Status VmManager::wait_until_ready(const std::string& name, pid_t pid) {
  Clock::time_point deadline = Clock::now() + std::chrono::seconds(60);
  while (Clock::now() < deadline) {
    {
      std::lock_guard lock(mu_);
      Entry* e = find(name);
      if (!e || e->pid != pid) {
        std::string why = last_log_line(name);
        return Error::user(why.empty() ? "the VM process ended at once" : why);
      }
    }
    Result<nlohmann::json> status = control(name, {{"op", "status"}});
    if (status.ok()) return ok_status();
    // A connect attempt on a unix socket is cheap; a long nap here is added to every create
    // and restore (the VM process is typically ready a few ms into a nap).
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  ::kill(pid, SIGKILL);
  return Error::failure("the VM process did not open its control socket within 60 s");
}

Result<v1::VmInfo> VmManager::launch(Entry& e, const Launch& launch,
                                     std::unique_lock<std::mutex>& lock,
                                     const std::vector<int>& inherit_fds) {
  std::string name = e.name;
  // The previous run's watcher may still be finishing (a migrated-away VM whose process is still
  // exiting) and needs the lock to do so: join it without holding the lock.
  if (e.watcher.joinable()) {
    std::thread previous = std::move(e.watcher);
    lock.unlock();
    previous.join();
    lock.lock();
  }
  Entry* again = find(name);
  if (!again) return Error::failure(fmt::format("VM {} was deleted while starting", name));
  Entry& e_now = *again;
  if (is_live(e_now.state)) return info(e_now);
  ::unlink(console_path(name).c_str());
  ::unlink((console_path(name) + ".1").c_str());
  ::truncate(log_path(name).c_str(), 0);
  pid_t pid = TRY(spawn(name, launch.args, inherit_fds));
  e_now.pid = pid;
  e_now.our_child = true;
  e_now.exit_code = 0;
  e_now.error.clear();
  e_now.migrated_to.clear();
  e_now.state = !e_now.migration_id.empty() ? v1::VM_STATE_RECEIVING
                : launch.wait_ready         ? v1::VM_STATE_RUNNING
                                            : v1::VM_STATE_CREATED;
  e_now.watcher = std::thread(&VmManager::watch_child, this, name, pid);
  changed(e_now);
  if (!launch.wait_ready) return info(e_now);
  lock.unlock();
  Status ready = wait_until_ready(name, pid);
  lock.lock();
  Entry* now = find(name);
  if (!now) return Error::failure(fmt::format("VM {} was deleted while starting", name));
  if (!ready.ok()) {
    now->state = v1::VM_STATE_FAILED;
    now->error = ready.error().message();
    changed(*now);
    return Error(ready.error().kind(),
                 fmt::format("{} VM {}: {}", launch.description, name, ready.error().message()));
  }
  spdlog::info("VM {}: {} (process {})", name, launch.description, pid);
  return info(*now);
}

Result<v1::VmInfo> VmManager::start(const std::string& name) {
  std::unique_lock lock(mu_);
  Entry* e = TRY(find_or_error(name));
  if (is_live(e->state)) return info(*e);  // starting a running VM is a no-op
  if (e->record_malformed) return Error::conflict(fmt::format("VM {}: {}", name, e->error));
  if (e->state == v1::VM_STATE_MIGRATED) {
    return Error::conflict(
        fmt::format("VM {} was migrated to {}: it runs there now", name, e->migrated_to));
  }
  return launch(*e, Launch{run_args(e->config), "booting"}, lock, {});
}

Result<v1::VmInfo> VmManager::start_new(const std::string& name, const Launch& how,
                                        std::vector<int> inherit_fds,
                                        const std::string& migration_id) {
  TRY(validate_vm_name(name));
  std::unique_lock lock(mu_);
  if (Entry* old = find(name)) {
    if (is_live(old->state)) {
      return Error::conflict(fmt::format("a VM named '{}' is running here already", name));
    }
    // A stopped or migrated-away VM of that name gives its place to the new one. Its watcher
    // may still need the lock to finish (see launch): join it unlocked.
    std::thread watcher = std::move(old->watcher);
    vms_.erase(name);
    lock.unlock();
    if (watcher.joinable()) watcher.join();
    lock.lock();
    if (find(name)) return Error::conflict(fmt::format("a VM named '{}' was just created", name));
  }
  TRY(make_dir(vm_dir(name), 0700));
  auto e = std::make_shared<Entry>();
  e->name = name;
  e->created_unix_ms = now_unix_ms();
  e->migration_id = migration_id;
  Entry& entry = *e;
  vms_[name] = std::move(e);
  return launch(entry, how, lock, inherit_fds);
}

Result<v1::VmInfo> VmManager::set_paused(const std::string& name, bool pause) {
  const v1::VmState from = pause ? v1::VM_STATE_RUNNING : v1::VM_STATE_PAUSED;
  const v1::VmState to = pause ? v1::VM_STATE_PAUSED : v1::VM_STATE_RUNNING;
  std::shared_ptr<Entry> e;
  {
    std::lock_guard lock(mu_);
    e = find_shared(name);
    if (!e) TRY(find_or_error(name));
  }
  // One pause or resume of this VM at a time; other VMs' calls do not wait for it.
  std::lock_guard op(e->op_mu);
  pid_t pid;
  {
    std::lock_guard lock(mu_);
    if (e->state == to) return info(*e);
    if (e->state != from) {
      return Error::conflict(
          fmt::format("VM {} is {}, not {}", name, vm_state_name(e->state), vm_state_name(from)));
    }
    pid = e->pid;
  }
  TRY(control(name, {{"op", pause ? "pause" : "resume"}}));
  std::lock_guard lock(mu_);
  if (find(name) != e.get() || e->pid != pid || e->state != from) return info(*e);
  e->state = to;
  changed(*e);
  return info(*e);
}

Result<v1::VmInfo> VmManager::stop(const std::string& name) {
  std::unique_lock lock(mu_);
  Entry* e = TRY(find_or_error(name));
  if (!is_live(e->state) || e->pid == 0) return info(*e);
  if (e->state == v1::VM_STATE_MIGRATING) {
    return Error::conflict(
        fmt::format("VM {} is being migrated: cancel the migration first (vmctl cancel)", name));
  }
  if (e->state == v1::VM_STATE_MIGRATION_IN_DOUBT) {
    return Error::conflict(fmt::format(
        "VM {} is in doubt after its migration's switchover: it may run on the destination "
        "already. Settle it first (vmctl migrate --recover {})",
        name, name));
  }
  if (e->state == v1::VM_STATE_RECEIVING) {
    return Error::conflict(fmt::format(
        "VM {} is an incoming migration waiting for its switchover: the source decides", name));
  }
  pid_t pid = e->pid;
  lock.unlock();
  Result<nlohmann::json> asked = control(name, {{"op", "stop"}});
  if (!asked.ok()) ::kill(pid, SIGKILL);
  lock.lock();
  auto gone = [&] {
    Entry* now = find(name);
    return !now || now->pid != pid;
  };
  if (!cv_.wait_for(lock, std::chrono::seconds(10), gone)) {
    spdlog::warn("VM {}: process {} did not stop within 10 s; killing it", name, pid);
    ::kill(pid, SIGKILL);
    cv_.wait_for(lock, std::chrono::seconds(10), gone);
  }
  Entry* now = TRY(find_or_error(name));
  return info(*now);
}

Result<v1::VmInfo> VmManager::remove(const std::string& name) {
  std::unique_lock lock(mu_);
  Entry* e = TRY(find_or_error(name));
  if (is_live(e->state)) {
    return Error::conflict(fmt::format("VM {} is {}: stop it first (vmctl stop {})", name,
                                       vm_state_name(e->state), name));
  }
  v1::VmInfo last = info(*e);
  std::thread watcher = std::move(e->watcher);
  vms_.erase(name);
  lock.unlock();
  if (watcher.joinable()) watcher.join();
  remove_vm_folder(name);
  spdlog::info("VM {}: deleted", name);
  return last;
}

std::vector<v1::VmInfo> VmManager::list() {
  std::lock_guard lock(mu_);
  std::vector<v1::VmInfo> out;
  for (const auto& [name, e] : vms_) out.push_back(info(*e));
  return out;
}

Result<v1::VmInfo> VmManager::get(const std::string& name, bool with_stats) {
  v1::VmInfo i;
  bool live;
  {
    std::lock_guard lock(mu_);
    Entry* e = TRY(find_or_error(name));
    i = info(*e);
    live = is_live(e->state);
  }
  if (with_stats && live) {
    // Without the manager's lock: a VM that is slow to answer delays this call only.
    // Stats are a nicety: a VM slow to give them gets its record without them, promptly.
    Result<nlohmann::json> stats =
        control(name, {{"op", "stats"}},
                vmprocess::ControlTimeouts{std::chrono::milliseconds(500),
                                           std::chrono::milliseconds(1000)});
    if (stats.ok() && stats->contains("vcpus") && (*stats)["vcpus"].is_array()) {
      for (const nlohmann::json& v : (*stats)["vcpus"]) {
        if (!v.is_object() || !v.contains("counters") || !v["counters"].is_object()) continue;
        v1::VcpuStats* s = i.add_vcpu_stats();
        s->set_vcpu(v.value("vcpu", 0u));
        for (auto& [counter, value] : v["counters"].items()) {
          if (value.is_number_unsigned()) (*s->mutable_counters())[counter] = value.get<uint64_t>();
        }
      }
    }
  }
  return i;
}

Result<v1::SnapshotResponse> VmManager::snapshot(const v1::SnapshotRequest& r) {
  std::unique_lock lock(mu_);
  Entry* e = TRY(find_or_error(r.name()));
  if (e->state != v1::VM_STATE_RUNNING && e->state != v1::VM_STATE_PAUSED) {
    return Error::conflict(
        fmt::format("VM {} is {}: only a running or paused VM has state to snapshot", r.name(),
                    vm_state_name(e->state)));
  }
  if (r.path().empty() || r.path()[0] != '/') {
    return Error::user(
        fmt::format("snapshot path '{}' must be absolute (it is on the daemon's "
                    "host)",
                    r.path()));
  }
  nlohmann::json request = {{"op", "snapshot"},
                            {"path", r.path()},
                            {"stop", r.stop()},
                            {"diff", r.diff()},
                            {"compression", r.compression() < 0 ? 0 : r.compression()}};
  if (!r.memory_file().empty()) request["memory_file"] = r.memory_file();
  std::string name = r.name();
  lock.unlock();  // a snapshot of a large VM takes a while; other VMs go on
  // Writing a large guest to a slow disk takes minutes; a VM that never answers is still cut off.
  nlohmann::json a = TRY(control(
      name, request,
      vmprocess::ControlTimeouts{std::chrono::milliseconds(2000), std::chrono::minutes(30)}));
  lock.lock();
  if (r.stop()) {
    if (Entry* now = find(name); now && now->state == v1::VM_STATE_RUNNING) {
      now->state = v1::VM_STATE_PAUSED;
      changed(*now);
    }
  }
  v1::SnapshotResponse out;
  out.set_path(a.value("path", ""));
  out.set_snapshot_id(a.value("id", ""));
  out.set_bytes(a.value("bytes", uint64_t{0}));
  out.set_pages(a.value("pages", uint64_t{0}));
  out.set_zero_pages(a.value("zero_pages", uint64_t{0}));
  out.set_seconds(a.value("seconds", 0.0));
  return out;
}

Result<v1::VmInfo> VmManager::restore(const v1::RestoreRequest& r) {
  if (r.files().empty()) return Error::user("restore needs a snapshot file");
  Launch how{{"restore"}, fmt::format("restoring from {}", r.files(0))};
  for (const std::string& f : r.files()) {
    if (f.empty() || f[0] != '/') {
      return Error::user(
          fmt::format("snapshot path '{}' must be absolute (it is on the daemon's "
                      "host)",
                      f));
    }
    if (::access(f.c_str(), R_OK) != 0) {
      return Error::user(fmt::format("cannot read snapshot {}: {}", f, std::strerror(errno)));
    }
    how.args.push_back(f);
  }
  if (r.paused()) how.args.push_back("--paused");
  if (r.lazy()) how.args.push_back("--lazy");
  if (!r.dirty_tracking().empty()) {
    TRY(vmm::parse_dirty_tracking(r.dirty_tracking()));
    how.args.insert(how.args.end(), {"--dirty-tracking", r.dirty_tracking()});
  }
  if (!r.irqchip().empty()) {
    TRY(vmm::parse_irqchip_mode(r.irqchip()));
    how.args.insert(how.args.end(), {"--irqchip", r.irqchip()});
  }
  TRY(start_new(r.name(), how));
  TRY(refresh_from_process(r.name()));
  return get(r.name());
}

Status VmManager::refresh_from_process(const std::string& name) {
  nlohmann::json status = TRY(control(name, {{"op", "status"}}));
  std::lock_guard lock(mu_);
  Entry* e = TRY(find_or_error(name));
  e->config.set_memory_bytes(status.value("memory", uint64_t{0}));
  e->config.set_cpus(status.value("vcpus", 0u));
  e->config.set_dirty_tracking(status.value("dirty_tracking", ""));
  e->config.set_dirty_ring_entries(status.value("dirty_ring_entries", 0u));
  e->config.set_irqchip(status.value("irqchip", ""));
  bool paused = status.value("paused", false);
  if (e->state == v1::VM_STATE_RUNNING || e->state == v1::VM_STATE_CREATED ||
      e->state == v1::VM_STATE_PAUSED) {
    e->state = paused ? v1::VM_STATE_PAUSED : v1::VM_STATE_RUNNING;
  }
  changed(*e);
  return ok_status();
}

Status VmManager::console_input(const std::string& name, const std::string& data) {
  {
    std::lock_guard lock(mu_);
    Entry* e = TRY(find_or_error(name));
    if (!is_live(e->state)) {
      return Error::conflict(
          fmt::format("VM {} is {}: its console takes no input", name, vm_state_name(e->state)));
    }
  }
  TRY(control(name, {{"op", "console"}, {"data", data}}));
  return ok_status();
}

Result<std::string> VmManager::control_socket(const std::string& name) {
  std::lock_guard lock(mu_);
  TRY(find_or_error(name));
  return socket_path(name);
}

Status VmManager::set_state(const std::string& name, v1::VmState state, const std::string& detail) {
  std::lock_guard lock(mu_);
  Entry* e = TRY(find_or_error(name));
  e->state = state;
  if (state == v1::VM_STATE_MIGRATED) e->migrated_to = detail;
  changed(*e);
  return ok_status();
}

Result<std::pair<v1::VmInfo, uint64_t>> VmManager::wait_for_change(const std::string& name,
                                                                   uint64_t version,
                                                                   int timeout_ms) {
  std::unique_lock lock(mu_);
  auto changed_or_gone = [&] {
    Entry* e = find(name);
    return !e || e->version != version || shutting_down_;
  };
  cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), changed_or_gone);
  Entry* e = TRY(find_or_error(name));
  return std::make_pair(info(*e), e->version);
}

}  // namespace vmctl::daemon
