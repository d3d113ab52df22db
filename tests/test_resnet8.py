"""MLPerf Tiny's ResNet-8: the geometry the benchmark defines, and the int8 export every MCU benchmark uses."""

import torch
from torch import nn

from edgeprune import count_macs
from edgeprune.models import ModelSpec, ResNet8, build_model


def _expected_conv_params(cin: int, cout: int, k: int) -> int:
    return cin * cout * k * k + cout  # weights + bias (batch norm folds into these)


# The figures of MLPerf Tiny's resnet_v1_eembc, computed layer by layer from its definition.
EXPECTED_PARAMS = (
    _expected_conv_params(3, 16, 3)
    + 2 * _expected_conv_params(16, 16, 3)
    + _expected_conv_params(16, 32, 3) + _expected_conv_params(32, 32, 3) + _expected_conv_params(16, 32, 1)
    + _expected_conv_params(32, 64, 3) + _expected_conv_params(64, 64, 3) + _expected_conv_params(32, 64, 1)
    + 64 * 10 + 10
)
EXPECTED_MACS = (
    32 * 32 * 16 * 27 + 2 * 32 * 32 * 16 * 144
    + 16 * 16 * 32 * (144 + 288 + 16)
    + 8 * 8 * 64 * (288 + 576 + 32)
    + 640
)


def test_resnet8_has_mlperf_tiny_geometry():
    assert EXPECTED_PARAMS == 77_706 and EXPECTED_MACS == 12_501_632  # the benchmark's published 77,706 and 12.50 M
    model = build_model("resnet8", 3, 10, 32)
    assert isinstance(model, ResNet8)
    folded = sum(p.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) for p in m.parameters())
    assert folded == EXPECTED_PARAMS
    int8_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert int8_weights == 77_360  # the reference .tflite's int8 weight bytes
    assert count_macs(model, (3, 32, 32))["total"] == EXPECTED_MACS
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_resnet8_stages_and_shortcuts():
    model = ResNet8()
    assert isinstance(model.stage1.shortcut, nn.Identity)
    for stage, cin, cout in ((model.stage2, 16, 32), (model.stage3, 32, 64)):
        assert stage.conv1.stride == (2, 2) and stage.shortcut.stride == (2, 2)
        assert stage.shortcut.kernel_size == (1, 1) and stage.shortcut.in_channels == cin and stage.shortcut.out_channels == cout


def test_resnet8_by_spec_for_other_data():
    model = ModelSpec("resnet8", in_channels=1, num_classes=7, image_size=28).build(seed=0)
    assert model(torch.zeros(1, 1, 28, 28)).shape == (1, 7)
