/* heartbeat: prints "HB n" at a steady rate from the local APIC timer and echoes serial input.
 *
 * Command line (all optional):
 *   hb_ms=N       heartbeat period in milliseconds (default 1000)
 *   exit_after=N  end the VM with status 0 after heartbeat N (default: run until stopped)
 *   smp=0|1       start the other CPUs listed in the MP table (default 1)
 * Console commands: "exit N" ends the VM with status N; "flood N" prints N lines of 100 bytes
 * as fast as it can, then "FLOOD done lines=N" (a guest that tries to fill the host's disk through
 * its console); any other line is echoed as "RX <line>".
 * Heartbeat numbers continue across snapshot/restore and migration: tests check that. */
#include "rt/rt.h"

static uint64_t tick_period_us(uint64_t hb_ms) {
  /* 10 ms ticks when they divide the heartbeat: input is polled once per tick. */
  return hb_ms % 10 == 0 ? 10000 : hb_ms * 1000;
}

static void start_other_cpus(void) {
  rt_start_aps();
  for (unsigned waited = 0; rt_cpus_online < rt_ncpus && waited < 500; ++waited) rt_wait_tick();
  if (rt_cpus_online == rt_ncpus) {
    rt_printf("SMP: %u CPUs online\n", rt_cpus_online);
  } else {
    rt_printf("SMP: FAIL only %u of %u CPUs came online\n", rt_cpus_online, rt_ncpus);
  }
}

static void flood(uint64_t lines) {
  for (uint64_t i = 0; i < lines; ++i) {
    /* 100 bytes with the line end: "FLOOD <i> " and filler. */
    char line[101];
    int n = rt_snprintf(line, sizeof(line), "FLOOD %lu ", i);
    for (; n < 99; ++n) line[n] = 'f';
    line[99] = '\n';
    rt_serial_write(line, 100);
  }
  rt_printf("FLOOD done lines=%lu\n", lines);
}

void user_main(void) {
  uint64_t hb_ms = rt_arg("hb_ms", 1000);
  uint64_t exit_after = rt_arg("exit_after", 0);
  if (hb_ms == 0) hb_ms = 1000;
  rt_printf("heartbeat: boot cpus=%u protocol=%s ram=%luMiB hb_ms=%lu cmdline=\"%s\"\n", rt_ncpus,
            rt_boot_protocol, rt_ram_top >> 20, hb_ms, rt_cmdline);
  rt_printf("heartbeat: type a line to have it echoed; \"exit N\" ends the VM with status N\n");

  uint64_t tick_us = tick_period_us(hb_ms);
  uint64_t ticks_per_hb = hb_ms * 1000 / tick_us;
  rt_set_timer(tick_us);
  if (rt_arg("smp", 1) && rt_ncpus > 1) start_other_cpus();

  uint64_t hb = 0;
  uint64_t next = rt_ticks + ticks_per_hb;
  char line[200];
  for (;;) {
    rt_wait_tick();
    while (rt_poll_line(line, sizeof(line))) {
      if (strncmp(line, "flood ", 6) == 0) {
        flood(rt_parse_number(line + 6));
      } else {
        rt_printf("RX %s\n", line);
      }
    }
    uint64_t now = rt_ticks;
    if (now < next) continue;
    /* After a pause the timer may deliver one coalesced tick: count one heartbeat, no burst. */
    next = now + ticks_per_hb;
    ++hb;
    uint64_t ms = now * tick_us / 1000;
    rt_printf("HB %lu uptime=%lu.%03lus\n", hb, ms / 1000, ms % 1000);
    if (exit_after && hb >= exit_after) rt_exit(0);
  }
}
