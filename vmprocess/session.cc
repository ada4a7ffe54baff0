#include "vmprocess/session.h"

#include <pthread.h>
#include <signal.h>
#include <time.h>

#include <atomic>
#include <cstdio>
#include <thread>

#include <fmt/format.h>

#include "vmprocess/console.h"
#include "vmprocess/control_server.h"

namespace vmctl::vmprocess {
namespace {

// Counters worth an operator's glance, in the order shown; the rest of KVM's stats are noise here.
constexpr const char* kShownStats[] = {
    "exits",
    "io_exits",
    "mmio_exits",
    "halt_exits",
    "irq_exits",
    "irq_window_exits",
    "nmi_window_exits",
    "signal_exits",
    "request_irq_exits",
    "insn_emulation",
    "insn_emulation_fail",
    "irq_injections",
    "halt_wakeup",
};

void print_stats(const vmm::Vm& vm) {
  Result<std::vector<vmm::VcpuStats>> stats = vm.exit_stats();
  if (!stats.ok()) {
    std::fprintf(stderr, "vmctl: exit statistics unavailable: %s\n",
                 stats.error().message().c_str());
    return;
  }
  if (stats->empty()) {
    std::fprintf(stderr,
                 "vmctl: exit statistics unavailable: this host's KVM has no binary stats fd\n");
    return;
  }
  std::string header = fmt::format("{:<22}", "exit statistic");
  for (const auto& s : *stats) header += fmt::format(" {:>14}", fmt::format("vcpu{}", s.vcpu));
  std::fprintf(stderr, "%s\n", header.c_str());
  for (const char* name : kShownStats) {
    std::string row = fmt::format("{:<22}", name);
    bool found = false;
    for (const auto& s : *stats) {
      for (const auto& v : s.values) {
        if (v.name == name) {
          row += fmt::format(" {:>14}", v.value);
          found = true;
        }
      }
    }
    if (found) std::fprintf(stderr, "%s\n", row.c_str());
  }
}

// Waits for SIGINT/SIGTERM/SIGHUP (blocked in every thread) and stops the VM on the first one.
class SignalWatcher {
 public:
  explicit SignalWatcher(vmm::Vm& vm) : vm_(vm) {
    thread_ = std::thread([this] { run(); });
  }
  ~SignalWatcher() {
    done_ = true;
    thread_.join();
  }

 private:
  void run() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGHUP);
    timespec tick{0, 100 * 1000 * 1000};
    while (!done_) {
      int sig = sigtimedwait(&set, nullptr, &tick);
      if (sig > 0) {
        if (!vm_.ended())
          std::fprintf(stderr, "\nvmctl: %s received, stopping the VM\n", strsignal(sig));
        vm_.stop();
      }
    }
  }
  vmm::Vm& vm_;
  std::atomic<bool> done_{false};
  std::thread thread_;
};

}  // namespace

void block_stop_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

int run_session(vmm::Vm& vm, const SessionOptions& o, std::unique_ptr<ControlServer> server) {
  // Paused before anyone can ask to resume it: a "resume" that came between the control socket
  // opening and this pause would find nothing to resume, and the pause would then hold forever.
  if (o.start_paused && !server) vm.pause();
  std::unique_ptr<ControlServer> control = std::move(server);
  if (!control && !o.control.empty()) {
    Result<std::unique_ptr<ControlServer>> server =
        ControlServer::start(vm, o.control, o.start_paused);
    if (!server.ok()) {
      std::fprintf(stderr, "vmctl: %s\n", server.error().message().c_str());
      return server.error().exit_code();
    }
    control = std::move(server).value();
  }
  vmm::VmExit exit;
  {
    TerminalMode terminal;
    SignalWatcher signals(vm);
    StdinPump input([&vm](const uint8_t* data, size_t len) { vm.console_input(data, len); });
    vm.start();
    exit = vm.wait();
  }
  control.reset();
  if (o.stats) print_stats(vm);
  if (exit.kind == vmm::VmExit::Kind::kError) {
    std::fprintf(stderr, "vmctl: %s\n", exit.message.c_str());
  } else if (!o.quiet) {
    std::fprintf(stderr, "vmctl: %s\n", exit.describe().c_str());
  }
  return exit.exit_code();
}

}  // namespace vmctl::vmprocess
