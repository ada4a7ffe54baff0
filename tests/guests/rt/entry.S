/* Boot entry, long-mode switch, AP trampoline and interrupt stubs of the test guests.
 *
 * Both boot protocols enter entry32 in 32-bit protected mode with paging off:
 *   PVH:       ebx = hvm_start_info (eax undefined)
 *   multiboot: eax = 0x2BADB002, ebx = multiboot info
 * The page tables and GDT are static data (no ring-0 loops to build them: ring-0 instructions are
 * slow on the hosts these guests are made for). */

#define KERNEL_CS 0x08
#define KERNEL_DS 0x10
#define USER_DS 0x18
#define USER_CS 0x20
#define CODE32 0x28
#define MAX_CPUS 16
#define STACK_SIZE 16384
#define AP_TRAMPOLINE 0x10000

/* ---------------------------------------------------------------- boot headers */
#ifdef WITH_MULTIBOOT
  .section .multiboot, "a"
  .align 4
#define MB_MAGIC 0x1BADB002
/* page-align modules, memory info, a.out kludge (the addresses below; QEMU refuses ELF64 otherwise) */
#define MB_FLAGS 0x00010003
multiboot_header:
  .long MB_MAGIC
  .long MB_FLAGS
  .long -(MB_MAGIC + MB_FLAGS)
  .long multiboot_header   /* header_addr */
  .long __image_start      /* load_addr */
  .long __data_end         /* load_end_addr */
  .long __bss_end          /* bss_end_addr */
  .long entry32            /* entry_addr */
#else
  /* Xen PVH entry note: XEN_ELFNOTE_PHYS32_ENTRY (18), name "Xen". */
  .section .note.Xen, "a"
  .align 4
  .long 4, 4, 18
  .asciz "Xen"
  .align 4
  .long entry32
#endif

/* ---------------------------------------------------------------- 32-bit entry */
  .section .text.entry, "ax"
  .code32
  .globl entry32
entry32:
  cli
  cld
  mov %eax, %edi          /* boot magic (multiboot) -> first C argument */
  mov %ebx, %esi          /* boot info pointer      -> second C argument */
  xor %ebp, %ebp          /* 0: bootstrap processor */
  jmp common32

  /* Application processors arrive here from the trampoline with our GDT loaded but real-mode
   * data segments: reload them before touching memory. */
ap_entry32:
  mov $KERNEL_DS, %eax
  mov %eax, %ds
  mov %eax, %es
  mov %eax, %ss
  mov $1, %ebp

common32:
  lgdt gdt_pointer
  ljmp $CODE32, $1f
1:
  mov $KERNEL_DS, %eax
  mov %eax, %ds
  mov %eax, %es
  mov %eax, %ss
  mov %eax, %fs
  mov %eax, %gs
  mov $pml4, %eax
  mov %eax, %cr3
  mov %cr4, %eax
  or $0x620, %eax         /* PAE | OSFXSR | OSXMMEXCPT */
  mov %eax, %cr4
  mov $0xC0000080, %ecx   /* EFER */
  rdmsr
  or $0x100, %eax         /* LME */
  wrmsr
  mov %cr0, %eax
  or $0x80000001, %eax    /* PG | PE */
  and $0x9fffffff, %eax   /* caches on (clear CD, NW) */
  mov %eax, %cr0
  ljmp $KERNEL_CS, $entry64

  .code64
entry64:
  test %ebp, %ebp
  jnz 2f
  lea bsp_stack_top(%rip), %rsp
  call kernel_main        /* (magic, info) in edi/esi, upper halves zero */
  jmp halt_forever
2:
  movl $0xfee00020, %ebx  /* local APIC ID register (xAPIC, default base) */
  movl (%rbx), %eax
  shr $24, %eax
  cmp $MAX_CPUS, %eax
  jae halt_forever
  mov %eax, %edi
  lea 1(%rax), %rcx
  imul $STACK_SIZE, %rcx
  lea ap_stacks(%rip), %rsp
  add %rcx, %rsp
  call ap_main
halt_forever:
  cli
  hlt
  jmp halt_forever

/* Leaves ring 0 for good: iretq into ring 3 with IF=1 and IOPL=3.
 * rdi = entry point, rsi = user stack top. */
  .globl rt_enter_user
rt_enter_user:
  mov $(USER_DS | 3), %eax
  mov %eax, %ds
  mov %eax, %es
  pushq $(USER_DS | 3)
  pushq %rsi
  pushq $0x3202
  pushq $(USER_CS | 3)
  pushq %rdi
  pushq $0x3002           /* IOPL=3, IF=0: see the note at the end of isr_common */
  popfq
  sti
  iretq

