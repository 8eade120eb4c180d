/*
 * layout.h: where the CPL3 supervisor lives in guest-physical memory and what it shares with the
 * tender. ukvm/supervisor.py mirrors every value here (a unit test compares them).
 *
 * Everything is below 0x10000, in pages that hvt's page tables leave unmapped, so a guest that
 * believes it runs under solo5-hvt never sees them; the supervisor maps them without the U/S bit.
 */
#ifndef SV_LAYOUT_H
#define SV_LAYOUT_H

#define SV_BASE          0x9000   /* code and constants; exception stubs first, 16 bytes each */
#define SV_STUB_STRIDE   16
#define SV_CODE_END      0xc000
#define SV_STATE         0xc000   /* struct sv_state: configuration, virtual CPU, report */
#define SV_IDT           0xc400   /* the real IDT: 32 gates, written by the tender */
#define SV_TSS           0xc800   /* the real TSS with its I/O permission bitmap */
#define SV_STACK_BASE    0xd000   /* the supervisor's stack: SV_STACK_BASE to SV_STACK_TOP */
#define SV_STACK_TOP     0xf000   /* RSP0: every exception from CPL3 starts here */
#define SV_DF_STACK_TOP  0x10000  /* IST1: NMI, #DF, #MC */
#define SV_REPORT_PORT   0x5fe    /* outl of a report reason; closed to CPL3 by the TSS bitmap */
#define SV_DEBUG_PORT    0x5fd    /* under --gdb: outl of a frame's address at a #DB or int3 */

/* Field addresses the assembly needs (supervisor.c checks them against struct sv_state). */
#define SV_STATE_N_EMULATED (SV_STATE + 25 * 8)

/* Report reasons: the supervisor stops and the tender ends the run with the matching message. */
#define SV_REPORT_SHUTDOWN    1   /* an exception could not be delivered, not even as #DF */
#define SV_REPORT_HLT         2   /* the guest executed hlt */
#define SV_REPORT_PORT_IO     3   /* in/out on a port that is not a hypercall port; arg = port */
#define SV_REPORT_UNSUPPORTED 4   /* a privileged instruction the supervisor does not emulate */
#define SV_REPORT_INTERNAL    5   /* an exception inside the supervisor itself; arg = cr2 */

#ifndef __ASSEMBLER__
#include <stdint.h>

/* All fields are 64-bit so that the layout is the same to C and to Python's struct module. */
struct sv_state {
    /* Set by the tender before the first instruction. */
    uint64_t mem_end;          /* end of user-mapped guest memory (the whole allocation) */
    uint64_t read_min;         /* lowest guest address the guest may read (boot info) */
    uint64_t write_min;        /* lowest guest address the guest may write */
    /* What the guest believes about its CPU (hvt's entry state, then what it loaded). */
    uint64_t cr0, cr2, cr3, cr4, cr8;
    uint64_t gdt_base, gdt_limit, idt_base, idt_limit;
    uint64_t tr, tss_base, ldtr;
    uint64_t cs, ss;
    uint64_t vif;              /* the guest's RFLAGS.IF */
    uint64_t kernel_gs_base;
    /* Filled in just before a report. */
    uint64_t report_reason, report_vector, report_ec, report_rip, report_arg, report_insn;
    /* Statistics, read by tests and benchmarks. */
    uint64_t n_emulated, n_delivered;
    uint64_t report_frame;     /* address of the guest's saved registers (struct frame) */
    /* Set by the tender under --gdb: the guest's #DB and int3 stop at SV_DEBUG_PORT. */
    uint64_t debug;
};
#endif
#endif
