/* The int8 kernels besides convolution: add, max/average pooling, pad, transpose, relu, clamp, softmax. */
#include "ep_kernels.h"
#include "ep_requant.h"

int32_t ep_multiply_by_quantized_multiplier(int32_t x, int32_t multiplier, int32_t shift) {
    return ep_mbqm(x, multiplier, shift);
}

static int32_t ep_clamp32(int32_t v, int32_t lo, int32_t hi) {
    return v < lo ? lo : (v > hi ? hi : v);
}

/* Each input's term of the sum depends on its int8 value alone: a table of the 256 terms per input,
 * computed once per call into `tables` (EP_ADD_TABLE_WORDS words), leaves two loads, one
 * requantization and the clamp per element. The terms are stored shifted by the output multiplier's
 * left shift (a sum of shifted terms is the shifted sum, modulo 2^32 as TFLite's int32 shift). */
#define EP_ADD_LOOP(n, a, b, ta, tb, mo, zo, lo, hi, out)                                  \
    for (i = 0; i < (n); i++) {                                                            \
        (out)[i] = ep_requantize_mq((int32_t)((ta)[(a)[i]] + (tb)[(b)[i]]), (mo), (zo), (lo), (hi)); \
    }

int ep_add(int32_t n, const int8_t *a, const int8_t *b, const ep_add_params *p, uint32_t *tables, int8_t *out) {
    uint32_t *ta = tables + 128, *tb = ta + 256;
    const ep_mq m1 = ep_mq_make(p->input1_multiplier, p->input1_shift);
    const ep_mq m2 = ep_mq_make(p->input2_multiplier, p->input2_shift);
    ep_mq mo = ep_mq_make(p->output_multiplier, p->output_shift);
    const int32_t zo = p->output_offset, lo = p->act_min, hi = p->act_max;
    int32_t i;
    for (i = -128; i < 128; i++) {
        ta[i] = (uint32_t)ep_mq_apply((int32_t)((uint32_t)(p->input1_offset + i) << p->left_shift), m1) << mo.left;
        tb[i] = (uint32_t)ep_mq_apply((int32_t)((uint32_t)(p->input2_offset + i) << p->left_shift), m2) << mo.left;
    }
    mo.left = 0;
    if (mo.right) {  /* the same loop twice, so that each knows which rounding ep_mq_apply takes */
        EP_ADD_LOOP(n, a, b, ta, tb, mo, zo, lo, hi, out);
    } else {
        EP_ADD_LOOP(n, a, b, ta, tb, mo, zo, lo, hi, out);
    }
    return EP_OK;
}

/* The window of output (oy, ox), clipped to the input: rows [*y0, *y1), columns [*x0, *x1) relative to its origin. */
static void ep_pool_window(const ep_pool_dims *d, int32_t oy, int32_t ox, int32_t *y0, int32_t *y1, int32_t *x0,
                           int32_t *x1) {
    const int32_t iy = oy * d->stride_h - d->pad_h, ix = ox * d->stride_w - d->pad_w;
    *y0 = iy < 0 ? -iy : 0;
    *y1 = d->in_h - iy < d->k_h ? d->in_h - iy : d->k_h;
    *x0 = ix < 0 ? -ix : 0;
    *x1 = d->in_w - ix < d->k_w ? d->in_w - ix : d->k_w;
}

int ep_max_pool(const ep_pool_dims *d, const int8_t *in, int8_t *out) {
    int32_t oy, ox, c, y, x, y0, y1, x0, x1;
    for (oy = 0; oy < d->out_h; oy++) {
        for (ox = 0; ox < d->out_w; ox++) {
            const int8_t *origin = in + ((oy * d->stride_h - d->pad_h) * d->in_w + ox * d->stride_w - d->pad_w) * d->c;
            int8_t *o = out + (oy * d->out_w + ox) * d->c;
            ep_pool_window(d, oy, ox, &y0, &y1, &x0, &x1);
            for (c = 0; c < d->c; c++) {
                int32_t m = -128;
                for (y = y0; y < y1; y++) {
                    for (x = x0; x < x1; x++) {
                        const int32_t v = origin[(y * d->in_w + x) * d->c + c];
                        m = v > m ? v : m;
                    }
                }
                o[c] = (int8_t)ep_clamp32(m, d->act_min, d->act_max);
            }
        }
    }
    return EP_OK;
}

