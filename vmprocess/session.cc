#include "vmprocess/session.h"

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
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
  // The signals are blocked in every thread (block_stop_signals); a signalfd takes them here, and
  // an eventfd ends the watch at once (a VM's process must not linger after its VM ended: a
  // migrated VM's source process is waited for before the migration counts as done).
  explicit SignalWatcher(vmm::Vm& vm) : vm_(vm) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGHUP);
    signals_ = Fd(::signalfd(-1, &set, SFD_CLOEXEC));
    wake_ = Fd(::eventfd(0, EFD_CLOEXEC));
    thread_ = std::thread([this] { run(); });
  }
  ~SignalWatcher() {
    uint64_t one = 1;
    if (::write(wake_.get(), &one, sizeof one) < 0) {
      // Cannot happen for an eventfd; the thread then ends with the process.
    }
    thread_.join();
  }

 private:
  void run() {
    while (true) {
      pollfd fds[2] = {{signals_.get(), POLLIN, 0}, {wake_.get(), POLLIN, 0}};
      if (::poll(fds, 2, -1) < 0) {
        if (errno == EINTR) continue;
        return;
      }
      if (fds[1].revents) return;
      signalfd_siginfo info{};
      if (::read(signals_.get(), &info, sizeof info) != sizeof info) continue;
      int sig = static_cast<int>(info.ssi_signo);
      if (!vm_.ended()) {
        std::fprintf(stderr, "\nvmctl: %s received, stopping the VM\n", strsignal(sig));
      }
      vm_.stop();
    }
  }
  vmm::Vm& vm_;
  Fd signals_, wake_;
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
