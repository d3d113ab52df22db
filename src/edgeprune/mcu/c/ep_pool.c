/* int8 max and average pooling over windows clipped to the input (TFLite's reference kernels). No restrict
 * here: it lengthens the window loops (measured). */
#include "ep_kernels.h"
#include "ep_requant.h"

/* The window of output (oy, ox) clipped to the input: rows [*y0, *y1) and columns [*x0, *x1) counted from the
 * window's origin, whose offset in the input (negative where the window starts in the padding) it returns.
 * Offsets stay integers: a pointer before the input would be undefined behaviour. */
static int32_t ep_pool_window(const ep_pool_dims *d, int32_t oy, int32_t ox, int32_t *y0, int32_t *y1, int32_t *x0,
                              int32_t *x1) {
    const int32_t iy = oy * d->stride_h - d->pad_h, ix = ox * d->stride_w - d->pad_w;
    *y0 = iy < 0 ? -iy : 0;
    *y1 = d->in_h - iy < d->k_h ? d->in_h - iy : d->k_h;
    *x0 = ix < 0 ? -ix : 0;
    *x1 = d->in_w - ix < d->k_w ? d->in_w - ix : d->k_w;
    return (iy * d->in_w + ix) * d->c;
}

int ep_max_pool(const ep_pool_dims *d, const int8_t *in, int8_t *out) {
    int32_t oy, ox, c, y, x, y0, y1, x0, x1;
    for (oy = 0; oy < d->out_h; oy++) {
        for (ox = 0; ox < d->out_w; ox++) {
            const int32_t origin = ep_pool_window(d, oy, ox, &y0, &y1, &x0, &x1);
            int8_t *o = out + (oy * d->out_w + ox) * d->c;
            for (c = 0; c < d->c; c++) {
                int32_t m = -128;
                for (y = y0; y < y1; y++) {
                    for (x = x0; x < x1; x++) {
                        const int32_t v = in[origin + (y * d->in_w + x) * d->c + c];
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
            const int32_t origin = ep_pool_window(d, oy, ox, &y0, &y1, &x0, &x1);
            int8_t *o = out + (oy * d->out_w + ox) * d->c;
            int32_t count;
            count = (y1 - y0) * (x1 - x0);
            if (y1 <= y0 || x1 <= x0) {
                return EP_ERROR_DIMS;
            }
            for (c = 0; c < d->c; c++) {
                int32_t sum = 0;  /* at most k_h * k_w * 128 in size: the exporter bounds the window */
                for (y = y0; y < y1; y++) {
                    for (x = x0; x < x1; x++) {
                        sum += in[origin + (y * d->in_w + x) * d->c + c];
                    }
                }
                sum = sum > 0 ? (sum + count / 2) / count : (sum - count / 2) / count;
                o[c] = (int8_t)ep_clamp32(sum, d->act_min, d->act_max);
            }
        }
    }
    return EP_OK;
}
