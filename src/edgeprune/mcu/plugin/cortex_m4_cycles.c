/* A QEMU TCG plugin that estimates Cortex-M4 cycles of a harness firmware, instruction by instruction.
 *
 * Built by edgeprune itself (edgeprune.mcu.cycles.build_plugin: the host's `cc -shared -fPIC`) and loaded with
 *   qemu-system-arm ... -plugin file=cortex_m4_cycles.so,out=FILE,start=ADDR,hook=ADDR:SIZE[,hook=ADDR:SIZE]
 * start: the first instruction of edgeprune_invoke; an inference runs from there until the instruction after the
 *        call that entered it (the caller's BL + 4), seen on entry.
 * hook:  a function of the harness's per-layer hook (ep_layer_done and what it calls, from the ELF's symbol
 *        table). Entering the first one ends a layer; instructions inside any of them are not counted.
 * For each inference it writes to FILE:
 *   EPC image I cycles C instructions N     (the whole inference, hook excluded)
 *   EPC layer I J cycles C instructions N   (layer J of inference I: from the previous layer's end)
 *
 * Timing source: ARM Cortex-M4 Technical Reference Manual, ARM DDI 0439B (r0p1), section 3.3.1 Table 3-1
 * "Cortex-M4 instruction set summary" (also ARM 100166_0001_00, Table 3-1 "Processor instruction set summary")
 * and section 3.3.2 "Load/store timings"; the FPU's from the same TRM, section 7.2.3 Table 7-1 "FPU instruction set".
 * Memory: zero wait states (the table's own assumption). The rules charged:
 *   data processing, MOV/MOVW/MOVT, shifts, extends, bit fields, saturation, DSP (SMLAD, SMLAxy, SMUAD,
 *     QADD, SADD16, SEL...), MUL, MLA, MLS, SMULL, UMULL, SMLAL, UMLAL              1
 *   SDIV, UDIV: "2 to 12" (early termination on the operands' values, which a plugin does not see): charged
 *     the worst case                                                                  12
 *   LDR/LDRB/LDRH/LDRSB/LDRSH/LDREX, STR/STRB/STRH/STREX (single)                     2
 *     1 when the instruction before it is a single load (not LDRD, LDM or a load to the PC) whose destination
 *     register is not used to form this one's address: "LDR [any] are pipelined when possible ... one cycle is
 *     removed from the cost of the next instruction" (3.3.2); nothing is pipelined after a store (3.3.2)
 *   any load or store whose address uses the destination of the data-processing instruction just before it:
 *     +1 ("stalls the pipeline for an additional cycle ... There is no forwarding path", 3.3.2)
 *   an unaligned single access (seen at run time): halfword at an odd address +1, word at a halfword
 *     address +1, word at an odd address +2 (3.3.2)
 *   LDRD, STRD 1+N = 3; LDM, STM, PUSH, POP 1+N (N registers)
 *   taken branch (the next instruction is not the next in memory) 1+P; not taken 1 (B<cc>, CBZ, CBNZ)
 *     P (pipeline refill, "1 to 3" in Table 3-1): 3 when the target comes from memory (LDR PC, POP/LDM with
 *     PC, TBB/TBH: "three cycles for the pipeline reload", 3.3.2), 2 otherwise (an assumption: the middle of
 *     the range; the table does not say which branch gets which)
 *   TBB, TBH 2+P; LDR PC 2+P; POP/LDM with PC 1+N+P
 *   IT 1, or 0 when folded onto the 16-bit instruction just before it (Table 3-1, note on IT)
 *   FPU (Table 7-1): VLDR/VSTR 2, VLDM/VSTM/VPUSH/VPOP 1+N, VMOV of two core registers 2, VMLA/VMLS/VNMLA/
 *     VNMLS/VFMA/VFMS/VFNMA/VFNMS 3, VDIV/VSQRT 14, other 1
 * Not modelled: wait states (none), LDR [PC] fetch contention ("might add a cycle"), barriers' B (0),
 * exception entry and return, instructions an IT block skips (charged as if executed).
 *
 * The plugin API is QEMU's (version 1, QEMU 7.x); its few prototypes are declared here, not included.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the parts of QEMU's plugin API this plugin uses (declared from the API's documentation) ---- */
