"""Checkpoints from a careless or hostile user: forged headers, folders, other architectures, bad factories, devices."""

import argparse
import json
import os
import re
import resource
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from edgeprune.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, masks_path_for, save_checkpoint, shape_mismatches
from edgeprune.device import pick_device
from edgeprune.files import atomic_path, write_text_atomic
from edgeprune.models import BasicCNN, ModelSpec, build_model, build_skeleton

SRC = Path(__file__).resolve().parents[1] / "src"


def forged(path: Path, state: dict, spec: dict) -> Path:
    """A safetensors file as an attacker writes it: real tensors, any spec in the header."""
    save_file(state, str(path), metadata={"format": CHECKPOINT_FORMAT, "spec": json.dumps(spec), "info": "{}"})
    return path


def one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text, text
    return text


def small_cnn_state() -> dict:
    torch.manual_seed(0)
    return BasicCNN(in_channels=1, num_classes=10, image_size=28).state_dict()


@pytest.mark.parametrize(
    "field, value",
    [("in_channels", 1_000_000), ("num_classes", 1_000_000), ("image_size", 10**9), ("image_size", 1.5), ("num_classes", True)],
)
def test_out_of_bounds_header_is_refused_before_building(tmp_path, field, value):
    spec = {"name": "basiccnn", "in_channels": 1, "num_classes": 10, "image_size": 28, field: value}
    path = forged(tmp_path / "evil.safetensors", small_cnn_state(), spec)
    with pytest.raises(ValueError, match=f"model spec header is damaged.*{field} must be a positive int of at most") as err:
        load_checkpoint(path)
    one_line(err)


def test_spec_bounds_are_inclusive():
    ModelSpec("basiccnn", 256, 100_000, 4096)  # the limits themselves are accepted
    for kwargs in ({"in_channels": 257}, {"num_classes": 100_001}, {"image_size": 4097}, {"in_channels": 0}):
        with pytest.raises(ValueError, match="must be a positive int of at most"):
            ModelSpec("basiccnn", **kwargs)


