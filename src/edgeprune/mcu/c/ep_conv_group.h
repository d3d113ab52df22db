/* Private helpers of the convolution kernels (ep_conv_dense.c, ep_conv_sparse.c, ep_depthwise.c): the geometry
 * check and the groups of four output pixels that the dense and sparse convolutions compute together. */
#ifndef EP_CONV_GROUP_H
#define EP_CONV_GROUP_H

#include "ep_kernels.h"
#include "ep_requant.h"

#if defined(__ARM_FEATURE_DSP)
#include <arm_acle.h>
#endif

/* SXTB16, SMLAD, SMLABB and SMLATT: bytes 0 and 2 of x sign-extended into 16-bit halves; acc + the products of
 * the halves of a and b; acc + the product of their bottom halves; of their top halves. The portable versions
 * compute the same. */
#if defined(__ARM_FEATURE_DSP)
#define EP_SXTB16(x) ((uint32_t)__sxtb16(x))
#define EP_SMLAD(a, b, acc) __smlad((int32_t)(a), (int32_t)(b), (acc))
#define EP_SMLABB(a, b, acc) __smlabb((int32_t)(a), (int32_t)(b), (acc))
#define EP_SMLATT(a, b, acc) __smlatt((int32_t)(a), (int32_t)(b), (acc))
#else
#define EP_SXTB16(x) ep_sxtb16_portable(x)
#define EP_SMLAD(a, b, acc) ep_smlad_portable((a), (b), (acc))
#define EP_SMLABB(a, b, acc) ((acc) + (int16_t)(uint16_t)(a) * (int16_t)(uint16_t)(b))
#define EP_SMLATT(a, b, acc) ((acc) + (int16_t)(uint16_t)((a) >> 16) * (int16_t)(uint16_t)((b) >> 16))
static inline uint32_t ep_sxtb16_portable(uint32_t x) {
    return (uint16_t)(int16_t)(int8_t)(uint8_t)x | (uint32_t)(uint16_t)(int16_t)(int8_t)(uint8_t)(x >> 16) << 16;
}
/* Each product is at most 2^14 in size; the exporter bounds every partial sum of a channel below 2^31. */
static inline int32_t ep_smlad_portable(uint32_t a, uint32_t b, int32_t acc) {
    return acc + (int16_t)(uint16_t)a * (int16_t)(uint16_t)b + (int16_t)(uint16_t)(a >> 16) * (int16_t)(uint16_t)(b >> 16);
}
#endif
/* SXTB16 of x rotated right by 8: bytes 1 and 3. On the DSP cores one instruction: GCC 12 does not fold the
 * rotation into SXTB16 by itself (a MOV more per word). */
#if defined(__ARM_FEATURE_DSP) && defined(__GNUC__)
static inline uint32_t ep_sxtb16_odd(uint32_t x) {
    uint32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
    return r;
}
#define EP_SXTB16_ODD(x) ep_sxtb16_odd(x)
#else
#define EP_SXTB16_ODD(x) EP_SXTB16(((x) >> 8) | ((x) << 24))
#endif

/* Out of line, as they were when one file held all the convolutions: inlined into each kernel they change
 * the register allocation of its channel loop and cost instructions per output (measured in QEMU). */
#if defined(__GNUC__)
#define EP_OUT_OF_LINE __attribute__((noinline, unused))
#else
#define EP_OUT_OF_LINE
#endif

/* Whether the windows of every output pixel lie inside the (padded) input. */
EP_OUT_OF_LINE static int ep_conv_dims_ok(const ep_conv_dims *d) {
    return d->out_h > 0 && d->out_w > 0 && d->stride_h > 0 && d->stride_w > 0 && d->dil_h > 0 && d->dil_w > 0 &&
           (d->out_h - 1) * d->stride_h + (d->k_h - 1) * d->dil_h < d->in_h &&
           (d->out_w - 1) * d->stride_w + (d->k_w - 1) * d->dil_w < d->in_w &&
           (!d->pool || (d->out_h >= 2 && d->out_w >= 2));
}

/* The output pixels computed together: with a fused 2x2 max pool a group is one pooling window (its
 * four pixels' largest accumulator is requantized once, which equals pooling the requantized outputs
 * since requantization never decreases), else four consecutive output pixels in row-major order, a group
 * running on into the next row when a row's width is not a multiple of four (fewer pixels only in the last
 * group: KWS's 25x5 outputs take 32 groups, not 50 of which 25 hold one pixel). */