typedef uint64_t qemu_plugin_id_t;
typedef uint32_t qemu_plugin_meminfo_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
typedef struct qemu_info_t qemu_info_t;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_CB_R_REGS, QEMU_PLUGIN_CB_RW_REGS };
enum qemu_plugin_mem_rw { QEMU_PLUGIN_MEM_R = 1, QEMU_PLUGIN_MEM_W, QEMU_PLUGIN_MEM_RW };
typedef void (*tb_trans_cb)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*vcpu_udata_cb)(unsigned int vcpu_index, void *userdata);
typedef void (*vcpu_mem_cb)(unsigned int vcpu_index, qemu_plugin_meminfo_t info, uint64_t vaddr, void *userdata);
typedef void (*udata_cb)(qemu_plugin_id_t id, void *userdata);

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, tb_trans_cb cb);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
const void *qemu_plugin_insn_data(const struct qemu_plugin_insn *insn);
size_t qemu_plugin_insn_size(const struct qemu_plugin_insn *insn);
uint64_t qemu_plugin_insn_vaddr(const struct qemu_plugin_insn *insn);
void qemu_plugin_register_vcpu_insn_exec_cb(struct qemu_plugin_insn *insn, vcpu_udata_cb cb,
                                            enum qemu_plugin_cb_flags flags, void *userdata);
void qemu_plugin_register_vcpu_mem_cb(struct qemu_plugin_insn *insn, vcpu_mem_cb cb, enum qemu_plugin_cb_flags flags,
                                      enum qemu_plugin_mem_rw rw, void *userdata);
unsigned int qemu_plugin_mem_size_shift(qemu_plugin_meminfo_t info);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, udata_cb cb, void *userdata);
void qemu_plugin_outs(const char *string);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

/* ---- the instruction classes and their timing ---- */
enum { P_DIRECT = 2, P_FROM_MEMORY = 3, DIV_CYCLES = 12, FP_DIVIDE = 14, FP_MAC = 3 };

typedef struct Insn {
    uint32_t pc;
    uint8_t size;         /* 2 or 4 bytes */
    uint8_t cycles;       /* base cost: not pipelined, not taken */
    uint8_t refill;       /* P charged when the next instruction executed is not at pc + size */
    uint8_t mem;          /* a load or store (of any kind): the address-dependency stall applies */
    uint8_t single;       /* a single load or store: can pipeline after a single load */
    uint8_t load_single;  /* a single load (not to the PC): the next single load/store can pipeline after it */
    uint8_t it;           /* an IT instruction */
    uint8_t dp;           /* a data-processing result in `dest` */
    uint16_t dest;        /* registers written: a data-processing result, or a single load's destination */
    uint16_t addr;        /* registers that form a load's or store's address */
} Insn;

#define R(n) ((uint16_t)(1u << ((n) & 15)))

static unsigned popcount16(uint32_t v) { return (unsigned)__builtin_popcount(v & 0xFFFFu); }

static void dp_result(Insn *d, unsigned rd) {
    d->cycles = 1;
    if (rd != 15) {
        d->dp = 1;
        d->dest = R(rd);
    }
}

static void single(Insn *d, int load, unsigned rt, uint16_t addr) {
    d->mem = d->single = 1;
    d->cycles = 2;
    d->addr = addr;
    if (load && rt == 15) { /* LDR PC: 2 + P, nothing pipelines after it */
        d->single = 0;
        d->refill = P_FROM_MEMORY;
    } else if (load) {
        d->load_single = 1;
        d->dest = R(rt);
    }
}

static void multiple(Insn *d, unsigned n, int loads_pc, uint16_t addr) {
    d->mem = 1;
    d->cycles = (uint8_t)(1 + n);
    d->addr = addr;
    if (loads_pc)
        d->refill = P_FROM_MEMORY;
}

