"""int8 TFLite export checked in TensorFlow Lite Micro's interpreter against an int8 reference written here in numpy.

The reference follows TFLM's reference kernels (double rounding, the default build): a real
multiplier m is stored as a 31-bit fixed-point ``q`` and a shift from ``frexp`` (``q = round(frac * 2**31)``,
half away from zero); ``acc * m`` is ``RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(acc << left, q), right)``.
The file is read back with the ``tflite`` package's reader, a different path from the writer.
"""

from __future__ import annotations

import math
import shutil
import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tflite
from tflite_micro.python.tflite_micro import runtime

from edgeprune.data import DataConfig, load_data, make_loader
from edgeprune.export.c_source import fits_on, write_c_source
from edgeprune.export.tflite import calibration_images, export_tflite
from edgeprune.export.tflm import evaluate_tflite
from edgeprune.models import BasicCNN
from edgeprune.training import evaluate, train

# ------------------------------------------------------------------ fixed-point arithmetic (gemmlowp / TFLM)


def quantize_multiplier(m: float) -> tuple[int, int]:
    if m == 0.0:
        return 0, 0
    frac, shift = math.frexp(m)
    q = math.floor(abs(frac) * 2**31 + 0.5)  # round half away from zero (frac > 0 here)
    if q == 2**31:
        q, shift = q // 2, shift + 1
    if shift < -31:
        return 0, 0
    return q, shift


