/* Ring-0 part of the test-guest runtime: boot information, IDT, TSS, local APIC, SMP start and
 * the few syscalls ring 3 needs. Every path here is short on purpose (see rt.h). */
#include "rt.h"

#define LAPIC_BASE 0xfee00000ul
#define LAPIC_ICR_LOW 0x300
#define LAPIC_ICR_HIGH 0x310
#define MSR_X2APIC_FIRST 0x800
#define MSR_X2APIC_ICR 0x830
#define APIC_BASE_EXTD (1u << 10)
#define LAPIC_TIMER_PERIODIC (1u << 17)
/* KVM's in-kernel local APIC (and QEMU's on KVM) counts its timer at 1 GHz. */
#define LAPIC_TIMER_HZ 1000000000ull

#define AP_TRAMPOLINE 0x10000
#define PVH_MAGIC 0x336ec578u
#define MULTIBOOT_MAGIC 0x2badb002u

struct frame {
  uint64_t r15, r14, r13, r12, r11, r10, r9, r8, rbp, rdi, rsi, rdx, rcx, rbx, rax;
  uint64_t vector, error, rip, cs, rflags, rsp, ss;
};

struct tss {
  uint32_t reserved0;
  uint64_t rsp0, rsp1, rsp2;
  uint64_t reserved1;
  uint64_t ist[7];
  uint64_t reserved2;
  uint16_t reserved3;
  uint16_t iomap_base;
} __attribute__((packed));

struct idt_entry {
  uint16_t offset_low;
  uint16_t selector;
  uint8_t ist;
  uint8_t type_attr;
  uint16_t offset_mid;
  uint32_t offset_high;
  uint32_t reserved;
} __attribute__((packed));

char rt_cmdline[1024];
uint64_t rt_ram_top;
unsigned rt_ncpus = 1;
uint8_t rt_apic_ids[RT_MAX_CPUS];
const char* rt_boot_protocol = "pvh";
volatile uint64_t rt_ticks;
volatile unsigned rt_cpus_online = 1;
volatile int rt_x2apic;
rt_vector_handler rt_vector_handlers[256];

extern uint64_t rt_gdt_tss[];
extern char rt_isr_stubs[];
extern char rt_trampoline_start[], rt_trampoline_end[];
extern char rt_bsp_stack_top[];
void rt_enter_user(void (*entry)(void), void* stack_top) __attribute__((noreturn));

static struct idt_entry idt[256] __attribute__((aligned(16)));
static struct tss tss[RT_MAX_CPUS];
/* Deep enough for interrupts nested four levels with formatted output in the innermost. */
static char kernel_stacks[RT_MAX_CPUS][16384] __attribute__((aligned(16)));
static char user_stack[65536] __attribute__((aligned(16)));

uint32_t rt_lapic_read(uint32_t reg) {
  if (rt_x2apic) return (uint32_t)rt_rdmsr(MSR_X2APIC_FIRST + reg / 16);
  return *(volatile uint32_t*)(LAPIC_BASE + reg);
}
void rt_lapic_write(uint32_t reg, uint32_t v) {
  if (rt_x2apic) {
    rt_wrmsr(MSR_X2APIC_FIRST + reg / 16, v);
    return;
  }
  *(volatile uint32_t*)(LAPIC_BASE + reg) = v;
}

void rt_lapic_self_ipi(uint8_t vector) {
  /* Destination shorthand "self" (bits 19:18 = 01), fixed delivery, edge. */
  uint32_t low = 0x40000u | vector;
  if (rt_x2apic)
    rt_wrmsr(MSR_X2APIC_ICR, low);
  else
    rt_lapic_write(LAPIC_ICR_LOW, low);
}

int rt_x2apic_enable(void) {
  uint32_t r[4];
  rt_cpuid(1, 0, r);
  if (!(r[2] & (1u << 21))) return 0;
  rt_wrmsr(RT_MSR_APIC_BASE, rt_rdmsr(RT_MSR_APIC_BASE) | APIC_BASE_EXTD);
  rt_x2apic = 1;
  return 1;
}

