/* dirtier: rewrites a memory region from ring 3 at a target rate and checks every page.
 *
 * Command line (all optional):
 *   mib=N         region size in MiB, placed at 16 MiB (default 64)
 *   rate=N        MiB per second to dirty; 0 = as fast as the guest can (default 0)
 *   hb_ms=N       heartbeat period in milliseconds (default 1000)
 *   exit_after=N  end the VM with status 0 after heartbeat N
 *   halt=cli      once every page is written, print "HALT cli" and stop in `cli; hlt` for good, as
 *                 a panicked kernel does (nothing but NMI or INIT wakes the vCPU)
 *   halt=idle     the same with interrupts on but the timer stopped: `sti; hlt` with nothing to
 *                 wake it, as a tickless kernel idles
 * Console commands: "verify" checks every page now and prints "VERIFY pages=.. mismatches=..";
 * "exit N" ends the VM with status N.
 *
 * Every page carries (page index, generation, checksum) and a pattern derived from both; before a
 * page is rewritten its content is checked against the generation the guest last wrote, so a page
 * lost or corrupted by snapshot/restore or migration prints a MISMATCH line. Each heartbeat line
 * reports how much was dirtied since the previous one. */
#include "rt/rt.h"

#define REGION_BASE (16ul << 20)
#define PAGE_WORDS 512
#define MAX_REPORTED_MISMATCHES 20

struct dirtier {
  volatile uint64_t* region;
  uint32_t* generations; /* last generation written per page; 0 = never written */
  uint64_t pages;
  uint64_t next_page;
  uint64_t mismatches;
  uint64_t reported;
};

static inline uint64_t pattern_seed(uint64_t page, uint64_t generation) {
  return page * 0x9e3779b97f4a7c15ull ^ (generation + 1) * 0xc2b2ae3d27d4eb4full;
}

static void write_page(struct dirtier* d, uint64_t page, uint32_t generation) {
  volatile uint64_t* w = d->region + page * PAGE_WORDS;
  uint64_t seed = pattern_seed(page, generation);
  uint64_t sum = page + generation;
  w[0] = page;
  w[1] = generation;
  for (uint64_t i = 2; i < PAGE_WORDS - 1; ++i) {
    uint64_t v = seed + i;
    w[i] = v;
    sum += v;
  }
  w[PAGE_WORDS - 1] = ~sum;
}

/* Returns 1 when the page holds what generation `expected` wrote. */
static int check_page(struct dirtier* d, uint64_t page, uint32_t expected) {
  volatile uint64_t* w = d->region + page * PAGE_WORDS;
  uint64_t sum = w[0] + w[1];
  for (uint64_t i = 2; i < PAGE_WORDS - 1; ++i) sum += w[i];
  int ok = w[0] == page && w[1] == expected && w[PAGE_WORDS - 1] == ~sum &&
           w[2] == pattern_seed(page, expected) + 2;
  if (!ok) {
    ++d->mismatches;
    if (d->reported++ < MAX_REPORTED_MISMATCHES) {
      rt_printf(
          "MISMATCH page=%lu gpa=%#lx expected_generation=%u found_index=%lu "
          "found_generation=%lu checksum=%s\n",
          page, (uint64_t)(uintptr_t)w, expected, w[0], w[1],
          w[PAGE_WORDS - 1] == ~sum ? "ok" : "bad");
    }
  }
  return ok;
}

static void dirty_one(struct dirtier* d) {
  uint64_t page = d->next_page;
  uint32_t generation = d->generations[page];
  if (generation) check_page(d, page, generation);
  d->generations[page] = generation + 1;
  write_page(d, page, generation + 1);
  d->next_page = page + 1 == d->pages ? 0 : page + 1;
}

static void verify_all(struct dirtier* d) {
  uint64_t before = d->mismatches, checked = 0;
  for (uint64_t p = 0; p < d->pages; ++p) {
    if (!d->generations[p]) continue;
    check_page(d, p, d->generations[p]);
    ++checked;
  }
  rt_printf("VERIFY pages=%lu mismatches=%lu\n", checked, d->mismatches - before);
}

/* Ring 0 (rt_ring0_call): the vCPU halts and stays halted. */
static uint64_t halt_forever(uint64_t interrupts_on) {
  if (!interrupts_on) {
    for (;;) __asm__ volatile("cli; hlt" ::: "memory");
  }
  rt_lapic_write(RT_LAPIC_LVT_TIMER, 1u << 16); /* masked */
  rt_lapic_write(RT_LAPIC_TIMER_INITIAL, 0);    /* and stopped */
  for (;;) __asm__ volatile("sti; hlt; cli" ::: "memory");
  return 0;
}

