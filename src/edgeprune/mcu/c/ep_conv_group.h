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
 * is -128): then its `fast` channels store with ep_channel_store4_full, one SSAT an output. */
static inline int ep_requant_full_range(const ep_requant *q) {
    return q->act_min <= -128 && q->act_max >= 127;
}

/* An output channel's bias and requantization, prepared once per layer (ep_channels_prepare) into the last
 * EP_CHANNEL_WORDS * out_c words of a convolution's scratch, so that a group's channel loop loads them instead
 * of making the multiplier again for every group: `fast` and `nudge_zp` as ep_fast_shift and ep_fast_nudge make
 * them (ep_requant.h; `fast` 0: the channel takes ep_mq_apply). */
typedef struct {
    int32_t bias, multiplier, shift, fast, nudge_zp;
} ep_channel;
typedef char ep_channel_words_check[sizeof(ep_channel) == 4 * EP_CHANNEL_WORDS ? 1 : -1];

/* Where the prepared channels go: after `used` words of a kernel's scratch. */
static inline ep_channel *ep_channels_at(uint32_t *scratch, int32_t used) {
    return (ep_channel *)(void *)(scratch + used);
}

EP_OUT_OF_LINE static void ep_channels_prepare(const int32_t *bias, const ep_requant *q, int32_t out_c,
                                               ep_channel *ch) {
    int32_t co;
    for (co = 0; co < out_c; co++) {
        ch[co].bias = bias[co];
        ch[co].multiplier = q->multiplier[co];
        ch[co].shift = q->shift[co];
        ch[co].fast = ep_fast_shift(q->shift[co]);
        ch[co].nudge_zp = ep_fast_nudge(q->shift[co], q->output_zero_point);
    }
}

/* A channel's output before the clamp, any channel: a shift >= 0 (no right shift) rounds once, as
 * SaturatingRoundingDoublingHighMul (ep_mq_apply with right 0). */
static inline int32_t ep_channel_any(int32_t acc, const ep_channel *c, int32_t zp) {
    if (c->fast) {
        return ep_fast_apply(acc, c->multiplier, c->nudge_zp, c->fast);
    }
    if (c->shift >= 0) {
        const int32_t shifted = (int32_t)((uint32_t)acc << c->shift);
        return (int32_t)(((int64_t)shifted * c->multiplier + ((int64_t)1 << 30)) >> 31) + zp;
    }
    return ep_mq_apply(acc, ep_mq_make(c->multiplier, c->shift)) + zp;
}

/* v clamped to [lo, hi], or with `full` (a constant) to [-128, 127]: one SSAT where the core has it. */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline int8_t ep_clamp_out(int32_t v, int32_t lo, int32_t hi, const int32_t full) {
    if (full) {
#if defined(__ARM_FEATURE_SAT)
        return (int8_t)__ssat(v, 8);
#else
        return (int8_t)(v < -128 ? -128 : (v > 127 ? 127 : v));
#endif
    }
    v = v < lo ? lo : v;  /* two steps, not ep_clamp32: GCC 12 then makes two IT-predicated moves (measured) */
    v = v > hi ? hi : v;
    return (int8_t)v;
}

/* A fast channel's four outputs with the clamp [-128, 127], into o[0], o[step], o[2 step], o[3 step]. */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline void ep_channel_store4_full(const ep_channel *c, int8_t *o, int32_t step, const ep_acc4 a) {
#if defined(__ARM_FEATURE_DSP) && defined(__GNUC__)
    uint32_t t, h;
    __asm__ volatile(EP_FAST_OUTPUT("%[a0]", "[%[o]]")
            EP_FAST_OUTPUT("%[a1]", "[%[o], %[step]]")
            "add %[o], %[o], %[step], lsl #1\n\t"
            EP_FAST_OUTPUT("%[a2]", "[%[o]]")
            EP_FAST_OUTPUT("%[a3]", "[%[o], %[step]]")
            : [t] "=&r"(t), [h] "=&r"(h), [o] "+&r"(o)
            : [a0] "r"(a.a0), [a1] "r"(a.a1), [a2] "r"(a.a2), [a3] "r"(a.a3), [step] "r"(step),
              [m] "r"(c->multiplier), [nz] "r"(c->nudge_zp), [sh] "r"(c->fast)
            : "memory");
#else
    o[0] = ep_clamp_out(ep_fast_apply(a.a0, c->multiplier, c->nudge_zp, c->fast), -128, 127, 1);
    o[step] = ep_clamp_out(ep_fast_apply(a.a1, c->multiplier, c->nudge_zp, c->fast), -128, 127, 1);
    o[2 * step] = ep_clamp_out(ep_fast_apply(a.a2, c->multiplier, c->nudge_zp, c->fast), -128, 127, 1);
    o[3 * step] = ep_clamp_out(ep_fast_apply(a.a3, c->multiplier, c->nudge_zp, c->fast), -128, 127, 1);
#endif
}

/* Requantize output channel `c` of a group from its pixels' accumulators into o[0], o[step], ... (a pooled group,
 * step 0: the largest of the four, once), any channel and any group; the kernels take ep_channel_store4_full
 * instead where they can (a layer of `fast` channels clamped to all of int8, four pixels not pooled). */
#define EP_RQ_ANY(acc) ep_clamp_out(ep_channel_any((acc), c, zp), lo, hi, 0)
static inline void ep_channel_store(const ep_group *grp, const ep_channel *c, int8_t *o, int32_t zp, int32_t lo,
                                    int32_t hi, const ep_acc4 a) {
    const int32_t step = grp->out_step;
    if (step == 0) {
        const int32_t m01 = a.a0 > a.a1 ? a.a0 : a.a1, m23 = a.a2 > a.a3 ? a.a2 : a.a3;
        o[0] = EP_RQ_ANY(m01 > m23 ? m01 : m23);
        return;
    }
    o[0] = EP_RQ_ANY(a.a0);
    if (grp->pixels > 1) {
        o[step] = EP_RQ_ANY(a.a1);
    }
    if (grp->pixels > 2) {
        o[2 * step] = EP_RQ_ANY(a.a2);
    }
    if (grp->pixels > 3) {
        o[3 * step] = EP_RQ_ANY(a.a3);
    }
}
#undef EP_RQ_ANY

/* ep_channel_store out of line, for the channels that are not `fast` in a loop that stores the others with
 * ep_channel_store4_full: inlined there, or given the accumulators as one struct, it makes GCC keep them on the
 * stack for every channel. */
EP_OUT_OF_LINE static void ep_channel_store_out(int32_t a0, int32_t a1, int32_t a2, int32_t a3, const ep_group *grp,
                                                const ep_channel *c, int8_t *o, const ep_requant *q) {
    ep_acc4 a;
    a.a0 = a0;
    a.a1 = a1;
    a.a2 = a2;
    a.a3 = a3;
    ep_channel_store(grp, c, o, q->output_zero_point, q->act_min, q->act_max, a);
}

#endif
