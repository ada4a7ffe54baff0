/* The heartbeat test guest, linked into the VMM as the built-in demo guest. */
    .section .rodata
    .balign 16
    .globl vmctl_demo_guest_start
    .globl vmctl_demo_guest_end
vmctl_demo_guest_start:
    .incbin DEMO_GUEST_PATH
vmctl_demo_guest_end:
    .section .note.GNU-stack,"",@progbits
