/* The test guests' runtime: a tiny x86-64 kernel that boots from PVH or multiboot, sets up
 * long mode, an IDT, the local APIC timer and SMP, and then runs the program in ring 3.
 *
 * Why ring 3: on hosts whose KVM is itself nested without hardware assists for the guest's
 * kernel mode, ring-0 guest code is instruction-emulated (slow) while ring-3 code runs natively.
 * The runtime keeps every ring-0 path short (boot, interrupt entry, a few syscalls) and the
 * programs do their heavy work (dirtying and checking memory) in ring 3. Every page is
 * user-accessible (these guests protect nothing from themselves). Port I/O goes through syscalls:
 * such hosts do not honour IOPL=3 for the guest's ring 3 (an `in` there raises #GP).
 *
 * Everything here is shared by ring 0 and ring 3 code (one address space, identity mapped). */
#pragma once

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#define RT_MAX_CPUS 16

/* Interrupt vectors the runtime uses. */
#define RT_VECTOR_TIMER 0x40
#define RT_VECTOR_SPURIOUS 0xff

/* Syscalls: number in rax, arguments in rdi and rsi, result in rax. The instruction is `ud2`,
 * which the #UD handler recognises when it comes from ring 3. Neither `int 0x80` nor
 * `syscall`/`sysret` work on hosts that emulate the guest's privileged transitions with KVM's
 * instruction emulator (it implements `int n` only in real mode and has no `sysret`), while
 * exception delivery and `iretq` do. */
enum rt_syscall {
  RT_SYS_WAIT_TICK = 0,  /* sleep (hlt) until the next timer tick */
  RT_SYS_SET_TIMER = 1,  /* start the periodic LAPIC timer with this period in microseconds */
  RT_SYS_START_APS = 2,  /* INIT-SIPI-SIPI every application processor in the MP table */
  RT_SYS_WRITE = 3,      /* write rdi[0..rsi) to COM1 */
  RT_SYS_READ = 4,       /* read up to rsi pending COM1 bytes into rdi; returns the count */
  RT_SYS_EXIT = 5,       /* end the VM with status rdi through the debug-exit port */
  RT_SYS_TPR_STORM = 6,  /* write the TPR rdi times in ring 0 (alternating classes 0 and 1) through
                            rsi: 0 CR8, 1 the xAPIC MMIO register, 2 the x2APIC MSR; TSC ticks */
  RT_SYS_RING0_CALL = 7, /* call rdi(rsi) in ring 0 with interrupts off; returns its result */
};

/* Filled by the ring-0 boot path; read-only afterwards (ring 3 reads them directly). */
extern char rt_cmdline[1024];
extern uint64_t rt_ram_top; /* end of the RAM range that starts at 1 MiB */
extern unsigned rt_ncpus;   /* processors listed in the MP table (1 if none) */
extern uint8_t rt_apic_ids[RT_MAX_CPUS];
extern const char* rt_boot_protocol; /* "pvh" or "multiboot" */

/* Updated by interrupt handlers. */
extern volatile uint64_t rt_ticks;       /* timer ticks on the boot CPU */
extern volatile unsigned rt_cpus_online; /* CPUs that reached their main loop (BSP included) */

/* Provided by each program: runs in ring 3 after boot. Returning ends the VM with status 0. */
void user_main(void);

