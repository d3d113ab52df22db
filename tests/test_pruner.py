"""Sparsity dict resolution and validation, FineGrainedPruner, masks through Adam and through save/load."""

import json

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from edgeprune.checkpoint import load_checkpoint, load_masks, masks_path_for, save_checkpoint, save_masks
from edgeprune.models import ModelSpec
from edgeprune.models import BasicCNN
from edgeprune.prune.pruner import FineGrainedPruner
from edgeprune.prune.settings import load_layer_settings, resolve_sparsity_dict
from edgeprune.training import finetune

NAMES = ["conv.weight", "conv.bias", "fc.weight", "fc.bias"]
PRUNABLE = ["conv.weight", "fc.weight"]


def test_exact_then_regex_then_default():
    spec = {"fc.weight": 0.9, "re:conv\\..*": 0.3, "_default": 0.1}
    assert resolve_sparsity_dict(spec, PRUNABLE, NAMES) == {"conv.weight": 0.3, "fc.weight": 0.9}
    assert resolve_sparsity_dict({"_default": 0.5}, PRUNABLE, NAMES) == {"conv.weight": 0.5, "fc.weight": 0.5}


def test_explicit_bias_is_pruned_when_asked():
    assert resolve_sparsity_dict({"fc.bias": 0.5, "_default": 0.2}, PRUNABLE, NAMES)["fc.bias"] == 0.5


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown parameter name 'fc1.weight'.*conv.weight, conv.bias, fc.weight"):
        resolve_sparsity_dict({"fc1.weight": 0.5}, PRUNABLE, NAMES)
    with pytest.raises(ValueError, match="matches no parameter"):
        resolve_sparsity_dict({"re:layer.*": 0.5}, PRUNABLE, NAMES)


@pytest.mark.parametrize("bad", [1.2, -0.5, float("nan"), True, "0.5", None, [0.5]])
def test_bad_values_are_rejected(bad):
    with pytest.raises(ValueError, match="fc.weight"):
        resolve_sparsity_dict({"fc.weight": bad}, PRUNABLE, NAMES)


def test_unnamed_layer_is_left_dense_and_said(tiny_net):
    before = tiny_net.conv.weight.detach().clone()
    with pytest.warns(UserWarning, match="conv.weight.*left dense"):
        pruner = FineGrainedPruner(tiny_net, {"fc.weight": 0.5})
    assert torch.equal(tiny_net.conv.weight, before)
    assert list(pruner.masks) == ["fc.weight"]


