/* The sparse int8 convolution (VALID on an input padded already, bias folded; see ep_kernels.h for the
 * ep_sparse format): four output pixels at a time from a patch of their windows, one word of four int8
 * pixels per window position; each non-zero weight costs one patch word and four multiply-accumulates. */
#include "ep_conv_group.h"
#include "ep_sparse_runs.h"

#if defined(__ARM_FEATURE_DSP)
#include <arm_acle.h>
#endif

/* a0..a3 += (byte k of x, sign-extended) * wv for the four bytes of a patch word: with the DSP, SXTB16 splits
 * the word into bytes 0 and 2 and (rotated) 1 and 3 as 16-bit halves, and SMLABB / SMLATB multiply them. */
#if defined(__ARM_FEATURE_DSP)
#define EP_MAC_PATCH(x, wv, a0, a1, a2, a3)                                          \
    do {                                                                             \
        const int32_t ep_even = (int32_t)EP_SXTB16(x), ep_odd = (int32_t)EP_SXTB16_ODD(x);      \
        (a0) = __smlabb(ep_even, (wv), (a0));                                        \
        (a2) = __smlatb(ep_even, (wv), (a2));                                        \
        (a1) = __smlabb(ep_odd, (wv), (a1));                                         \
        (a3) = __smlatb(ep_odd, (wv), (a3));                                         \
    } while (0)
#else
#define EP_MAC_PATCH(x, wv, a0, a1, a2, a3)          \
    do {                                             \
        (a0) += (int8_t)(uint8_t)(x) * (wv);         \
        (a1) += (int8_t)(uint8_t)((x) >> 8) * (wv);  \
        (a2) += (int8_t)(uint8_t)((x) >> 16) * (wv); \
        (a3) += (int8_t)(uint8_t)((x) >> 24) * (wv); \
    } while (0)
#endif

/* Copy a group's four input windows into `patch` (EP_PATCH_WORDS words): per window position (the filter's
 * own order, ky, kx, ci) one word holding the four pixels' int8 values, pixel 0 in the low byte. */
static void ep_fill_patch(const ep_conv_dims *d, const ep_group *grp, uint32_t *restrict patch) {
    const int32_t o1 = grp->off[1], o2 = grp->off[2], o3 = grp->off[3];
    const int32_t span = d->dil_w == 1 ? d->k_w * d->in_c : d->in_c;  /* contiguous input bytes */
    const int32_t pieces = d->dil_w == 1 ? 1 : d->k_w;
    int32_t ky, kx, t;
    for (ky = 0; ky < d->k_h; ky++) {
        for (kx = 0; kx < pieces; kx++) {
            const int8_t *r = grp->base + (ky * d->dil_h * d->in_w + kx * d->dil_w) * d->in_c;
            for (t = 0; t + 4 <= span; t += 4) {  /* a 4x4 byte transpose: four positions of four pixels */
                const uint32_t a = ep_read32(r + t), b = ep_read32(r + t + o1);
                const uint32_t c = ep_read32(r + t + o2), e = ep_read32(r + t + o3);
                const uint32_t ac_low = (a & 0xffffu) | (c << 16), ac_high = (c & 0xffff0000u) | (a >> 16);
                const uint32_t be_low = (b & 0xffffu) | (e << 16), be_high = (e & 0xffff0000u) | (b >> 16);
                patch[0] = (ac_low & 0x00ff00ffu) | ((be_low & 0x00ff00ffu) << 8);
                patch[1] = ((ac_low >> 8) & 0x00ff00ffu) | (be_low & 0xff00ff00u);
                patch[2] = (ac_high & 0x00ff00ffu) | ((be_high & 0x00ff00ffu) << 8);
                patch[3] = ((ac_high >> 8) & 0x00ff00ffu) | (be_high & 0xff00ff00u);
                patch += 4;
            }
            for (; t < span; t++) {
                const uint8_t *u = (const uint8_t *)r + t;
                *patch++ = u[0] | (uint32_t)u[o1] << 8 | (uint32_t)u[o2] << 16 | (uint32_t)u[o3] << 24;
            }
        }
    }
}

/* One entry of a run over the patch: move the cursor `r` by g; unless g is the escape, multiply the word
 * there by the run's next value into a0..a3 and step on. */
#define EP_PATCH_ENTRY(g, escape, r, v, table, pending, a0, a1, a2, a3) \
    do {                                                                \
        (r) += (g);                                                     \
        if ((g) != (escape)) {                                          \
            const uint32_t ep_x = *(r)++;                               \
            int32_t ep_wv;                                              \
            EP_NEXT_VALUE(ep_wv, v, table, pending);                    \
            EP_MAC_PATCH(ep_x, ep_wv, a0, a1, a2, a3);                  \
        }                                                               \
    } while (0)

