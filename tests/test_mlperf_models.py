"""MLPerf Tiny's reference models built in: parameter and MAC counts equal the reference int8 ``.tflite`` files'.

The reference numbers were computed once from MLPerf Tiny's files (``kws_ref_model.tflite``, ``vww_96_int8.tflite``,
``ad01_int8.tflite``, ``pretrainedResnet_quant.tflite``) with the ``tflite`` schema package, op by op:
parameters are every CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED weight and bias element (batch norm is
folded into them there); MACs are out_h*out_w*out_c*k_h*k_w*in_c for CONV_2D, out_h*out_w*out_c*k_h*k_w for
DEPTHWISE_CONV_2D and out*in for FULLY_CONNECTED (pooling, adds and softmax not counted). The CI machine does not
have those files, so the numbers are written here.
"""

import pytest
import torch
from torch import nn

from edgeprune.analyze.metrics import count_macs
from edgeprune.models import DSCNN, FCAutoencoder, MobileNetV1, ModelSpec, build_model, tf_same_padding

REFERENCE = {  # name: (sample shape, classes, parameters, MACs) of the reference .tflite
    "dscnn": ((1, 49, 10), 12, 22_604, 2_656_768),  # kws_ref_model.tflite
    "mobilenet_v1": ((3, 96, 96), 2, 210_850, 7_489_664),  # vww_96_int8.tflite
    "fc_autoencoder": ((640,), 10, 265_864, 264_192),  # ad01_int8.tflite (its output is 640 features)
    "resnet8": ((3, 32, 32), 10, 77_706, 12_501_632),  # pretrainedResnet_quant.tflite
}


def folded_parameters(model: nn.Module) -> int:
    """Parameters as the int8 .tflite stores them: each conv / linear weight, plus one bias per output channel
    (its own, or the batch norm folded into it)."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
    return sum(m.weight.numel() + m.weight.shape[0] for m in layers)


@pytest.mark.parametrize("name", REFERENCE)
def test_parameters_and_macs_equal_the_reference_tflite(name):
    shape, classes, params, macs = REFERENCE[name]
    model = ModelSpec(name, shape[0] if len(shape) > 1 else 1, classes, input_shape=shape).build()
    assert folded_parameters(model) == params
    assert count_macs(model, shape)["total"] == macs


@pytest.mark.parametrize("name", REFERENCE)
def test_output_shape(name):
    shape, classes, _, _ = REFERENCE[name]
    out = build_model(name, num_classes=classes, input_shape=shape).eval()(torch.randn(2, *shape))
    assert out.shape == ((2, 640) if name == "fc_autoencoder" else (2, classes))


def test_tf_same_padding_by_hand():
    # 49 rows, kernel 10, stride 2: 25 outputs need (25-1)*2+10-49 = 9 rows of padding, 4 before and 5 after;
    # 10 columns, kernel 4, stride 2: 5 outputs need (5-1)*2+4-10 = 2, 1 before and 1 after
    assert tf_same_padding((49, 10), (10, 4), (2, 2)) == (1, 1, 4, 5)
    # 96, kernel 3, stride 2: 48 outputs need 47*2+3-96 = 1, after only (TensorFlow's, unlike PyTorch's padding=1)
    assert tf_same_padding((96, 96), (3, 3), (2, 2)) == (0, 1, 0, 1)
    assert tf_same_padding((7, 7), (3, 3), (1, 1)) == (1, 1, 1, 1)
    assert tf_same_padding((5, 5), (1, 1), (2, 2)) == (0, 0, 0, 0)


def test_feature_maps_have_the_reference_geometry():
    maps = {}

    def keep(key):
        return lambda module, inputs, output: maps.update({key: output.shape})

    dscnn = DSCNN().eval()
    dscnn.conv1.register_forward_hook(keep("kws"))
    dscnn(torch.randn(1, 1, 49, 10))
    assert maps["kws"] == (1, 64, 25, 5)  # the reference's first CONV_2D output, 1x25x5x64
    vww = MobileNetV1().eval()
    vww.blocks[-1].register_forward_hook(keep("vww"))
    vww(torch.randn(1, 3, 96, 96))
    assert maps["vww"] == (1, 256, 3, 3)  # the reference's last CONV_2D output, 1x3x3x256


def test_width_scales_the_filters():
    assert MobileNetV1(width=1.0).fc.in_features == 1024
    assert MobileNetV1().conv1.out_channels == 8  # 0.25 by default, MLPerf Tiny's
    assert build_model("resnet8", input_shape=(3, 32, 32), width=2.0).fc.in_features == 128
    assert build_model("dscnn", input_shape=(1, 49, 10), width=0.5).conv1.out_channels == 32
    assert FCAutoencoder(100).out.out_features == 100