/* ---- library (lib.c), usable from ring 0 and ring 3 ---- */
void* memset(void* dst, int c, size_t n);
void* memcpy(void* dst, const void* src, size_t n);
int memcmp(const void* a, const void* b, size_t n);
size_t strlen(const char* s);
int strncmp(const char* a, const char* b, size_t n);
int rt_vsnprintf(char* buf, size_t size, const char* fmt, va_list ap);
int rt_snprintf(char* buf, size_t size, const char* fmt, ...) __attribute__((format(printf, 3, 4)));
void rt_printf(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void rt_serial_write(const char* s, size_t n);
void rt_serial_write_unlocked(const char* s, size_t n);
void rt_serial_init(void);
size_t rt_serial_read(char* buf, size_t size);
/* A decimal or 0x-prefixed hexadecimal number at the start of `s` (0 if there is none). */
uint64_t rt_parse_number(const char* s);
/* The value of "name=<number>" on the command line, or `fallback`. */
uint64_t rt_arg(const char* name, uint64_t fallback);
/* Reads pending serial input; returns 1 with a NUL-terminated line when one is complete.
 * Handles the runtime's own commands first: "exit N" ends the VM with status N; "crash" jumps to
 * guest-physical memory that does not exist (tests the VMM's internal-error reporting). */
int rt_poll_line(char* line, size_t size);
void rt_exit(uint32_t status) __attribute__((noreturn));

/* ---- local APIC (ring 0 only) ----
 * Register offsets are the xAPIC MMIO ones; once rt_x2apic_enable() has switched the APIC to x2APIC
 * mode the same calls go to MSR 0x800 + offset / 16. ICR is one 64-bit MSR in x2APIC mode, so use
 * rt_lapic_send_ipi rather than writing ICR halves. */
#define RT_LAPIC_ID 0x020
#define RT_LAPIC_TPR 0x080
#define RT_LAPIC_PPR 0x0a0
#define RT_LAPIC_EOI 0x0b0
#define RT_LAPIC_SVR 0x0f0
#define RT_LAPIC_ISR 0x100 /* eight 32-bit registers, 0x10 apart */
#define RT_LAPIC_TMR 0x180
#define RT_LAPIC_IRR 0x200
#define RT_LAPIC_LVT_TIMER 0x320
#define RT_LAPIC_TIMER_INITIAL 0x380
#define RT_LAPIC_TIMER_CURRENT 0x390
#define RT_LAPIC_TIMER_DIVIDE 0x3e0
#define RT_MSR_APIC_BASE 0x1b
#define RT_MSR_TSC_DEADLINE 0x6e0
extern volatile int rt_x2apic; /* 1 once the boot CPU's APIC is in x2APIC mode */
uint32_t rt_lapic_read(uint32_t reg);
void rt_lapic_write(uint32_t reg, uint32_t value);
/* Fixed, edge-triggered IPI with the "self" destination shorthand. */
void rt_lapic_self_ipi(uint8_t vector);
/* Switches the boot CPU's APIC from xAPIC to x2APIC mode; returns 0 when CPUID does not offer it.
 */
int rt_x2apic_enable(void);

/* Ring-0 handlers for vectors the runtime does not use itself (32..254 except RT_VECTOR_TIMER).
 * A handler runs with interrupts off and must send its own EOI: the tests built on this decide
 * when (nested interrupts). Set entries from ring 3 or ring 0 (all memory is shared). */
typedef void (*rt_vector_handler)(uint8_t vector);
extern rt_vector_handler rt_vector_handlers[256];

static inline uint64_t rt_rdtsc(void) {
  uint32_t lo, hi;
  __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
  return (uint64_t)hi << 32 | lo;
}
static inline uint64_t rt_rdmsr(uint32_t msr) {
  uint32_t lo, hi;
  __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
  return (uint64_t)hi << 32 | lo;
}
static inline void rt_wrmsr(uint32_t msr, uint64_t v) {
  __asm__ volatile("wrmsr" ::"c"(msr), "a"((uint32_t)v), "d"((uint32_t)(v >> 32)) : "memory");
}
static inline void rt_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t out[4]) {
  __asm__ volatile("cpuid"
                   : "=a"(out[0]), "=b"(out[1]), "=c"(out[2]), "=d"(out[3])
                   : "a"(leaf), "c"(subleaf));
}

/* ---- port I/O (ring 0 only) ---- */
static inline void rt_outb(uint16_t port, uint8_t v) {
  __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port));
}
static inline uint8_t rt_inb(uint16_t port) {
  uint8_t v;
  __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
  return v;
}
static inline void rt_outl(uint16_t port, uint32_t v) {
  __asm__ volatile("outl %0, %1" ::"a"(v), "Nd"(port));
}

/* ---- syscalls from ring 3 ---- */
static inline uint64_t rt_syscall2(uint64_t nr, uint64_t arg0, uint64_t arg1) {
  uint64_t ret;
  __asm__ volatile("ud2" : "=a"(ret) : "a"(nr), "D"(arg0), "S"(arg1) : "memory");
  return ret;
}
static inline uint64_t rt_syscall(uint64_t nr, uint64_t arg) {
  return rt_syscall2(nr, arg, 0);
}
static inline int rt_in_ring0(void) {
  uint16_t cs;
  __asm__ volatile("mov %%cs, %0" : "=r"(cs));
  return (cs & 3) == 0;
}
static inline void rt_wait_tick(void) {
  rt_syscall(RT_SYS_WAIT_TICK, 0);
}
static inline void rt_set_timer(uint64_t period_us) {
  rt_syscall(RT_SYS_SET_TIMER, period_us);
}
static inline void rt_start_aps(void) {
  rt_syscall(RT_SYS_START_APS, 0);
}
/* Runs fn(arg) in ring 0 with interrupts off (fn may enable them) and returns its result. */
static inline uint64_t rt_ring0_call(uint64_t (*fn)(uint64_t), uint64_t arg) {
  return rt_syscall2(RT_SYS_RING0_CALL, (uint64_t)fn, arg);
}
