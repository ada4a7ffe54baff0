// TPR storm: a guest writes the task priority as fast as it can, as Windows does around its
// critical sections, through CR8, the xAPIC TPR register or the x2APIC TPR MSR, on KVM's in-kernel
// LAPIC and on vmctl's userspace one (--irqchip user). Per run: CR8 writes, the vCPU's VM exits and
// emulated instructions (KVM's binary stats), and ns per write from the guest's TSC. Few exits and
// ~1 ns per write mean the host handles TPR accesses in hardware (TPR shadow / V_TPR); an exit per
// write means they trap.
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <map>
#include <mutex>
#include <regex>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include "bench/bench_report.h"
#include "bench/guest_console.h"
#include "vmm/vm.h"

namespace vmctl::bench {
namespace {

std::map<std::string, uint64_t> vcpu_stats(const vmm::Vm& vm) {
  std::map<std::string, uint64_t> out;
  Result<std::vector<vmm::VcpuStats>> stats = vm.exit_stats();
  if (stats.ok() && !stats->empty()) {
    for (const auto& v : (*stats)[0].values) out[v.name] = v.value;
  }
  return out;
}

}  // namespace
}  // namespace vmctl::bench

int main(int argc, char** argv) {
  using namespace vmctl;
  CLI::App app(
      "TPR storm benchmark: CR8 writes per second, VM exits and emulated instructions per "
      "write, on this host's KVM.");
  uint64_t writes = 100000;
  unsigned runs = 5;
  std::string json;
  app.add_option("--writes", writes, "CR8 writes per run")->capture_default_str();
  app.add_option("--runs", runs, "Runs")->capture_default_str();
  app.add_option("--json", json, "Also write the results as JSON to this file");
  std::vector<std::string> irqchips = {"kernel", "user"};
  std::vector<std::string> paths = {"cr8", "mmio", "msr", "ipi"};
  app.add_option("--irqchip", irqchips, "LAPIC implementations: kernel, user")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--paths", paths,
                 "How the guest writes the TPR: cr8 (MOV CR8), mmio (the xAPIC register), msr "
                 "(the x2APIC MSR); or ipi: no TPR writes but self-IPIs taken one after the "
                 "other (a \"write\" is then one interrupt sent, delivered and EOIed)")
      ->delimiter(',')
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  bench::Report report("TPR storm: TPR writes from ring 0 on each LAPIC implementation and path",
                       {"lapic", "path", "run", "writes", "ns/write", "writes/s", "exits",
                        "exits/write", "emulated", "emulated/write"});
  report.set_context("host", bench::host_context());
  report.set_context("reference", "Windows 10 was measured at ~68,000 CR8 writes/s per vCPU");
  const std::map<std::string, int> path_number = {{"cr8", 0}, {"mmio", 1}, {"msr", 2}, {"ipi", 3}};
  for (const std::string& irqchip_name : irqchips) {
    Result<vmm::IrqchipMode> irqchip = vmm::parse_irqchip_mode(irqchip_name);
    if (!irqchip.ok()) {
      std::fprintf(stderr, "tpr_bench: %s\n", irqchip.error().message().c_str());
      return 2;
    }
    for (const std::string& path : paths) {
      if (!path_number.count(path)) {
        std::fprintf(stderr, "tpr_bench: --paths %s: give cr8, mmio, msr or ipi\n", path.c_str());
        return 2;
      }
      bench::GuestConsole console;
      vmm::VmConfig config;
      config.memory_size = 64 << 20;
      config.irqchip = *irqchip;
      config.boot.kernel_path = VMCTL_GUEST_DIR "/tprstorm.elf";
      config.boot.cmdline =
          fmt::format("writes={} runs={} path={}", writes, runs, path_number.at(path));
      config.console_output = [&](const uint8_t* d, size_t n) { console.append(d, n); };
      Result<std::unique_ptr<vmm::Vm>> vm = vmm::Vm::create(config);
      if (!vm.ok()) {
        std::fprintf(stderr, "tpr_bench: %s\n", vm.error().message().c_str());
        return vm.error().exit_code();
      }
      Result<uint32_t> tsc_khz = (*vm)->vcpu(0).fd().get_tsc_khz();
      (*vm)->start();
      size_t from = 0;
      std::string storage;
      for (unsigned k = 1; k <= runs; ++k) {
        auto begin = console.next_match(std::regex(fmt::format("TPR begin {}\\b", k)), from,
                                        std::chrono::seconds(600), storage);
        if (!begin) {
          std::fprintf(stderr, "tpr_bench: %s/%s: the guest did not start run %u\n",
                       irqchip_name.c_str(), path.c_str(), k);
          return 1;
        }
        auto before = bench::vcpu_stats(**vm);
        auto end = console.next_match(
            std::regex(fmt::format("TPR end {} writes=([0-9]+) tsc=([0-9]+)[\\r\\n]", k)), from,
            std::chrono::seconds(600), storage);
        if (!end) {
          std::fprintf(stderr, "tpr_bench: %s/%s: run %u did not finish\n", irqchip_name.c_str(),
                       path.c_str(), k);
          return 1;
        }
        auto after = bench::vcpu_stats(**vm);
        uint64_t n = std::stoull((*end)[1].str()), tsc = std::stoull((*end)[2].str());
        double ns = tsc_khz.ok() && *tsc_khz ? static_cast<double>(tsc) * 1e6 / *tsc_khz : 0;
        auto delta = [&](const char* name) -> nlohmann::json {
          if (!before.count(name) || !after.count(name)) return nullptr;
          return after[name] - before[name];
        };
        nlohmann::json exits = delta("exits"), emulated = delta("insn_emulation");
        nlohmann::json row = {{"lapic", irqchip_name},
                              {"path", path},
                              {"run", std::to_string(k)},
                              {"writes", n},
                              {"ns/write", ns / static_cast<double>(n)},
                              {"writes/s", static_cast<double>(n) / (ns / 1e9)},
                              {"exits", exits},
                              {"emulated", emulated}};
        if (!exits.is_null()) row["exits/write"] = exits.get<double>() / static_cast<double>(n);
        if (!emulated.is_null()) {
          row["emulated/write"] = emulated.get<double>() / static_cast<double>(n);
        }
        report.add(row);
      }
      (*vm)->stop();
      (*vm)->wait();
    }
  }
  return report.finish(json);
}
