/* The depthwise int8 convolution, dense and sparse (VALID on an input padded already, bias folded; see
 * ep_kernels.h for the ep_sparse_dw taps), with any depth multiplier. No restrict here: it changes the
 * register allocation of the channel loops and costs instructions per output (measured). */
#include "ep_conv_group.h"

/* Four consecutive channels' outputs of one pixel with the clamp [-128, 127], every channel `fast`
 * (ep_conv_group.h): o[0] to o[3] from a0 to a3 and the prepared channels c[0] to c[3]. */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline void ep_dw_store4_full(const ep_channel *c, int8_t *o, int32_t a0, int32_t a1, int32_t a2, int32_t a3) {
#if defined(__ARM_FEATURE_DSP) && defined(__GNUC__)
/* channel k's multiplier at byte 20 k + 4 of c, its `fast` and nudge_zp at 20 k + 12 (ep_channel) */
#define EP_DW_OUTPUT(acc, k) \
    "ldr %[m], [%[c], #" #k "*20+4]\n\t"            \
    "ldrd %[sh], %[nz], [%[c], #" #k "*20+12]\n\t"  \
    EP_FAST_OUTPUT(acc, "[%[o], #" #k "]")
    uint32_t t, h, m, sh, nz;
    __asm__ volatile(EP_DW_OUTPUT("%[a0]", 0) EP_DW_OUTPUT("%[a1]", 1) EP_DW_OUTPUT("%[a2]", 2)
                     EP_DW_OUTPUT("%[a3]", 3)
                     : [t] "=&r"(t), [h] "=&r"(h), [m] "=&r"(m), [sh] "=&r"(sh), [nz] "=&r"(nz)
                     : [a0] "r"(a0), [a1] "r"(a1), [a2] "r"(a2), [a3] "r"(a3), [c] "r"(c), [o] "r"(o)
                     : "memory");
#undef EP_DW_OUTPUT
#else
    o[0] = ep_clamp_out(ep_fast_apply(a0, c[0].multiplier, c[0].nudge_zp, c[0].fast), -128, 127, 1);
    o[1] = ep_clamp_out(ep_fast_apply(a1, c[1].multiplier, c[1].nudge_zp, c[1].fast), -128, 127, 1);
    o[2] = ep_clamp_out(ep_fast_apply(a2, c[2].multiplier, c[2].nudge_zp, c[2].fast), -128, 127, 1);
    o[3] = ep_clamp_out(ep_fast_apply(a3, c[3].multiplier, c[3].nudge_zp, c[3].fast), -128, 127, 1);
#endif
}

/* Depth multiplier 1, channels ch to ch + 3 of every output pixel. A tap's four channels are one word of input and
 * one of weights; SXTB16 splits a word into its even channels (0 and 2, as 16-bit halves) and, rotated by 8, its
 * odd ones (1 and 3), and SMLABB / SMLATT accumulate the products of the bottom / top halves: four channels of a
 * pixel in four instructions. The weights are split once per four channels into `table`, three words per tap
 * (the tap's input offset, then its even and odd weight halves), and the four channels' requantization is
 * prepared once too. */
EP_OUT_OF_LINE static void ep_dw_m1_quad(const ep_conv_dims *d, const int8_t *in, const int8_t *w,
                                         const int32_t *bias, const ep_requant *q, uint32_t *table, int8_t *out,
                                         int32_t ch) {
    const int32_t c = d->in_c, taps = d->k_h * d->k_w, pix = d->stride_w * c;
    const int32_t zp = q->output_zero_point, lo = q->act_min, hi = q->act_max;
    ep_requant q4 = *q;
    ep_channel m[4];
    const uint32_t *end = table + 3 * taps;
    int32_t oy, ox, t, fast;
    q4.multiplier += ch;
    q4.shift += ch;
    ep_channels_prepare(bias + ch, &q4, 4, m);
    fast = ep_requant_full_range(q) && m[0].fast && m[1].fast && m[2].fast && m[3].fast;
    for (t = 0; t < taps; t++) {
        const uint32_t wv = ep_read32(w + t * c + ch);
        table[3 * t] = (uint32_t)(((t / d->k_w) * d->dil_h * d->in_w + (t % d->k_w) * d->dil_w) * c);
        table[3 * t + 1] = EP_SXTB16(wv);
        table[3 * t + 2] = EP_SXTB16_ODD(wv);
    }
    for (oy = 0; oy < d->out_h; oy++) {
        const int8_t *x = in + oy * d->stride_h * d->in_w * c + ch;
        int8_t *o = out + oy * d->out_w * c + ch;
        for (ox = d->out_w; ox > 0; ox--, x += pix, o += c) {
            const uint32_t *tp = table;
            int32_t a0 = m[0].bias, a1 = m[1].bias, a2 = m[2].bias, a3 = m[3].bias;
            do {
                const uint32_t xv = ep_read32(x + (int32_t)tp[0]);
                const uint32_t xe = EP_SXTB16(xv), xo = EP_SXTB16_ODD(xv);
                a0 = EP_SMLABB(xe, tp[1], a0);
                a2 = EP_SMLATT(xe, tp[1], a2);
                a1 = EP_SMLABB(xo, tp[2], a1);
                a3 = EP_SMLATT(xo, tp[2], a3);
                tp += 3;
            } while (tp != end);
            if (fast) {
                ep_dw_store4_full(m, o, a0, a1, a2, a3);
            } else {
                o[0] = ep_clamp_out(ep_channel_any(a0, &m[0], zp), lo, hi, 0);
                o[1] = ep_clamp_out(ep_channel_any(a1, &m[1], zp), lo, hi, 0);
                o[2] = ep_clamp_out(ep_channel_any(a2, &m[2], zp), lo, hi, 0);
                o[3] = ep_clamp_out(ep_channel_any(a3, &m[3], zp), lo, hi, 0);
            }
        }
    }
}

/* Any depth multiplier, output channels [from, out_c) of the pixel whose window starts at `base`. */
EP_OUT_OF_LINE static void ep_dw_channels(const ep_conv_dims *d, const int8_t *base, const int8_t *w,
                                          const int32_t *bias, const ep_requant *q, int8_t *o, int32_t from) {
    const ep_requant rq = *q;
    int32_t oc, ky, kx;
    for (oc = from; oc < d->out_c; oc++) {
        const int8_t *b = base + oc / d->depth_multiplier;
        int32_t acc = bias[oc];
        for (ky = 0; ky < d->k_h; ky++) {
            for (kx = 0; kx < d->k_w; kx++) {
                acc += b[(ky * d->dil_h * d->in_w + kx * d->dil_w) * d->in_c] * w[(ky * d->k_w + kx) * d->out_c + oc];
            }
        }
        o[oc] = EP_STORE(rq, oc, acc);
    }
}

int ep_depthwise_dense(const ep_conv_dims *d, const int8_t *in, const int8_t *w, const int32_t *bias,
                       const ep_requant *q, uint32_t *scratch, int32_t scratch_words, int8_t *out) {
    int32_t oy, ox, ch;
    if (!ep_conv_dims_ok(d) || d->depth_multiplier < 1 || d->out_c != d->in_c * d->depth_multiplier ||
        scratch_words < EP_DW_SCRATCH_WORDS(d->k_h, d->k_w)) {
        return EP_ERROR_DIMS;
    }
    {
        /* depth multiplier 1: four channels at a time, the rest (in_c % 4) one at a time; else one at a time */
        const int32_t c4 = d->depth_multiplier == 1 ? d->in_c / 4 * 4 : 0;
        for (ch = 0; ch < c4; ch += 4) {
            ep_dw_m1_quad(d, in, w, bias, q, scratch, out, ch);
        }
        if (c4 < d->out_c) {
            for (oy = 0; oy < d->out_h; oy++) {
                for (ox = 0; ox < d->out_w; ox++) {
                    ep_dw_channels(d, in + (oy * d->stride_h * d->in_w + ox * d->stride_w) * d->in_c, w, bias, q,
                                   out + (oy * d->out_w + ox) * d->out_c, c4);
                }
            }
        }
    }
    return EP_OK;
}

/* The most taps of a sparse depthwise filter (the uint8 tap index and the offsets table below). */
#define EP_MAX_TAPS 64

int ep_depthwise_sparse(const ep_conv_dims *d, const int8_t *in, const ep_sparse_dw *w,
                        const int32_t *bias, const ep_requant *q, int8_t *out) {
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
