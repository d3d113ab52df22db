/* The fully connected int8 layer, dense and sparse (bias folded; see ep_kernels.h for the ep_sparse format).
 * No restrict here: it changes nothing that matters and costs instructions in the sparse loops (measured). */
#include "ep_conv_group.h"
#include "ep_sparse_runs.h"

#if defined(__ARM_FEATURE_DSP)
#include <arm_acle.h>
#endif

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

/* acc + x . w over n int8 values. */
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

/* a[r] += x . w_r over n int8 values for four rows stored interleaved (EP_FC_QUADS in ep_kernels.h): per four
 * inputs the four rows' four weights one after the other, then each row's n % 4 last weights. Each input word
 * is loaded and split into its even and odd 16-bit halves once for the four rows; one weight pointer walks
 * all four (fewer live registers than four row pointers: no spill in the loop). */
static inline void ep_dot4(const int8_t *x, const int8_t *w, int32_t n, int32_t a[4]) {
    int32_t s0 = a[0], s1 = a[1], s2 = a[2], s3 = a[3];
    const int8_t *end = x + (n & ~3);
    const int32_t tail = n & 3;
    int32_t t;
#if defined(__ARM_FEATURE_DSP)
    while (x != end) {
        const uint32_t xv = ep_read32(x), xe = EP_SXTB16(xv), xo = EP_SXTB16_ODD(xv);
        uint32_t v;
        v = ep_read32(w);
        s0 = EP_SMLAD(xe, EP_SXTB16(v), s0);
        s0 = EP_SMLAD(xo, EP_SXTB16_ODD(v), s0);
        v = ep_read32(w + 4);
        s1 = EP_SMLAD(xe, EP_SXTB16(v), s1);
        s1 = EP_SMLAD(xo, EP_SXTB16_ODD(v), s1);
        v = ep_read32(w + 8);
        s2 = EP_SMLAD(xe, EP_SXTB16(v), s2);
        s2 = EP_SMLAD(xo, EP_SXTB16_ODD(v), s2);
        v = ep_read32(w + 12);
        s3 = EP_SMLAD(xe, EP_SXTB16(v), s3);
        s3 = EP_SMLAD(xo, EP_SXTB16_ODD(v), s3);
        x += 4;
        w += 16;
    }
#else
    while (x != end) {
        for (t = 0; t < 4; t++) {
            const int32_t xv = x[t];
            s0 += xv * w[t];
            s1 += xv * w[4 + t];
            s2 += xv * w[8 + t];
            s3 += xv * w[12 + t];
        }
        x += 4;
        w += 16;
    }
#endif
    for (t = 0; t < tail; t++) {
        const int32_t xv = x[t];
        s0 += xv * w[t];
        s1 += xv * w[tail + t];
        s2 += xv * w[2 * tail + t];
        s3 += xv * w[3 * tail + t];
    }
    a[0] = s0;
    a[1] = s1;
    a[2] = s2;
    a[3] = s3;
}

/* Four output rows at a time (ep_dot4), then the last one to three rows two and one at a time. */
int ep_fc_dense(int32_t in_n, int32_t out_n, const int8_t *in, const int8_t *w,
                const int32_t *bias, const ep_requant *q, int8_t *out) {
    const ep_requant rq = *q;
    int32_t o;
    for (o = 0; o + 3 < out_n; o += 4) {
        int32_t a[4];
        a[0] = bias[o];
        a[1] = bias[o + 1];
        a[2] = bias[o + 2];
        a[3] = bias[o + 3];
        ep_dot4(in, w + o * in_n, in_n, a);
        out[o] = EP_STORE(rq, o, a[0]);
        out[o + 1] = EP_STORE(rq, o + 1, a[1]);
        out[o + 2] = EP_STORE(rq, o + 2, a[2]);
        out[o + 3] = EP_STORE(rq, o + 3, a[3]);
    }
    for (; o + 1 < out_n; o += 2) {
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

/* One entry of a run over the input vector: move the cursor `r` by g; unless g is the escape, multiply the
 * input there by the run's next value into acc and step on. */
#define EP_VECTOR_ENTRY(g, escape, r, v, table, pending, acc) \
    do {                                                      \
        (r) += (g);                                           \
        if ((g) != (escape)) {                                \
            int32_t ep_wv;                                    \
            EP_NEXT_VALUE(ep_wv, v, table, pending);          \
            (acc) += *(r)++ * ep_wv;                          \
        }                                                     \
    } while (0)

/* One output row's run of `n` entries over the int8 input vector `r`, from `acc`; `table` is the run's
 * look-up-table row (then *val points to its codes) or EP_NO_TABLE. */
static inline int32_t ep_vector_run(const int8_t *r, const uint8_t **nib, const int8_t **val, const int8_t *table,
                                    uint32_t n, int32_t bits, int32_t acc) {
    const uint8_t *p = *nib;
    const int8_t *v = *val;
    uint32_t pending = 0;
    EP_WALK_RUN(p, n, bits, EP_VECTOR_ENTRY, r, v, table, pending, acc);
    *nib = p;
    *val = v;
    return acc;
}

/* The sparse fully connected layer, int8 values (`lut` 0) or look-up-table codes (`lut` 1, w->table set). */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline int ep_fc_sparse_values(int32_t out_n, const int8_t *in, const ep_sparse *w,
                                      const int32_t *bias, const ep_requant *q, int8_t *out,
                                      int32_t lut) {
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