def _trunc_div(x: np.ndarray, d: int) -> np.ndarray:
    return np.sign(x) * (np.abs(x) // d)


def srdhm(a: np.ndarray, b: int) -> np.ndarray:
    ab = a.astype(np.int64) * np.int64(b)
    nudge = np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    return _trunc_div(ab + nudge, 1 << 31)


def rdbpot(x: np.ndarray, exponent: int) -> np.ndarray:
    mask = (1 << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def requantize(acc: np.ndarray, real_multiplier: float) -> np.ndarray:
    q, shift = quantize_multiplier(real_multiplier)
    left, right = max(shift, 0), max(-shift, 0)
    return rdbpot(srdhm(acc * (1 << left), q), right)


# ------------------------------------------------------------------ an int8 interpreter of the file, in numpy


def _read(path):
    with open(path, "rb") as f:
        buf = f.read()
    model = tflite.Model.GetRootAsModel(buf, 0)
    return model, model.Subgraphs(0)


def _tensor_params(model, sg, i):
    t = sg.Tensors(i)
    q = t.Quantization()
    scales = q.ScaleAsNumpy() if q is not None and q.ScaleLength() else None
    zps = q.ZeroPointAsNumpy() if q is not None and q.ZeroPointLength() else None
    data = model.Buffers(t.Buffer()).DataAsNumpy()
    dtype = {9: np.int8, 2: np.int32}[t.Type()]
    arr = None if isinstance(data, int) else np.frombuffer(data.tobytes(), dtype).reshape(t.ShapeAsNumpy())
    return arr, scales, zps, tuple(t.ShapeAsNumpy())


def _act_range(kind: int, scale: float, zp: int) -> tuple[int, int]:
    lo, hi = -128, 127
    if kind in (1, 3):
        lo = max(lo, zp)
    if kind == 3:
        hi = min(hi, zp + math.floor(6.0 / scale + 0.5))
    return lo, hi


def _same_pads(size: int, k: int, s: int, d: int) -> tuple[int, int]:
    out = -(-size // s)
    total = max((out - 1) * s + d * (k - 1) + 1 - size, 0)
    return total // 2, total - total // 2


def _conv(x, w, bias, sx, zx, sw, so, zo, stride, dil, padding, act, depthwise):
    """x int8 [H, W, C]; w [O, kh, kw, I] (or [1, kh, kw, C*m] for depthwise)."""
    kh, kw = w.shape[1:3]
    if padding == 0:  # SAME: pad with the input zero point, so padded taps contribute nothing
        ph, pw = _same_pads(x.shape[0], kh, stride[0], dil[0]), _same_pads(x.shape[1], kw, stride[1], dil[1])
        x = np.pad(x, (ph, pw, (0, 0)), constant_values=zx)
    xi = x.astype(np.int64) - zx
    oh = (xi.shape[0] - dil[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (xi.shape[1] - dil[1] * (kw - 1) - 1) // stride[1] + 1
    cout = w.shape[3] if depthwise else w.shape[0]
    mult = cout // x.shape[2]
    out = np.zeros((oh, ow, cout), np.int64)
    for i in range(oh):
        for j in range(ow):
            patch = xi[i * stride[0]: i * stride[0] + dil[0] * (kh - 1) + 1: dil[0],
                       j * stride[1]: j * stride[1] + dil[1] * (kw - 1) + 1: dil[1]]
            for c in range(cout):
                if depthwise:
                    out[i, j, c] = (patch[:, :, c // mult] * w[0, :, :, c].astype(np.int64)).sum()
                else:
                    out[i, j, c] = (patch * w[c].astype(np.int64)).sum()
    lo, hi = act
    for c in range(cout):
        real = float(np.float64(sx) * np.float64(sw[c]) / np.float64(so))
        out[..., c] = requantize(out[..., c] + bias[c], real) + zo
    return np.clip(out, lo, hi)


def reference_int8(path, x_q: np.ndarray) -> np.ndarray:
    """Run the .tflite at ``path`` on one int8 NHWC input (without batch) with numpy integer arithmetic."""
    model, sg = _read(path)
    values = {sg.Inputs(0): x_q}
    for k in range(sg.OperatorsLength()):
        op = sg.Operators(k)
        code = model.OperatorCodes(op.OpcodeIndex()).BuiltinCode()
        ins, outs = op.InputsAsNumpy(), op.OutputsAsNumpy()
        x = values.get(ins[0])
        _, sx, zx, _ = _tensor_params(model, sg, ins[0])
        _, so, zo, oshape = _tensor_params(model, sg, outs[0])
        sx, zx, so, zo = sx[0], int(zx[0]), so[0], int(zo[0])
        table = op.BuiltinOptions()
        if code in (3, 4):  # CONV_2D, DEPTHWISE_CONV_2D
            opts = (tflite.Conv2DOptions if code == 3 else tflite.DepthwiseConv2DOptions)()
            opts.Init(table.Bytes, table.Pos)
            w, sw, _, _ = _tensor_params(model, sg, ins[1])
            b, _, _, _ = _tensor_params(model, sg, ins[2])
            y = _conv(x, w, b, sx, zx, sw, so, zo, (opts.StrideH(), opts.StrideW()),
                      (opts.DilationHFactor(), opts.DilationWFactor()), opts.Padding(),
                      _act_range(opts.FusedActivationFunction(), so, zo), code == 4)
        elif code == 9:  # FULLY_CONNECTED
            opts = tflite.FullyConnectedOptions()
            opts.Init(table.Bytes, table.Pos)
            w, sw, _, _ = _tensor_params(model, sg, ins[1])
            b, _, _, _ = _tensor_params(model, sg, ins[2])
            acc = w.astype(np.int64) @ (x.reshape(-1).astype(np.int64) - zx) + b
            y = np.array([requantize(acc[c:c + 1], float(np.float64(sx) * np.float64(sw[c]) / np.float64(so)))[0]
                          for c in range(len(acc))]) + zo
            y = np.clip(y, *_act_range(opts.FusedActivationFunction(), so, zo))
        elif code in (17, 1):  # MAX_POOL_2D, AVERAGE_POOL_2D (output shares the input's parameters)
            opts = tflite.Pool2DOptions()
            opts.Init(table.Bytes, table.Pos)
            kh, kw, s = opts.FilterHeight(), opts.FilterWidth(), (opts.StrideH(), opts.StrideW())
            oh, ow = oshape[1], oshape[2]
            ph = _same_pads(x.shape[0], kh, s[0], 1)[0] if opts.Padding() == 0 else 0
            pw = _same_pads(x.shape[1], kw, s[1], 1)[0] if opts.Padding() == 0 else 0
            y = np.zeros((oh, ow, x.shape[2]), np.int64)
            for i in range(oh):
                for j in range(ow):
                    r0, c0 = i * s[0] - ph, j * s[1] - pw
                    win = x[max(r0, 0): r0 + kh, max(c0, 0): c0 + kw].astype(np.int64).reshape(-1, x.shape[2])
                    if code == 17:
                        y[i, j] = win.max(0)
                    else:
                        n, total = len(win), win.sum(0)
                        y[i, j] = np.where(total > 0, _trunc_div(total + n // 2, n), _trunc_div(total - n // 2, n))
        elif code == 0:  # ADD
            opts = tflite.AddOptions()
            opts.Init(table.Bytes, table.Pos)
            x2 = values[ins[1]]
            _, s2, z2, _ = _tensor_params(model, sg, ins[1])
            s2, z2 = s2[0], int(z2[0])
            twice = 2 * max(float(sx), float(s2))
            a = requantize((x.astype(np.int64) - zx) * (1 << 20), float(sx) / twice)
            c = requantize((x2.astype(np.int64) - z2) * (1 << 20), float(s2) / twice)
            y = np.clip(requantize(a + c, twice / ((1 << 20) * float(so))) + zo,
                        *_act_range(opts.FusedActivationFunction(), so, zo))
        elif code in (34, 60):  # PAD with the zero point, PADV2 with a given int8 value
            pads, _, _, _ = _tensor_params(model, sg, ins[1])
            fill = zo if code == 34 else int(_tensor_params(model, sg, ins[2])[0][0])
            y = np.pad(x, [tuple(p) for p in pads[1:]], constant_values=fill)
        elif code == 39:  # TRANSPOSE of the batch-free tensor
            perm, _, _, _ = _tensor_params(model, sg, ins[1])
            y = x.transpose([p - 1 for p in perm[1:]])
        elif code == 22:  # RESHAPE
            y = x.reshape(oshape[1:])
        else:
            raise AssertionError(f"reference has no op {code}")
        values[outs[0]] = np.asarray(y).astype(np.int8)
    return values[sg.Outputs(0)]


def run_tflm(path, x_q: np.ndarray) -> np.ndarray:
    interp = runtime.Interpreter.from_file(str(path), arena_size=1 << 20)
    interp.set_input(x_q[None], 0)
    interp.invoke()
    return interp.get_output(0)[0]


def quantize_input(path, x: torch.Tensor) -> np.ndarray:
    model, sg = _read(path)
    _, s, z, _ = _tensor_params(model, sg, sg.Inputs(0))
    return np.clip(np.round(x.numpy().transpose(1, 2, 0) / s[0]) + z[0], -128, 127).astype(np.int8)


# ------------------------------------------------------------------ models


class Branchy(nn.Module):
    """Odd sizes through every supported op: conv (SAME), depthwise and pools with explicit padding, add, relu6, flatten."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        self.dw = nn.Conv2d(5, 5, 3, stride=2, padding=1, groups=5)
        self.side = nn.Conv2d(5, 5, 1)
        self.pool3 = nn.MaxPool2d(3, stride=2, padding=1)  # ResNet's stem pooling: explicit PADV2 with -128
        self.bn = nn.BatchNorm2d(5)
        self.pool = nn.MaxPool2d(2)
        self.avg = nn.AvgPool2d(3, stride=1, padding=1)  # count_include_pad: explicit PAD with the zero point
        self.fc1 = nn.Linear(5 * 2 * 2, 7)
        self.fc2 = nn.Linear(7, 3)

    def forward(self, x):
        x = F.relu(self.conv(x))
        y = F.relu6(self.bn(self.dw(x)))
        z = self.side(self.pool3(x))
        x = self.avg(self.pool(y + z))
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


class FlatThenAdd(nn.Module):
    """A flatten not followed by a linear layer (exported with a TRANSPOSE), then an add."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding="same")

    def forward(self, x):
        f = torch.flatten(torch.relu(self.conv(x)), 1)
        return f + f


def _calib(shape, n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, *shape), generator=g) * 2 - 1


@pytest.mark.parametrize("factory,shape", [(Branchy, (3, 8, 8)), (FlatThenAdd, (2, 5, 5)), (lambda: BasicCNN(1, 3, 9), (1, 9, 9))])
def test_tflm_matches_numpy_int8_reference_and_pytorch(tmp_path, factory, shape):
    torch.manual_seed(1)
    model = factory().eval()
    if isinstance(model, Branchy):
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 1.5)
    calib = _calib(shape)
    path = export_tflite(model, tmp_path / "m.tflite", calib)
    _, sg = _read(path)
    model_fb, _ = _read(path)
    _, so, zo, _ = _tensor_params(model_fb, sg, sg.Outputs(0))
    out_range = 0.0
    for x in _calib(shape, n=5, seed=1):
        xq = quantize_input(path, x)
        got = run_tflm(path, xq)
        np.testing.assert_array_equal(got, reference_int8(path, xq))
        with torch.no_grad():
            ref = model(x[None])[0].numpy()
        out_range = max(out_range, float(np.abs(ref).max()))
        dequant = (got.astype(np.float32) - zo[0]) * so[0]
        # a few output steps of error after several int8 layers
        assert np.abs(dequant - ref).max() <= 6 * so[0] + 0.03 * out_range


def test_one_conv_by_hand(tmp_path):
    """One 2x2 conv, 1 -> 2 channels on a 3x3 image, every number of the spec formula written out."""
    conv = nn.Conv2d(1, 2, kernel_size=2, bias=True)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[0.4, -0.2], [1.0, 0.1]]], [[[-0.3, 0.05], [0.16, 0.2]]]]))
        conv.bias.copy_(torch.tensor([0.05, -0.1]))
    calib = torch.tensor([[[[-0.6, 0.0, 1.0], [0.2, -0.3, 0.5], [0.9, 0.1, -0.4]]]])
    path = export_tflite(conv, tmp_path / "conv.tflite", calib)

    f32 = lambda v: float(np.float32(v))
    # input: range [-0.6, 1.0] -> scale 1.6/255, zero point round(-128 + 0.6/scale) = round(-32.375) = -32
    s_in, z_in = (1.0 - f32(-0.6)) / 255, -32
    # weights, per output channel: scale max|w|/127 (1.0 and 0.3), q = round(w / scale):
    # 50.8, -25.4, 127, 12.7 -> 51, -25, 127, 13 and -127, 21.17, 67.73, 84.67 -> -127, 21, 68, 85
    s_w = [f32(1.0) / 127, f32(0.3) / 127]
    q_w = [np.array([51, -25, 127, 13]), np.array([-127, 21, 68, 85])]
    # biases: int32 with scale s_in * s_w[c]: 0.05 / (0.0062745 * 0.0078740) = 1012.0, -0.1 / (0.0062745 * 0.0023622) = -6746.9
    q_b = [round(f32(0.05) / (f32(s_in) * f32(s_w[0]))), round(f32(-0.1) / (f32(s_in) * f32(s_w[1])))]
    assert q_b == [1012, -6747]
    # output: the float conv's range on the calibration image, widened to hold 0
    with torch.no_grad():
        y = conv(calib)
    lo, hi = min(float(y.min()), 0.0), max(float(y.max()), 0.0)
    s_out = (hi - lo) / 255
    z_out = round(-128 - lo / s_out)

    xq = quantize_input(path, calib[0])  # round(x / s_in) + z_in
    assert xq[:, :, 0].tolist() == [[-128, -32, 127], [0, -80, 48], [111, -16, -96]]
    expected = np.zeros((2, 2, 2), np.int64)
    for c in range(2):
        real = f32(s_in) * f32(s_w[c]) / f32(s_out)  # TFLM: double(input_scale) * double(filter_scale) / double(output_scale)
        for i in range(2):
            for j in range(2):
                acc = int(((xq[i:i + 2, j:j + 2, 0].reshape(-1).astype(int) - z_in) * q_w[c]).sum()) + q_b[c]
                expected[i, j, c] = np.clip(requantize(np.array([acc]), real)[0] + z_out, -128, 127)
                # here the fixed-point multiply equals the float rescale rounded to nearest
                assert abs(expected[i, j, c] - z_out - acc * real) <= 0.5 + 1e-9
    np.testing.assert_array_equal(run_tflm(path, xq), expected)


def test_unsupported_op_names_op_and_layer(tmp_path):
    class WithGelu(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 3, 3)
            self.act = nn.GELU()

        def forward(self, x):
            return self.act(self.conv(x)).flatten(1)

    with pytest.raises(ValueError, match=r"GELU at layer 'act'"):
        export_tflite(WithGelu(), tmp_path / "x.tflite", _calib((1, 5, 5)))

    class ConvSigmoid(nn.Module):
        def __init__(self, groups: int) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 6, 3, groups=groups)

        def forward(self, x):
            return torch.sigmoid(self.conv(x))

    with pytest.raises(ValueError, match=r"Conv2d at layer 'conv'.*groups=2"):
        export_tflite(ConvSigmoid(groups=2), tmp_path / "x.tflite", _calib((4, 5, 5)))
    with pytest.raises(ValueError, match=r"sigmoid at node 'sigmoid'"):
        export_tflite(ConvSigmoid(groups=1), tmp_path / "x.tflite", _calib((4, 5, 5)))
    assert not (tmp_path / "x.tflite").exists()


def test_softmax_output_is_a_distribution(tmp_path):
    model = BasicCNN(1, 5, 7).eval()
    path = export_tflite(model, tmp_path / "s.tflite", _calib((1, 7, 7)), softmax=True)
    interp = runtime.Interpreter.from_file(str(path), arena_size=1 << 20)
    details = interp.get_output_details(0)["quantization_parameters"]
    assert details["scales"][0] == pytest.approx(1 / 256) and details["zero_points"][0] == -128
    x = _calib((1, 7, 7), n=1, seed=3)[0]
    interp.set_input(quantize_input(path, x)[None], 0)
    interp.invoke()
    probs = (interp.get_output(0)[0].astype(float) + 128) / 256
    expected = torch.softmax(model(x[None]), 1)[0].detach().numpy()
    assert np.abs(probs - expected).max() < 0.03


def test_tflm_on_real_fashion_mnist_slice(tmp_path, fashion_slice):
    splits = load_data(DataConfig(name="fashion-mnist", data_dir=fashion_slice, val_size=0))
    torch.manual_seed(0)
    model = BasicCNN(in_channels=1, image_size=28)
    train(model, make_loader(splits.train, 64, shuffle=True), epochs=1, lr=2e-3, device="cpu")
    model.eval()
    path = export_tflite(model, tmp_path / "fm.tflite", calibration_images(splits.train, 100))
    test_loader = make_loader(splits.test, 100)
    result = evaluate_tflite(path, test_loader)
    fp32 = evaluate(model, test_loader, "cpu")
    assert result["count"] == 300 and result["model_bytes"] == path.stat().st_size
    assert fp32 > 40  # the model did learn, so agreement is meaningful
    assert abs(result["accuracy"] - fp32) <= 2.0
    assert 10_000 < result["arena_bytes"] < 200_000


MAIN_CC = r"""
#include <cstdint>
#include <cstdio>
#include "model_data.h"
int main() {
  std::fprintf(stderr, "%u %d\n", g_model_len, static_cast<int>(reinterpret_cast<std::uintptr_t>(g_model) % 16));
  std::fwrite(g_model, 1, g_model_len, stdout);
  return 0;
}
"""


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_c_array_compiles_and_round_trips_the_bytes(tmp_path):
    path = export_tflite(BasicCNN(1, 3, 5).eval(), tmp_path / "m.tflite", _calib((1, 5, 5)))
    cc, _ = write_c_source(path, tmp_path / "src")
    (tmp_path / "src" / "main.cc").write_text(MAIN_CC)
    for source in (cc, tmp_path / "src" / "main.cc"):
        subprocess.run(["g++", "-std=c++11", "-Wall", "-Werror", "-c", str(source), "-o", str(source.with_suffix(".o"))],
                       check=True, cwd=tmp_path / "src")
    exe = tmp_path / "src" / "roundtrip"
    subprocess.run(["g++", str(cc.with_suffix(".o")), str(tmp_path / "src" / "main.o"), "-o", str(exe)], check=True)
    done = subprocess.run([str(exe)], capture_output=True, check=True)
    data = path.read_bytes()
    assert done.stderr.decode().split() == [str(len(data)), "0"]  # length, address % 16
    assert done.stdout == data
    with pytest.raises(ValueError, match="not a C identifier"):
        write_c_source(path, tmp_path / "src", name="model-data")


def test_fits_on_boards():
    kib = 1024
    rows = {row["board"].split()[0]: row for row in fits_on(1024 * kib, 128 * kib)}
    assert rows["STM32L476RG"]["fits"] and rows["nRF52840"]["fits"] and rows["ESP32-S3"]["fits"]
    assert not rows["SAMD21G18"]["fits"]
    assert rows["nRF52840"]["ram_used"] == pytest.approx(0.5)
    over = {row["board"].split()[0]: row["fits"] for row in fits_on(200 * kib, 128 * kib + 1)}
    assert over == {"STM32L476RG": False, "nRF52840": True, "ESP32-S3": True, "SAMD21G18": False}
    assert [row["fits"] for row in fits_on(256 * kib, 32 * kib)][-1]
    with pytest.raises(ValueError, match="non-negative"):
        fits_on(-1, 0)


def test_cli_exports_tflite_with_c_source(tmp_path, fashion_slice, capsys):
    from edgeprune.checkpoint import save_checkpoint
    from edgeprune.cli import main
    from edgeprune.models import ModelSpec

    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "m.safetensors", BasicCNN(1, 10, 28), ModelSpec("basiccnn", 1, 10, 28))
    common = [str(ckpt), "--data-dir", fashion_slice, "--limit", "40", "--val-size", "0", "--device", "cpu"]
    assert main(["export", *common, "--format", "tflite", "--calibration", "30", "--out", str(tmp_path / "m.tflite"),
                 "--c-source", str(tmp_path / "fw")]) == 0
    out = capsys.readouterr().out
    assert "TFLM accuracy" in out and "on 40 test samples" in out and "STM32L476RG" in out
    data = (tmp_path / "m.tflite").read_bytes()
    assert data[4:8] == b"TFL3" and f"g_model_len = {len(data)};" in (tmp_path / "fw" / "model_data.cc").read_text()
    assert main(["export", *common, "--format", "tflite", "--values", "int8"]) == 2
    assert "drop them with --format tflite" in capsys.readouterr().err


