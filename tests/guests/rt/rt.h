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
  RT_SYS_WAIT_TICK = 0, /* sleep (hlt) until the next timer tick */
  RT_SYS_SET_TIMER = 1, /* start the periodic LAPIC timer with this period in microseconds */
  RT_SYS_START_APS = 2, /* INIT-SIPI-SIPI every application processor in the MP table */
  RT_SYS_WRITE = 3,     /* write rdi[0..rsi) to COM1 */
  RT_SYS_READ = 4,      /* read up to rsi pending COM1 bytes into rdi; returns the count */
  RT_SYS_EXIT = 5,      /* end the VM with status rdi through the debug-exit port */
  RT_SYS_TPR_STORM = 6, /* write CR8 rdi times in ring 0 (alternating 0 and 1); returns TSC ticks */
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
/* The value of "name=<number>" on the command line, or `fallback`. */
uint64_t rt_arg(const char* name, uint64_t fallback);
/* Reads pending serial input; returns 1 with a NUL-terminated line when one is complete.
 * Handles the runtime's own commands first: "exit N" ends the VM with status N; "crash" jumps to
 * guest-physical memory that does not exist (tests the VMM's internal-error reporting). */
int rt_poll_line(char* line, size_t size);
void rt_exit(uint32_t status) __attribute__((noreturn));

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
