/* PAD and PADV2 of an NHWC tensor's height and width with one int8 value (also the convolutions' SAME
 * padding, which the exporter inserts as its own step). */
#include "ep_kernels.h"

#include <string.h>

int ep_pad(const ep_pad_dims *d, const int8_t *restrict in, int8_t value, int8_t *restrict out) {
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