typedef struct {
    const int8_t *base;  /* the input window of the group's first pixel */
    int32_t off[4];      /* input offsets of the group's pixels from `base` (>= 0: later pixels start later) */
    int32_t pixels;      /* 4, or fewer in the last group */
    int8_t *out;         /* where the group's first output channel goes */
    int32_t out_step;    /* output bytes from one pixel to the next (0 when pooled: one output) */
} ep_group;

static inline int32_t ep_group_count(const ep_conv_dims *d) {
    if (d->pool) {
        return (d->out_h / 2) * (d->out_w / 2);
    }
    return (d->out_h * d->out_w + 3) / 4;
}

/* Group g's pixels: where their windows start in `in` and where their outputs go in `out`. */
EP_OUT_OF_LINE static void ep_group_at(const ep_conv_dims *d, const int8_t *in, int8_t *out, int32_t g, ep_group *grp) {
    const int32_t pix = d->stride_w * d->in_c, row = d->stride_h * d->in_w * d->in_c;
    int32_t oy, ox, j;
    if (d->pool) {
        const int32_t pw = d->out_w / 2;
        oy = 2 * (g / pw);
        ox = 2 * (g % pw);
        grp->off[0] = 0;
        grp->off[1] = pix;
        grp->off[2] = row;
        grp->off[3] = row + pix;
        grp->pixels = 4;
        grp->out = out + g * d->out_c;
        grp->out_step = 0;
    } else {
        const int32_t first = 4 * g, total = d->out_h * d->out_w;
        int32_t y, x;
        oy = first / d->out_w;
        ox = first % d->out_w;
        grp->pixels = total - first < 4 ? total - first : 4;
        if (ox + 4 <= d->out_w) {  /* within one row: the common case, kept as cheap as before */
            grp->off[0] = 0;
            grp->off[1] = pix;
            grp->off[2] = 2 * pix;
            grp->off[3] = 3 * pix;
        } else {
            y = oy;
            x = ox;
            for (j = 0; j < 4; j++) {  /* a short group repeats its first pixel, computed but not stored */
                grp->off[j] = j < grp->pixels ? (y - oy) * row + (x - ox) * pix : 0;
                if (++x == d->out_w) {
                    x = 0;
                    y++;
                }
            }
        }
        grp->out = out + first * d->out_c;
        grp->out_step = d->out_c;
    }
    grp->base = in + (oy * d->stride_h * d->in_w + ox * d->stride_w) * d->in_c;
}

/* Four pixels' accumulators. */
typedef struct {
    int32_t a0, a1, a2, a3;
} ep_acc4;

/* Whether a layer's activation clamp is the whole int8 range (no activation, or a ReLU whose output zero point
 * is -128): then ep_group_store's `full` variant clamps with constants, one SSAT on the DSP cores, and keeps
 * the two bounds out of the registers that its channel loop spills. */
static inline int ep_requant_full_range(const ep_requant *q) {
    return q->act_min <= -128 && q->act_max >= 127;
}

/* Requantize output channel `co` of a group from its pixels' accumulators (the channel's multiplier
 * prepared once for the four). Inlined into each channel loop, so the accumulators stay in registers.
 * `full` (a constant in each expansion) is ep_requant_full_range(q): the clamp is then to [-128, 127], which
 * is the same as the layer's own bounds. */
#define EP_GROUP_RQ(acc) (full ? ep_requantize_mq_int8((acc), m, zp) : ep_requantize_mq((acc), m, zp, lo, hi))
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline void ep_group_store(const ep_group *grp, const ep_requant *q, int32_t co, const ep_acc4 a,
                                  const int32_t full) {
    const ep_mq m = ep_mq_make(q->multiplier[co], q->shift[co]);
    const int32_t zp = q->output_zero_point, step = grp->out_step;
    const int32_t lo = q->act_min, hi = q->act_max;
    int8_t *o = grp->out + co;
    if (step == 0) {
        const int32_t m01 = a.a0 > a.a1 ? a.a0 : a.a1, m23 = a.a2 > a.a3 ? a.a2 : a.a3;
        o[0] = EP_GROUP_RQ(m01 > m23 ? m01 : m23);
        return;
    }
    o[0] = EP_GROUP_RQ(a.a0);
    if (grp->pixels == 4) {
        o[step] = EP_GROUP_RQ(a.a1);
        o[2 * step] = EP_GROUP_RQ(a.a2);
        o[3 * step] = EP_GROUP_RQ(a.a3);
        return;
    }
    if (grp->pixels > 1) {
        o[step] = EP_GROUP_RQ(a.a1);
    }
    if (grp->pixels > 2) {
        o[2 * step] = EP_GROUP_RQ(a.a2);
    }
}
#undef EP_GROUP_RQ

#endif
