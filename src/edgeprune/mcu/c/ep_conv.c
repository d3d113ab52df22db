/* Dense and sparse int8 convolution, depthwise convolution and fully connected kernels.
 * See ep_kernels.h for the weight formats; all inputs are padded already and biases folded. */
#include "ep_kernels.h"
#include "ep_requant.h"

#if defined(__ARM_FEATURE_DSP)
#include <arm_acle.h>
#endif

/* Output channel c's accumulator requantized; `q` is a kernel's local copy of its ep_requant, so that
 * the compiler need not reload it after every int8 store. */
#define EP_STORE(q, c, acc) \
    ep_requantize((acc), (q).multiplier[c], (q).shift[c], (q).output_zero_point, (q).act_min, (q).act_max)

/* a0 += x . w0 and a1 += x . w1 over n int8 values (two output channels share each input load). */
static inline void ep_dot2(const int8_t *x, const int8_t *w0, const int8_t *w1, int32_t n, int32_t *a0, int32_t *a1) {
    int32_t s0 = *a0, s1 = *a1;
#if defined(__ARM_FEATURE_DSP)
    for (; n >= 4; n -= 4) {
        const uint32_t xv = ep_read32(x), v0 = ep_read32(w0), v1 = ep_read32(w1);
        const int32_t xe = __sxtb16(xv), xo = __sxtb16((xv >> 8) | (xv << 24));
        s0 = __smlad(xe, __sxtb16(v0), s0);
        s0 = __smlad(xo, __sxtb16((v0 >> 8) | (v0 << 24)), s0);
        s1 = __smlad(xe, __sxtb16(v1), s1);
        s1 = __smlad(xo, __sxtb16((v1 >> 8) | (v1 << 24)), s1);
        x += 4;
        w0 += 4;
        w1 += 4;
    }
#endif
    for (; n > 0; n--) {
        const int32_t xv = *x++;
        s0 += xv * *w0++;
        s1 += xv * *w1++;
    }
    *a0 = s0;
    *a1 = s1;
}

/* acc += x . w over n int8 values. */
static inline int32_t ep_dot1(const int8_t *x, const int8_t *w, int32_t n, int32_t acc) {
#if defined(__ARM_FEATURE_DSP)
    for (; n >= 4; n -= 4) {
        const uint32_t xv = ep_read32(x), v = ep_read32(w);
        acc = __smlad(__sxtb16(xv), __sxtb16(v), acc);
        acc = __smlad(__sxtb16((xv >> 8) | (xv << 24)), __sxtb16((v >> 8) | (v << 24)), acc);
        x += 4;
        w += 4;
    }
#endif
    for (; n > 0; n--) {
        acc += *x++ * *w++;
    }
    return acc;
}

static int ep_conv_dims_ok(const ep_conv_dims *d) {
    return d->out_h > 0 && d->out_w > 0 && d->stride_h > 0 && d->stride_w > 0 && d->dil_h > 0 && d->dil_w > 0 &&
           (d->out_h - 1) * d->stride_h + (d->k_h - 1) * d->dil_h < d->in_h &&
           (d->out_w - 1) * d->stride_w + (d->k_w - 1) * d->dil_w < d->in_w &&
           (!d->pool || (d->out_h >= 2 && d->out_w >= 2));
}

/* The output pixels computed together: with a fused 2x2 max pool a group is one pooling window (its
 * four pixels' largest accumulator is requantized once, which equals pooling the requantized outputs
 * since requantization never decreases), else four consecutive pixels of a row (fewer at its end). */
typedef struct {
    const int8_t *base;  /* the input window of the group's first pixel */
    int32_t off[4];      /* input offsets of the group's pixels from `base` */
    int32_t pixels;      /* 4, or fewer at the end of a row */
    int8_t *out;         /* where the group's first output channel goes */
    int32_t out_step;    /* output bytes from one pixel to the next (0 when pooled: one output) */
} ep_group;

static int32_t ep_group_count(const ep_conv_dims *d) {
    if (d->pool) {
        return (d->out_h / 2) * (d->out_w / 2);
    }
    return d->out_h * ((d->out_w + 3) / 4);
}