static void load_idt(void) {
  struct {
    uint16_t limit;
    uint64_t base;
  } __attribute__((packed)) pointer = {sizeof(idt) - 1, (uint64_t)idt};
  __asm__ volatile("lidt %0" ::"m"(pointer));
}

static void idt_init(void) {
  for (unsigned v = 0; v < 256; ++v) {
    uint64_t handler = (uint64_t)rt_isr_stubs + 16 * v;
    idt[v].offset_low = (uint16_t)handler;
    idt[v].selector = 0x08;
    idt[v].ist = 0;
    idt[v].type_attr = 0x8e; /* interrupt gate, present, DPL 0 */
    idt[v].offset_mid = (uint16_t)(handler >> 16);
    idt[v].offset_high = (uint32_t)(handler >> 32);
    idt[v].reserved = 0;
  }
}

static void tss_init(unsigned cpu) {
  struct tss* t = &tss[cpu];
  t->rsp0 = (uint64_t)(kernel_stacks[cpu] + sizeof(kernel_stacks[cpu]));
  t->iomap_base = sizeof(struct tss); /* no I/O bitmap: IOPL=3 grants ring 3 the ports */
  uint64_t base = (uint64_t)t;
  uint64_t limit = sizeof(struct tss) - 1;
  rt_gdt_tss[2 * cpu] = (limit & 0xffff) | ((base & 0xffffff) << 16) | (0x89ull << 40) |
                        ((limit >> 16) & 0xf) << 48 | ((base >> 24) & 0xff) << 56;
  rt_gdt_tss[2 * cpu + 1] = base >> 32;
  uint16_t selector = (uint16_t)(0x30 + 16 * cpu);
  __asm__ volatile("ltr %0" ::"r"(selector));
}

/* The boot protocols hand over the command line and the memory map differently. */
static void read_boot_info(uint32_t magic, uint32_t info) {
  const char* cmdline = 0;
  /* The PVH start_info carries its own magic; check it first because some PVH boot paths (QEMU's
   * microvm firmware) leave the multiboot magic in EAX. */
  int pvh = info && *(const uint32_t*)(uint64_t)info == PVH_MAGIC;
  if (!pvh && magic == MULTIBOOT_MAGIC) {
    rt_boot_protocol = "multiboot";
    const uint32_t* mb = (const uint32_t*)(uint64_t)info;
    if (mb[0] & (1u << 2)) cmdline = (const char*)(uint64_t)mb[4];
    if (mb[0] & (1u << 6)) {
      uint64_t p = mb[12], end = p + mb[11];
      while (p < end) {
        uint32_t size = *(const uint32_t*)p;
        uint64_t addr = *(const uint64_t*)(p + 4), len = *(const uint64_t*)(p + 12);
        uint32_t type = *(const uint32_t*)(p + 20);
        if (type == 1 && addr <= 0x100000 && addr + len > 0x100000) rt_ram_top = addr + len;
        p += size + 4;
      }
    } else if (mb[0] & 1u) {
      rt_ram_top = 0x100000 + (uint64_t)mb[2] * 1024;
    }
  } else if (pvh) {
    const uint8_t* si = (const uint8_t*)(uint64_t)info;
    cmdline = (const char*)*(const uint64_t*)(si + 24);
    const uint8_t* map = (const uint8_t*)*(const uint64_t*)(si + 40);
    uint32_t entries = *(const uint32_t*)(si + 48);
    for (uint32_t i = 0; i < entries; ++i) {
      uint64_t addr = *(const uint64_t*)(map + 24 * i), len = *(const uint64_t*)(map + 24 * i + 8);
      uint32_t type = *(const uint32_t*)(map + 24 * i + 16);
      if (type == 1 && addr <= 0x100000 && addr + len > 0x100000) rt_ram_top = addr + len;
    }
  }
  if (cmdline) {
    size_t i = 0;
    for (; cmdline[i] && i + 1 < sizeof(rt_cmdline); ++i) rt_cmdline[i] = cmdline[i];
    rt_cmdline[i] = 0;
  }
}