def in_child(fn, *args) -> int:
    """Run ``fn(*args)`` in a forked copy of this process (nothing to import: fast); return its wait status."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            torch.set_num_threads(1)
            fn(*args)
            code = 0
        finally:
            os._exit(code)
    return os.waitpid(pid, 0)[1]


def _load_forged_and_measure(tmp_path: Path) -> None:
    spec = {"name": "basiccnn", "in_channels": 1, "num_classes": 10, "image_size": 28}
    load_checkpoint(forged(tmp_path / "honest.safetensors", small_cnn_state(), spec))  # warm every code path up
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # within the bounds, but fc1 alone would be 120 x 32*256*256 floats = 1 GB
    spec = {"name": "basiccnn", "in_channels": 256, "num_classes": 100000, "image_size": 1024}
    try:
        load_checkpoint(forged(tmp_path / "huge.safetensors", small_cnn_state(), spec))
        outcome = "loaded"
    except ValueError as exc:
        outcome = str(exc)
    growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    (tmp_path / "result.json").write_text(json.dumps({"outcome": outcome, "growth_mb": growth_mb}))


def test_huge_header_within_bounds_allocates_nothing(tmp_path):
    assert in_child(_load_forged_and_measure, tmp_path) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert "'conv1.weight' is stored as [16, 1, 5, 5] but the model has [16, 256, 5, 5]" in result["outcome"]
    assert result["growth_mb"] < 100, f"loading a forged header grew the peak memory by {result['growth_mb']:.0f} MB"


def test_directory_is_named_as_such_with_a_file_to_pass(tmp_path):
    save_checkpoint(tmp_path / "run" / "baseline.safetensors", BasicCNN(1, 10, 28), ModelSpec(), {"conv1.weight": torch.ones(16, 1, 5, 5, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"run: is a directory, not a file; pass a file inside it, e\.g\. .*baseline\.safetensors$") as err:
        load_checkpoint(tmp_path / "run")
    one_line(err)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is a directory, not a file; pass the path of a checkpoint"):
        load_checkpoint(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_pth_of_another_architecture_names_keys_and_flags(tmp_path, tiny_net):
    torch.save(tiny_net.state_dict(), tmp_path / "tiny.pth")
    with pytest.raises(ValueError) as err:
        load_checkpoint(tmp_path / "tiny.pth", ModelSpec("basiccnn", 1, 10, 28))
    text = one_line(err)
    assert "missing 'conv1.weight' (and 7 more)" in text
    assert "unexpected 'conv.weight' (and 3 more)" in text
    assert "--model, --dataset, --channels, --image-size, --num-classes" in text


def test_basiccnn_of_other_geometry_names_the_shape_and_the_flags_it_needs(tmp_path):
    torch.manual_seed(1)
    torch.save(BasicCNN(in_channels=3, num_classes=7, image_size=20).state_dict(), tmp_path / "cifarish.pth")
    with pytest.raises(ValueError) as err:
        load_checkpoint(tmp_path / "cifarish.pth", ModelSpec("basiccnn", 1, 10, 28))
    text = one_line(err)
    # conv1 comes first in the model's order: 3 input channels stored, 1 expected; 4 tensors differ
    assert "'conv1.weight' is stored as [16, 3, 5, 5] but the model has [16, 1, 5, 5] (and 3 more)" in text
    # fc1 has 32 * 5 * 5 = 800 inputs: images of 20 to 23 pixels
    assert "--channels 3 --image-size 20 --num-classes 7" in text and "20 to 23 pixels" in text
    model, _, _, _ = load_checkpoint(tmp_path / "cifarish.pth", ModelSpec("basiccnn", 3, 7, 21))
    assert model(torch.zeros(2, 3, 21, 21)).shape == (2, 7)


def test_torchvision_header_with_wrong_classes_names_the_classifier(tmp_path):
    torch.manual_seed(0)
    state = build_model("mobilenet_v3_small", num_classes=7).state_dict()
    path = forged(tmp_path / "mnv3.safetensors", state, {"name": "mobilenet_v3_small", "in_channels": 3, "num_classes": 100000, "image_size": 32})
    with pytest.raises(ValueError, match=r"'classifier\.3\.weight' is stored as \[7, 1024\] but the model has \[100000, 1024\]"):
        load_checkpoint(path)
    path = forged(tmp_path / "ok.safetensors", state, {"name": "mobilenet_v3_small", "in_channels": 3, "num_classes": 7, "image_size": 32})
    model, spec, _, _ = load_checkpoint(path)
    assert spec.num_classes == 7 and all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_torchvision_model_refuses_grey_input():
    with pytest.raises(ValueError, match="takes 3-channel images, not 1; use --channels 3"):
        ModelSpec("resnet18", 1, 10, 28).build()


def test_model_that_cannot_be_built_on_meta_is_checked_on_the_cpu(tmp_path):
    spec = ModelSpec("regnet_x_400mf", 3, 5, 32)  # RegNet computes its widths with tensors: no meta build
    skeleton = build_skeleton(spec)
    assert not any(t.is_meta for t in skeleton.state_dict().values())
    path = save_checkpoint(tmp_path / "regnet.safetensors", skeleton, spec)
    model, _, _, _ = load_checkpoint(path)
    assert all(torch.equal(a, b) for a, b in zip(skeleton.state_dict().values(), model.state_dict().values()))


def test_skeleton_is_on_meta():
    skeleton = build_skeleton(ModelSpec("basiccnn", 256, 100_000, 4096))  # 16 GB if it were real
    assert all(t.is_meta for t in skeleton.state_dict().values())
    assert skeleton.fc1.weight.shape == (120, 32 * 1024 * 1024)


def test_shape_mismatches_by_hand():
    stored = {"a": (2, 3), "b": (4,), "x": (1,)}
    expected = {"a": (3, 2), "b": (4,), "c": (5,)}
    assert shape_mismatches(stored, expected) == (["c"], ["x"], [("a", (2, 3), (3, 2))])
    assert shape_mismatches(expected, expected) == ([], [], [])


def test_damaged_info_and_masks_headers(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file(small_cnn_state(), str(path), metadata={"spec": json.dumps({"name": "basiccnn"}), "info": "{oops"})
    with pytest.raises(ValueError, match="its 'info' header is damaged"):
        load_checkpoint(path)
    path = save_checkpoint(path, BasicCNN(1, 10, 28), ModelSpec())
    save_file({"conv1.weight": torch.ones(16, 3, 5, 5, dtype=torch.bool)}, str(masks_path_for(path)))
    with pytest.raises(ValueError, match="mask 'conv1.weight' does not match the model; delete the file or re-prune"):
        load_checkpoint(path)
    save_file({"conv1.weight": torch.ones(16, 1, 5, 5)}, str(masks_path_for(path)))
    with pytest.raises(ValueError, match="not bool tensors"):
        load_checkpoint(path)


FACTORIES = """
import torch