int ep_avg_pool(const ep_pool_dims *d, const int8_t *in, int8_t *out) {
    int32_t oy, ox, c, y, x, y0, y1, x0, x1;
    for (oy = 0; oy < d->out_h; oy++) {
        for (ox = 0; ox < d->out_w; ox++) {
            const int8_t *origin = in + ((oy * d->stride_h - d->pad_h) * d->in_w + ox * d->stride_w - d->pad_w) * d->c;
            int8_t *o = out + (oy * d->out_w + ox) * d->c;
            int32_t count;
            ep_pool_window(d, oy, ox, &y0, &y1, &x0, &x1);
            count = (y1 - y0) * (x1 - x0);
            if (y1 <= y0 || x1 <= x0) {
                return EP_ERROR_DIMS;
            }
            for (c = 0; c < d->c; c++) {
                int32_t sum = 0;
                for (y = y0; y < y1; y++) {
                    for (x = x0; x < x1; x++) {
                        sum += origin[(y * d->in_w + x) * d->c + c];
                    }
                }
                sum = sum > 0 ? (sum + count / 2) / count : (sum - count / 2) / count;
                o[c] = (int8_t)ep_clamp32(sum, d->act_min, d->act_max);
            }
        }
    }
    return EP_OK;
}

int ep_pad(const ep_pad_dims *d, const int8_t *in, int8_t value, int8_t *out) {
    const int32_t out_w = d->left + d->in_w + d->right;
    const int32_t row = out_w * d->c;
    int32_t y;
    memset(out, value, (uint32_t)(d->top * row));
    out += d->top * row;
    for (y = 0; y < d->in_h; y++, out += row, in += d->in_w * d->c) {
        memset(out, value, (uint32_t)(d->left * d->c));
        memcpy(out + d->left * d->c, in, (uint32_t)(d->in_w * d->c));
        memset(out + (d->left + d->in_w) * d->c, value, (uint32_t)(d->right * d->c));
    }
    memset(out, value, (uint32_t)(d->bottom * row));
    return EP_OK;
}

int ep_transpose(const int32_t in_shape[4], const int32_t perm[4], const int8_t *in, int8_t *out) {
    int32_t stride[4], out_shape[4], i[4], k;
    stride[3] = 1;
    for (k = 2; k >= 0; k--) {
        stride[k] = stride[k + 1] * in_shape[k + 1];
    }
    for (k = 0; k < 4; k++) {
        out_shape[k] = in_shape[perm[k]];
    }
    for (i[0] = 0; i[0] < out_shape[0]; i[0]++) {
        for (i[1] = 0; i[1] < out_shape[1]; i[1]++) {
            for (i[2] = 0; i[2] < out_shape[2]; i[2]++) {
                for (i[3] = 0; i[3] < out_shape[3]; i[3]++) {
                    *out++ = in[i[0] * stride[perm[0]] + i[1] * stride[perm[1]] + i[2] * stride[perm[2]] +
                                i[3] * stride[perm[3]]];
                }
            }
        }
    }
    return EP_OK;
}

int ep_relu(int32_t n, const int8_t *in, int32_t input_zero_point, int32_t output_zero_point, int32_t multiplier,
            int32_t shift, int32_t act_min, int32_t act_max, int8_t *out) {
    int32_t i;
    for (i = 0; i < n; i++) {
        out[i] = (int8_t)ep_clamp32(output_zero_point + ep_mbqm(in[i] - input_zero_point, multiplier, shift),
                                    act_min, act_max);
    }
    return EP_OK;
}

int ep_clamp(int32_t n, const int8_t *in, int32_t lo, int32_t hi, int8_t *out) {
    int32_t i;
    for (i = 0; i < n; i++) {
        out[i] = (int8_t)ep_clamp32(in[i], lo, hi);
    }
    return EP_OK;
}

/* ---- softmax: gemmlowp's fixed-point exp and reciprocal, as TFLite's int8 reference ---- */

/* x * 2^e saturated (gemmlowp's SaturatingRoundingMultiplyByPOT for e > 0). */
static int32_t ep_sat_lshift(int32_t x, int32_t e) {
    const int32_t threshold = (int32_t)((1u << (31 - e)) - 1u);
    if (x > threshold) {
        return INT32_MAX;
    }
    if (x < -threshold) {
        return INT32_MIN;
    }
    return (int32_t)((uint32_t)x << e);
}

