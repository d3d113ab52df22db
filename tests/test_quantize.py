"""Quantization primitives, per-tensor settings and centroid fine-tuning."""

from __future__ import annotations

import pytest
import torch
from torch import nn
import torch.nn.functional as F

from edgeprune.prune.masks import fine_grained_prune
from edgeprune.export.centroids import finetune_centroids
from edgeprune.export.quantize import (
    QuantConfig,
    check_bits,
    kmeans_dequantize,
    kmeans_quantize,
    linear_dequantize,
    linear_quantize,
    lookup,
    quantize_state_dict,
)

from conftest import reference_lloyd


def test_linear_quantize_by_hand():
    codes, scale = linear_quantize(torch.tensor([0.0, 1.27, -0.635, 0.004]))
    assert scale == pytest.approx(0.01)
    assert codes.dtype == torch.int8
    assert codes.tolist() == [0, 127, -64, 0]
    assert linear_dequantize(codes, scale).tolist()[:2] == [0.0, pytest.approx(1.27)]
    codes, scale = linear_quantize(torch.zeros(3))
    assert (scale, codes.tolist()) == (1.0, [0, 0, 0])


def test_linear_quantize_error_is_at_most_half_a_step():
    weights = torch.randn(1000)
    codes, scale = linear_quantize(weights, bits=4)
    assert int(codes.abs().max()) == 7
    assert float((linear_dequantize(codes, scale) - weights).abs().max()) <= scale / 2 + 1e-6


def test_kmeans_by_hand():
    # three distinct values fit in a 2-bit codebook exactly; the zeros are not clustered
    weights = torch.tensor([[0.0, 1.0, 5.0], [1.0, 0.0, -2.0]])
    codebook, codes = kmeans_quantize(weights, bits=2)
    assert codebook.tolist() == [-2.0, 1.0, 5.0]
    assert codes.tolist() == [1, 2, 1, 0]  # the non-zeros in row-major order
    restored = kmeans_dequantize(codebook, codes, weights != 0)
    assert torch.equal(restored, weights)


def test_kmeans_clusters_the_non_zeros_only():
    torch.manual_seed(0)
    weights = torch.randn(64, 64)
    fine_grained_prune(weights, 0.7)
    codebook, codes = kmeans_quantize(weights, bits=3)
    assert codebook.numel() == 8 and torch.equal(codebook, codebook.sort().values)
    assert codes.numel() == int((weights != 0).sum())
    assert not bool((codebook == 0).any())
    restored = kmeans_dequantize(codebook, codes, weights != 0)
    assert bool((restored[weights == 0] == 0).all())
    # each weight sits on its nearest centroid
    nearest = (weights[weights != 0][:, None] - codebook[None]).abs().argmin(dim=1)
    assert torch.equal(codebook[nearest], codebook[codes])
    # k-means beats a uniform grid of as many levels on this bell-shaped data
    grid = torch.linspace(float(weights.min()), float(weights.max()), 8)
    nonzero = weights[weights != 0]
    grid_error = (nonzero[:, None] - grid[None]).abs().min(dim=1).values.pow(2).mean()
    assert float((restored[weights != 0] - nonzero).pow(2).mean()) < float(grid_error)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_kmeans_quantize_follows_a_hand_run_lloyd(bits):
    generator = torch.Generator().manual_seed(10 + bits)
    weights = torch.randn(13, 11, generator=generator)
    weights[weights.abs() < 0.3] = 0  # pruned
    nonzero = weights[weights != 0].tolist()
    assert len(set(nonzero)) > 2**bits
    codebook, codes = kmeans_quantize(weights, bits)
    expected = torch.tensor(reference_lloyd(nonzero, bits), dtype=torch.float32)
    assert torch.equal(codebook, expected)
    nearest = (torch.tensor(nonzero)[:, None] - expected[None]).abs().argmin(dim=1)
    assert torch.equal(codes, nearest)


def test_kmeans_is_deterministic_and_idempotent():
    torch.manual_seed(1)
    weights = torch.randn(300)
    first, codes = kmeans_quantize(weights, bits=4)
    again, codes_again = kmeans_quantize(weights.clone(), bits=4)
    assert torch.equal(first, again) and torch.equal(codes, codes_again)
    quantized = kmeans_dequantize(first, codes, weights != 0)
    second, second_codes = kmeans_quantize(quantized, bits=4)
    assert torch.equal(kmeans_dequantize(second, second_codes, quantized != 0), quantized)


def test_kmeans_of_no_weights():
    codebook, codes = kmeans_quantize(torch.zeros(3, 3), bits=2)
    assert codebook.numel() == 0 and codes.numel() == 0


def test_lookup_order():
    spec = {"fc1.weight": 3, "re:fc.*": 5, "re:.*": 6, "_default": 4}
    assert lookup(spec, "fc1.weight") == 3
    assert lookup(spec, "fc2.weight") == 5  # first matching regex, in order
    assert lookup(spec, "conv1.weight") == 6
    assert lookup({"re:conv": 2, "_default": 4}, "conv1.weight") == 4  # regexes match the whole name
    assert lookup({"re:conv": 2}, "x") is None
    assert lookup(7, "anything") == 7


def test_check_bits():
    assert check_bits(2) == 2 and check_bits(8) == 8
    for bad in (1, 9, 4.0, True, "4", None):
        with pytest.raises(ValueError, match="bits=4"):
            check_bits(bad)