static void decode16(Insn *d, uint32_t hw) {
    d->refill = P_DIRECT;
    if (hw < 0x2000) { /* shift by immediate, add/subtract register or imm3 */
        dp_result(d, hw & 7);
    } else if (hw < 0x4000) { /* MOV, CMP, ADD, SUB imm8 */
        dp_result(d, ((hw >> 11) & 3) == 1 ? 15 : (hw >> 8) & 7);
    } else if ((hw & 0xFC00) == 0x4000) { /* data processing register; TST, CMP, CMN write no register */
        unsigned op = (hw >> 6) & 15;
        dp_result(d, (op == 8 || op == 10 || op == 11) ? 15 : hw & 7);
    } else if ((hw & 0xFC00) == 0x4400) { /* ADD, CMP, MOV high registers; BX, BLX */
        unsigned op = (hw >> 8) & 3, rd = ((hw >> 4) & 8) | (hw & 7);
        if (op == 3 || ((op == 0 || op == 2) && rd == 15))
            d->cycles = 1; /* a branch: 1 + P when taken */
        else
            dp_result(d, op == 1 ? 15 : rd);
    } else if ((hw & 0xF800) == 0x4800) { /* LDR literal */
        single(d, 1, (hw >> 8) & 7, R(15));
    } else if ((hw & 0xF000) == 0x5000) { /* load/store register offset: 000-010 stores */
        single(d, ((hw >> 9) & 7) >= 3, hw & 7, R((hw >> 3) & 7) | R((hw >> 6) & 7));
    } else if ((hw & 0xE000) == 0x6000 || (hw & 0xF000) == 0x8000) { /* LDR/STR(B) imm5, LDRH/STRH imm5 */
        single(d, (hw >> 11) & 1, hw & 7, R((hw >> 3) & 7));
    } else if ((hw & 0xF000) == 0x9000) { /* LDR/STR SP-relative */
        single(d, (hw >> 11) & 1, (hw >> 8) & 7, R(13));
    } else if ((hw & 0xF000) == 0xA000) { /* ADR, ADD Rd, SP, imm */
        dp_result(d, (hw >> 8) & 7);
    } else if ((hw & 0xF000) == 0xB000) { /* miscellaneous */
        if ((hw & 0xFF00) == 0xB000)
            dp_result(d, 13); /* ADD/SUB SP, imm */
        else if ((hw & 0xF500) == 0xB100)
            d->cycles = 1; /* CBZ, CBNZ */
        else if ((hw & 0xFF00) == 0xB200 || (hw & 0xFF00) == 0xBA00)
            dp_result(d, hw & 7); /* SXTH, SXTB, UXTH, UXTB; REV, REV16, REVSH */
        else if ((hw & 0xFE00) == 0xB400)
            multiple(d, popcount16(hw & 0x1FF), 0, R(13)); /* PUSH */
        else if ((hw & 0xFE00) == 0xBC00)
            multiple(d, popcount16(hw & 0x1FF), (hw >> 8) & 1, R(13)); /* POP */
        else if ((hw & 0xFF00) == 0xBF00 && (hw & 0xF)) {
            d->cycles = 1; /* IT */
            d->it = 1;
        } else
            d->cycles = 1; /* CPS, BKPT, hints */
    } else if ((hw & 0xF000) == 0xC000) { /* STM, LDM */
        unsigned rn = (hw >> 8) & 7;
        multiple(d, popcount16(hw & 0xFF), 0, R(rn));
    } else {
        d->cycles = 1; /* B<cond>, SVC, UDF, B */
    }
}

static void decode_fp(Insn *d, uint32_t hw1, uint32_t hw2) {
    d->cycles = 1;
    if ((hw1 & 0xFE00) == 0xEC00) { /* extension register load/store, 64-bit transfers */
        if ((hw1 & 0xFFE0) == 0xEC40) {
            d->cycles = 2; /* VMOV of two core registers */
        } else if ((hw1 & 0xFF30) == 0xED10 || (hw1 & 0xFF30) == 0xED00) {
            d->mem = 1; /* VLDR, VSTR */
            d->cycles = 2;
            d->addr = R(hw1 & 15);
        } else {
            unsigned words = hw2 & 0xFF; /* VLDM, VSTM, VPUSH, VPOP: imm8 words; a double register is two */
            multiple(d, (hw2 & 0x100) ? words / 2 : words, 0, R(hw1 & 15));
        }
    } else if ((hw1 & 0xFF00) == 0xEE00 && !(hw2 & 0x10)) { /* VFP data processing */
        unsigned opc1 = ((hw1 >> 4) & 0xB);
        if (opc1 == 0x0 || opc1 == 0x1 || opc1 == 0x9 || opc1 == 0xA)
            d->cycles = FP_MAC; /* VMLA, VMLS, VNMLA, VNMLS, VFNMA, VFNMS, VFMA, VFMS */
        else if (opc1 == 0x8)
            d->cycles = FP_DIVIDE; /* VDIV */
        else if (opc1 == 0xB && (hw1 & 0xF) == 1 && (hw2 & 0xC0) == 0xC0)
            d->cycles = FP_DIVIDE; /* VSQRT */
    }
}

