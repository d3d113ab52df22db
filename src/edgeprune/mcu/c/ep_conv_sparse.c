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

/* Four words of four pixels' bytes (a: pixel 0's positions k to k + 3, b: pixel 1's, c, e) transposed into
 * out[0] to out[3], position k + j's word holding the four pixels' bytes, pixel 0's in the low byte. On the DSP
 * cores: byte-interleave a with b and c with e (AND of the shifted word, UXTAB16), then PKHBT/PKHTB the halves;
 * 12 instructions where GCC 12 made 26 of the portable masks (loads and stores apart; seen in QEMU). */
#if defined(__ARM_FEATURE_DSP) && defined(__GNUC__)
#define EP_TRANSPOSE4(wa, wb, wc, we, out)                                                                \
    do {                                                                                                  \
        uint32_t ep_a = (wa), ep_b = (wb), ep_c = (wc), ep_e = (we), ep_t;                                \
        __asm__("and %[t], %[mask], %[b], lsl #8\n\t"   /* [0 b0 0 b2] */                                 \
                "uxtab16 %[t], %[t], %[a]\n\t"          /* [a0 b0 a2 b2] */                               \
                "and %[b], %[mask], %[b]\n\t"           /* [0 b1 0 b3] */                                 \
                "uxtab16 %[b], %[b], %[a], ror #8\n\t"  /* [a1 b1 a3 b3] */                               \
                "and %[a], %[mask], %[e], lsl #8\n\t"                                                     \
                "uxtab16 %[a], %[a], %[c]\n\t"          /* [c0 e0 c2 e2] */                               \
                "and %[e], %[mask], %[e]\n\t"                                                             \
                "uxtab16 %[e], %[e], %[c], ror #8\n\t"  /* [c1 e1 c3 e3] */                               \
                "pkhbt %[c], %[t], %[a], lsl #16\n\t"   /* [a0 b0 c0 e0] */                               \
                "pkhtb %[t], %[a], %[t], asr #16\n\t"   /* [a2 b2 c2 e2] */                               \
                "pkhbt %[a], %[b], %[e], lsl #16\n\t"   /* [a1 b1 c1 e1] */                               \
                "pkhtb %[e], %[e], %[b], asr #16"       /* [a3 b3 c3 e3] */                               \
                : [a] "+&r"(ep_a), [b] "+&r"(ep_b), [c] "+&r"(ep_c), [e] "+&r"(ep_e), [t] "=&r"(ep_t)     \
                : [mask] "r"(0xff00ff00u));                                                               \
        (out)[0] = ep_c;                                                                                  \
        (out)[1] = ep_a;                                                                                  \
        (out)[2] = ep_t;                                                                                  \
        (out)[3] = ep_e;                                                                                  \
    } while (0)
#else
#define EP_TRANSPOSE4(wa, wb, wc, we, out)                                                                       \
    do {                                                                                                         \
        const uint32_t ep_a = (wa), ep_b = (wb), ep_c = (wc), ep_e = (we);                                       \
        const uint32_t ac_low = (ep_a & 0xffffu) | (ep_c << 16), ac_high = (ep_c & 0xffff0000u) | (ep_a >> 16); \
        const uint32_t be_low = (ep_b & 0xffffu) | (ep_e << 16), be_high = (ep_e & 0xffff0000u) | (ep_b >> 16); \
        (out)[0] = (ac_low & 0x00ff00ffu) | ((be_low & 0x00ff00ffu) << 8);                                     \
        (out)[1] = ((ac_low >> 8) & 0x00ff00ffu) | (be_low & 0xff00ff00u);                                     \
        (out)[2] = (ac_high & 0x00ff00ffu) | ((be_high & 0x00ff00ffu) << 8);                                   \
        (out)[3] = ((ac_high >> 8) & 0x00ff00ffu) | (be_high & 0xff00ff00u);                                   \
    } while (0)
#endif