def test_config_per_tensor():
    config = QuantConfig({"_default": "int8", "re:conv.*": "kmeans"}, {"_default": 4, "conv2.weight": 2})
    weight, bias = torch.ones(2, 2), torch.ones(2)
    assert config.mode_for("conv2.weight", weight) == ("kmeans", 2)
    assert config.mode_for("conv1.weight", weight) == ("kmeans", 4)
    assert config.mode_for("fc1.weight", weight) == ("int8", None)
    assert config.mode_for("conv1.bias", bias) is None
    assert QuantConfig({"fc.weight": "fp16"}).mode_for("other.weight", weight) == ("fp32", None)
    with pytest.raises(ValueError, match="bits="):
        QuantConfig("kmeans", {"_default": 1})


def test_quantize_state_dict_keeps_everything_else():
    torch.manual_seed(0)
    state_dict = {"w": torch.randn(8, 8), "b": torch.randn(8), "n": torch.tensor(3), "h": torch.randn(4, 4).half()}
    fine_grained_prune(state_dict["w"], 0.5)
    out = quantize_state_dict(state_dict, "int8")
    assert torch.equal(out["b"], state_dict["b"]) and torch.equal(out["n"], state_dict["n"])
    assert out["h"].dtype == torch.float16
    assert torch.equal(out["w"] == 0, state_dict["w"] == 0)
    assert float((out["w"] - state_dict["w"]).abs().max()) <= float(state_dict["w"].abs().max()) / 254 + 1e-6


def _toy_task(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(512, 16, generator=generator)
    labels = (inputs[:, :4].sum(dim=1) > 0).long() + 2 * (inputs[:, 4] > 0).long()
    return [(inputs[i : i + 64], labels[i : i + 64]) for i in range(0, 512, 64)]


def test_finetune_centroids_shares_weights_and_lowers_the_loss():
    torch.manual_seed(0)
    batches = _toy_task()
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        for x, y in batches:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    fine_grained_prune(model[0].weight.data, 0.5)
    pruned = model[0].weight.detach() == 0
    bias = model[0].bias.detach().clone()
    codebooks = {name: kmeans_quantize(model.get_parameter(name), 2)[0] for name in ("0.weight", "2.weight")}

    def loss() -> float:
        with torch.no_grad():
            return sum(float(F.cross_entropy(model(x), y)) for x, y in batches)

    unchanged = finetune_centroids(model, codebooks, batches, epochs=0)  # only ties the weights
    assert all(torch.equal(unchanged[name], codebooks[name]) for name in codebooks)
    before = loss()
    tuned = finetune_centroids(model, codebooks, batches, epochs=5, lr=1e-2)
    assert loss() < before
    assert torch.equal(model[0].bias, bias)
    assert bool((model[0].weight[pruned] == 0).all())
    for name, codebook in tuned.items():
        assert codebook.shape == codebooks[name].shape and not torch.equal(codebook, codebooks[name])
        weight = model.get_parameter(name).detach()
        assert bool(torch.isin(weight[weight != 0], codebook).all())
    # the fine-tuned weights export losslessly: quantizing them again changes nothing
    state_dict = model.state_dict()
    assert torch.equal(quantize_state_dict(state_dict, "kmeans", 2)["0.weight"], state_dict["0.weight"])


def test_finetune_centroids_checks_names():
    with pytest.raises(ValueError, match="named_parameters"):
        finetune_centroids(nn.Linear(2, 2), {"nope": torch.zeros(2)}, [], epochs=1)


def test_share_weights_gives_what_kmeans_export_stores():
    from torch.utils.data import DataLoader, TensorDataset

    from edgeprune.models import BasicCNN
    from edgeprune.prune.pruner import FineGrainedPruner
    from edgeprune.export.centroids import share_weights

    torch.manual_seed(0)
    model = BasicCNN(in_channels=1, image_size=28)
    pruner = FineGrainedPruner(model, {"_default": 0.8})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    share_weights(model, {"_default": 4, "fc1.weight": 3})
    expected = quantize_state_dict(before, "kmeans", {"_default": 4, "fc1.weight": 3})
    assert all(torch.equal(expected[k], v) for k, v in model.state_dict().items())
    data = TensorDataset(torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,)))
    share_weights(model, 4, DataLoader(data, batch_size=16), epochs=1, lr=1e-2)
    after = model.state_dict()
    assert all(torch.equal(quantize_state_dict(after, "kmeans", 4)[k], v) for k, v in after.items())
    for name, mask in pruner.masks.items():
        assert torch.all(after[name][~mask] == 0) and torch.all(after[name][mask] != 0)
        assert after[name].unique().numel() <= 2**4 + 1


def test_per_layer_keys_must_name_a_tensor():
    state = {"fc1.weight": torch.randn(4, 4), "fc1.bias": torch.randn(4)}
    with pytest.raises(ValueError, match="unknown parameter name 'fc9.weight'; valid names: fc1.weight, fc1.bias"):
        quantize_state_dict(state, "kmeans", {"_default": 4, "fc9.weight": 3})
    with pytest.raises(ValueError, match="matches no parameter"):
        quantize_state_dict(state, {"re:conv.*": "int8"})
    assert quantize_state_dict(state, "kmeans", {"fc1.weight": 3, "_default": 4})["fc1.weight"].unique().numel() <= 8