static void decode32(Insn *d, uint32_t hw1, uint32_t hw2) {
    unsigned rn = hw1 & 15, rt = hw2 >> 12, rd = (hw2 >> 8) & 15;
    d->refill = P_DIRECT;
    if ((hw1 & 0xEC00) == 0xEC00) {
        decode_fp(d, hw1, hw2);
    } else if ((hw1 & 0xFE40) == 0xE800) { /* LDM, STM (and SRS, RFE) */
        int load = (hw1 >> 4) & 1;
        multiple(d, popcount16(hw2), load && (hw2 & 0x8000), R(rn));
    } else if ((hw1 & 0xFE40) == 0xE840) { /* load/store dual or exclusive, table branch */
        if ((hw1 & 0xFFF0) == 0xE8D0 && (hw2 & 0xFFE0) == 0xF000) { /* TBB, TBH: 2 + P */
            d->mem = 1;
            d->cycles = 2;
            d->refill = P_FROM_MEMORY;
            d->addr = R(rn) | R(hw2 & 15);
        } else if ((hw1 & 0xFFE0) == 0xE840 || ((hw1 & 0xFFE0) == 0xE8C0 && (hw2 & 0xE0) == 0x40)) {
            single(d, (hw1 >> 4) & 1, rt, R(rn)); /* LDREX(B/H), STREX(B/H): "pipelined exactly as LDR" */
        } else {
            multiple(d, 2, 0, R(rn)); /* LDRD, STRD: 1 + N, N = 2 */
        }
    } else if ((hw1 & 0xFE00) == 0xEA00) { /* data processing, shifted register */
        dp_result(d, rd);
    } else if ((hw1 & 0xF800) == 0xF000) {
        if (!(hw2 & 0x8000))
            dp_result(d, rd); /* data processing, modified or plain immediate */
        else if ((hw2 & 0xD000) == 0x8000 && (hw1 & 0x0380) == 0x0380)
            d->cycles = 1; /* MSR, MRS, hints, barriers (B = 0) */
        else
            d->cycles = 1; /* B<cond>.W, B.W, BL: 1 + P when taken */
    } else if ((hw1 & 0xFF10) == 0xF800) { /* store single */
        int reg_offset = !(hw1 & 0x80) && (hw2 & 0x0FC0) == 0;
        single(d, 0, rt, R(rn) | (reg_offset ? R(hw2 & 15) : 0));
    } else if ((hw1 & 0xFE10) == 0xF810) { /* load single, or a preload hint */
        unsigned size = (hw1 >> 5) & 3;
        int reg_offset = !(hw1 & 0x80) && rn != 15 && (hw2 & 0x0FC0) == 0;
        if (rt == 15 && size != 2)
            d->cycles = 1; /* PLD, PLI */
        else
            single(d, 1, rt, R(rn) | (reg_offset ? R(hw2 & 15) : 0));
    } else if ((hw1 & 0xFF00) == 0xFA00 || (hw1 & 0xFF80) == 0xFB00) {
        dp_result(d, rd); /* data processing register, parallel add/sub, misc; multiply and MAC: 1 */
    } else if ((hw1 & 0xFF80) == 0xFB80) { /* long multiply (1) and divide */
        unsigned op1 = (hw1 >> 4) & 7;
        if (op1 == 1 || op1 == 3) {
            dp_result(d, rd);
            d->cycles = DIV_CYCLES;
        } else {
            dp_result(d, rd);
            if (rt != 15)
                d->dest |= R(rt);
        }
    } else {
        d->cycles = 1;
    }
}

/* ---- run-time state (one vCPU: the M-profile boards have one) ---- */
typedef struct Span {
    uint64_t cycles, insns;
} Span;

static FILE *out;
static uint32_t start_pc;
static uint32_t hook_lo[4], hook_hi[4];
static unsigned hooks;
static const Insn *prev;
static int prev_counted;
static int counting;
static uint32_t end_pc;
static unsigned long image, layer;
static Span whole, part;

static int in_hook(uint32_t pc) {
    for (unsigned i = 0; i < hooks; i++)
        if (pc >= hook_lo[i] && pc < hook_hi[i])
            return 1;
    return 0;
}

static void charge(uint64_t cycles, uint64_t insns) {
    whole.cycles += cycles;
    part.cycles += cycles;
    whole.insns += insns;
    part.insns += insns;
}

