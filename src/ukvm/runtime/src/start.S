/* start.S: entry point, exception entry stubs, and the notes every ukvm unikernel carries. */

/* The host refuses to execute the image as a program: its interpreter does not exist. */
    .section .interp, "a"
    .balign 8
    .asciz "/nonexistent/solo5/"
    .balign 8

/* ABI1 note: target hvt (1), ABI version 2. */
    .section .note.solo5.abi, "a", @note
    .balign 4
    .long 6, 16, 0x31494241
    .ascii "Solo5\0\0\0"
    .long 1, 2, 0, 0

/* Marks the image as not an OpenBSD program (only OpenBSD hosts look at it). */
    .section .note.solo5.not_openbsd, "a", @note
    .balign 4
    .long 8, 4, 1
    .ascii "OpenBSD\0"
    .long 0

/*
 * ukvm MODE note: descriptor = flags, bit 0 asks a ukvm tender for user-accessible page tables
 * so that the runtime can run the application at CPL3 (docs/cpl3.md); bit 1 says this runtime
 * reports #DB and int3 to a debugger (UKVM_FEATURE_DEBUG), so --gdb may keep it at CPL3. The
 * value comes from the link (`ukvm build --cpl0` sets it to 0); Solo5 tenders look only at Solo5
 * notes.
 */
    .section .note.ukvm, "a", @note
    .balign 4
    .long 5, 4, 0x45444f4d
    .ascii "ukvm\0\0\0\0"
    .long ukvm_mode_flags

    .section .text.boot, "ax"
    .globl _start
    .type _start, @function
/* Entered in long mode, interrupts off, RDI = boot info, RSP = top of memory - 8. */
_start:
    andq $-16, %rsp
    call ukvm_start
1:  hlt
    jmp 1b

/*
 * One 16-byte stub per exception vector 0-31. Stubs for vectors without a CPU error code push
 * a zero so that every frame looks alike, then the vector. trap_entry saves the general registers
 * (struct trap_regs in cpu.c, the CPL3 supervisor's frame layout) before touching any, so that
 * under --gdb a debugger's stop (#DB, int3) can show them, change them and resume; every other
 * trap is fatal and never returns.
 */
    .text
    .balign 16
    .globl ukvm_trap_stubs
ukvm_trap_stubs:
    vec = 0
    .rept 32
    .balign 16
    .if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    .else
    pushq $0
    .endif
    pushq $vec
    jmp trap_entry
    vec = vec + 1
    .endr

trap_entry:
    pushq %r15
    pushq %r14
    pushq %r13
    pushq %r12
    pushq %r11
    pushq %r10
    pushq %r9
    pushq %r8
    pushq %rdi
    pushq %rsi
    pushq %rbp
    pushq $0                /* the RSP slot: the interrupted RSP is in the CPU's part */
    pushq %rbx
    pushq %rdx
    pushq %rcx
    pushq %rax
    movq %rsp, %rdi
    movq %rsp, %rbx
    andq $-16, %rsp
    call ukvm_trap          /* returns only after a debugger's stop */
    movq %rbx, %rsp
    popq %rax
    popq %rcx
    popq %rdx
    popq %rbx
    addq $8, %rsp
    popq %rbp
    popq %rsi
    popq %rdi
    popq %r8
    popq %r9
    popq %r10
    popq %r11
    popq %r12
    popq %r13
    popq %r14
    popq %r15
    addq $16, %rsp          /* vector, error code */
    iretq

    .section .note.GNU-stack, "", @progbits