static void ep_group_at(const ep_conv_dims *d, const int8_t *in, int8_t *out, int32_t g, ep_group *grp) {
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
        const int32_t per_row = (d->out_w + 3) / 4;
        oy = g / per_row;
        ox = 4 * (g % per_row);
        grp->pixels = d->out_w - ox < 4 ? d->out_w - ox : 4;
        for (j = 0; j < 4; j++) {  /* a short group repeats its first pixel, computed but not stored */
            grp->off[j] = j < grp->pixels ? j * pix : 0;
        }
        grp->out = out + (oy * d->out_w + ox) * d->out_c;
        grp->out_step = d->out_c;
    }
    grp->base = in + (oy * d->stride_h * d->in_w + ox * d->stride_w) * d->in_c;
}

/* Four pixels' accumulators. */
typedef struct {
    int32_t a0, a1, a2, a3;
} ep_acc4;

/* Requantize output channel `co` of a group from its pixels' accumulators (the channel's multiplier
 * prepared once for the four). Inlined into each channel loop, so the accumulators stay in registers. */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline void ep_group_store(const ep_group *grp, const ep_requant *q, int32_t co, const ep_acc4 a) {
    const ep_mq m = ep_mq_make(q->multiplier[co], q->shift[co]);
    const int32_t zp = q->output_zero_point, lo = q->act_min, hi = q->act_max, step = grp->out_step;
    int8_t *o = grp->out + co;
    if (step == 0) {
        const int32_t m01 = a.a0 > a.a1 ? a.a0 : a.a1, m23 = a.a2 > a.a3 ? a.a2 : a.a3;
        o[0] = ep_requantize_mq(m01 > m23 ? m01 : m23, m, zp, lo, hi);
        return;
    }
    o[0] = ep_requantize_mq(a.a0, m, zp, lo, hi);
    if (grp->pixels == 4) {
        o[step] = ep_requantize_mq(a.a1, m, zp, lo, hi);
        o[2 * step] = ep_requantize_mq(a.a2, m, zp, lo, hi);
        o[3 * step] = ep_requantize_mq(a.a3, m, zp, lo, hi);
        return;
    }
    if (grp->pixels > 1) {
        o[step] = ep_requantize_mq(a.a1, m, zp, lo, hi);
    }
    if (grp->pixels > 2) {
        o[2 * step] = ep_requantize_mq(a.a2, m, zp, lo, hi);
    }
}

/* SXTB16 and SMLAD: bytes 0 and 2 of x sign-extended into 16-bit halves; acc + the products of the
 * halves of a and b. The portable versions compute the same. */
#if defined(__ARM_FEATURE_DSP)
#define EP_SXTB16(x) ((uint32_t)__sxtb16(x))
#define EP_SMLAD(a, b, acc) __smlad((int32_t)(a), (int32_t)(b), (acc))
#else
#define EP_SXTB16(x) ep_sxtb16_portable(x)
static inline uint32_t ep_sxtb16_portable(uint32_t x) {
    return (uint16_t)(int16_t)(int8_t)(uint8_t)x | (uint32_t)(uint16_t)(int16_t)(int8_t)(uint8_t)(x >> 16) << 16;
}
static inline int32_t ep_smlad_portable(uint32_t a, uint32_t b, int32_t acc) {
    return acc + (int16_t)(uint16_t)a * (int16_t)(uint16_t)b + (int16_t)(uint16_t)(a >> 16) * (int16_t)(uint16_t)(b >> 16);
}
#define EP_SMLAD(a, b, acc) ep_smlad_portable((a), (b), (acc))
#endif

/* Copy a group's four input windows for the dense kernel: each pixel's window in the filter's order
 * (ky, kx, ci), zero-padded to `padded` bytes, then per four positions and pixel two words: positions
 * 0 and 2, then 1 and 3, as 16-bit halves (the layout SMLAD pairs with SXTB16 of four weights). */
static void ep_fill_pairs(const ep_conv_dims *d, const ep_group *grp, int32_t padded, uint32_t *scratch) {
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

int ep_conv_dense(const ep_conv_dims *d, const int8_t *in, const int8_t *w, const int32_t *bias,
                  const ep_requant *q, uint32_t *scratch, int8_t *out) {
    const ep_requant rq = *q;
    const int32_t padded = EP_DENSE_PADDED(d);
    const int32_t groups = ep_group_count(d);
    int32_t g, co, b;
    if (!ep_conv_dims_ok(d)) {
        return EP_ERROR_DIMS;
    }
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
            ep_group_store(&grp, &rq, co, acc);
        }
    }
    return EP_OK;
}

/* acc + (byte k of x, sign-extended) * w for the four bytes of a patch word: with the DSP, SXTB16 splits
 * the word into bytes 0 and 2 and (rotated) 1 and 3 as 16-bit halves, and SMLABB / SMLATB multiply them. */
