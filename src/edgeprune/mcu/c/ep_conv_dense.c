/* The dense int8 convolution (VALID on an input padded already, bias folded; see ep_kernels.h): four output
 * pixels at a time from a scratch copy of their windows as 16-bit pairs, two SMLADs per four weights and pixel. */
#include "ep_conv_group.h"

/* n bytes from `from` to `to`, a word at a time: the first convolutions' spans are a few bytes (9 for a 3x3
 * filter on 3 channels), where a call to memcpy costs more than the copy (measured in QEMU); GCC is told not to
 * turn the loops back into calls. */
#if defined(__GNUC__) && !defined(__clang__)
#define EP_NO_LIBCALLS __attribute__((optimize("no-tree-loop-distribute-patterns")))
#else
#define EP_NO_LIBCALLS
#endif
EP_NO_LIBCALLS static inline void ep_copy_span(int8_t *restrict to, const int8_t *restrict from, int32_t n) {
    int32_t t;
    for (t = 0; t + 4 <= n; t += 4) {
        const uint32_t v = ep_read32(from + t);
        memcpy(to + t, &v, 4);
    }
    for (; t < n; t++) {
        to[t] = from[t];
    }
}

/* Copy a group's four input windows for the dense kernel: each pixel's window in the filter's order
 * (ky, kx, ci), zero-padded to `padded` bytes, then per four positions and pixel two words: positions
 * 0 and 2, then 1 and 3, as 16-bit halves (the layout SMLAD pairs with SXTB16 of four weights).
 * `scratch` holds EP_DENSE_SCRATCH_WORDS: 2 * padded words of pairs, then padded words of bytes (not used when
 * each row of a window is whole words). */
EP_NO_LIBCALLS static void ep_fill_pairs(const ep_conv_dims *d, const ep_group *grp, int32_t padded,
                                         uint32_t *restrict scratch) {
    int8_t *bytes = (int8_t *)(void *)(scratch + 2 * padded);  /* 4 pixels x padded bytes, after the pairs */
    const int32_t span = d->dil_w == 1 ? d->k_w * d->in_c : d->in_c;
    const int32_t pieces = d->dil_w == 1 ? 1 : d->k_w;
    int32_t j, ky, kx, b;
    const int32_t row = d->dil_h * d->in_w * d->in_c, piece = d->dil_w * d->in_c;
    if (pieces == 1 && span % 4 == 0) {  /* whole words: the pairs straight from the input (padded == k_h * span) */
        for (j = 0; j < 4; j++) {
            const int8_t *from = grp->base + grp->off[j];
            uint32_t *to = scratch + 2 * j;
            for (ky = 0; ky < d->k_h; ky++, from += row) {
                for (b = 0; b < span; b += 4, to += 8) {
                    const uint32_t x = ep_read32(from + b);
                    to[0] = EP_SXTB16(x);
                    to[1] = EP_SXTB16_ODD(x);
                }
            }
        }
        return;
    }
    for (j = 0; j < 4; j++) {
        int8_t *to = bytes + j * padded;
        const int8_t *from = grp->base + grp->off[j];
        for (ky = 0; ky < d->k_h; ky++, from += row) {
            for (kx = 0; kx < pieces; kx++, to += span) {
                ep_copy_span(to, from + kx * piece, span);
            }
        }
        while (to < bytes + (j + 1) * padded) {  /* at most three bytes */
            *to++ = 0;
        }
    }
    for (b = 0; b < padded; b += 4) {
        for (j = 0; j < 4; j++) {
            const uint32_t x = ep_read32(bytes + j * padded + b);
            *scratch++ = EP_SXTB16(x);
            *scratch++ = EP_SXTB16_ODD(x);
        }
    }
}

#if defined(__ARM_FEATURE_DSP) && defined(__GNUC__)
/* The window loop below written out for the DSP cores (the same SMLADs on the same words): four weights, then
 * each pixel's two pair words with one LDRD, two such steps a loop (one more first when padded / 4 is odd), so
 * that GCC 12's alternation of single loads and SMLADs, each load then taking two cycles (ARM DDI 0439B, 3.3.2),
 * does not come back: about 26 estimated cycles per 16 MACs instead of 34. `padded` is a multiple of 4 and at
 * least 4; the pairs are word-aligned (LDRD). */
#define EP_DENSE_PIXEL(acc)                          \
    "ldrd %[x0], %[x1], [%[p]], #8\n\t"              \
    "smlad " acc ", %[x0], %[ev], " acc "\n\t"       \
    "smlad " acc ", %[x1], %[w], " acc "\n\t"
