/* The dense int8 convolution (VALID on an input padded already, bias folded; see ep_kernels.h): four output
 * pixels at a time from a scratch copy of their windows as 16-bit pairs, two SMLADs per four weights and pixel. */
#include "ep_conv_group.h"

/* Copy a group's four input windows for the dense kernel: each pixel's window in the filter's order
 * (ky, kx, ci), zero-padded to `padded` bytes, then per four positions and pixel two words: positions
 * 0 and 2, then 1 and 3, as 16-bit halves (the layout SMLAD pairs with SXTB16 of four weights).
 * `scratch` holds EP_DENSE_SCRATCH_WORDS: 2 * padded words of pairs, then padded words of bytes. */
static void ep_fill_pairs(const ep_conv_dims *d, const ep_group *grp, int32_t padded, uint32_t *restrict scratch) {
    int8_t *bytes = (int8_t *)(void *)(scratch + 2 * padded);  /* 4 pixels x padded bytes, after the pairs */
    const int32_t span = d->dil_w == 1 ? d->k_w * d->in_c : d->in_c;
    const int32_t pieces = d->dil_w == 1 ? 1 : d->k_w;
    int32_t j, ky, kx, b;
    for (j = 0; j < 4; j++) {
        int8_t *to = bytes + j * padded;
        for (ky = 0; ky < d->k_h; ky++) {
            for (kx = 0; kx < pieces; kx++, to += span) {
                memcpy(to, grp->base + grp->off[j] + (ky * d->dil_h * d->in_w + kx * d->dil_w) * d->in_c, (uint32_t)span);
            }
        }
        memset(to, 0, (uint32_t)(bytes + (j + 1) * padded - to));
    }
    for (b = 0; b < padded; b += 4) {
        for (j = 0; j < 4; j++) {
            const uint32_t x = ep_read32(bytes + j * padded + b);
            *scratch++ = EP_SXTB16(x);
            *scratch++ = EP_SXTB16((x >> 8) | (x << 24));
        }
    }
}

/* The groups of the dense convolution; `full` (a constant in each expansion) says whether the clamp is the whole
 * int8 range (ep_group_store). */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline void ep_conv_dense_groups(const ep_conv_dims *d, const int8_t *restrict in, const int8_t *restrict w,
                                        const int32_t *restrict bias, const ep_requant *q, uint32_t *restrict scratch,
                                        int8_t *restrict out, const int32_t full) {
    const ep_requant rq = *q;
    const int32_t padded = EP_DENSE_PADDED(d->k_h, d->k_w, d->in_c);
    const int32_t groups = ep_group_count(d);
    int32_t g, co, b;
    for (g = 0; g < groups; g++) {
        ep_group grp;
        ep_group_at(d, in, out, g, &grp);
        ep_fill_pairs(d, &grp, padded, scratch);
        for (co = 0; co < d->out_c; co++) {
            const int8_t *wp = w + co * padded;
            const uint32_t *p = scratch;
            ep_acc4 acc;
            int32_t a0 = bias[co], a1 = a0, a2 = a0, a3 = a0;
            for (b = 0; b < padded; b += 4, wp += 4, p += 8) {
                const uint32_t wv = ep_read32(wp);
                const uint32_t even = EP_SXTB16(wv), odd = EP_SXTB16((wv >> 8) | (wv << 24));
                a0 = EP_SMLAD(p[0], even, a0);
                a0 = EP_SMLAD(p[1], odd, a0);
                a1 = EP_SMLAD(p[2], even, a1);
                a1 = EP_SMLAD(p[3], odd, a1);
                a2 = EP_SMLAD(p[4], even, a2);
                a2 = EP_SMLAD(p[5], odd, a2);
                a3 = EP_SMLAD(p[6], even, a3);
                a3 = EP_SMLAD(p[7], odd, a3);
            }
            acc.a0 = a0;
            acc.a1 = a1;
            acc.a2 = a2;
            acc.a3 = a3;
            ep_group_store(&grp, &rq, co, acc, full);
        }
    }
}

int ep_conv_dense(const ep_conv_dims *d, const int8_t *restrict in, const int8_t *restrict w,
                  const int32_t *restrict bias, const ep_requant *q, uint32_t *restrict scratch, int32_t scratch_words,
                  int8_t *restrict out) {
    if (!ep_conv_dims_ok(d) || scratch_words < EP_DENSE_SCRATCH_WORDS(d->k_h, d->k_w, d->in_c)) {
        return EP_ERROR_DIMS;
    }
    if (ep_requant_full_range(q)) {
        ep_conv_dense_groups(d, in, w, bias, q, scratch, out, 1);
    } else {
        ep_conv_dense_groups(d, in, w, bias, q, scratch, out, 0);
    }
    return EP_OK;
}
