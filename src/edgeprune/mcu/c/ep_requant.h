/* Fixed-point helpers shared by the edgeprune kernels (private): TFLite's double-rounding requantization
 * (gemmlowp's SaturatingRoundingDoublingHighMul and RoundingDivideByPOT). A shift is in [-31, 30], as TFLite's
 * MultiplyByQuantizedMultiplier requires and the exporter checks, so no shift below reaches 32. */
#ifndef EP_REQUANT_H
#define EP_REQUANT_H

#include <stdint.h>
#include <string.h>

/* (a * b * 2) >> 32 rounded to nearest (ties away from zero), saturated at INT32_MIN * INT32_MIN. */
static inline int32_t ep_srdhm(int32_t a, int32_t b) {
    int64_t ab, nudge;
    if (a == b && a == INT32_MIN) {
        return INT32_MAX;
    }
    ab = (int64_t)a * (int64_t)b;
    nudge = ab >= 0 ? ((int64_t)1 << 30) : (1 - ((int64_t)1 << 30));
    return (int32_t)((ab + nudge) / ((int64_t)1 << 31));
}

/* x / 2^exponent rounded to nearest, ties away from zero. */
static inline int32_t ep_rounding_divide_by_pot(int32_t x, int32_t exponent) {
    const int32_t mask = (int32_t)(((int64_t)1 << exponent) - 1);
    const int32_t remainder = x & mask;
    const int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
    return (x >> exponent) + (remainder > threshold ? 1 : 0);
}

/* A multiplier and shift prepared for several accumulators: the left shift, the right shift (0 to 31,
 * as QuantizeMultiplier makes them) and, for a right shift r > 0, the nudge 2^30 + 2^(30 + r) that
 * rounds twice in one step (see ep_mq_apply). */
typedef struct {
    int32_t multiplier, left, right;
    uint32_t nudge_low;
    int32_t nudge_high;
} ep_mq;

static inline ep_mq ep_mq_make(int32_t multiplier, int32_t shift) {
    ep_mq q;
    q.multiplier = multiplier;
    q.left = shift > 0 ? shift : 0;
    q.right = q.left - shift;
    q.nudge_low = (1u << 30) + (q.right == 1 ? 1u << 31 : 0u);  /* 32-bit halves: cheaper than a 64-bit shift */
    q.nudge_high = (int32_t)((1u << q.right) >> 2);
    return q;
}

/* TFLite's MultiplyByQuantizedMultiplier, x * multiplier * 2^(shift - 31) with double rounding, for a
 * multiplier >= 0 (as QuantizeMultiplier makes them), with p = (x << left) * multiplier:
 * - SaturatingRoundingDoublingHighMul never saturates then, and its rounding (p plus or minus 2^30,
 *   divided by 2^31 toward zero) is h = floor((p + 2^30) / 2^31);
 * - RoundingDivideByPOT(h, r) is floor((h + 2^(r-1) - [h < 0]) / 2^r) for r > 0, and floors of
 *   floors compose: floor((p + 2^30 + 2^(30+r) - [h < 0] 2^31) / 2^(31+r)), one 64-bit sum whose high
 *   word shifted by r - 1 is the result. h < 0 only if x << left < 0; when that is negative and h is
 *   not (-2^30 <= p < 0, h = 0), the sum lies in [0, 2^(31+r)) either way, so testing x is exact. */
static inline int32_t ep_mq_apply(int32_t x, const ep_mq q) {
    const int32_t shifted = (int32_t)((uint32_t)x << q.left);
    const int64_t product = (int64_t)shifted * q.multiplier;
    if (q.right == 0) {
        return (int32_t)((product + ((int64_t)1 << 30)) >> 31);
    }
    const int64_t nudge = (int64_t)(((uint64_t)(uint32_t)q.nudge_high << 32) | q.nudge_low);
    return (int32_t)((product + nudge - (shifted < 0 ? ((int64_t)1 << 31) : 0)) >> 32) >> (q.right - 1);
}

static inline int32_t ep_mbqm(int32_t x, int32_t multiplier, int32_t shift) {
    return ep_mq_apply(x, ep_mq_make(multiplier, shift));
}

