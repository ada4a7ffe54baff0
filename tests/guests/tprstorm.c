/* tprstorm: raises and lowers the task priority through CR8 at the highest rate the machine allows,
 * as Windows does (~68,000 CR8 writes per second per vCPU measured on Windows 10), so a benchmark
 * can see whether the host shadows TPR accesses or traps them.
 *
 * Command line (all optional):
 *   writes=N   CR8 writes per run (default 100000)
 *   runs=N     runs (default 5); a few timer ticks apart so the host can read its counters
 * Output per run: "TPR begin k", then "TPR end k writes=N tsc=T"; at the end "TPR done". */
#include "rt/rt.h"

void user_main(void) {
  uint64_t writes = rt_arg("writes", 100000);
  uint64_t runs = rt_arg("runs", 5);
  rt_set_timer(10000);
  rt_printf("tprstorm: writes=%lu runs=%lu\n", writes, runs);
  for (uint64_t k = 1; k <= runs; ++k) {
    for (int i = 0; i < 3; ++i) rt_wait_tick();
    rt_printf("TPR begin %lu\n", k);
    for (int i = 0; i < 2; ++i) rt_wait_tick();
    uint64_t tsc = rt_syscall(RT_SYS_TPR_STORM, writes);
    rt_printf("TPR end %lu writes=%lu tsc=%lu\n", k, writes, tsc);
    for (int i = 0; i < 2; ++i) rt_wait_tick();
  }
  rt_printf("TPR done\n");
}
