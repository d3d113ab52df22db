"""ModelSpec's input shape and width: validated, saved in a checkpoint's header and read back; old headers still load."""

import json

import pytest
import torch
from safetensors.torch import save_file

from edgeprune.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from edgeprune.models import BasicCNN, ModelSpec, build_model


def test_sample_shape_defaults_to_the_square_image():
    assert ModelSpec("basiccnn", 3, 10, 32).sample_shape == (3, 32, 32)
    assert ModelSpec("dscnn", 1, 12, 32, input_shape=(1, 49, 10)).sample_shape == (1, 49, 10)
    assert ModelSpec("fc_autoencoder", input_shape=[640]).input_shape == (640,)  # a list (as JSON holds it) becomes a tuple


def test_spec_with_shape_and_width_round_trips_through_a_checkpoint(tmp_path):
    spec = ModelSpec("resnet8", 1, 12, 32, input_shape=(1, 20, 12), width=0.5)
    path = save_checkpoint(tmp_path / "m.safetensors", spec.build(seed=0), spec)
    model, loaded, _, _ = load_checkpoint(path)
    assert loaded == spec and loaded.input_shape == (1, 20, 12) and loaded.width == 0.5
    assert model.conv1.weight.shape == (8, 1, 3, 3)  # 16 filters at width 0.5
    assert model(torch.randn(2, 1, 20, 12)).shape == (2, 12)


def test_a_header_without_the_new_fields_loads_as_before(tmp_path):
    state = BasicCNN(1, 10, 28).state_dict()
    path = tmp_path / "old.safetensors"
    old = {"name": "basiccnn", "in_channels": 1, "num_classes": 10, "image_size": 28}  # as edgeprune wrote it before
    save_file(state, str(path), metadata={"format": CHECKPOINT_FORMAT, "spec": json.dumps(old), "info": "{}"})
    _, spec, _, _ = load_checkpoint(path)
    assert spec == ModelSpec("basiccnn", 1, 10, 28) and spec.input_shape is None and spec.width is None


@pytest.mark.parametrize("field, value, message", [
    ("input_shape", [], "1 to 4 dimensions"),
    ("input_shape", [1, 2, 3, 4, 5], "1 to 4 dimensions"),
    ("input_shape", "1x49x10", "1 to 4 dimensions"),
    ("input_shape", [1, 0, 10], "not an int of 1 to 65536"),
    ("input_shape", [1, 49.0, 10], "not an int of 1 to 65536"),
    ("input_shape", [1, True, 10], "not an int of 1 to 65536"),
    ("input_shape", [2, 65_536, 65_536], "values per sample"),
    ("input_shape", [3, 49, 10], "3 channels .* but in_channels is 1"),
    ("width", 0, "width must be a number above 0"),
    ("width", -0.5, "width must be a number above 0"),
    ("width", 1e9, "width must be a number above 0"),
    ("width", "0.25", "width must be a number above 0"),
    ("width", True, "width must be a number above 0"),
])
def test_forged_shape_or_width_is_a_damaged_header(tmp_path, field, value, message):
    spec = {"name": "basiccnn", "in_channels": 1, "num_classes": 10, "image_size": 28, field: value}
    path = tmp_path / "evil.safetensors"
    save_file(BasicCNN(1, 10, 28).state_dict(), str(path),
              metadata={"format": CHECKPOINT_FORMAT, "spec": json.dumps(spec), "info": "{}"})
    with pytest.raises(ValueError, match=f"model spec header is damaged.*{message}") as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value)


def test_bounds_are_inclusive():
    ModelSpec("fc_autoencoder", input_shape=(65_536,), width=16)
    ModelSpec("dscnn", input_shape=(1, 1, 1, 1), width=1e-3)


@pytest.mark.parametrize("name, kwargs, message", [
    ("basiccnn", {"width": 0.5}, "has no width multiplier"),
    ("fc_autoencoder", {"input_shape": (1, 49, 10)}, "takes 1-D samples"),
    ("dscnn", {"input_shape": (640,)}, "takes C x H x W samples"),
    ("resnet18", {"width": 0.5}, "not built in, so it takes no width"),
    ("resnet18", {"input_shape": (3, 640)}, "takes C x H x W images"),
])
def test_a_model_that_cannot_take_the_shape_or_width_says_so(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_model(name, **kwargs)


def test_the_width_flag_reaches_the_saved_model(tmp_path, fashion_slice, capsys):
    """``--width 2`` trains a ResNet-8 of 32, 64 and 128 filters and saves the width in its spec; a width of 0 is one line."""
    from edgeprune.cli import main
    from edgeprune.config import RunConfig

    out = tmp_path / "wide.safetensors"
    assert main(["train", "--model", "resnet8", "--width", "2", "--data-dir", fashion_slice, "--val-size", "50",
                 "--limit", "64", "--epochs", "0", "--out", str(out)]) == 0
    model, spec, _, _ = load_checkpoint(out)
    assert spec.width == 2 and model.conv1.out_channels == 32 and model.fc.in_features == 128
    with pytest.raises(ValueError, match="width must be a positive finite number, got 0"):
        RunConfig(width=0)
    with pytest.raises(SystemExit) as refused:
        main(["run", "--model", "resnet8", "--width", "-1", "--out", str(tmp_path / "r")])
    assert refused.value.code == 2 and "argument --width: -1 is out of range" in capsys.readouterr().err
