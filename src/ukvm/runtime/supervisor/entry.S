/*
 * entry.S: the supervisor's exception entry. The tender points every IDT gate at one of these
 * stubs; each makes the frame uniform (a zero where the CPU pushes no error code), saves the
 * general registers in ModRM order and hands the frame to sv_trap() (supervisor.c), which
 * emulates, delivers to the guest's own handler, or reports to the tender.
 */
#include "layout.h"

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
    pushq $vec
    jmp sv_entry
    vec = vec + 1
    .endr

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