/* The MP floating pointer lives in the BIOS area; its configuration table lists the CPUs. */
static void mp_scan(void) {
  rt_apic_ids[0] = (uint8_t)(rt_lapic_read(RT_LAPIC_ID) >> 24);
  for (uint64_t p = 0xf0000; p < 0x100000; p += 16) {
    const uint8_t* fp = (const uint8_t*)p;
    if (fp[0] != '_' || fp[1] != 'M' || fp[2] != 'P' || fp[3] != '_') continue;
    const uint8_t* table = (const uint8_t*)(uint64_t) * (const uint32_t*)(fp + 4);
    if (!table || table[0] != 'P' || table[1] != 'C' || table[2] != 'M' || table[3] != 'P') return;
    uint16_t count = *(const uint16_t*)(table + 34);
    const uint8_t* e = table + 44;
    unsigned n = 0;
    for (uint16_t i = 0; i < count; ++i) {
      if (e[0] == 0) {
        if ((e[3] & 1) && n < RT_MAX_CPUS) rt_apic_ids[n++] = e[1];
        e += 20;
      } else {
        e += 8;
      }
    }
    if (n) rt_ncpus = n;
    return;
  }
}

static void start_aps(void) {
  if (rt_x2apic) return; /* the INIT/SIPI sequence below is the xAPIC one; no program needs both */
  memcpy((void*)AP_TRAMPOLINE, rt_trampoline_start,
         (size_t)(rt_trampoline_end - rt_trampoline_start));
  uint8_t self = (uint8_t)(rt_lapic_read(RT_LAPIC_ID) >> 24);
  for (unsigned i = 0; i < rt_ncpus; ++i) {
    if (rt_apic_ids[i] == self) continue;
    rt_lapic_write(LAPIC_ICR_HIGH, (uint32_t)rt_apic_ids[i] << 24);
    rt_lapic_write(LAPIC_ICR_LOW, 0x4500); /* INIT, assert */
    rt_lapic_write(LAPIC_ICR_HIGH, (uint32_t)rt_apic_ids[i] << 24);
    rt_lapic_write(LAPIC_ICR_LOW, 0x4600 | (AP_TRAMPOLINE >> 12)); /* STARTUP */
  }
}

static void set_timer(uint64_t period_us) {
  rt_lapic_write(RT_LAPIC_TIMER_DIVIDE, 0xb); /* divide by 1 */
  rt_lapic_write(RT_LAPIC_LVT_TIMER, RT_VECTOR_TIMER | LAPIC_TIMER_PERIODIC);
  uint64_t count = period_us * (LAPIC_TIMER_HZ / 1000000);
  if (count > 0xffffffffull) count = 0xffffffffull;
  rt_lapic_write(RT_LAPIC_TIMER_INITIAL, (uint32_t)count);
}

static const char* const exception_names[32] = {
    "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "?",   "#TS",
    "#NP", "#SS", "#GP", "#PF", "?",   "#MF", "#AC", "#MC", "#XM", "#VE", "#CP"};