/* Copy a group's four input windows into `patch` (EP_PATCH_WORDS words): per window position (the filter's
 * own order, ky, kx, ci) one word holding the four pixels' int8 values, pixel 0 in the low byte. */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline void ep_fill_patch(const ep_conv_dims *d, const ep_group *grp, uint32_t *restrict patch) {
    const int32_t o1 = grp->off[1], o2 = grp->off[2], o3 = grp->off[3];
    const int32_t span = d->dil_w == 1 ? d->k_w * d->in_c : d->in_c;  /* contiguous input bytes */
    const int32_t pieces = d->dil_w == 1 ? 1 : d->k_w;
    int32_t ky, kx, t;
    for (ky = 0; ky < d->k_h; ky++) {
        for (kx = 0; kx < pieces; kx++) {
            const int8_t *r = grp->base + (ky * d->dil_h * d->in_w + kx * d->dil_w) * d->in_c;
            for (t = 0; t + 4 <= span; t += 4) {  /* a 4x4 byte transpose: four positions of four pixels */
                EP_TRANSPOSE4(ep_read32(r + t), ep_read32(r + t + o1), ep_read32(r + t + o2), ep_read32(r + t + o3),
                              patch);
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

#if defined(__ARM_FEATURE_DSP) && defined(__GNUC__)
/* EP_WALK_RUN with EP_PATCH_ENTRY for 8-bit entries and int8 values, written out for the DSP cores: two entries a
 * loop step, each ordered so that its word load pipelines after the value's load (ARM DDI 0439B, 3.3.2), 12 cycles
 * an entry and 2 for the loop where GCC 12's loop took about 16 (estimated cycles; QEMU counts the instructions).
 * Same arithmetic as EP_PATCH_ENTRY: move the cursor by the entry, multiply the patch word there by the value. */
#define EP_RUN8_ENTRY                              \
    "ldrb %[g], [%[p]], #1\n\t"                    \
    "add %[r], %[r], %[g], lsl #2\n\t"             \
    "ldrsb %[w], [%[v]], #1\n\t"                   \
    "ldr %[g], [%[r]], #4\n\t"                     \
    "sxtb16 %[e], %[g]\n\t"                        \
    "sxtb16 %[g], %[g], ror #8\n\t"                \
    "smlabb %[a0], %[e], %[w], %[a0]\n\t"          \
    "smlatb %[a2], %[e], %[w], %[a2]\n\t"          \
    "smlabb %[a1], %[g], %[w], %[a1]\n\t"          \
    "smlatb %[a3], %[g], %[w], %[a3]\n\t"
#define EP_PATCH_RUN8(P, V, R, N, A0, A1, A2, A3)                                                         \
    do {                                                                                                  \
        const uint8_t *const ep_end = (P) + (N);                                                          \
        uint32_t ep_g, ep_w, ep_e;                                                                        \
        __asm__("tst %[n], #1\n\t"                                                                        \
                "beq 2f\n\t" EP_RUN8_ENTRY                                                                \
                "2:\n\t"                                                                                  \
                "cmp %[p], %[end]\n\t"                                                                    \
                "beq 3f\n"                                                                                \
                "1:\n\t" EP_RUN8_ENTRY EP_RUN8_ENTRY                                                      \
                "cmp %[p], %[end]\n\t"                                                                    \
                "bne 1b\n"                                                                                \
                "3:"                                                                                      \
                : [a0] "+r"(A0), [a1] "+r"(A1), [a2] "+r"(A2), [a3] "+r"(A3), [p] "+r"(P), [v] "+r"(V),   \
                  [r] "+r"(R), [g] "=&r"(ep_g), [w] "=&r"(ep_w), [e] "=&r"(ep_e)                          \
                : [end] "r"(ep_end), [n] "r"(N)                                                           \
                : "cc", "memory");                                                                        \
    } while (0)
#endif

/* One output channel's run of `n` entries over the patch, at four pixels, starting from `start`; `table` is
 * the run's look-up-table row (then *val points to its codes) or EP_NO_TABLE. */
static inline ep_acc4 ep_patch_run(const uint32_t *r, const uint8_t **nib, const int8_t **val, const int8_t *table,
                                   uint32_t n, int32_t bits, int32_t start) {
    const uint8_t *p = *nib;
    const int8_t *v = *val;
    int32_t a0 = start, a1 = start, a2 = start, a3 = start;
    uint32_t pending = 0;
    ep_acc4 acc;
#if defined(__ARM_FEATURE_DSP) && defined(__GNUC__)
    if (bits == 8 && table == EP_NO_TABLE) {  /* a constant in each expansion */
        EP_PATCH_RUN8(p, v, r, n, a0, a1, a2, a3);
        n = 0;
    }
#endif
    EP_WALK_RUN(p, n, bits, EP_PATCH_ENTRY, r, v, table, pending, a0, a1, a2, a3);
    *nib = p;
    *val = v;
    acc.a0 = a0;
    acc.a1 = a1;
    acc.a2 = a2;
    acc.a3 = a3;
    return acc;
}

/* Every output channel of one group (group `grp` with its `patch`, the channels prepared in `ch`): channel `co`
 * (the loop's variable) walks its run from `nib` and `v` (advanced past it) with entries of `bits` bits (a constant
 * in each expansion) and look-up-table row TABLE, an expression of `co` (or EP_NO_TABLE, so that the compiler
 * drops the codes' path); then STORE(co, acc) writes its outputs. */
#define EP_SPARSE_CHANNELS(co, out_c, patch, ch, nib, v, count, bits, TABLE, STORE)                        \
    do {                                                                                                 \
        for ((co) = 0; (co) < (out_c); (co)++) {                                                         \
            const ep_acc4 ep_a = ep_patch_run((patch), &(nib), &(v), (TABLE), (count), (bits), (ch)[co].bias); \
            STORE((co), ep_a);                                                                           \
        }                                                                                                \
    } while (0)
#define EP_STORE_ANY(co, acc) ep_channel_store(&grp, &ch[co], grp.out + (co), zp, lo, hi, (acc))
#define EP_STORE_FAST(co, acc)                                                     \
    do {                                                                           \
        if (ch[co].fast) {                                                         \
            ep_channel_store4_full(&ch[co], grp.out + (co), grp.out_step, (acc));  \
        } else {                                                                   \
            ep_channel_store_out((acc).a0, (acc).a1, (acc).a2, (acc).a3, &grp,    \
                                 &ch[co], grp.out + (co), q);                      \
        }                                                                          \
    } while (0)

/* The sparse convolution, with int8 values (`lut` 0) or look-up-table codes (`lut` 1, w->table set): two
 * entry points, so that a model without look-up tables links no code for them. A layer clamped
 * to all of int8 (no activation, or a ReLU onto zero point -128, as PyTorch exports and most of MLPerf Tiny's
 * files have) with 8-bit entries and counts takes its groups of four pixels through one expansion whose `fast`
 * channels requantize in ep_channel_store4_full. */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline int ep_conv_sparse_values(const ep_conv_dims *d, const int8_t *restrict in, const ep_sparse *w,
                                        const int32_t *restrict bias, const ep_requant *q, uint32_t *restrict patch,
                                        int32_t patch_words, int8_t *restrict out, int32_t lut) {
    const int32_t groups = ep_group_count(d), out_c = d->out_c;
    const int32_t zp = q->output_zero_point, lo = q->act_min, hi = q->act_max;
    const uint8_t *const count8 = w->count8;
    ep_channel *ch;
    int32_t g, co, fast;
    if (!ep_conv_dims_ok(d) || (lut && !w->table) ||
        patch_words < EP_SPARSE_SCRATCH_WORDS(d->k_h, d->k_w, d->in_c, d->out_c)) {
        return EP_ERROR_DIMS;
    }
    ch = ep_channels_at(patch, EP_PATCH_WORDS(d->k_h, d->k_w, d->in_c));
    ep_channels_prepare(bias, q, out_c, ch);
    fast = ep_requant_full_range(q) && !lut && w->bits == 8 && count8;
    for (g = 0; g < groups; g++) {
        ep_group grp;
        const uint8_t *nib = w->nibbles;
        const int8_t *v = lut ? (const int8_t *)(const void *)w->codes : w->values;
        ep_group_at(d, in, out, g, &grp);
        ep_fill_patch(d, &grp, patch);
        if (lut) {
            EP_SPARSE_CHANNELS(co, out_c, patch, ch, nib, v, EP_RUN_LENGTH(w, co), w->bits,
                               w->table + co * w->table_size, EP_STORE_ANY);
        } else if (w->bits == 4) {  /* compact entries: one variant, to keep the code small */
            EP_SPARSE_CHANNELS(co, out_c, patch, ch, nib, v, EP_RUN_LENGTH(w, co), 4, EP_NO_TABLE, EP_STORE_ANY);
        } else if (fast && grp.pixels == 4 && grp.out_step) {
            EP_SPARSE_CHANNELS(co, out_c, patch, ch, nib, v, (uint32_t)count8[co], 8, EP_NO_TABLE, EP_STORE_FAST);
        } else {
            EP_SPARSE_CHANNELS(co, out_c, patch, ch, nib, v, EP_RUN_LENGTH(w, co), 8, EP_NO_TABLE, EP_STORE_ANY);
        }
    }
    return EP_OK;
}
#undef EP_STORE_ANY
#undef EP_STORE_FAST

int ep_conv_sparse(const ep_conv_dims *d, const int8_t *in, const ep_sparse *w, const int32_t *bias,
                   const ep_requant *q, uint32_t *patch, int32_t patch_words, int8_t *out) {
    return ep_conv_sparse_values(d, in, w, bias, q, patch, patch_words, out, 0);
}

int ep_conv_sparse_lut(const ep_conv_dims *d, const int8_t *in, const ep_sparse *w, const int32_t *bias,
                       const ep_requant *q, uint32_t *patch, int32_t patch_words, int8_t *out) {
    return ep_conv_sparse_values(d, in, w, bias, q, patch, patch_words, out, 1);
}
