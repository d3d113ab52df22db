/* Dense and sparse int8 convolution, depthwise convolution and fully connected kernels.
 * See ep_kernels.h for the weight formats; all inputs are padded already and biases folded. */
#include "ep_kernels.h"
#include "ep_requant.h"

#if defined(__ARM_FEATURE_DSP)
#include <arm_acle.h>
#endif

#define EP_QMULT(q, c) ((q)->multiplier[(q)->per_channel ? (c) : 0])
#define EP_QSHIFT(q, c) ((q)->shift[(q)->per_channel ? (c) : 0])
#define EP_STORE(q, c, acc) \
    ep_requantize((acc), EP_QMULT(q, c), EP_QSHIFT(q, c), (q)->output_zero_point, (q)->act_min, (q)->act_max)

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
           (d->out_w - 1) * d->stride_w + (d->k_w - 1) * d->dil_w < d->in_w;
}

/* Sum over one output channel's kernel window at `base`; `seg` is the window's row (k_w * in_c when dil_w is 1). */
static int32_t ep_window1(const ep_conv_dims *d, const int8_t *base, const int8_t *w, int32_t acc) {
    const int32_t row = d->in_w * d->in_c;
    int32_t ky, kx;
    for (ky = 0; ky < d->k_h; ky++) {
        const int8_t *r = base + ky * d->dil_h * row;
        if (d->dil_w == 1) {
            acc = ep_dot1(r, w, d->k_w * d->in_c, acc);
            w += d->k_w * d->in_c;
        } else {
            for (kx = 0; kx < d->k_w; kx++, w += d->in_c) {
                acc = ep_dot1(r + kx * d->dil_w * d->in_c, w, d->in_c, acc);
            }
        }
    }
    return acc;
}

static void ep_window2(const ep_conv_dims *d, const int8_t *base, const int8_t *w0, const int8_t *w1,
                       int32_t *a0, int32_t *a1) {
    const int32_t row = d->in_w * d->in_c;
    int32_t ky, kx;
    for (ky = 0; ky < d->k_h; ky++) {
        const int8_t *r = base + ky * d->dil_h * row;
        if (d->dil_w == 1) {
            ep_dot2(r, w0, w1, d->k_w * d->in_c, a0, a1);
            w0 += d->k_w * d->in_c;
            w1 += d->k_w * d->in_c;
        } else {
            for (kx = 0; kx < d->k_w; kx++, w0 += d->in_c, w1 += d->in_c) {
                ep_dot2(r + kx * d->dil_w * d->in_c, w0, w1, d->in_c, a0, a1);
            }
        }
    }
}

int ep_conv_dense(const ep_conv_dims *d, const int8_t *in, const int8_t *w, const int32_t *bias,
                  const ep_requant *q, int8_t *out) {
    const int32_t window = d->k_h * d->k_w * d->in_c;
    int32_t oy, ox, co;
    if (!ep_conv_dims_ok(d)) {
        return EP_ERROR_DIMS;
    }
    for (oy = 0; oy < d->out_h; oy++) {
        for (ox = 0; ox < d->out_w; ox++) {
            const int8_t *base = in + (oy * d->stride_h * d->in_w + ox * d->stride_w) * d->in_c;
            int8_t *o = out + (oy * d->out_w + ox) * d->out_c;
            for (co = 0; co + 1 < d->out_c; co += 2) {
                int32_t a0 = bias[co], a1 = bias[co + 1];
                ep_window2(d, base, w + co * window, w + (co + 1) * window, &a0, &a1);
                o[co] = EP_STORE(q, co, a0);
                o[co + 1] = EP_STORE(q, co + 1, a1);
            }
            if (co < d->out_c) {
                o[co] = EP_STORE(q, co, ep_window1(d, base, w + co * window, bias[co]));
            }
        }
    }
    return EP_OK;
}

/* Next 4-bit entry of a nibble stream (low nibble first). */
#define EP_NIBBLE(stream, k) (((stream)[(k) >> 1] >> (((k) & 1) << 2)) & 15u)

/* One output channel over `pixels` (1 or 4) output pixels `pix` bytes apart, starting at `base`.
 * Consumes the channel's segments from the nibble cursor *k and the value pointer *v. */
