"""ONNX export: onnxruntime equals PyTorch on tiny odd-sized models, any batch size, and on a real Fashion-MNIST slice."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import onnx
import onnxruntime as ort

from edgeprune.data import DataConfig, load_data, make_loader
from edgeprune.export.onnx import compare_onnx, evaluate_onnx, export_onnx, onnx_latency
from edgeprune.models import BasicCNN
from edgeprune.training import evaluate


class Residual(nn.Module):
    """Conv + batch norm + a residual add + global pooling, 3 channels of 7x7 in, 5 classes out."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3, 5)

    def forward(self, x):
        y = F.relu(self.bn(self.conv(x))) + x
        return self.fc(F.adaptive_avg_pool2d(y, 1).flatten(1))


@pytest.mark.parametrize("factory,shape", [(lambda: BasicCNN(1, 7, 9), (1, 9, 9)), (Residual, (3, 7, 7))])
def test_onnxruntime_equals_pytorch_for_every_batch_size(tmp_path, factory, shape):
    torch.manual_seed(0)
    model = factory().eval()
    if isinstance(model, Residual):
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    path = export_onnx(model, tmp_path / "m.onnx", torch.randn(1, *shape))
    graph_input = onnx.load(str(path)).graph.input[0]
    assert graph_input.type.tensor_type.shape.dim[0].dim_param  # a named, dynamic batch dimension
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3, 5):
        x = torch.randn(batch, *shape)
        got = session.run(None, {"input": x.numpy()})[0]
        with torch.no_grad():
            expected = model(x).numpy()
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_compare_onnx_detects_a_different_model(tmp_path):
    torch.manual_seed(1)
    model = BasicCNN(1, 3, 5).eval()
    path = export_onnx(model, tmp_path / "m.onnx", torch.randn(2, 1, 5, 5))
    batches = [(torch.randn(4, 1, 5, 5), torch.zeros(4, dtype=torch.long)) for _ in range(2)]
    same = compare_onnx(model, path, batches)
    assert same["equal"] and same["max_abs_diff"] < 1e-4
    with torch.no_grad():
        model.fc2.bias.add_(0.01)
    changed = compare_onnx(model, path, batches)
    assert not changed["equal"] and changed["max_abs_diff"] == pytest.approx(0.01, rel=1e-2)
    model.train()
    timing = onnx_latency(model, path, batches[0][0], rounds=2)
    assert timing["onnx_ms"] > 0 and timing["torch_ms"] > 0 and timing["batch"] == 4 and timing["rounds"] == 2
    assert model.training  # timed on a copy: the caller's model is not put in eval mode


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="export_onnx"):
        evaluate_onnx(tmp_path / "none.onnx", [])
    with pytest.raises(ValueError, match="batched tensor"):
        export_onnx(BasicCNN(1, 3, 5), tmp_path / "m.onnx", torch.randn(5))
    with pytest.raises(ValueError, match=r"cannot export BasicCNN to ONNX with an input of shape \(2, 5, 5\)"):
        export_onnx(BasicCNN(1, 3, 5), tmp_path / "m.onnx", torch.randn(2, 5, 5))
    assert not (tmp_path / "m.onnx").exists()


def test_onnx_accuracy_equals_pytorch_on_fashion_mnist_slice(tmp_path, fashion_slice):
    splits = load_data(DataConfig(name="fashion-mnist", data_dir=fashion_slice, val_size=0))
    torch.manual_seed(0)
    model = BasicCNN(in_channels=1, image_size=28).eval()  # untrained: the check is image-by-image agreement
    loader = make_loader(splits.test, 128)
    path = export_onnx(model, tmp_path / "fm.onnx", next(iter(loader))[0][:1])
    result = evaluate_onnx(path, loader)
    assert result["count"] == 300
    assert result["accuracy"] == pytest.approx(evaluate(model, loader, "cpu"), abs=1e-9)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for images, _ in loader:
        with torch.no_grad():
            expected = model(images).argmax(1).numpy()
        np.testing.assert_array_equal(session.run(None, {"input": images.numpy()})[0].argmax(1), expected)


def test_cli_exports_onnx(tmp_path, fashion_slice, capsys):
    from edgeprune.checkpoint import save_checkpoint
    from edgeprune.cli import main
    from edgeprune.models import ModelSpec

    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "m.safetensors", BasicCNN(1, 10, 28), ModelSpec("basiccnn", 1, 10, 28))
    common = [str(ckpt), "--data-dir", fashion_slice, "--limit", "40", "--val-size", "0", "--device", "cpu"]
    assert main(["export", *common, "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    out = capsys.readouterr().out
    assert "outputs equal within tolerance" in out and "on 40 test samples" in out
    assert onnx.load(str(tmp_path / "m.onnx")).graph.input[0].type.tensor_type.shape.dim[0].dim_param


def test_int8_qdq_copy_is_quantized_and_close(tmp_path):
    from edgeprune.export.onnx import quantize_onnx

    torch.manual_seed(2)
    model = BasicCNN(1, 5, 9).eval()
    calib = torch.rand(64, 1, 9, 9) * 2 - 1
    fp32 = export_onnx(model, tmp_path / "m.onnx", calib[:1])
    int8 = quantize_onnx(fp32, tmp_path / "m.int8.onnx", calib)
    ops = {node.op_type for node in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    weights = [t for t in onnx.load(str(int8)).graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2]
    assert len(weights) == 4  # conv1, conv2, fc1, fc2 weights stored as int8
    x = torch.rand(8, 1, 9, 9) * 2 - 1
    session = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        expected = model(x).numpy()
    # int8 error: a few percent of the logits' range, far below it
    assert np.abs(got - expected).max() < 0.05 * np.abs(expected).max() + 1e-3
    assert not np.allclose(got, expected, rtol=1e-5, atol=1e-6)  # it really is the quantized model