def test_evaluate_tflite_errors(tmp_path):
    path = export_tflite(BasicCNN(1, 3, 28).eval(), tmp_path / "m.tflite", _calib((1, 28, 28), n=4))
    batch = [(torch.zeros(1, 1, 28, 28), torch.zeros(1, dtype=torch.long))]
    with pytest.raises(ValueError, match="larger arena_size"):
        evaluate_tflite(path, batch, arena_size=4096)  # it needs about 19 KB
    with pytest.raises(ValueError, match="at least 4096"):
        evaluate_tflite(path, batch, arena_size=256)
    with pytest.raises(FileNotFoundError, match="export_tflite"):
        evaluate_tflite(tmp_path / "none.tflite", batch)
    with pytest.raises(ValueError, match="no samples"):
        evaluate_tflite(path, [])


@pytest.mark.parametrize("pool,side", [(nn.MaxPool2d(3, stride=2, padding=1), 6), (nn.MaxPool2d(3, stride=2, padding=1), 5),
                                       (nn.AvgPool2d(3, stride=2, padding=1), 5), (nn.AvgPool2d(3, stride=2, padding=1), 6)])
def test_padded_pooling_matches_pytorch(tmp_path, pool, side):
    """PyTorch pads max pooling with -inf and counts average pooling's zero padding: so must the file.

    On 6x6 the padding is not TFLite's SAME (explicit padding); on 5x5 it is, which is exact for max
    pooling but not for average pooling (SAME leaves the padding out of the count).
    """
    calib = _calib((3, side, side)) - 0.5  # mostly negative: a wrong max-pool fill value would win
    path = export_tflite(nn.Sequential(pool), tmp_path / "p.tflite", calib)
    model, sg = _read(path)
    _, s, z, _ = _tensor_params(model, sg, sg.Inputs(0))
    for x in calib[:3]:
        got = run_tflm(path, quantize_input(path, x)).astype(int)
        expected = pool(x[None])[0].numpy().transpose(1, 2, 0) / s[0] + z[0]  # same scale in and out
        if isinstance(pool, nn.MaxPool2d):  # max commutes with quantization: exact
            np.testing.assert_array_equal(got, np.round(expected))
        else:
            assert np.abs(got - expected).max() <= 1.0


def test_lut_compressed_weights_run_the_same_and_shrink(tmp_path):
    """Weights shared to 4 values per tensor: TFLM look-up tables with 2-bit indices, identical outputs."""
    torch.manual_seed(4)
    model = BasicCNN(1, 3, 12).eval()
    with torch.no_grad():
        for layer in (model.conv1, model.conv2, model.fc1, model.fc2):
            a = float(layer.weight.abs().max())
            levels = torch.tensor([-a, -a / 3, a / 3, a])
            layer.weight.copy_(levels[(layer.weight.unsqueeze(-1) - levels).abs().argmin(-1)])
    calib = _calib((1, 12, 12))
    plain = export_tflite(model, tmp_path / "plain.tflite", calib)
    packed = export_tflite(model, tmp_path / "lut.tflite", calib, lut_bits=2)
    assert packed.stat().st_size < 0.5 * plain.stat().st_size
    for x in calib[:3]:
        xq = quantize_input(plain, x)
        np.testing.assert_array_equal(run_tflm(packed, xq), run_tflm(plain, xq))
    with pytest.raises(ValueError, match="at most 2 distinct values per channel"):
        export_tflite(model, tmp_path / "x.tflite", calib, lut_bits=1)