/* exp(a) for a in [-1/4, 0), a and the result in Q0.31. */
static int32_t ep_exp_quarter(int32_t a) {
    const int32_t exp_minus_one_eighth = 1895147668, one_third = 715827883;
    const int32_t x = a + (1 << 28);
    const int32_t x2 = ep_srdhm(x, x), x3 = ep_srdhm(x2, x), x4 = ep_srdhm(x2, x2);
    const int32_t x4_over_4 = ep_rounding_divide_by_pot(x4, 2);
    const int32_t poly = ep_rounding_divide_by_pot(ep_srdhm(x4_over_4 + x3, one_third) + x2, 1);
    return exp_minus_one_eighth + ep_srdhm(exp_minus_one_eighth, x + poly);
}

/* exp(a) for a <= 0 in Q5.26; the result in Q0.31. */
static int32_t ep_exp_negative(int32_t a) {
    static const int32_t multipliers[7] = {1672461947, 1302514674, 790015084, 290630308, 39332535, 720401, 242};
    const int32_t quarter = 1 << 24;
    const int32_t a_mod = (a & (quarter - 1)) - quarter;
    const int32_t remainder = a_mod - a;
    int32_t result = ep_exp_quarter(ep_sat_lshift(a_mod, 5));
    int32_t k;
    for (k = 0; k < 7; k++) {  /* exp(-2^(k-2)) for each set bit of the remainder */
        if (remainder & (1 << (24 + k))) {
            result = ep_srdhm(result, multipliers[k]);
        }
    }
    return a == 0 ? INT32_MAX : result;
}

/* 1 / (1 + a) for a in [0, 1) in Q0.31, by Newton-Raphson in Q2.29. */
static int32_t ep_one_over_one_plus(int32_t a) {
    const int64_t sum = (int64_t)a + INT32_MAX;
    const int32_t half_denominator = (int32_t)((sum + (sum >= 0 ? 1 : -1)) / 2);
    int32_t x = 1515870810 + ep_srdhm(half_denominator, -1010580540);
    int32_t i;
    for (i = 0; i < 3; i++) {
        const int32_t one_minus = (1 << 29) - ep_srdhm(half_denominator, x);
        x = x + ep_sat_lshift(ep_srdhm(x, one_minus), 2);
    }
    return ep_sat_lshift(x, 1);
}

static int32_t ep_clz(uint32_t x) {
    int32_t n = 0;
    if (x == 0) {
        return 32;
    }
    while (!(x & 0x80000000u)) {
        x <<= 1;
        n++;
    }
    return n;
}

int ep_softmax(int32_t rows, int32_t depth, const int8_t *in, const ep_softmax_params *p, int8_t *out) {
    int32_t r, c;
    for (r = 0; r < rows; r++, in += depth, out += depth) {
        int32_t max = -128, sum = 0, headroom, bits_over_unit, scale;
        for (c = 0; c < depth; c++) {
            max = in[c] > max ? in[c] : max;
        }
        for (c = 0; c < depth; c++) {
            const int32_t diff = in[c] - max;
            if (diff >= p->diff_min) {
                const int32_t scaled = ep_srdhm((int32_t)((uint32_t)diff << p->input_left_shift), p->input_multiplier);
                sum += ep_rounding_divide_by_pot(ep_exp_negative(scaled), 12);  /* Q12.19 accumulator */
            }
        }
        headroom = ep_clz((uint32_t)sum);
        bits_over_unit = 12 - headroom;
        scale = ep_one_over_one_plus((int32_t)(((uint32_t)sum << headroom) - (1u << 31)));
        for (c = 0; c < depth; c++) {
            const int32_t diff = in[c] - max;
            if (diff >= p->diff_min) {
                const int32_t scaled = ep_srdhm((int32_t)((uint32_t)diff << p->input_left_shift), p->input_multiplier);
                const int32_t e = ep_exp_negative(scaled);
                const int32_t v = ep_rounding_divide_by_pot(ep_srdhm(scale, e), bits_over_unit + 31 - 8) - 128;
                out[c] = (int8_t)ep_clamp32(v, -128, 127);
            } else {
                out[c] = -128;
            }
        }
    }
    return EP_OK;
}
