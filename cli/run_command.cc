#include "cli/run_command.h"

#include <cstdio>

#include <fmt/format.h>

#include "base/size.h"
#include "vmm/vm.h"
#include "vmprocess/console.h"
#include "vmprocess/session.h"

namespace vmctl::cli {

CLI::App* add_run_command(CLI::App& app, RunOptions& o) {
  CLI::App* run =
      app.add_subcommand("run", "Boot a guest in the foreground, console on this terminal");
  run->footer(
      "With no --kernel, boots the built-in demo guest (a heartbeat that prints HB lines).\n"
      "Kernels: ELF with a PVH note or multiboot header, or a Linux bzImage.\n"
      "Ends when the guest powers off, resets or writes the debug-exit port (0xf4), or on Ctrl-C.\n"
      "Exit code: the guest's debug-exit status, 0 on power-off/reset/stop, 1 on a VMM failure,\n"
      "2 on bad input.\n\n"
      "Examples:\n"
      "  vmctl run\n"
      "  vmctl run --kernel vmlinuz --initrd initrd.img --cmdline 'console=ttyS0' --memory 1G "
      "--cpus 2");
  run->add_option("--kernel,-k", o.kernel, "Kernel image to boot (default: built-in demo guest)");
  run->add_option("--initrd,-i", o.initrd,
                  "Initial ramdisk (Linux) or boot module (PVH/multiboot)");
  run->add_option("--cmdline,-c", o.cmdline, "Kernel command line");
  run->add_option("--memory,-m", o.memory, "Guest RAM, e.g. 512M or 2G")->capture_default_str();
  run->add_option("--cpus", o.cpus, "Number of vCPUs")->capture_default_str();
  run->add_flag("--stats", o.stats, "Print per-vCPU KVM exit statistics when the VM ends");
  run->add_flag("--quiet,-q", o.quiet, "Print nothing but the guest's console");
  add_console_log_options(run, o.console_log, o.console_log_max);
  add_guest_memory_limit(run, o.max_guest_memory);
  run->add_option("--control", o.control,
                  "Listen on this unix socket for `vmctl snapshot/pause/resume --control`");
  add_dirty_tracking_options(run, o.dirty_tracking, o.dirty_ring_entries);
  run->add_option("--irqchip", o.irqchip,
                  "Who models the interrupt controllers: kernel (KVM's in-kernel LAPIC, IOAPIC, "
                  "PIC and PIT; fast, what guests with legacy devices need) or user (vmctl's own "
                  "local APIC in userspace, architectural on any host: ISR, EOI order and TPR as "
                  "the SDM says; no IOAPIC, PIC or PIT). Snapshots restore into either "
                  "(vmctl restore --irqchip)")
      ->check(CLI::IsMember({"kernel", "user"}))
      ->capture_default_str();
  add_sandbox_options(run, o.sandbox);
  return run;
}

void add_dirty_tracking_options(CLI::App* command, std::string& mode, uint32_t& ring_entries) {
  command
      ->add_option("--dirty-tracking", mode,
                   "Where dirty pages come from (diff snapshots, migration): ring (the KVM dirty "
                   "ring), bitmap (KVM_GET_DIRTY_LOG), auto (the ring where this host has it)")
      ->check(CLI::IsMember({"auto", "bitmap", "ring"}))
      ->capture_default_str();
  command->add_option("--dirty-ring-entries", ring_entries,
                      "Ring entries per vCPU, a power of two (default 4096)");
}

void add_console_log_options(CLI::App* command, std::string& path, std::string& max_bytes) {
  command->add_option("--console-log", path,
                      "Append the guest's console to this file instead of this terminal");
  command
      ->add_option("--console-log-max", max_bytes,
                   "Cap the console log at this size (e.g. 8M): when full it becomes FILE.1 "
                   "(replacing the one before) and a new FILE starts")
      ->capture_default_str();
}

void add_guest_memory_limit(CLI::App* command, std::string& max) {
  command->add_option("--max-guest-memory", max,
                      "Refuse a guest with more RAM than this (e.g. 64G; default: the host's RAM)");
}

Result<uint64_t> guest_memory_limit(const std::string& max) {
  if (max.empty()) return uint64_t{0};
  return TRY_CTX(parse_size(max), "--max-guest-memory");
}

int run_vm(const RunOptions& o) {
  if (int rc = enter_sandbox(o.sandbox, {o.kernel, o.initrd}); rc != 0) return rc;
  Result<uint64_t> memory = parse_size(o.memory);
  if (!memory.ok()) {
    std::fprintf(stderr, "vmctl: --memory: %s\n", memory.error().message().c_str());
    return 2;
  }
  Result<uint64_t> limit = guest_memory_limit(o.max_guest_memory);
  if (!limit.ok() || (*limit && *memory > *limit)) {
    std::fprintf(stderr, "vmctl: %s\n",
                 !limit.ok() ? limit.error().message().c_str()
                             : fmt::format("--memory {} is more than the {} this host allows a "
                                           "guest (--max-guest-memory)",
                                           format_size(*memory), format_size(*limit))
                                   .c_str());
    return 2;
  }
  Result<std::function<void(const uint8_t*, size_t)>> console =
      vmprocess::console_output(o.console_log, o.console_log_max);
  if (!console.ok()) {
    std::fprintf(stderr, "vmctl: %s\n", console.error().message().c_str());
    return console.error().exit_code();
  }
  vmm::VmConfig config;
  config.memory_size = *memory;
  config.num_cpus = o.cpus;
  config.boot.kernel_path = o.kernel;
  if (!o.initrd.empty()) config.boot.initrd_path = o.initrd;
  config.boot.cmdline = o.cmdline;
  config.boot.num_cpus = o.cpus;
  config.console_output = *console;
  Result<vmm::DirtyTracking> tracking = vmm::parse_dirty_tracking(o.dirty_tracking);
  if (!tracking.ok()) {
    std::fprintf(stderr, "vmctl: %s\n", tracking.error().message().c_str());
    return 2;
  }
  config.dirty_tracking = *tracking;
  config.dirty_ring_entries = o.dirty_ring_entries;
  Result<vmm::IrqchipMode> irqchip = vmm::parse_irqchip_mode(o.irqchip);
  if (!irqchip.ok()) {
    std::fprintf(stderr, "vmctl: %s\n", irqchip.error().message().c_str());
    return 2;
  }
  config.irqchip = *irqchip;

  vmprocess::block_stop_signals();
  Result<std::unique_ptr<vmm::Vm>> created = vmm::Vm::create(config);
  if (!created.ok()) {
    std::fprintf(stderr, "vmctl: %s\n", created.error().message().c_str());
    return created.error().exit_code();
  }
  vmm::Vm& vm = **created;
  if (!o.quiet) {
    std::fprintf(stderr, "vmctl: booting %s (%s, %s, %u vCPU%s); Ctrl-C stops it\n",
                 o.kernel.empty() ? "the built-in demo guest" : o.kernel.c_str(),
                 vmm::boot::image_kind_name(vm.boot_entry().kind), format_size(*memory).c_str(),
                 o.cpus, o.cpus == 1 ? "" : "s");
  }
  return vmprocess::run_session(vm, vmprocess::SessionOptions{o.stats, o.quiet, false, o.control});
}

}  // namespace vmctl::cli
