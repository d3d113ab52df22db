"""A channel-pruned model saves as a smaller dense checkpoint and loads back through the same API, checked before allocation."""

import pytest
import torch
from safetensors.torch import save_file

from edgeprune.checkpoint import load_checkpoint, save_checkpoint
from edgeprune.models import ModelSpec
from edgeprune.prune.channels import prune_channels


@pytest.mark.parametrize("spec", [ModelSpec("basiccnn", 1, 10, 28), ModelSpec("mobilenet_v2", 3, 7, 32)])
def test_channel_pruned_checkpoint_loads_back_smaller_and_equal(tmp_path, spec):
    model = spec.build(seed=0).eval()
    x = torch.randn(2, spec.in_channels, spec.image_size, spec.image_size)
    small = prune_channels(model, {"_default": 0.5}, x[:1]).eval()
    path = tmp_path / "small.safetensors"
    save_checkpoint(path, small, spec)  # marked channel-pruned because its shapes are smaller than the spec's
    back, back_spec, _, info = load_checkpoint(path)
    back.eval()
    assert back_spec == spec and info["channel_pruned"] is True
    assert sum(p.numel() for p in back.parameters()) == sum(p.numel() for p in small.parameters())
    assert sum(p.numel() for p in back.parameters()) < sum(p.numel() for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), small.state_dict().values()))
    assert torch.equal(back(x), small(x))


def test_without_the_flag_a_smaller_model_is_refused(tmp_path):
    spec = ModelSpec("basiccnn", 1, 10, 28)
    small = prune_channels(spec.build(seed=0), {"_default": 0.5}, torch.zeros(1, 1, 28, 28))
    path = tmp_path / "small.safetensors"
    save_file(small.state_dict(), str(path), metadata={"format": "edgeprune.checkpoint/1", "info": "{}",
                                                       "spec": '{"name": "basiccnn", "in_channels": 1, "num_classes": 10, "image_size": 28}'})
    with pytest.raises(ValueError, match="do not fit"):
        load_checkpoint(path)
    save_checkpoint(path, spec.build(seed=0), spec)
    assert "channel_pruned" not in load_checkpoint(path)[3]  # a full-size model is not marked


def test_a_channel_pruned_file_claiming_more_channels_is_refused_before_allocation(tmp_path):
    spec = ModelSpec("basiccnn", 1, 10, 28)
    state = {k: v.clone() for k, v in spec.build(seed=0).state_dict().items()}
    state["conv1.weight"] = torch.zeros(4096, 1, 5, 5)  # more filters than the model has
    path = tmp_path / "big.safetensors"
    save_file(state, str(path), metadata={"format": "edgeprune.checkpoint/1", "info": '{"channel_pruned": true}',
                                          "spec": '{"name": "basiccnn", "in_channels": 1, "num_classes": 10, "image_size": 28}'})
    with pytest.raises(ValueError, match="conv1.weight.*larger"):
        load_checkpoint(path)


def test_a_channel_pruned_epz_export_loads_back_without_model_flags(tmp_path, capsys):
    """export --format epz of a channel-pruned checkpoint: the file carries the spec; inspect and load rebuild the small model."""
    from edgeprune.cli import main
    from edgeprune.export.epz import load_compressed, read_header, save_compressed
    from edgeprune.steps import export_compressed

    spec = ModelSpec("basiccnn", 1, 10, 28)
    x = torch.randn(3, 1, 28, 28)
    small = prune_channels(spec.build(seed=0).eval(), {"_default": 0.5}, x[:1]).eval()
    path = export_compressed(small, tmp_path / "small.epz", values="fp32", spec=spec)
    back, back_spec, masks, info = load_checkpoint(path)
    assert back_spec == spec and info["channel_pruned"] is True and masks is None
    assert torch.equal(back.eval()(x), small(x))  # fp32 values: bit for bit
    checkpoint = tmp_path / "small.safetensors"
    save_checkpoint(checkpoint, small, spec)
    assert main(["export", str(checkpoint), "--values", "kmeans", "--bits", "4", "--out", str(tmp_path / "k.epz")]) == 0
    assert main(["inspect", str(tmp_path / "k.epz"), "--out", str(tmp_path / "inspect")]) == 0  # no --model flags needed
    out = capsys.readouterr().out
    assert "conv1" in out and str(small.conv1.out_channels) in out
    assert torch.equal(load_checkpoint(tmp_path / "k.epz")[0].conv1.weight, load_compressed(tmp_path / "k.epz")["conv1.weight"])
    with pytest.raises(ValueError, match="header"):
        save_compressed(small.state_dict(), tmp_path / "bad.epz", header={"format": "mine"})
    save_compressed(small.state_dict(), tmp_path / "bare.epz")
    assert read_header(tmp_path / "bare.epz") == {}
    with pytest.raises(ValueError, match="do not fit"):  # without the header a smaller model is refused, as for checkpoints
        load_checkpoint(tmp_path / "bare.epz", spec)


def test_an_epz_is_checked_against_the_model_before_anything_is_decoded(tmp_path, monkeypatch):
    from edgeprune.export.epz import CompressedFile, save_compressed

    spec = ModelSpec("basiccnn", 1, 10, 28)
    path = tmp_path / "other.epz"
    save_compressed(ModelSpec("basiccnn", 1, 7, 28).build(seed=0).state_dict(), path)  # 7 classes, not 10
    monkeypatch.setattr(CompressedFile, "decode", lambda *a, **k: pytest.fail("decoded before the shapes were checked"))
    with pytest.raises(ValueError, match="fc2"):
        load_checkpoint(path, spec)
    save_compressed(spec.build(seed=0).state_dict(), path, header={"spec": "[" * 200_000})  # nested past the recursion limit
    with pytest.raises(ValueError, match="header is damaged"):
        load_checkpoint(path)