#if defined(__ARM_FEATURE_DSP)
#define EP_MAC_PATCH(x, wv, a0, a1, a2, a3)                              \
    do {                                                                 \
        const int32_t even = __sxtb16(x), odd = __sxtb16(((x) >> 8) | ((x) << 24)); \
        a0 = __smlabb(even, (wv), a0);                                   \
        a2 = __smlatb(even, (wv), a2);                                   \
        a1 = __smlabb(odd, (wv), a1);                                    \
        a3 = __smlatb(odd, (wv), a3);                                    \
    } while (0)
#else
#define EP_MAC_PATCH(x, wv, a0, a1, a2, a3)       \
    do {                                          \
        a0 += (int8_t)(uint8_t)(x) * (wv);        \
        a1 += (int8_t)(uint8_t)((x) >> 8) * (wv); \
        a2 += (int8_t)(uint8_t)((x) >> 16) * (wv);\
        a3 += (int8_t)(uint8_t)((x) >> 24) * (wv);\
    } while (0)
#endif

/* Copy a group's four input windows into `patch`: per window position (the filter's own order, ky, kx,
 * ci) one word holding the four pixels' int8 values, pixel 0 in the low byte. */
static void ep_fill_patch(const ep_conv_dims *d, const ep_group *grp, uint32_t *patch) {
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

/* Walk one run of `n` entries from *nib, running ENTRY(g, escape) for each; `bits` is 4 (escape 15) or
 * 8 (no escape: the compiler drops the test against 256). *nib ends on the next run's first byte. */
#define EP_WALK_RUN(ENTRY, nib, n, bits)          \
    if ((bits) == 4) {                            \
        for (; (n) >= 2; (n) -= 2) {              \
            const uint32_t pair = *(nib)++;       \
            ENTRY(pair & 15u, 15u)                \
            ENTRY(pair >> 4, 15u)                 \
        }                                         \
        if (n) {                                  \
            const uint32_t last = *(nib)++ & 15u; \
            ENTRY(last, 15u)                      \
        }                                         \
    } else {                                      \
        for (; (n) > 0; (n)--) {                  \
            const uint32_t entry = *(nib)++;      \
            ENTRY(entry, 256u)                    \
        }                                         \
    }

/* The number of entries of run `o`: uint8 or uint16 counts. */
#define EP_RUN_LENGTH(w, o) ((w)->count8 ? (uint32_t)(w)->count8[o] : (uint32_t)(w)->count[o])

/* The next value of a run: int8 from *v, or with a look-up table (`table` not NULL) the table's value for
 * the next 4-bit code, a code byte read every second value (`pending` keeps its high nibble, plus 16). */
#define EP_NEXT_VALUE(wv, v, table, pending)               \
    if ((table) == 0) {                                     \
        wv = *(v)++;                                        \
    } else if (pending) {                                   \
        wv = (table)[(pending) & 15u];                      \
        pending = 0;                                        \
    } else {                                                \
        const uint32_t byte = *(const uint8_t *)(v)++;      \
        wv = (table)[byte & 15u];                           \
        pending = (byte >> 4) | 16u;                        \
    }

/* One output channel's run over the patch, at four pixels, starting from `acc`; `table` is the run's
 * look-up-table row (then *val points to its codes) or a constant 0. */
static inline ep_acc4 ep_patch_run(const uint32_t *r, const uint8_t **nib, const int8_t **val, const int8_t *table,
                                   uint32_t n, int32_t bits, int32_t start) {
    const uint8_t *p = *nib;
    const int8_t *v = *val;
    int32_t a0 = start, a1 = start, a2 = start, a3 = start;
    uint32_t pending = 0;
    ep_acc4 acc;
#define EP_PATCH_ENTRY(g, escape)                  \
    r += (g);                                      \
    if ((g) != (escape)) {                         \
        const uint32_t x = *r++;                   \
        int32_t wv;                                \
        EP_NEXT_VALUE(wv, v, table, pending)       \
        EP_MAC_PATCH(x, wv, a0, a1, a2, a3);       \
    }
    EP_WALK_RUN(EP_PATCH_ENTRY, p, n, bits)
#undef EP_PATCH_ENTRY
    *nib = p;
    *val = v;
    acc.a0 = a0;
    acc.a1 = a1;
    acc.a2 = a2;
    acc.a3 = a3;
    return acc;
}

/* One output row's run over an int8 input vector (fully connected); `table` as for ep_patch_run. */
static inline int32_t ep_vector_run(const int8_t *r, const uint8_t **nib, const int8_t **val, const int8_t *table,
                                    uint32_t n, int32_t bits, int32_t acc) {
    const uint8_t *p = *nib;
    const int8_t *v = *val;
    uint32_t pending = 0;
#define EP_VECTOR_ENTRY(g, escape)              \
    r += (g);                                   \
    if ((g) != (escape)) {                      \
        int32_t wv;                             \
        EP_NEXT_VALUE(wv, v, table, pending)    \
        acc += *r++ * wv;                       \
    }
    EP_WALK_RUN(EP_VECTOR_ENTRY, p, n, bits)
#undef EP_VECTOR_ENTRY
    *nib = p;
    *val = v;
    return acc;
}

/* The output channels of one group, with the entry width `bits` a constant in each expansion and `TABLE`
 * the channel's look-up-table row (or EP_NO_TABLE, so that the compiler drops the codes' path); a pooled
 * group keeps the largest of its four accumulators. */
#define EP_NO_TABLE ((const int8_t *)0)
#define EP_SPARSE_CHANNELS(bits, TABLE)                                                               \
    for (co = 0; co < d->out_c; co++) {                                                              \
        const ep_acc4 a = ep_patch_run(patch, &nib, &v, (TABLE), EP_RUN_LENGTH(w, co), (bits), bias[co]); \
        ep_group_store(&grp, &rq, co, a);                                                            \
    }

/* The sparse convolution, with int8 values (`lut` 0) or look-up-table codes (`lut` 1, w->table set): two
 * entry points, so that a model without look-up tables links no code for them. */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline int ep_conv_sparse_values(const ep_conv_dims *d, const int8_t *in, const ep_sparse *w,
                                        const int32_t *bias, const ep_requant *q, uint32_t *patch, int8_t *out,
                                        int32_t lut) {
    const ep_requant rq = *q;
    const int32_t groups = ep_group_count(d);
    int32_t g, co;
    if (!ep_conv_dims_ok(d) || (lut && !w->table)) {
        return EP_ERROR_DIMS;
    }
    for (g = 0; g < groups; g++) {
        ep_group grp;
        const uint8_t *nib = w->nibbles;
        const int8_t *v = lut ? (const int8_t *)(const void *)w->codes : w->values;
        ep_group_at(d, in, out, g, &grp);
        ep_fill_patch(d, &grp, patch);
        if (lut) {
            EP_SPARSE_CHANNELS(w->bits, w->table + co * w->table_size)
        } else if (w->bits == 4) {
            EP_SPARSE_CHANNELS(4, EP_NO_TABLE)
        } else {
            EP_SPARSE_CHANNELS(8, EP_NO_TABLE)
        }
    }
    return EP_OK;
}

int ep_conv_sparse(const ep_conv_dims *d, const int8_t *in, const ep_sparse *w, const int32_t *bias,
                   const ep_requant *q, uint32_t *patch, int8_t *out) {
    return ep_conv_sparse_values(d, in, w, bias, q, patch, out, 0);
}

int ep_conv_sparse_lut(const ep_conv_dims *d, const int8_t *in, const ep_sparse *w, const int32_t *bias,
                       const ep_requant *q, uint32_t *patch, int8_t *out) {
    return ep_conv_sparse_values(d, in, w, bias, q, patch, out, 1);
}
#undef EP_SPARSE_CHANNELS

int ep_depthwise_dense(const ep_conv_dims *d, const int8_t *in, const int8_t *w, const int32_t *bias,
                       const ep_requant *q, int8_t *out) {
    const ep_requant rq = *q;
    int32_t oy, ox, ic, m, ky, kx;
    if (!ep_conv_dims_ok(d) || d->depth_multiplier < 1 || d->out_c != d->in_c * d->depth_multiplier) {
        return EP_ERROR_DIMS;
    }
    for (oy = 0; oy < d->out_h; oy++) {
        for (ox = 0; ox < d->out_w; ox++) {
            const int8_t *base = in + (oy * d->stride_h * d->in_w + ox * d->stride_w) * d->in_c;
            int8_t *o = out + (oy * d->out_w + ox) * d->out_c;
            for (ic = 0; ic < d->in_c; ic++) {
                for (m = 0; m < d->depth_multiplier; m++) {
                    const int32_t oc = ic * d->depth_multiplier + m;
                    int32_t acc = bias[oc];
                    for (ky = 0; ky < d->k_h; ky++) {
                        for (kx = 0; kx < d->k_w; kx++) {
                            acc += base[(ky * d->dil_h * d->in_w + kx * d->dil_w) * d->in_c + ic] *
                                   w[(ky * d->k_w + kx) * d->out_c + oc];
                        }
                    }
                    o[oc] = EP_STORE(rq, oc, acc);
                }
            }
        }
    }
    return EP_OK;
}

#define EP_MAX_TAPS 64

int ep_depthwise_sparse(const ep_conv_dims *d, const int8_t *in, const ep_sparse_dw *w, const int32_t *bias,
                        const ep_requant *q, int8_t *out) {
    const ep_requant rq = *q;
    int32_t tap_offset[EP_MAX_TAPS];
    int32_t oy, ox, oc, t;
    if (!ep_conv_dims_ok(d) || d->depth_multiplier < 1 || d->out_c != d->in_c * d->depth_multiplier ||
        d->k_h * d->k_w > EP_MAX_TAPS) {
        return EP_ERROR_DIMS;
    }
    for (t = 0; t < d->k_h * d->k_w; t++) {
        tap_offset[t] = ((t / d->k_w) * d->dil_h * d->in_w + (t % d->k_w) * d->dil_w) * d->in_c;
    }
    for (oy = 0; oy < d->out_h; oy++) {
        for (ox = 0; ox < d->out_w; ox++) {
            const int8_t *base = in + (oy * d->stride_h * d->in_w + ox * d->stride_w) * d->in_c;
            int8_t *o = out + (oy * d->out_w + ox) * d->out_c;
            const uint8_t *tap = w->taps;
            const int8_t *v = w->values;
            for (oc = 0; oc < d->out_c; oc++) {
                const int8_t *b = base + oc / d->depth_multiplier;
                int32_t acc = bias[oc];
                for (t = w->count[oc]; t > 0; t--) {
                    acc += b[tap_offset[*tap++]] * *v++;
                }
                o[oc] = EP_STORE(rq, oc, acc);
            }
        }
    }
    return EP_OK;
}

int ep_fc_dense(int32_t in_n, int32_t out_n, const int8_t *in, const int8_t *w, const int32_t *bias,
                const ep_requant *q, int8_t *out) {
    const ep_requant rq = *q;
    int32_t o;
    for (o = 0; o + 1 < out_n; o += 2) {
        int32_t a0 = bias[o], a1 = bias[o + 1];
        ep_dot2(in, w + o * in_n, w + (o + 1) * in_n, in_n, &a0, &a1);
        out[o] = EP_STORE(rq, o, a0);
        out[o + 1] = EP_STORE(rq, o + 1, a1);
    }
    if (o < out_n) {
        out[o] = EP_STORE(rq, o, ep_dot1(in, w + o * in_n, in_n, bias[o]));
    }
    return EP_OK;
}

/* The sparse fully connected layer, int8 values or look-up-table codes (as ep_conv_sparse_values). */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline int ep_fc_sparse_values(int32_t out_n, const int8_t *in, const ep_sparse *w, const int32_t *bias,
                                      const ep_requant *q, int8_t *out, int32_t lut) {
    const ep_requant rq = *q;
    const uint8_t *nib = w->nibbles;
    const int8_t *v = lut ? (const int8_t *)(const void *)w->codes : w->values;
    const int32_t bits = w->bits;
    int32_t o;
    if (lut && !w->table) {
        return EP_ERROR_DIMS;
    }
    for (o = 0; o < out_n; o++) {
        const int8_t *table = lut ? w->table + o * w->table_size : EP_NO_TABLE;
        const int32_t acc = ep_vector_run(in, &nib, &v, table, EP_RUN_LENGTH(w, o), bits, bias[o]);
        out[o] = EP_STORE(rq, o, acc);
    }
    return EP_OK;
}

int ep_fc_sparse(int32_t in_n, int32_t out_n, const int8_t *in, const ep_sparse *w, const int32_t *bias,
                 const ep_requant *q, int8_t *out) {
    (void)in_n;
    return ep_fc_sparse_values(out_n, in, w, bias, q, out, 0);
}

int ep_fc_sparse_lut(int32_t in_n, int32_t out_n, const int8_t *in, const ep_sparse *w, const int32_t *bias,
                     const ep_requant *q, int8_t *out) {
    (void)in_n;
    return ep_fc_sparse_values(out_n, in, w, bias, q, out, 1);
}