/* One output channel's run of `n` entries over the patch, at four pixels, starting from `start`; `table` is
 * the run's look-up-table row (then *val points to its codes) or EP_NO_TABLE. */
static inline ep_acc4 ep_patch_run(const uint32_t *r, const uint8_t **nib, const int8_t **val, const int8_t *table,
                                   uint32_t n, int32_t bits, int32_t start) {
    const uint8_t *p = *nib;
    const int8_t *v = *val;
    int32_t a0 = start, a1 = start, a2 = start, a3 = start;
    uint32_t pending = 0;
    ep_acc4 acc;
    EP_WALK_RUN(p, n, bits, EP_PATCH_ENTRY, r, v, table, pending, a0, a1, a2, a3);
    *nib = p;
    *val = v;
    acc.a0 = a0;
    acc.a1 = a1;
    acc.a2 = a2;
    acc.a3 = a3;
    return acc;
}

/* Every output channel of one group (group `grp` with its `patch`, requantized by `rq`): channel `co` (the
 * loop's variable) walks its run from `nib` and `v` (advanced past it) with entries of `bits` bits (a constant
 * in each expansion) and look-up-table row TABLE, an expression of `co` (or EP_NO_TABLE, so that the compiler
 * drops the codes' path) and FULL, a constant: whether the clamp is the whole int8 range (ep_group_store); a
 * pooled group keeps the largest of its four accumulators. */
#define EP_SPARSE_CHANNELS(co, out_c, grp, rq, patch, w, bias, nib, v, bits, TABLE, FULL)              \
    do {                                                                                               \
        for ((co) = 0; (co) < (out_c); (co)++) {                                                       \
            const ep_acc4 ep_a = ep_patch_run((patch), &(nib), &(v), (TABLE), EP_RUN_LENGTH(w, co), (bits), \
                                              (bias)[co]);                                             \
            ep_group_store(&(grp), &(rq), (co), ep_a, (FULL));                                               \
        }                                                                                              \
    } while (0)

/* The sparse convolution, with int8 values (`lut` 0) or look-up-table codes (`lut` 1, w->table set): two
 * entry points, so that a model without look-up tables links no code for them. */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline int ep_conv_sparse_values(const ep_conv_dims *d, const int8_t *restrict in, const ep_sparse *w,
                                        const int32_t *restrict bias, const ep_requant *q, uint32_t *restrict patch,
                                        int32_t patch_words, int8_t *restrict out, int32_t lut) {
    const ep_requant rq = *q;
    const int32_t groups = ep_group_count(d), full = ep_requant_full_range(q);
    int32_t g, co;
    if (!ep_conv_dims_ok(d) || (lut && !w->table) ||
        patch_words < EP_PATCH_WORDS(d->k_h, d->k_w, d->in_c)) {
        return EP_ERROR_DIMS;
    }
    for (g = 0; g < groups; g++) {
        ep_group grp;
        const uint8_t *nib = w->nibbles;
        const int8_t *v = lut ? (const int8_t *)(const void *)w->codes : w->values;
        ep_group_at(d, in, out, g, &grp);
        ep_fill_patch(d, &grp, patch);
        if (lut) {
            EP_SPARSE_CHANNELS(co, d->out_c, grp, rq, patch, w, bias, nib, v, w->bits, w->table + co * w->table_size,
                               0);
        } else if (w->bits == 4) {  /* compact entries: one variant, to keep the code small */
            EP_SPARSE_CHANNELS(co, d->out_c, grp, rq, patch, w, bias, nib, v, 4, EP_NO_TABLE, 0);
        } else if (full) {
            EP_SPARSE_CHANNELS(co, d->out_c, grp, rq, patch, w, bias, nib, v, 8, EP_NO_TABLE, 1);
        } else {
            EP_SPARSE_CHANNELS(co, d->out_c, grp, rq, patch, w, bias, nib, v, 8, EP_NO_TABLE, 0);
        }
    }
    return EP_OK;
}

int ep_conv_sparse(const ep_conv_dims *d, const int8_t *in, const ep_sparse *w, const int32_t *bias,
                   const ep_requant *q, uint32_t *patch, int32_t patch_words, int8_t *out) {
    return ep_conv_sparse_values(d, in, w, bias, q, patch, patch_words, out, 0);
}

int ep_conv_sparse_lut(const ep_conv_dims *d, const int8_t *in, const ep_sparse *w, const int32_t *bias,
                       const ep_requant *q, uint32_t *patch, int32_t patch_words, int8_t *out) {
    return ep_conv_sparse_values(d, in, w, bias, q, patch, patch_words, out, 1);
}
