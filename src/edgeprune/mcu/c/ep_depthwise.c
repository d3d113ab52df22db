/* The depthwise int8 convolution, dense and sparse (VALID on an input padded already, bias folded; see
 * ep_kernels.h for the ep_sparse_dw taps), with any depth multiplier. No restrict here: it changes the
 * register allocation of the channel loops and costs instructions per output (measured). */
#include "ep_conv_group.h"

int ep_depthwise_dense(const ep_conv_dims *d, const int8_t *in, const int8_t *w,
                       const int32_t *bias, const ep_requant *q, int8_t *out) {
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
