/* Fixed-point helpers shared by the edgeprune kernels: TFLite's double-rounding requantization
 * (gemmlowp's SaturatingRoundingDoublingHighMul and RoundingDivideByPOT). */
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
 * as QuantizeMultiplier makes them), the mask of the bits the right shift drops, and half of it. */
typedef struct {
    int32_t multiplier, left, right, mask, half;
} ep_mq;

static inline ep_mq ep_mq_make(int32_t multiplier, int32_t shift) {
    ep_mq q;
    q.multiplier = multiplier;
    q.left = shift > 0 ? shift : 0;
    q.right = q.left - shift;
    q.mask = (int32_t)((1u << q.right) - 1u);
    q.half = q.mask >> 1;
    return q;
}

/* TFLite's MultiplyByQuantizedMultiplier: x * multiplier * 2^(shift - 31), double rounding, for a
 * multiplier >= 0 (as QuantizeMultiplier makes them). Then ep_srdhm never saturates, and its rounding
 * (the product plus or minus 2^30, divided by 2^31 toward zero) equals floor((product + 2^30) / 2^31),
 * one 64-bit add and shift; the rounding division by 2^right is ep_rounding_divide_by_pot's, with the
 * mask prepared (a negative high half raises the threshold by one: x >> 31 is -1). */
static inline int32_t ep_mq_apply(int32_t x, const ep_mq q) {
    const int64_t product = (int64_t)(int32_t)((uint32_t)x << q.left) * q.multiplier;
    const int32_t high = (int32_t)((product + ((int64_t)1 << 30)) >> 31);
    return (high >> q.right) + ((high & q.mask) > q.half - (high >> 31) ? 1 : 0);
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

static inline int8_t ep_requantize(int32_t acc, int32_t multiplier, int32_t shift, int32_t zero_point,
                                   int32_t lo, int32_t hi) {
    return ep_requantize_mq(acc, ep_mq_make(multiplier, shift), zero_point, lo, hi);
}

/* Four bytes from any address (the Cortex-M4 loads unaligned words). */
static inline uint32_t ep_read32(const int8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

#endif
