"""int8 TFLite export of models whose samples are not square images: Conv1d sequences, MLP feature vectors,
non-square images with 10x4 stride-2 kernels and explicit padding, and MLPerf Tiny's built-in models.

Each file runs in TensorFlow Lite Micro's interpreter; its dequantized outputs are compared with PyTorch's float
outputs, and its ops and shapes are read back with the ``tflite`` package (not edgeprune's reader).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tflite
from tflite_micro.python.tflite_micro import runtime

from tflite.BuiltinOperator import BuiltinOperator  # noqa: E402
from tflite.Conv2DOptions import Conv2DOptions  # noqa: E402

from edgeprune.export.tflite import export_tflite  # noqa: E402
from edgeprune.export.tflm import evaluate_tflite, tflite_layout  # noqa: E402
from edgeprune.models import build_model  # noqa: E402

OP_NAMES = {code: name for name, code in vars(BuiltinOperator).items() if not name.startswith("_")}


def read(path):
    """(ops as names, the subgraph, input (shape, scale, zero point), output (shape, scale, zero point))."""
    model = tflite.Model.GetRootAsModel(path.read_bytes(), 0)
    sg = model.Subgraphs(0)

    def info(i):
        t = sg.Tensors(i)
        q = t.Quantization()
        return tuple(t.ShapeAsNumpy()), float(q.ScaleAsNumpy()[0]), int(q.ZeroPointAsNumpy()[0])

    ops = []
    for i in range(sg.OperatorsLength()):
        code = model.OperatorCodes(sg.Operators(i).OpcodeIndex())
        ops.append(OP_NAMES[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())])
    return ops, sg, info(sg.Inputs(0)), info(sg.Outputs(0))


def to_file_layout(x: torch.Tensor) -> np.ndarray:
    """One sample as the file's input lays it out (written here, not edgeprune's): C x H x W -> H x W x C,
    C x T -> 1 x T x C, F -> F."""
    x = x.numpy()
    if x.ndim == 3:
        return x.transpose(1, 2, 0)
    return x.T[None] if x.ndim == 2 else x


def check_against_pytorch(model: nn.Module, path, samples: torch.Tensor, steps: float = 6, share: float = 0.03) -> None:
    """TFLM's int8 outputs, dequantized, are within ``steps`` output steps plus ``share`` of the output range of PyTorch's.

    Give calibration samples: their outputs are inside the calibrated ranges, so what is checked is the conversion.
    """
    _, _, (in_shape, s_in, z_in), (_, s_out, z_out) = read(path)
    interp = runtime.Interpreter.from_file(str(path), arena_size=1 << 20)
    with torch.no_grad():
        expected = model(samples).numpy()
    worst = 0.0
    for x, ref in zip(samples, expected):
        xq = np.clip(np.round(to_file_layout(x) / s_in) + z_in, -128, 127).astype(np.int8)
        assert xq[None].shape == in_shape
        interp.set_input(xq[None], 0)
        interp.invoke()
        got = (interp.get_output(0)[0].astype(np.float64) - z_out) * s_out
        worst = max(worst, float(np.abs(got.reshape(ref.shape) - ref).max()))
    assert worst <= steps * s_out + share * float(np.abs(expected).max()), worst


def samples(shape, n=32, seed=0):
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed)) * 2 - 1


def randomize_batch_norm(model: nn.Module) -> nn.Module:
    """Running statistics and affine parameters away from the identity, so that folding them matters."""
    torch.manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


class TinyConv1d(nn.Module):
    """Conv1d k5 padding 2 (TFLite SAME), depthwise Conv1d k3 stride 2 padding 1 (not SAME: explicit PAD), linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 8, 5, padding=2)
        self.depthwise = nn.Conv1d(8, 8, 3, stride=2, padding=1, groups=8)
        self.fc = nn.Linear(8 * 10, 4)

    def forward(self, x):
        x = F.relu(self.depthwise(F.relu(self.conv(x))))
        return self.fc(torch.flatten(x, 1))


