"""The kernels' code written out for the DSP cores (inline assembly behind __ARM_FEATURE_DSP, which the host builds
of the other engine tests never compile), run in QEMU on Cortex-M4 against TFLite Micro's interpreter.

One small network reaches each of them: the dense window loop (an odd and an even number of four-weight steps), the
dense pairs from whole-word rows and by the byte path, the sparse patch transpose and 8-bit run (odd, even and empty
runs), the four outputs of a fast channel (dense and sparse), the depthwise quads' stores, the
ADD's fast loop, a ReLU6 layer (its clamp not all of int8: the generic path) and output maps whose last group is
short."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgeprune.export.tflite import export_tflite
from edgeprune.mcu.measure import measure_tflite
from test_mcu_board import toolchain  # noqa: F401 (a fixture)


class DspNet(nn.Module):
    """3x9x11 input (99 pixels: every layer's last group short), ReLU onto zero point -128 (the fast path) except
    conv2's ReLU6; the output is the residual ADD's whole map (12 x 99 values), so that an output rounded
    differently anywhere tends to show."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, 3, padding=1)  # 27 window bytes: the byte path, 7 steps (odd)
        self.dw = nn.Conv2d(10, 10, 3, padding=1, groups=10)  # two quads of four channels, two channels alone
        self.pw = nn.Conv2d(10, 12, 1)  # 10 window bytes: the byte path, 3 steps
        self.conv2 = nn.Conv2d(12, 7, 3, padding=1)  # ReLU6: not all of int8; 108 bytes, whole words, 27 steps
        self.conv3 = nn.Conv2d(7, 12, 3, padding=1)  # 63 window bytes: 16 steps (even)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        y = torch.relu(self.pw(torch.relu(self.dw(x))))
        z = torch.nn.functional.relu6(self.conv2(y))
        return torch.relu(self.conv3(z) + y).flatten(1)  # an ADD with a ReLU onto -128: its fast loop


@pytest.fixture(scope="module")
def dsp_file(tmp_path_factory):
    """DspNet, seeded, 70 % of pw's, conv2's and conv3's weights zeroed (smallest magnitudes) and their first output
    channel's all, as an int8 .tflite."""
    torch.manual_seed(5)
    model = DspNet().eval()
    with torch.no_grad():
        for layer in (model.pw, model.conv2, model.conv3):
            w = layer.weight
            w[w.abs() <= w.abs().flatten().kthvalue(int(0.7 * w.numel())).values] = 0
            w[0] = 0  # an empty run
    calibration = torch.randn(64, 3, 9, 11)
    return export_tflite(model, tmp_path_factory.mktemp("dsp") / "dsp.tflite", calibration)


@pytest.mark.parametrize("sparse", ["never", "always"])
def test_dsp_kernels_equal_tflm_in_qemu(toolchain, dsp_file, tmp_path, sparse):
    """16 seeded inputs through the Cortex-M4 engine in QEMU, every output equal to TFLM's, with every convolution
    dense (sparse never) or sparse (always; the depthwise then runs its sparse taps, so the dense run covers the
    quads)."""
    inputs = np.random.default_rng(11).integers(-128, 128, size=(16, 9, 11, 3), dtype=np.int8)
    result = measure_tflite(dsp_file, inputs, None, tmp_path / sparse, target="cortex-m4", sparse=sparse)
    assert result["complete"] and result["images_run"] == 16
    assert result["equal_to_tflm"] == 16, result["first_difference"]
    convs = [layer["engine"] for layer in result["layers"] if layer["op"].startswith("CONV_2D")]
    assert convs == ["dense" if sparse == "never" else "sparse"] * 4
