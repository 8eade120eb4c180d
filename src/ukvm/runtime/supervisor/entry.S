/*
 * entry.S: the supervisor's exception entry. The tender points every IDT gate at one of these
 * stubs; each makes the frame uniform (a zero where the CPU pushes no error code), saves the
 * general registers in ModRM order and hands the frame to sv_trap() (supervisor.c), which
 * emulates, delivers to the guest's own handler, or reports to the tender.
 */
#include "layout.h"

#define MSR_FS_BASE 0xc0000100
#define MSR_GS_BASE 0xc0000101
#define RFLAGS_RF 0x10000

    .section .text.stubs, "ax"
    .globl sv_stubs
sv_stubs:
    vec = 0
    .rept 32
    .balign SV_STUB_STRIDE
    .if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    .else
    pushq $0
    .endif
    .if vec == 13
    jmp sv_general_protection
    .else
    pushq $vec
    jmp sv_entry
    .endif
    vec = vec + 1
    .endr

/*
 * #GP fast path for `wrmsr` of FS_BASE or GS_BASE, which Solo5's bindings execute at start and
 * on every solo5_set_tls_base(): checked and performed with the guest's own registers, without
 * saving them, so it costs about 20 emulated instructions on kvm_pvm instead of about 100.
 * Anything else (another instruction, another MSR, a non-canonical base, a fault at CPL0) takes
 * the general path. Stack: ec, rip, cs, rflags, rsp, ss.
 */
sv_general_protection:
    testb $3, 16(%rsp)
    jz 2f
    pushq %rax
    movq 16(%rsp), %rax             /* guest RIP: its first byte was fetched, so it is mapped */
    cmpb $0x0f, (%rax)
    jne 1f
    cmpb $0x30, 1(%rax)             /* a two-byte opcode: the second byte was fetched too */
    jne 1f
    cmpl $MSR_FS_BASE, %ecx
    je 3f
    cmpl $MSR_GS_BASE, %ecx
    jne 1f
3:  movl %edx, %eax                 /* canonical: EDX is the sign extension of bit 47 */
    addl $0x8000, %eax
    cmpl $0xffff, %eax
    ja 1f
    popq %rax
    wrmsr
    addq $2, 8(%rsp)
    andq $~RFLAGS_RF, 24(%rsp)
    incq SV_STATE_N_EMULATED
    addq $8, %rsp
    iretq
1:  popq %rax
2:  pushq $13
    jmp sv_entry

    .text
/* Frame, lowest address first: rax rcx rdx rbx (rsp slot) rbp rsi rdi r8-r15, vector, ec,
 * then what the CPU pushed: rip cs rflags rsp ss. */
sv_entry:
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
    pushq $0
    pushq %rbx
    pushq %rdx
    pushq %rcx
    pushq %rax
    movq %rsp, %rdi
    movq %rsp, %rbx
    andq $-16, %rsp
    call sv_trap
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
    addq $16, %rsp
    iretq

    .section .note.GNU-stack, "", @progbits