def test_conv1d_runs_as_height_one_conv2d(tmp_path):
    torch.manual_seed(0)
    model = TinyConv1d().eval()
    calib = samples((3, 20))
    path = export_tflite(model, tmp_path / "c1.tflite", calib)
    ops, sg, (in_shape, _, _), (out_shape, _, _) = read(path)
    assert ops == ["CONV_2D", "PAD", "DEPTHWISE_CONV_2D", "RESHAPE", "FULLY_CONNECTED"]
    assert in_shape == (1, 1, 20, 3) and out_shape == (1, 4)
    first = sg.Operators(0)
    options = Conv2DOptions()
    options.Init(first.BuiltinOptions().Bytes, first.BuiltinOptions().Pos)
    assert options.Padding() == 0  # SAME: k5 padding 2 at stride 1 on T, nothing to pad on height 1
    assert tuple(sg.Tensors(first.InputsAsNumpy()[1]).ShapeAsNumpy()) == (8, 1, 5, 3)  # O x 1 x k x I
    pads = sg.Operators(1)
    assert tuple(sg.Tensors(pads.OutputsAsNumpy()[0]).ShapeAsNumpy()) == (1, 1, 22, 8)  # T 20 + 1 + 1
    check_against_pytorch(model, path, calib[:8])


def test_conv1d_batchnorm1d_is_folded(tmp_path):
    torch.manual_seed(0)
    model = randomize_batch_norm(nn.Sequential(nn.Conv1d(2, 6, 3), nn.BatchNorm1d(6), nn.ReLU(), nn.Flatten(),
                                               nn.Linear(6 * 14, 3)))
    calib = samples((2, 16))
    path = export_tflite(model, tmp_path / "bn1.tflite", calib)
    ops, _, (in_shape, _, _), _ = read(path)
    assert ops == ["CONV_2D", "RESHAPE", "FULLY_CONNECTED"] and in_shape == (1, 1, 16, 2)
    check_against_pytorch(model, path, calib[:8])


def test_mlp_with_batchnorm1d_takes_feature_vectors(tmp_path):
    torch.manual_seed(0)
    model = randomize_batch_norm(nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 5)))
    calib = samples((16,))
    path = export_tflite(model, tmp_path / "mlp.tflite", calib)
    ops, _, (in_shape, _, _), (out_shape, _, _) = read(path)
    assert ops == ["FULLY_CONNECTED", "FULLY_CONNECTED"] and in_shape == (1, 16) and out_shape == (1, 5)
    check_against_pytorch(model, path, calib[:8])


class KeywordStem(nn.Module):
    """On 49 x 10: ZeroPad2d as TensorFlow's SAME for a 10x4 stride-2 conv, the conv VALID, F.pad with a non-zero value."""

    def __init__(self) -> None:
        super().__init__()
        self.pad = nn.ZeroPad2d((1, 1, 4, 5))
        self.conv1 = nn.Conv2d(1, 8, (10, 4), stride=2)
        self.conv2 = nn.Conv2d(8, 4, 3)
        self.fc = nn.Linear(4 * 24 * 4, 3)

    def forward(self, x):
        x = F.relu(self.conv1(self.pad(x)))  # 25 x 5
        x = F.pad(x, (0, 1, 1, 0), value=0.5)  # 26 x 6: one column right, one row on top, filled with 0.5
        return self.fc(torch.flatten(F.relu(self.conv2(x)), 1))


def test_non_square_input_with_explicit_pads(tmp_path):
    torch.manual_seed(0)
    model = KeywordStem().eval()
    calib = samples((1, 49, 10))
    path = export_tflite(model, tmp_path / "kws.tflite", calib)
    ops, sg, (in_shape, _, _), _ = read(path)
    assert ops == ["PAD", "CONV_2D", "PADV2", "CONV_2D", "RESHAPE", "FULLY_CONNECTED"]
    assert in_shape == (1, 49, 10, 1)
    shapes = [tuple(sg.Tensors(sg.Operators(i).OutputsAsNumpy()[0]).ShapeAsNumpy()) for i in range(4)]
    assert shapes == [(1, 58, 12, 1), (1, 25, 5, 8), (1, 26, 6, 8), (1, 24, 4, 4)]
    amounts = sg.Tensors(sg.Operators(2).InputsAsNumpy()[1])
    padv2 = sg.Operators(2)
    fill_tensor = sg.Tensors(padv2.InputsAsNumpy()[2])
    paddings = np.frombuffer(_buffer(path, amounts), np.int32).reshape(4, 2)
    np.testing.assert_array_equal(paddings, [[0, 0], [1, 0], [0, 1], [0, 0]])
    q = fill_tensor.Quantization()
    fill = (int(np.frombuffer(_buffer(path, fill_tensor), np.int8)[0]) - q.ZeroPointAsNumpy()[0]) * q.ScaleAsNumpy()[0]
    assert abs(fill - 0.5) <= q.ScaleAsNumpy()[0] / 2  # 0.5, quantized with the tensor's own scale
    for i in (1, 3):
        options = Conv2DOptions()
        options.Init(sg.Operators(i).BuiltinOptions().Bytes, sg.Operators(i).BuiltinOptions().Pos)
        assert options.Padding() == 1  # VALID: the padding is the PAD before it
    check_against_pytorch(model, path, calib[:8])