static void exec_insn(unsigned int vcpu, void *udata) {
    const Insn *d = udata;
    (void)vcpu;
    int sequential = prev != NULL && d->pc == prev->pc + prev->size;
    if (prev != NULL && !sequential && prev_counted)
        charge(prev->refill, 0); /* the instruction before was a taken branch: 1 + P */
    if (d->pc == start_pc && !counting) {
        counting = 1;
        end_pc = prev != NULL ? prev->pc + prev->size : 0;
        whole = part = (Span){0, 0};
        layer = 0;
    } else if (counting && d->pc == end_pc) {
        fprintf(out, "EPC image %lu cycles %llu instructions %llu\n", image, (unsigned long long)whole.cycles,
                (unsigned long long)whole.insns);
        fflush(out);
        image++;
        counting = 0;
    }
    if (counting && hooks && d->pc == hook_lo[0]) {
        fprintf(out, "EPC layer %lu %lu cycles %llu instructions %llu\n", image, layer,
                (unsigned long long)part.cycles, (unsigned long long)part.insns);
        layer++;
        part = (Span){0, 0};
    }
    prev_counted = counting && !in_hook(d->pc);
    if (prev_counted) {
        unsigned cycles = d->cycles;
        if (d->mem && prev != NULL && prev->dp && (prev->dest & d->addr))
            cycles += 1; /* address from the data-processing result just before: no forwarding path */
        if (d->single && prev != NULL && prev->load_single && sequential && !(prev->dest & d->addr))
            cycles -= 1; /* pipelined after a single load */
        if (d->it && prev != NULL && prev->size == 2 && sequential)
            cycles = 0; /* folded onto the 16-bit instruction before it */
        charge(cycles, 1);
    }
    prev = d;
}

static void exec_mem(unsigned int vcpu, qemu_plugin_meminfo_t info, uint64_t vaddr, void *udata) {
    (void)vcpu;
    (void)udata;
    if (!prev_counted)
        return;
    unsigned shift = qemu_plugin_mem_size_shift(info);
    if (shift == 1 && (vaddr & 1))
        charge(1, 0); /* halfword at an odd address: two bytes */
    else if (shift == 2 && (vaddr & 3))
        charge((vaddr & 1) ? 2 : 1, 0); /* word as two halfwords, or as byte, halfword, byte */
}

static void translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    (void)id;
    size_t n = qemu_plugin_tb_n_insns(tb);
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        const uint8_t *bytes = qemu_plugin_insn_data(insn);
        size_t size = qemu_plugin_insn_size(insn);
        Insn *d = calloc(1, sizeof *d);
        if (d == NULL)
            abort();
        d->pc = (uint32_t)qemu_plugin_insn_vaddr(insn);
        d->size = (uint8_t)size;
        uint32_t hw1 = (uint32_t)bytes[0] | (uint32_t)bytes[1] << 8;
        if (size >= 4)
            decode32(d, hw1, (uint32_t)bytes[2] | (uint32_t)bytes[3] << 8);
        else
            decode16(d, hw1);
        qemu_plugin_register_vcpu_insn_exec_cb(insn, exec_insn, QEMU_PLUGIN_CB_NO_REGS, d);
        if (d->single)
            qemu_plugin_register_vcpu_mem_cb(insn, exec_mem, QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_MEM_RW, d);
    }
}

static void at_exit(qemu_plugin_id_t id, void *udata) {
    (void)id;
    (void)udata;
    fprintf(out, "EPC exit %lu\n", image);
    fclose(out);
}

__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                                               int argc, char **argv) {
    (void)info;
    const char *path = NULL;
    for (int i = 0; i < argc; i++) {
        unsigned long lo, size;
        if (strncmp(argv[i], "out=", 4) == 0)
            path = argv[i] + 4;
        else if (sscanf(argv[i], "start=%li", (long *)&lo) == 1)
            start_pc = (uint32_t)lo & ~1u;
        else if (sscanf(argv[i], "hook=%li:%li", (long *)&lo, (long *)&size) == 2 && hooks < 4) {
            hook_lo[hooks] = (uint32_t)lo & ~1u;
            hook_hi[hooks++] = ((uint32_t)lo & ~1u) + (uint32_t)size;
        } else {
            qemu_plugin_outs("cortex_m4_cycles: unknown argument (give out=, start=, hook=)\n");
            return -1;
        }
    }
    if (path == NULL || start_pc == 0 || (out = fopen(path, "w")) == NULL) {
        qemu_plugin_outs("cortex_m4_cycles: needs out=FILE (writable) and start=ADDR\n");
        return -1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, translate);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