/* Accumulator -> int8 with a prepared multiplier, the output zero point and the activation clamp. */
static inline int8_t ep_requantize_mq(int32_t acc, const ep_mq q, int32_t zero_point, int32_t lo, int32_t hi) {
    int32_t v = ep_mq_apply(acc, q) + zero_point;
    v = v < lo ? lo : v;
    v = v > hi ? hi : v;
    return (int8_t)v;
}

/* __ssat (ep_conv_group.h's ep_clamp_out) where the core has it. */
#if defined(__ARM_FEATURE_SAT)
#include <arm_acle.h>
#endif

static inline int8_t ep_requantize(int32_t acc, int32_t multiplier, int32_t shift, int32_t zero_point,
                                   int32_t lo, int32_t hi) {
    return ep_requantize_mq(acc, ep_mq_make(multiplier, shift), zero_point, lo, hi);
}

/* For a right shift r from 2 to 23 (the common case; no left shift then) TFLite's double rounding of ep_mq_apply,
 * plus the output zero point zp, is one 64-bit sum: with p = acc * multiplier,
 *   floor((p + 2^30 + 2^(30+r) - [acc < 0] 2^31 + zp 2^(31+r)) / 2^(31+r))
 * (adding zp 2^(31+r) inside the floor adds zp outside it). Its high word is nudge_zp = 2^(r-2) + zp 2^(r-1)
 * plus that of p + 2^30 - [acc < 0] 2^31, and the result is the high word shifted right by `fast` = r - 1. With
 * |acc| and multiplier below 2^31, |zp| <= 128 and r <= 23, that high word stays below 2^31 in size.
 * ep_fast_shift gives `fast` for a shift (0: not this case), ep_fast_nudge nudge_zp, ep_fast_apply the sum. */
static inline int32_t ep_fast_shift(int32_t shift) {
    return shift <= -2 && shift >= -23 ? -shift - 1 : 0;
}

static inline int32_t ep_fast_nudge(int32_t shift, int32_t zero_point) {
    return ep_fast_shift(shift) ? (int32_t)(1u << (-shift - 2)) + zero_point * (1 << (-shift - 1)) : 0;
}

static inline int32_t ep_fast_apply(int32_t acc, int32_t multiplier, int32_t nudge_zp, int32_t fast) {
    const int64_t t = (int64_t)acc * multiplier + (int64_t)nudge_zp * 4294967296LL + (1 << 30) -
                      (acc < 0 ? (int64_t)1 << 31 : 0);
    return (int32_t)(t >> 32) >> fast;
}

#if defined(__ARM_FEATURE_DSP) && defined(__GNUC__)
/* ep_fast_apply clamped to [-128, 127] and stored, written out for the DSP cores (an asm template's lines, with
 * operands %[t] and %[h] scratch, %[m] the multiplier, %[nz] nudge_zp, %[sh] `fast`): the nudge's low word
 * 2^30 + [acc < 0] 2^31 (AND, ORR), its high word nudge_zp - [acc < 0] (ADD of acc >> 31), the product
 * accumulated (SMLAL), the high word shifted, SSAT, STRB to `dest`. GCC 12 spreads the C over several outputs and
 * spills (measured in QEMU). */
#define EP_FAST_OUTPUT(acc, dest)              \
    "and %[t], " acc ", #0x80000000\n\t"       \
    "orr %[t], %[t], #0x40000000\n\t"          \
    "add %[h], %[nz], " acc ", asr #31\n\t"    \
    "smlal %[t], %[h], " acc ", %[m]\n\t"      \
    "asr %[h], %[h], %[sh]\n\t"                \
    "ssat %[h], #8, %[h]\n\t"                  \
    "strb %[h], " dest "\n\t"
#endif

/* v clamped to [lo, hi]. */
static inline int32_t ep_clamp32(int32_t v, int32_t lo, int32_t hi) {
    return v < lo ? lo : (v > hi ? hi : v);
}

/* Output channel c's accumulator requantized; `q` is a kernel's local copy of its ep_requant (kernels copy it
 * so that the compiler need not reload it after every int8 store). */
#define EP_STORE(q, c, acc) \
    ep_requantize((acc), (q).multiplier[c], (q).shift[c], (q).output_zero_point, (q).act_min, (q).act_max)

/* Four bytes from any address (the Cortex-M4 loads unaligned words). */
static inline uint32_t ep_read32(const int8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

#endif