def _buffer(path, tensor) -> bytes:
    model = tflite.Model.GetRootAsModel(path.read_bytes(), 0)
    return model.Buffers(tensor.Buffer()).DataAsNumpy().tobytes()


@pytest.mark.parametrize("pad, message", [(nn.ReflectionPad2d(1), "ReflectionPad2d"),
                                          (nn.ZeroPad2d((-1, 0, 0, 0)), "negative padding")])
def test_padding_that_is_not_constant_is_refused(tmp_path, pad, message):
    with pytest.raises(ValueError, match=f"cannot export .*{message}") as err:
        export_tflite(nn.Sequential(pad, nn.Conv2d(1, 2, 3)), tmp_path / "p.tflite", samples((1, 8, 8)))
    assert "\n" not in str(err.value)


def test_input_of_rank_four_per_sample_is_refused(tmp_path):
    with pytest.raises(ValueError, match="calibration_images must be .* N x C x T sequences or N x F features"):
        export_tflite(nn.Sequential(nn.Flatten(), nn.Linear(8, 2)), tmp_path / "m.tflite", torch.rand(4, 1, 2, 2, 2))


@pytest.mark.parametrize("name, shape, width, steps, share", [
    ("dscnn", (1, 49, 10), None, 6, 0.05),
    ("fc_autoencoder", (640,), None, 6, 0.05),
    ("mobilenet_v1", (3, 32, 32), 0.25, 6, 0.08),  # 32x32 rather than 96x96 to keep the test fast
])
def test_built_in_models_run_in_tflm(tmp_path, name, shape, width, steps, share):
    torch.manual_seed(0)
    model = randomize_batch_norm(build_model(name, num_classes=12, input_shape=shape, width=width))
    calib = samples(shape, n=64)
    path = export_tflite(model, tmp_path / f"{name}.tflite", calib)
    _, _, (in_shape, _, _), _ = read(path)
    assert in_shape == (1, *to_file_layout(torch.zeros(shape)).shape)
    check_against_pytorch(model, path, calib[:6], steps, share)


def test_tflite_layout_and_evaluation_of_sequences(tmp_path):
    batch = np.arange(2 * 3 * 5).reshape(2, 3, 5)
    np.testing.assert_array_equal(tflite_layout(batch)[1, 0, 4], batch[1, :, 4])  # N x 1 x T x C
    np.testing.assert_array_equal(tflite_layout(batch[:, :, 0]), batch[:, :, 0])
    np.testing.assert_array_equal(tflite_layout(batch[:, :, :, None])[1, 2, 0], batch[1, :, 2])  # N x H x W x C
    torch.manual_seed(0)
    model = TinyConv1d().eval()
    calib = samples((3, 20))
    path = export_tflite(model, tmp_path / "c1.tflite", calib)
    x = samples((3, 20), n=16, seed=2)
    with torch.no_grad():
        labels = model(x).argmax(1)
    result = evaluate_tflite(path, [(x, labels)])
    assert result["count"] == 16 and result["accuracy"] >= 75.0  # int8 agrees with float on most argmaxes


def test_conv1d_output_flattened_in_pytorch_order(tmp_path):
    """Flatten with no linear layer after it: the 1 x 1 x T x C tensor is transposed to C-major first."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.Flatten()).eval()
    calib = samples((2, 9))
    path = export_tflite(model, tmp_path / "flat.tflite", calib)
    ops, _, _, (out_shape, _, _) = read(path)
    assert ops == ["CONV_2D", "TRANSPOSE", "RESHAPE"] and out_shape == (1, 3 * 7)
    check_against_pytorch(model, path, calib[:8])