def boom():
    raise RuntimeError("weights not found\\nsecond line")

def not_a_model():
    return {"conv": 1}

def good():
    return torch.nn.Linear(3, 2)
"""


def test_factory_that_raises_or_returns_no_module_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "user_factories.py").write_text(FACTORIES)
    (tmp_path / "broken_module.py").write_text("raise KeyError('at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match=r"model factory 'user_factories:boom' raised RuntimeError: weights not found; fix it so that boom\(\)") as err:
        build_model("user_factories:boom")
    one_line(err)
    with pytest.raises(ValueError, match=r"returned dict, not a torch.nn.Module; make not_a_model\(\) return the model itself") as err:
        build_model("user_factories:not_a_model")
    one_line(err)
    with pytest.raises(ValueError, match="cannot load model factory 'broken_module:f': KeyError: 'at import'") as err:
        build_model("broken_module:f")
    one_line(err)
    assert isinstance(build_model("user_factories:good"), nn.Linear)


@pytest.mark.parametrize("device", ["meta", "xla", "cuda:7" if not torch.cuda.is_available() else "cuda:99", "bogus"])
def test_unsupported_devices_are_clear_errors(device):
    with pytest.raises(ValueError, match="use cpu, cuda|use --device cpu|use cuda:0") as err:
        pick_device(device)
    one_line(err)
    assert pick_device("cpu") == torch.device("cpu")


def test_every_flag_named_in_an_error_exists():
    from edgeprune.cli import build_parser

    commands = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    flags = {opt for group in commands for sub in group.choices.values() for a in sub._actions for opt in a.option_strings}
    named = set()
    for module in ("checkpoint", "data", "models", "files", "device"):
        named |= set(re.findall(r"(?<![\w-])--[a-z][a-z-]*[a-z]", (SRC / "edgeprune" / f"{module}.py").read_text()))
    assert named and named <= flags, f"flags named in messages but not accepted by the CLI: {sorted(named - flags)}"


def test_interrupted_write_leaves_nothing_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "report.md"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise KeyboardInterrupt
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]


def _write_and_die(target: Path, report: Path) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text("partial")
        report.write_text(str(tmp))
        os.kill(os.getpid(), signal.SIGKILL)


def test_killed_writers_temporary_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "data" / "train-images"
    status = in_child(_write_and_die, target, tmp_path / "tmp-name")
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    tmp = Path((tmp_path / "tmp-name").read_text())
    assert tmp.exists() and tmp.parent == target.parent and not target.exists()
    write_text_atomic(target, "done")
    assert target.read_text() == "done" and sorted(p.name for p in target.parent.iterdir()) == ["train-images"]


def test_live_writers_temporary_is_left_alone(tmp_path):
    target = tmp_path / "shared.json"
    go_read, go_write = os.pipe()
    name_read, name_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # a second writer that holds its temporary file until told to finish
        code = 1
        try:
            with atomic_path(target) as tmp:
                tmp.write_text("from the child")
                os.write(name_write, str(tmp).encode())
                os.read(go_read, 1)
            code = 0
        finally:
            os._exit(code)
    try:
        tmp = Path(os.read(name_read, 4096).decode())
        write_text_atomic(target, "parent")
        assert tmp.exists() and target.read_text() == "parent"
    finally:  # always let the child finish, even when an assertion failed
        os.write(go_write, b"x")
        status = os.waitpid(pid, 0)[1]
        for fd in (go_read, go_write, name_read, name_write):
            os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0
    assert target.read_text() == "from the child" and sorted(p.name for p in tmp_path.iterdir()) == ["shared.json"]


@pytest.mark.parametrize("lie", ["shape", "offsets"])
def test_header_claiming_more_bytes_than_the_file_holds_is_refused(tmp_path, lie):
    """A raw safetensors header (8-byte length, JSON) that promises 40 GB while the file holds 48 bytes."""
    header = {"__metadata__": {"spec": json.dumps({"name": "basiccnn"})}, "w": {"dtype": "F32", "shape": [3, 4], "data_offsets": [0, 48]}}
    if lie == "shape":
        header["w"]["shape"] = [100_000, 100_000]
    else:
        header["w"].update(shape=[100_000, 100_000], data_offsets=[0, 4 * 10**10])
    text = json.dumps(header).encode()
    path = tmp_path / "liar.safetensors"
    path.write_bytes(len(text).to_bytes(8, "little") + text + bytes(48))
    with pytest.raises(ValueError, match="not a readable safetensors file .*; re-save it or check the path") as err:
        load_checkpoint(path)
    one_line(err)


def seed_image_folder(root: Path, classes: int) -> Path:
    """An image folder of ``classes`` class folders, two small PNGs each, in train/ and test/."""
    from PIL import Image

    for split in ("train", "test"):
        for index in range(classes):
            (root / split / f"class{index}").mkdir(parents=True)
            for image in range(2):
                Image.new("RGB", (32, 32), (index * 20, image * 90, 50)).save(root / split / f"class{index}" / f"{image}.png")
    return root


def test_the_seed_pth_exports_with_an_image_folder_and_no_other_model_flag(tmp_path, capsys):
    from edgeprune.cli import main
    from edgeprune.export.epz import load_compressed, read_header

    torch.manual_seed(3)
    seed = BasicCNN()  # the seed's CIFAR-10 network: 3 x 32 x 32 images, 10 classes
    torch.save(seed.state_dict(), tmp_path / "BasicCNN_model.pth")
    folder = seed_image_folder(tmp_path / "images", 10)
    out = tmp_path / "seed.epz"
    argv = ["export", str(tmp_path / "BasicCNN_model.pth"), "--model", "basiccnn", "--dataset", "imagefolder",
            "--data-dir", str(folder), "--format", "epz", "--values", "fp32", "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    assert json.loads(read_header(out)["spec"]) == {"name": "basiccnn", "in_channels": 3, "num_classes": 10, "image_size": 32}
    decoded = load_compressed(out)
    assert decoded.keys() == seed.state_dict().keys()
    assert all(torch.equal(decoded[name], tensor) for name, tensor in seed.state_dict().items())


def test_an_image_folder_without_classes_names_the_one_missing_flag(tmp_path, capsys):
    from edgeprune.cli import main

    torch.save(BasicCNN().state_dict(), tmp_path / "seed.pth")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    argv = ["export", str(tmp_path / "seed.pth"), "--dataset", "imagefolder", "--data-dir", str(tmp_path / "empty"),
            "--format", "epz", "--out", str(tmp_path / "m.epz")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--num-classes" in err and "has no model spec" in err
    assert not any(flag in err for flag in ("--model", "--channels", "--image-size", "--dataset")), err
    # ten class folders, but the file was trained on other images: only the flags that differ are named
    seed_image_folder(tmp_path / "ten", 10)
    torch.save(BasicCNN(in_channels=3, num_classes=10, image_size=28).state_dict(), tmp_path / "small.pth")
    argv[1], argv[5] = str(tmp_path / "small.pth"), str(tmp_path / "ten")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "give --image-size 28 (the file holds a basiccnn for 3-channel images of 28 to 31 pixels and 10 classes)" in err
    assert not any(flag in err for flag in ("--model", "--channels", "--num-classes", "--dataset")), err
