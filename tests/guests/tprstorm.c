/* tprstorm: raises and lowers the task priority through CR8 at the highest rate the machine allows,
 * as Windows does (~68,000 CR8 writes per second per vCPU measured on Windows 10), so a benchmark
 * can see whether the host shadows TPR accesses or traps them.
 *
 * Command line (all optional):
 *   writes=N   CR8 writes per run (default 100000)
 *   runs=N     runs (default 5); a few timer ticks apart so the host can read its counters
 *   path=N     how the TPR is written: 0 CR8 (default), 1 the xAPIC MMIO register (0xfee00080),
 *              2 the x2APIC MSR (0x808; the APIC is switched to x2APIC mode first),
 *              3 no TPR writes: `writes` self-IPIs, each taken by a handler (and EOIed) before the
 *              next is sent: the interrupt rate of the LAPIC implementation
 * Output per run: "TPR begin k", then "TPR end k writes=N tsc=T"; at the end "TPR done". */
#include "rt/rt.h"

#define IPI_VECTOR 0x50

static volatile uint64_t ipis_taken;

static void ipi_handler(uint8_t vector) {
  (void)vector;
  ++ipis_taken;
  rt_lapic_write(RT_LAPIC_EOI, 0);
}

/* In ring 0 (interrupts off): n self-IPIs, each waited for with interrupts on. TSC ticks. */
static uint64_t ipi_storm(uint64_t n) {
  uint64_t start = rt_rdtsc();
  for (uint64_t i = 0; i < n; ++i) {
    uint64_t before = ipis_taken;
    rt_lapic_self_ipi(IPI_VECTOR);
    /* sti; hlt: the interrupt wakes the HLT (the STI shadow keeps it from coming in between). */
    while (ipis_taken == before) __asm__ volatile("sti; hlt; cli" ::: "memory");
  }
  return rt_rdtsc() - start;
}

static uint64_t enable_x2apic(uint64_t unused) {
  (void)unused;
  return (uint64_t)rt_x2apic_enable();
}

void user_main(void) {
  uint64_t writes = rt_arg("writes", 100000);
  uint64_t runs = rt_arg("runs", 5);
  uint64_t path = rt_arg("path", 0);
  if (path == 2) rt_ring0_call(enable_x2apic, 0);
  rt_vector_handlers[IPI_VECTOR] = ipi_handler;
  rt_set_timer(10000);
  rt_printf("tprstorm: writes=%lu runs=%lu path=%s\n", writes, runs,
            path == 1 ? "mmio" : path == 2 ? "msr" : path == 3 ? "ipi" : "cr8");
  for (uint64_t k = 1; k <= runs; ++k) {
    for (int i = 0; i < 3; ++i) rt_wait_tick();
    rt_printf("TPR begin %lu\n", k);
    for (int i = 0; i < 2; ++i) rt_wait_tick();
    uint64_t tsc =
        path == 3 ? rt_ring0_call(ipi_storm, writes) : rt_syscall2(RT_SYS_TPR_STORM, writes, path);
    rt_printf("TPR end %lu writes=%lu tsc=%lu\n", k, writes, tsc);
    for (int i = 0; i < 2; ++i) rt_wait_tick();
  }
  rt_printf("TPR done\n");
}
