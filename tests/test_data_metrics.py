"""Data sets found on disk or a clear error; metrics, MACs and plots on tiny models."""

import pytest
import torch
from PIL import Image

from edgeprune.data import DataConfig, load_data
from edgeprune.prune.masks import fine_grained_prune
from edgeprune.analyze.metrics import count_macs, layer_stats, model_stats
from edgeprune.models import BasicCNN, build_model
from edgeprune.analyze.plots import grid_shape, plot_num_parameters_distribution, plot_weight_distribution



def test_missing_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="--download"):
        load_data(DataConfig(name="mnist", data_dir=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="train/<class>"):
        load_data(DataConfig(name="imagefolder", data_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="choose one of"):
        DataConfig(name="imagenet")


@pytest.mark.integration
def test_fashion_mnist_from_debian_with_seeded_split(fashion_full):
    splits = load_data(DataConfig(val_size=100, limit=300))  # no data_dir: Debian's default location
    assert (len(splits.train), len(splits.val), len(splits.test)) == (300, 100, 300)
    x, y = splits.test[0]
    assert x.shape == (1, 28, 28) and -1.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert splits.num_classes == 10 and splits.info["train_images"] == 300
    again = load_data(DataConfig(val_size=100, limit=300))
    assert splits.val.indices == again.val.indices
    rgb = load_data(DataConfig(channels=3, image_size=32, val_size=0, limit=10))
    assert rgb.test[0][0].shape == (3, 32, 32)


@pytest.mark.parametrize("channels", [None, 3])
def test_in_memory_tensors_equal_the_per_image_transform(channels, fashion_slice, tmp_path, monkeypatch):
    from torchvision import datasets

    from edgeprune.data import _build_transform, cache_dir

    monkeypatch.setenv("EDGEPRUNE_CACHE", str(tmp_path / "cache"))  # only this slice is staged there
    cfg = DataConfig(data_dir=fashion_slice, channels=channels, mean=0.25, std=0.3, val_size=100)
    splits = load_data(cfg)
    root = next((cache_dir() / "datasets").glob("*/FashionMNIST")).parent  # where load_data staged the files
    raw = datasets.FashionMNIST(str(root), train=False, transform=_build_transform(cfg, 1, 28, 28))
    for i in (0, 1, 299):
        x, y = raw[i]
        assert torch.equal(splits.test[i][0], x) and splits.test[i][1] == y


def test_imagefolder(tmp_path):
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (20, 17), (i * 40, 10, 200)).save(tmp_path / split / cls / f"{i}.png")
    splits = load_data(DataConfig(name="imagefolder", data_dir=str(tmp_path), image_size=16, val_size=2))
    assert splits.num_classes == 2 and splits.test[0][0].shape == (3, 16, 16) and len(splits.val) == 2


def test_stats_and_theoretical_size():
    torch.manual_seed(0)
    model = BasicCNN()
    dense = model_stats(model)
    assert dense["params"] == 261138 and abs(dense["theoretical_mib"] - 1.00) < 0.005  # the seed's 1.00 MB
    fine_grained_prune(model.fc1.weight, 0.5)
    stats = {s.name: s for s in layer_stats(model)}
    assert stats["fc1.weight"].nonzeros == 245760 // 2 and stats["fc1.weight"].sparsity == 0.5
    assert model_stats(model)["theoretical_bytes"] == (261138 - 122880) * 4


def test_macs_by_flop_counter():
    macs = count_macs(BasicCNN(), (3, 32, 32))
    conv1 = 32 * 32 * 16 * 3 * 25
    assert macs["by_module"]["BasicCNN.conv1"] == conv1
    assert macs["total"] == conv1 + 16 * 16 * 32 * 16 * 25 + 2048 * 120 + 120 * 10


def test_build_model_by_name_and_factory():
    assert sum(p.numel() for p in build_model("resnet18", num_classes=7).parameters()) > 1e6
    assert isinstance(build_model("conftest:TinyNet"), torch.nn.Module)
    with pytest.raises(ValueError, match="unknown model 'resnet1'"):
        build_model("resnet1")
    with pytest.raises(ValueError, match="module.path:function"):
        build_model("no_such_module:f")


def test_plots_are_png_files(tmp_path, tiny_net):
    assert grid_shape(1) == (1, 1) and grid_shape(4) == (2, 2) and grid_shape(21) == (6, 4)
    fine_grained_prune(tiny_net.fc.weight, 0.5)
    plot_weight_distribution(tiny_net, tmp_path / "w.png", count_nonzero_only=True)
    plot_num_parameters_distribution(tiny_net, tmp_path / "n.png")
    for name in ("w.png", "n.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