def test_dict_from_json_toml_yaml_and_inline(tmp_path):
    expected = {"fc.weight": 0.5, "_default": 0.25}
    (tmp_path / "s.json").write_text(json.dumps(expected))
    (tmp_path / "s.toml").write_text('fc.weight = 0.5\n_default = 0.25\n')  # an unquoted dotted key is a table
    (tmp_path / "s.yaml").write_text("fc.weight: 0.5\n_default: 0.25\n")
    for name in ("s.json", "s.toml", "s.yaml"):
        assert load_layer_settings(str(tmp_path / name)) == expected
    assert load_layer_settings(json.dumps(expected)) == expected
    (tmp_path / "evil.yaml").write_text("!!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ValueError, match="cannot be parsed"):
        load_layer_settings(str(tmp_path / "evil.yaml"))
    with pytest.raises(ValueError, match="no such file"):
        load_layer_settings(str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="not valid JSON"):
        load_layer_settings("{fc.weight: 0.5}")
    assert load_layer_settings(" 0.9") == {"_default": 0.9}  # one number: every layer
    with pytest.raises(ValueError, match="no such file"):
        load_layer_settings("nan")


def test_pruner_exact_counts_and_apply(tiny_net):
    pruner = FineGrainedPruner(tiny_net, {"conv.weight": 0.4, "fc.weight": 0.67})
    assert int((tiny_net.conv.weight == 0).sum()) == round(0.4 * 135)
    assert int((tiny_net.fc.weight == 0).sum()) == round(0.67 * 875)
    with torch.no_grad():
        tiny_net.fc.weight.add_(1.0)
    pruner.apply(tiny_net)
    assert torch.equal(tiny_net.fc.weight == 0, ~pruner.masks["fc.weight"])


def _synthetic_loader(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 5, 5, generator=g)
    y = torch.randint(0, 7, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=False)


def test_masks_survive_adam_finetuning(tiny_net):
    pruner = FineGrainedPruner(tiny_net, {"_default": 0.6})
    before = {n: p.detach().clone() for n, p in tiny_net.named_parameters()}
    loader = _synthetic_loader()
    history = finetune(tiny_net, pruner, loader, epochs=2, eval_loader=loader, lr=1e-2, device="cpu")
    assert len(history.accuracy) == 2 and history.best_epoch in (1, 2)
    for name, mask in pruner.masks.items():
        weight = dict(tiny_net.named_parameters())[name]
        assert torch.all(weight[~mask] == 0), name
        assert not torch.equal(weight, before[name]), "the kept weights were trained"


def test_masks_and_weights_survive_save_and_load(tmp_path):
    torch.manual_seed(0)
    model = BasicCNN(in_channels=1, image_size=28)
    pruner = FineGrainedPruner(model, {"_default": 0.7})
    spec = ModelSpec("basiccnn", 1, 10, 28)
    path = save_checkpoint(tmp_path / "pruned.safetensors", model, spec, pruner.masks)
    assert masks_path_for(path).exists()
    loaded, loaded_spec, masks, _ = load_checkpoint(path)
    assert loaded_spec == spec
    assert masks.keys() == pruner.masks.keys()
    for name, mask in masks.items():
        assert torch.equal(mask, pruner.masks[name])
    for (n, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), n
    save_masks(tmp_path / "m.safetensors", pruner.masks)
    assert all(torch.equal(load_masks(tmp_path / "m.safetensors")[n], m) for n, m in pruner.masks.items())


def test_seed_pth_state_dict_loads_unchanged(tmp_path):
    torch.manual_seed(0)
    seed_model = BasicCNN()
    torch.save(seed_model.state_dict(), tmp_path / "BasicCNN_model.pth")
    model, spec, masks, _ = load_checkpoint(tmp_path / "BasicCNN_model.pth", ModelSpec("basiccnn", 3, 10, 32))
    assert masks is None
    assert all(torch.equal(a, b) for a, b in zip(seed_model.state_dict().values(), model.state_dict().values()))
    with pytest.raises(ValueError, match="do not fit model"):
        load_checkpoint(tmp_path / "BasicCNN_model.pth", ModelSpec("basiccnn", 1, 10, 28))


def test_corrupt_and_foreign_files_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_checkpoint(bad)
    pickled = tmp_path / "evil.pth"
    import pickle

    pickled.write_bytes(pickle.dumps(Exploit(tmp_path / "pwned")))
    with pytest.raises(ValueError, match="weights_only=True"):
        load_checkpoint(pickled, ModelSpec())
    assert not (tmp_path / "pwned").exists()


class Exploit:
    """A pickle that runs a shell command when unpickled by plain pickle."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.target}",))


def test_factory_named_in_a_file_is_not_run_unless_asked(tmp_path, tiny_net):
    path = save_checkpoint(tmp_path / "mine.safetensors", tiny_net, ModelSpec("conftest:TinyNet", 3, 7, 5))
    with pytest.raises(ValueError, match="pass --model conftest:TinyNet"):
        load_checkpoint(path)
    model, spec, _, _ = load_checkpoint(path, ModelSpec("conftest:TinyNet", 3, 7, 5))
    assert spec.name == "conftest:TinyNet" and torch.equal(model.fc.weight, tiny_net.fc.weight)


def test_files_get_usual_permissions_and_tied_weights_save(tmp_path):
    import os

    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(3, 3)
            self.b = torch.nn.Linear(3, 3)
            self.b.weight = self.a.weight

        def forward(self, x):
            return self.b(self.a(x))

    path = save_checkpoint(tmp_path / "tied.safetensors", Tied(), ModelSpec())
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises(ValueError, match="must be a positive int"):
        ModelSpec("basiccnn", 0)