#define EP_DENSE_STEP                                \
    "ldr %[w], [%[wp]], #4\n\t"                      \
    "sxtb16 %[ev], %[w]\n\t"                         \
    "sxtb16 %[w], %[w], ror #8\n\t"                  \
    EP_DENSE_PIXEL("%[a0]") EP_DENSE_PIXEL("%[a1]") EP_DENSE_PIXEL("%[a2]") EP_DENSE_PIXEL("%[a3]")
#define EP_DENSE_WINDOW(WP, P, END, N, A0, A1, A2, A3)                                                           \
    do {                                                                                                        \
        uint32_t ep_w, ep_ev, ep_x0, ep_x1;                                                                     \
        __asm__("tst %[n], #4\n\t"                                                                              \
                "beq 2f\n\t" EP_DENSE_STEP                                                                      \
                "2:\n\t"                                                                                        \
                "cmp %[wp], %[end]\n\t"                                                                         \
                "beq 3f\n"                                                                                      \
                "1:\n\t" EP_DENSE_STEP EP_DENSE_STEP                                                            \
                "cmp %[wp], %[end]\n\t"                                                                         \
                "bne 1b\n"                                                                                      \
                "3:"                                                                                            \
                : [a0] "+r"(A0), [a1] "+r"(A1), [a2] "+r"(A2), [a3] "+r"(A3), [wp] "+r"(WP), [p] "+r"(P),       \
                  [w] "=&r"(ep_w), [ev] "=&r"(ep_ev), [x0] "=&r"(ep_x0), [x1] "=&r"(ep_x1)                      \
                : [end] "r"(END), [n] "r"(N)                                                                        \
                : "cc", "memory");                                                                              \
    } while (0)
#endif

/* The groups of the dense convolution; `fast` (a constant in each expansion): the clamp is all of int8, so that
 * the `fast` channels of groups of four pixels not pooled take ep_channel_store4_full. */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline void ep_conv_dense_groups(const ep_conv_dims *d, const int8_t *restrict in, const int8_t *restrict w,
                                        const ep_requant *q, uint32_t *restrict scratch,
                                        int8_t *restrict out, ep_channel *ch, const int32_t fast) {
    const ep_requant rq = *q;
    const int32_t padded = EP_DENSE_PADDED(d->k_h, d->k_w, d->in_c);
    const int32_t groups = ep_group_count(d);
    int32_t g, co;
    for (g = 0; g < groups; g++) {
        ep_group grp;
        int32_t simple;
        ep_group_at(d, in, out, g, &grp);
        ep_fill_pairs(d, &grp, padded, scratch);
        simple = fast && grp.pixels == 4 && grp.out_step;
        for (co = 0; co < d->out_c; co++) {
            const int8_t *wp = w + co * padded;
            const uint32_t *p = scratch;
            ep_acc4 acc;
            int32_t a0 = ch[co].bias, a1 = a0, a2 = a0, a3 = a0;
#if defined(__ARM_FEATURE_DSP) && defined(__GNUC__)
            EP_DENSE_WINDOW(wp, p, wp + padded, padded, a0, a1, a2, a3);
#else
            int32_t b;
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
#endif
            acc.a0 = a0;
            acc.a1 = a1;
            acc.a2 = a2;
            acc.a3 = a3;
            if (simple && ch[co].fast) {
                ep_channel_store4_full(&ch[co], grp.out + co, grp.out_step, acc);
            } else {
                ep_channel_store(&grp, &ch[co], grp.out + co, rq.output_zero_point, rq.act_min, rq.act_max, acc);
            }
        }
    }
}

int ep_conv_dense(const ep_conv_dims *d, const int8_t *restrict in, const int8_t *restrict w,
                  const int32_t *restrict bias, const ep_requant *q, uint32_t *restrict scratch, int32_t scratch_words,
                  int8_t *restrict out) {
    ep_channel *ch;
    if (!ep_conv_dims_ok(d) || scratch_words < EP_DENSE_SCRATCH_WORDS(d->k_h, d->k_w, d->in_c, d->out_c)) {
        return EP_ERROR_DIMS;
    }
    ch = ep_channels_at(scratch, 3 * EP_DENSE_PADDED(d->k_h, d->k_w, d->in_c));
    ep_channels_prepare(bias, q, d->out_c, ch);
    if (ep_requant_full_range(q)) {
        ep_conv_dense_groups(d, in, w, q, scratch, out, ch, 1);
    } else {
        ep_conv_dense_groups(d, in, w, q, scratch, out, ch, 0);
    }
    return EP_OK;
}
