"""Data from a careless user: image folders whose class lists differ, unreadable images, staging that was killed."""

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgeprune.data import DataConfig, data_geometry, load_data, make_loaders
from edgeprune.files import atomic_path
from test_checkpoint_safety import in_child

# each class is one pure colour: its label can be read back off the pixels, independently of the loader
COLOURS = {"ant": 0, "bee": 1, "cat": 2}


def write_images(folder: Path, classes: list[str], per_class: int = 2, side: int = 5) -> None:
    for name in classes:
        (folder / name).mkdir(parents=True, exist_ok=True)
        pixels = np.zeros((side, side, 3), dtype=np.uint8)
        pixels[..., COLOURS.get(name, 0)] = 255
        for i in range(per_class):
            Image.fromarray(pixels).save(folder / name / f"{i}.png")


def folder_config(root: Path) -> DataConfig:
    return DataConfig(name="imagefolder", data_dir=str(root), image_size=7, val_size=0, batch_size=4)


def test_test_split_is_labelled_by_the_training_classes(tmp_path):
    write_images(tmp_path / "train", ["ant", "bee", "cat"])
    write_images(tmp_path / "test", ["bee", "cat"], per_class=3)  # torchvision alone would call bee 0 here
    splits = load_data(folder_config(tmp_path))
    assert splits.num_classes == 3 and len(splits.test) == 6
    for dataset in (splits.train, splits.test):
        for image, label in dataset:
            assert image.shape == (3, 7, 7)
            assert label == int(image.mean((1, 2)).argmax())  # the colour's channel is the class index


def test_hidden_folders_and_files_are_not_classes_or_images(tmp_path):
    write_images(tmp_path / "train", ["ant", "bee"])
    write_images(tmp_path / "test", ["ant"])
    write_images(tmp_path / "train" / ".ipynb_checkpoints", ["ant"])  # a hidden folder with images inside
    (tmp_path / "train" / "ant" / "._0.png").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    splits = load_data(folder_config(tmp_path))
    assert splits.num_classes == 2 and len(splits.train) == 4
    assert sorted(label for _, label in splits.train) == [0, 0, 1, 1]


def test_test_class_training_never_saw_is_named(tmp_path):
    write_images(tmp_path / "train", ["ant", "bee"])
    write_images(tmp_path / "test", ["bee", "dog"])
    with pytest.raises(ValueError, match=r"test: class folder\(s\) 'dog' are not in .*train.*add them to train/ or remove them from test/"):
        load_data(folder_config(tmp_path))


def test_empty_folders_are_named(tmp_path):
    write_images(tmp_path / "train", ["ant"])
    (tmp_path / "train" / "bee").mkdir()
    write_images(tmp_path / "test", ["ant"])
    with pytest.raises(ValueError, match=r"train: class folder\(s\) 'bee' hold no images"):
        load_data(folder_config(tmp_path))
    (tmp_path / "train" / "bee").rmdir()
    for png in (tmp_path / "test" / "ant").iterdir():
        png.unlink()
    with pytest.raises(ValueError, match="test: holds no images"):
        load_data(folder_config(tmp_path))


@pytest.mark.parametrize("damage", ["truncated", "not an image"])
def test_unreadable_image_is_named_with_the_fix(tmp_path, damage):
    write_images(tmp_path / "train", ["ant", "bee"])
    write_images(tmp_path / "test", ["ant", "bee"])
    bad = tmp_path / "train" / "bee" / "photo.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(bad, quality=90)
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"<html>not found</html>")
    splits = load_data(folder_config(tmp_path))
    train_loader, _, test_loader = make_loaders(splits, batch_size=4)
    assert sum(len(y) for _, y in test_loader) == 4
    with pytest.raises(ValueError, match=rf"{bad}: cannot be read as an image \(.+\); delete or replace the file$") as err:
        for _ in train_loader:
            pass
    assert "\n" not in str(err.value)


def _write_and_die(target: Path) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"half a file")
        os.kill(os.getpid(), signal.SIGKILL)


def test_staging_killed_midway_leaves_nothing_behind(tmp_path, monkeypatch, fashion_full):
    """Needs Debian's Fashion-MNIST (the fixture: skipped without it, a failure under EDGEPRUNE_REQUIRE_DATASET=1)."""
    monkeypatch.setenv("EDGEPRUNE_CACHE", str(tmp_path / "cache"))
    cfg = DataConfig(limit=20, val_size=5)
    first = load_data(cfg)
    (raw,) = (tmp_path / "cache").glob("datasets/*/FashionMNIST/raw")
    labels = raw / "train-labels-idx1-ubyte"
    labels.unlink()  # as if the staging was killed while writing this file
    status = in_child(_write_and_die, labels)
    assert os.WIFSIGNALED(status) and not labels.exists()
    assert [p.name for p in raw.glob(".*.tmp")], "the killed writer should have left its temporary file"
    again = load_data(cfg)
    assert not list(raw.glob(".*")), "a stale temporary file survived the next staging"
    assert torch.equal(torch.tensor([y for _, y in again.train]), torch.tensor([y for _, y in first.train]))


def test_data_geometry_is_what_loading_gives_without_loading(tmp_path, monkeypatch):
    write_images(tmp_path / "train", ["ant", "bee", "cat"], side=9)
    write_images(tmp_path / "test", ["ant"], side=9)
    default = DataConfig(name="imagefolder", data_dir=str(tmp_path), val_size=0)
    grey = DataConfig(name="imagefolder", data_dir=str(tmp_path), val_size=0, channels=1, image_size=20)
    assert data_geometry(default) == (3, 32, 3)  # read as RGB, resized to 32; three class folders
    assert data_geometry(grey) == (1, 20, 3)
    for cfg, (channels, size) in ((default, (3, 32)), (grey, (1, 20))):  # the images load_data gives have that geometry
        splits = load_data(cfg)
        assert splits.train[0][0].shape == (channels, size, size) and splits.num_classes == 3
    monkeypatch.setattr("edgeprune.data.Image.open", lambda *a, **k: pytest.fail("an image was opened"))
    assert data_geometry(default) == (3, 32, 3)  # nothing is read but the folder names
    assert data_geometry(DataConfig(name="imagefolder", data_dir=str(tmp_path / "nowhere"))) == (3, 32, None)
    assert data_geometry(DataConfig(name="fashion-mnist", image_size=32)) == (1, 32, 10)
    assert data_geometry(DataConfig(name="cifar10", channels=1)) == (1, 32, 10)