/* ---------------------------------------------------------------- AP trampoline
 * Copied to AP_TRAMPOLINE (SIPI vector 0x10) by the BSP. Runs in real mode at CS=0x1000. */
  .code16
  .globl rt_trampoline_start, rt_trampoline_end
rt_trampoline_start:
  cli
  cld
  mov %cs, %ax
  mov %ax, %ds
  lgdtl (trampoline_gdt_pointer - rt_trampoline_start)
  mov %cr0, %eax
  or $1, %eax
  mov %eax, %cr0
  ljmpl $CODE32, $ap_entry32
  .align 4
trampoline_gdt_pointer:
  .word gdt_end - gdt - 1
  .long gdt
rt_trampoline_end:
  .code64

/* ---------------------------------------------------------------- interrupts
 * One 16-byte stub per vector pushes a dummy error code where the CPU pushes none, then the
 * vector, so the C dispatcher sees one frame layout. */
  .align 16
  .globl rt_isr_stubs
rt_isr_stubs:
  .set vec, 0
  .rept 256
  .align 16
  .if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
  pushq $vec
  .else
  pushq $0
  pushq $vec
  .endif
  jmp isr_common
  .set vec, vec + 1
  .endr

isr_common:
  push %rax
  push %rbx
  push %rcx
  push %rdx
  push %rsi
  push %rdi
  push %rbp
  push %r8
  push %r9
  push %r10
  push %r11
  push %r12
  push %r13
  push %r14
  push %r15
  mov %rsp, %rdi
  call rt_isr_dispatch
  pop %r15
  pop %r14
  pop %r13
  pop %r12
  pop %r11
  pop %r10
  pop %r9
  pop %r8
  pop %rbp
  pop %rdi
  pop %rsi
  pop %rdx
  pop %rcx
  pop %rbx
  pop %rax
  add $16, %rsp
  /* Load RFLAGS from the frame before iretq. iretq restores it anyway on hardware, but some
   * hosts' instruction emulators (ring 0 is emulated on nested hosts) leave RFLAGS unchanged on
   * iretq, which would run ring 3 with IF=0 and IOPL=0. IF is set last by sti, whose one-
   * instruction interrupt shadow covers the iretq. */
  testl $0x200, 16(%rsp)
  jz 3f
  pushq 16(%rsp)
  andq $~0x200, (%rsp)
  popfq
  sti
  iretq
3:
  pushq 16(%rsp)
  popfq
  iretq

/* ---------------------------------------------------------------- static data */
  .section .data.boot, "aw"
  .align 16
  .globl rt_gdt_tss
gdt:
  .quad 0
  .quad 0x00af9a000000ffff  /* 0x08 kernel code, 64-bit */
  .quad 0x00cf92000000ffff  /* 0x10 kernel data */
  .quad 0x00cff2000000ffff  /* 0x18 user data, DPL 3 */
  .quad 0x00affa000000ffff  /* 0x20 user code, 64-bit, DPL 3 */
  .quad 0x00cf9a000000ffff  /* 0x28 kernel code, 32-bit (AP start) */
rt_gdt_tss:                 /* 0x30 + 16 * cpu: one TSS descriptor per CPU, filled at boot */
  .fill MAX_CPUS * 2, 8, 0
gdt_end:
  .align 8
gdt_pointer:
  .word gdt_end - gdt - 1
  .quad gdt

  /* Identity map of the low 4 GiB with 2 MiB pages, user-accessible (US bit) so ring 3 can
   * touch all of RAM and the local APIC. */
  .section .data.pagetables, "aw"
  .align 4096
pml4:
  .quad pdpt + 0x7
  .fill 511, 8, 0
pdpt:
  .quad pd + 0x7, pd + 0x1007, pd + 0x2007, pd + 0x3007
  .fill 508, 8, 0
pd:
  .set page, 0
  .rept 2048
  .quad (page << 21) | 0x87
  .set page, page + 1
  .endr

  .section .bss.stacks, "aw", @nobits
  .align 16

  .globl rt_bsp_stack_top
  .skip STACK_SIZE
bsp_stack_top:
rt_bsp_stack_top:
  .align 16
ap_stacks:
  .skip STACK_SIZE * (MAX_CPUS + 1)
  .section .note.GNU-stack, "", @progbits