void rt_isr_dispatch(struct frame* f) {
  uint64_t vector = f->vector & 0xff;
  if (vector >= 32 && vector != RT_VECTOR_SPURIOUS && rt_vector_handlers[vector]) {
    rt_vector_handlers[vector]((uint8_t)vector);
  } else if (vector == RT_VECTOR_TIMER) {
    ++rt_ticks;
    rt_lapic_write(RT_LAPIC_EOI, 0);
  } else if (vector == 6 && (f->cs & 3) == 3 && *(const uint16_t*)f->rip == 0x0b0f) {
    f->rip += 2; /* a syscall (ud2 from ring 3, see rt.h) */
    switch (f->rax) {
      case RT_SYS_WAIT_TICK: {
        uint64_t start = rt_ticks;
        while (rt_ticks == start) __asm__ volatile("sti; hlt; cli" ::: "memory");
        f->rax = 0;
        break;
      }
      case RT_SYS_SET_TIMER:
        set_timer(f->rdi);
        f->rax = 0;
        break;
      case RT_SYS_START_APS:
        start_aps();
        f->rax = 0;
        break;
      case RT_SYS_WRITE:
        rt_serial_write((const char*)f->rdi, f->rsi);
        f->rax = 0;
        break;
      case RT_SYS_READ:
        f->rax = rt_serial_read((char*)f->rdi, f->rsi);
        break;
      case RT_SYS_TPR_STORM: {
        /* The task priority as an OS raises and lowers it around critical sections: CR8 is its
         * architectural alias (TPR[7:4]). Values 0 and 1 mask no vector the runtime uses. */
        uint64_t start = rt_rdtsc();
        if (f->rsi == 1) {
          for (uint64_t i = 0; i < f->rdi; ++i) {
            *(volatile uint32_t*)(LAPIC_BASE + 0x80) = (uint32_t)((i & 1) << 4);
          }
          *(volatile uint32_t*)(LAPIC_BASE + 0x80) = 0;
        } else if (f->rsi == 2) {
          for (uint64_t i = 0; i < f->rdi; ++i) rt_wrmsr(MSR_X2APIC_FIRST + 0x80 / 16, (i & 1) << 4);
          rt_wrmsr(MSR_X2APIC_FIRST + 0x80 / 16, 0);
        } else {
          for (uint64_t i = 0; i < f->rdi; ++i) {
            uint64_t v = i & 1;
            __asm__ volatile("mov %0, %%cr8" ::"r"(v) : "memory");
          }
          uint64_t zero = 0;
          __asm__ volatile("mov %0, %%cr8" ::"r"(zero) : "memory");
        }
        f->rax = rt_rdtsc() - start;
        break;
      }
      case RT_SYS_RING0_CALL:
        f->rax = ((uint64_t(*)(uint64_t))f->rdi)(f->rsi);
        break;
      case RT_SYS_EXIT:
        rt_exit((uint32_t)f->rdi);
      default:
        f->rax = (uint64_t)-1;
    }
  } else if (vector == RT_VECTOR_SPURIOUS) {
    /* no EOI for spurious interrupts */
  } else if (vector < 32) {
    uint64_t cr2;
    __asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
    char line[160];
    int n = rt_snprintf(
        line, sizeof(line),
        "EXCEPTION %s (vector %lu) error=%#lx rip=%#lx cs=%#lx rflags=%#lx rsp=%#lx cr2=%#lx\n",
        vector < 32 && exception_names[vector] ? exception_names[vector] : "?", vector, f->error,
        f->rip, f->cs, f->rflags, f->rsp, cr2);
    rt_serial_write_unlocked(line, (size_t)n);
    rt_exit(99);
  } else {
    rt_printf("unexpected interrupt vector %lu\n", vector);
    rt_lapic_write(RT_LAPIC_EOI, 0);
  }
}

static void user_start(void) {
  user_main();
  rt_exit(0);
}

void kernel_main(uint32_t magic, uint32_t info) {
  rt_serial_init();
  read_boot_info(magic, info);
  idt_init();
  load_idt();
  tss_init(0);
  rt_lapic_write(RT_LAPIC_SVR, 0x100 | RT_VECTOR_SPURIOUS);
  mp_scan();
  rt_enter_user(user_start, user_stack + sizeof(user_stack));
}

void ap_main(unsigned apic_id) {
  load_idt();
  rt_lapic_write(RT_LAPIC_SVR, 0x100 | RT_VECTOR_SPURIOUS);
  rt_printf("CPU %u online (APIC ID %u)\n", apic_id, apic_id);
  __atomic_fetch_add(&rt_cpus_online, 1, __ATOMIC_SEQ_CST);
  for (;;) __asm__ volatile("sti; hlt" ::: "memory");
}