/* "halt=cli" -> 1, "halt=idle" -> 2, otherwise 0. */
static int halt_mode(void) {
  static const char key[] = "halt=";
  for (const char* p = rt_cmdline; *p; ++p) {
    if ((p == rt_cmdline || p[-1] == ' ') && strncmp(p, key, sizeof(key) - 1) == 0) {
      const char* v = p + sizeof(key) - 1;
      if (strncmp(v, "cli", 3) == 0) return 1;
      if (strncmp(v, "idle", 4) == 0) return 2;
    }
  }
  return 0;
}

void user_main(void) {
  uint64_t mib = rt_arg("mib", 64);
  uint64_t rate = rt_arg("rate", 0);
  uint64_t hb_ms = rt_arg("hb_ms", 1000);
  uint64_t exit_after = rt_arg("exit_after", 0);
  int halt = halt_mode();
  if (hb_ms == 0) hb_ms = 1000;

  struct dirtier d = {0};
  d.region = (volatile uint64_t*)REGION_BASE;
  d.pages = mib << 8;
  d.generations = (uint32_t*)(REGION_BASE + (mib << 20));
  uint64_t end = REGION_BASE + (mib << 20) + d.pages * sizeof(uint32_t);
  if (mib == 0 || end > rt_ram_top) {
    rt_printf("dirtier: FAIL mib=%lu needs RAM up to %luMiB but the guest has %luMiB\n", mib,
              (end + (1 << 20) - 1) >> 20, rt_ram_top >> 20);
    rt_exit(3);
  }
  memset(d.generations, 0, d.pages * sizeof(uint32_t));
  rt_printf("dirtier: region=%#lx size=%luMiB pages=%lu rate=%luMiB/s hb_ms=%lu ram=%luMiB\n",
            REGION_BASE, mib, d.pages, rate, hb_ms, rt_ram_top >> 20);

  uint64_t tick_us = hb_ms % 10 == 0 ? 10000 : hb_ms * 1000;
  uint64_t ticks_per_hb = hb_ms * 1000 / tick_us;
  /* Pages allowed per tick, in 1/1024ths of a page so low rates still make progress. */
  uint64_t credit_per_tick = rate * 256 * 1024 * tick_us / 1000000;
  uint64_t credit = 0;
  rt_set_timer(tick_us);

  uint64_t hb = 0, last_tick = rt_ticks, next_hb = last_tick + ticks_per_hb;
  uint64_t dirtied = 0, dirtied_at_hb = 0;
  char line[200];
  for (;;) {
    uint64_t now = rt_ticks;
    if (now != last_tick) {
      /* At most two ticks of credit: a pause must not be followed by a burst. */
      uint64_t elapsed = now - last_tick > 2 ? 2 : now - last_tick;
      credit += elapsed * credit_per_tick;
      if (credit > 2 * credit_per_tick) credit = 2 * credit_per_tick;
      last_tick = now;
      while (rt_poll_line(line, sizeof(line))) {
        if (strncmp(line, "verify", 7) == 0)
          verify_all(&d);
        else
          rt_printf("RX %s\n", line);
      }
      if (now >= next_hb) {
        next_hb = now + ticks_per_hb;
        ++hb;
        uint64_t tenths = (dirtied - dirtied_at_hb) * 10 / 256;
        dirtied_at_hb = dirtied;
        rt_printf("HB %lu dirtied=%lu.%luMiB total=%luMiB mismatches=%lu\n", hb, tenths / 10,
                  tenths % 10, dirtied / 256, d.mismatches);
        if (exit_after && hb >= exit_after) rt_exit(0);
      }
    }
    if (halt && dirtied >= d.pages) {
      rt_printf("HALT %s pages=%lu\n", halt == 1 ? "cli" : "idle", d.pages);
      rt_ring0_call(halt_forever, halt == 2);
    }
    if (rate == 0) {
      for (int i = 0; i < 64; ++i) dirty_one(&d);
      dirtied += 64;
    } else if (credit >= 1024) {
      dirty_one(&d);
      ++dirtied;
      credit -= 1024;
    } else {
      rt_wait_tick();
    }
  }
}