static void ep_sparse_channel(const ep_conv_dims *d, const ep_sparse_conv *w, const uint16_t *counts,
                              const int8_t *base, int32_t pix, int32_t pixels, uint32_t *k, const int8_t **v,
                              int32_t acc[4]) {
    const int32_t seg_step = d->dil_h * d->in_w * d->in_c;
    const uint8_t *nib = w->nibbles;
    const int8_t *val = *v;
    uint32_t kk = *k;
    int32_t a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
    int32_t ky;
    for (ky = 0; ky < d->k_h; ky++, base += seg_step) {
        const uint32_t end = kk + counts[ky];
        int32_t pos = -1;
        if (pixels == 4) {
            const int32_t p2 = 2 * pix, p3 = 3 * pix;
            for (; kk < end; kk++) {
                const uint32_t g = EP_NIBBLE(nib, kk);
                int32_t wv;
                if (g == 0) {
                    pos += 15;
                    continue;
                }
                pos += (int32_t)g;
                wv = *val++;
                a0 += base[pos] * wv;
                a1 += base[pos + pix] * wv;
                a2 += base[pos + p2] * wv;
                a3 += base[pos + p3] * wv;
            }
        } else {
            for (; kk < end; kk++) {
                const uint32_t g = EP_NIBBLE(nib, kk);
                if (g == 0) {
                    pos += 15;
                    continue;
                }
                pos += (int32_t)g;
                a0 += base[pos] * *val++;
            }
        }
    }
    acc[0] = a0;
    acc[1] = a1;
    acc[2] = a2;
    acc[3] = a3;
    *k = kk;
    *v = val;
}

int ep_conv_sparse(const ep_conv_dims *d, const int8_t *in, const ep_sparse_conv *w, const int32_t *bias,
                   const ep_requant *q, int8_t *out) {
    const int32_t pix = d->stride_w * d->in_c;
    int32_t oy, ox, co, j;
    if (!ep_conv_dims_ok(d) || d->dil_w != 1) {
        return EP_ERROR_DIMS;
    }
    for (oy = 0; oy < d->out_h; oy++) {
        for (ox = 0; ox < d->out_w;) {
            const int32_t pixels = ox + 4 <= d->out_w ? 4 : 1;
            const int8_t *base = in + (oy * d->stride_h * d->in_w + ox * d->stride_w) * d->in_c;
            int8_t *o = out + (oy * d->out_w + ox) * d->out_c;
            uint32_t k = 0;
            const int8_t *v = w->values;
            for (co = 0; co < d->out_c; co++) {
                int32_t acc[4];
                acc[0] = acc[1] = acc[2] = acc[3] = bias[co];
                ep_sparse_channel(d, w, w->seg_count + co * d->k_h, base, pix, pixels, &k, &v, acc);
                for (j = 0; j < pixels; j++) {
                    o[j * d->out_c + co] = EP_STORE(q, co, acc[j]);
                }
            }
            ox += pixels;
        }
    }
    return EP_OK;
}

int ep_depthwise_dense(const ep_conv_dims *d, const int8_t *in, const int8_t *w, const int32_t *bias,
                       const ep_requant *q, int8_t *out) {
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
                    o[oc] = EP_STORE(q, oc, acc);
                }
            }
        }
    }
    return EP_OK;
}

#define EP_MAX_TAPS 64

int ep_depthwise_sparse(const ep_conv_dims *d, const int8_t *in, const ep_sparse_dw *w, const int32_t *bias,
                        const ep_requant *q, int8_t *out) {
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
                o[oc] = EP_STORE(q, oc, acc);
            }
        }
    }
    return EP_OK;
}

int ep_fc_dense(int32_t in_n, int32_t out_n, const int8_t *in, const int8_t *w, const int32_t *bias,
                const ep_requant *q, int8_t *out) {
    int32_t o;
    for (o = 0; o + 1 < out_n; o += 2) {
        int32_t a0 = bias[o], a1 = bias[o + 1];
        ep_dot2(in, w + o * in_n, w + (o + 1) * in_n, in_n, &a0, &a1);
        out[o] = EP_STORE(q, o, a0);
        out[o + 1] = EP_STORE(q, o + 1, a1);
    }
    if (o < out_n) {
        out[o] = EP_STORE(q, o, ep_dot1(in, w + o * in_n, in_n, bias[o]));
    }
    return EP_OK;
}

int ep_fc_sparse(int32_t in_n, int32_t out_n, const int8_t *in, const ep_sparse_fc *w, const int32_t *bias,
                 const ep_requant *q, int8_t *out) {
    const uint8_t *nib = w->nibbles;
    const int8_t *v = w->values;
    uint32_t k = 0;
    int32_t o;
    (void)in_n;
    for (o = 0; o < out_n; o++) {
        const uint32_t end = k + w->count[o];
        int32_t pos = -1;
        int32_t acc = bias[o];
        for (; k < end; k++) {
            const uint32_t g = EP_NIBBLE(nib, k);
            if (g == 0) {
                pos += 15;
                continue;
            }
            pos += (int32_t)g;
            acc += in[pos] * *v++;
        }
        out[o] = EP_STORE(q, o, acc);
    }
    return EP_OK;
}
