"""Masks attached to the model: no optimizer, user loop, copy or device move brings a pruned weight back."""

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import prune as torch_prune
from torch.utils.data import DataLoader, TensorDataset

from edgeprune.prune.masks import fine_grained_prune
from edgeprune.prune.pruner import FineGrainedPruner, is_pruned, remove
from edgeprune.training import evaluate, finetune, train

SPARSITY = {"conv.weight": 0.6, "fc.weight": 0.7}
OPTIMIZERS = {
    "adam": lambda params: torch.optim.Adam(params, lr=1e-2),
    "adam_l2": lambda params: torch.optim.Adam(params, lr=1e-2, weight_decay=0.1),
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1),
    "sgd_momentum_wd": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=0.1),
    "sgd_nesterov": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1),
}


def _batches(n_batches=6, batch=16, seed=1):
    """Synthetic (x, y) batches for TinyNet: 3x5x5 inputs, 7 classes, labels a fixed linear function of x."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_batches * batch, 3, 5, 5, generator=g)
    y = (x.flatten(1) @ torch.randn(75, 7, generator=g)).argmax(dim=1)
    return list(zip(x.split(batch), y.split(batch)))


def _pruned_values(model, masks):
    """Every weight of ``model`` at a pruned position, flattened into one tensor."""
    params = dict(model.named_parameters())
    return torch.cat([params[name].detach()[~mask] for name, mask in masks.items()])


def _all_plus_zero(values):
    """True when every value is +0.0 bit for bit (not -0.0, not a tiny number)."""
    return bool((values.view(torch.int32) == 0).all())


def _user_loop(model, optimizer, batches, check=None):
    for x, y in batches:
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        if check is not None:
            check()


@pytest.mark.parametrize("make_optimizer", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
def test_plain_user_loop_keeps_every_pruned_weight_exactly_zero(tiny_net, make_optimizer):
    pruner = FineGrainedPruner(tiny_net, SPARSITY)
    kept_before = {n: p.detach().clone() for n, p in tiny_net.named_parameters()}
    optimizer = make_optimizer(tiny_net.parameters())
    seen = []
    _user_loop(tiny_net, optimizer, _batches() * 3, lambda: seen.append(_all_plus_zero(_pruned_values(tiny_net, pruner.masks))))
    assert len(seen) == 18 and all(seen)
    for name, mask in pruner.masks.items():
        param = dict(tiny_net.named_parameters())[name]
        assert not torch.equal(param[mask], kept_before[name][mask]), f"{name}: kept weights were not trained"
        for key, state in optimizer.state[param].items():  # momentum and moments never gather anything there
            if torch.is_tensor(state) and state.shape == mask.shape:
                assert torch.all(state[~mask] == 0), f"{name}: optimizer state {key!r} at pruned positions"


def test_gradients_at_pruned_positions_are_exactly_zero(tiny_net):
    pruner = FineGrainedPruner(tiny_net, SPARSITY)
    x, y = _batches()[0]
    F.cross_entropy(tiny_net(x), y).backward()
    params = [tiny_net.conv.weight, tiny_net.fc.weight]
    by_autograd = torch.autograd.grad(F.cross_entropy(tiny_net(x), y), params)
    for param, grad, name in zip(params, by_autograd, ("conv.weight", "fc.weight")):
        mask = pruner.masks[name]
        assert torch.all(param.grad[~mask] == 0) and torch.all(grad[~mask] == 0), name
        assert torch.count_nonzero(param.grad[mask]) > 0.9 * mask.sum(), name
        assert torch.equal(param.grad, grad)


def test_optimizer_state_from_before_pruning_cannot_revive_weights(tiny_net):
    """Momentum gathered while dense keeps pushing pruned weights; the step hook puts them back to 0."""
    optimizer = torch.optim.SGD(tiny_net.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    _user_loop(tiny_net, optimizer, _batches()[:3])
    pruner = FineGrainedPruner(tiny_net, SPARSITY)
    stale = optimizer.state[tiny_net.fc.weight]["momentum_buffer"][~pruner.masks["fc.weight"]]
    assert torch.count_nonzero(stale) > 0.9 * stale.numel()
    seen = []
    _user_loop(tiny_net, optimizer, _batches(), lambda: seen.append(_all_plus_zero(_pruned_values(tiny_net, pruner.masks))))
    assert all(seen)


class _Watched:
    """A loader that records, each time a batch is fetched, how many pruned weights of the model are non-zero."""

    def __init__(self, batches, model, masks):
        self.batches, self.model, self.masks, self.nonzero = batches, model, masks, []

    def __iter__(self):
        for batch in self.batches:
            self.nonzero.append(int(torch.count_nonzero(_pruned_values(self.model, self.masks))))
            yield batch

    def __len__(self):
        return len(self.batches)


def test_finetune_keeps_pruned_weights_zero_after_every_step(tiny_net):
    """A pruner from saved masks (nothing attached yet), as ``edgeprune finetune`` has it."""
    masks = {name: fine_grained_prune(dict(tiny_net.named_parameters())[name], s) for name, s in SPARSITY.items()}
    assert not is_pruned(tiny_net)
    watched = _Watched(_batches(), tiny_net, masks)
    finetune(tiny_net, FineGrainedPruner.from_masks(masks), watched, epochs=2, lr=5e-2, device="cpu")
    assert len(watched.nonzero) == 12 and watched.nonzero == [0] * 12
    assert is_pruned(tiny_net) and torch.count_nonzero(_pruned_values(tiny_net, masks)) == 0


class _TurnsBad:
    """Training batches with the right labels, except in epoch ``bad_epoch``: wrong labels, many passes."""

    def __init__(self, batches, bad_epoch):
        self.batches, self.bad_epoch, self.epoch = batches, bad_epoch, 0

    def __iter__(self):
        self.epoch += 1
        if self.epoch != self.bad_epoch:
            yield from self.batches
            return
        for _ in range(5):
            yield from ((x, (y + 3) % 7) for x, y in self.batches)


@pytest.mark.parametrize("how", ["train", "finetune"])
def test_keep_best_returns_the_best_epochs_weights(tiny_net, how):
    batches = _batches(n_batches=6)
    eval_loader = DataLoader(TensorDataset(*map(torch.cat, zip(*batches))), batch_size=32)
    loader = _TurnsBad(batches, bad_epoch=3)
    if how == "train":
        history = train(tiny_net, loader, 3, eval_loader, lr=1e-2, device="cpu", keep_best=True)
    else:
        pruner = FineGrainedPruner(tiny_net, SPARSITY)
        history = finetune(tiny_net, pruner, loader, 3, eval_loader, lr=1e-2, device="cpu")
        assert torch.count_nonzero(_pruned_values(tiny_net, pruner.masks)) == 0
    best = max(history.accuracy[:2])
    assert history.accuracy[2] < best, f"the test's bad epoch did not hurt: {history.accuracy}"
    assert history.best_epoch == history.accuracy.index(best) + 1
    assert evaluate(tiny_net, eval_loader, "cpu") == best


def test_after_step_still_runs_after_every_step(tiny_net):
    calls = []
    train(tiny_net, _batches(), 2, lr=1e-3, device="cpu", after_step=calls.append)
    assert calls == [tiny_net] * 12


def test_remove_and_is_pruned(tiny_net):
    keys = list(tiny_net.state_dict())
    assert not is_pruned(tiny_net)
    pruner = FineGrainedPruner(tiny_net, SPARSITY)
    assert is_pruned(tiny_net) and list(tiny_net.state_dict()) == keys
    assert {n for n, _ in tiny_net.named_buffers()} == {"conv.weight_mask", "fc.weight_mask"}
    with torch.no_grad():
        tiny_net.fc.weight.add_(1.0)  # changed outside any optimizer: remove() leaves the pruned ones at 0 anyway
    assert remove(tiny_net) is tiny_net
    assert not is_pruned(tiny_net) and list(tiny_net.named_buffers()) == []
    assert list(tiny_net.state_dict()) == keys
    assert all(type(p) is torch.nn.Parameter for p in tiny_net.parameters())
    assert torch.count_nonzero(_pruned_values(tiny_net, pruner.masks)) == 0
    x, y = _batches()[0]
    F.cross_entropy(tiny_net(x), y).backward()  # ordinary parameters again: gradients everywhere
    assert torch.count_nonzero(tiny_net.fc.weight.grad[~pruner.masks["fc.weight"]]) > 0
    torch.optim.SGD(tiny_net.parameters(), lr=0.1).step()
    assert torch.count_nonzero(_pruned_values(tiny_net, pruner.masks)) > 0
    assert remove(tiny_net) is tiny_net  # removing twice is harmless
    # Nothing is left behind on the parameters: torch's own pruning, whose buffer has the same name, works after it.
    torch_prune.custom_from_mask(tiny_net.fc, "weight", torch.ones(7, 125))
    F.cross_entropy(tiny_net(x), y).backward()
    assert torch.count_nonzero(tiny_net.fc.weight_orig.grad[~pruner.masks["fc.weight"]]) > 0


def test_attach_zeroes_the_pruned_weights_of_a_dense_model(tiny_net):
    masks = {"fc.weight": torch.rand(7, 125, generator=torch.Generator().manual_seed(3)) > 0.4}
    assert torch.count_nonzero(_pruned_values(tiny_net, masks)) > 0
    FineGrainedPruner.from_masks(masks).attach(tiny_net)
    assert _all_plus_zero(_pruned_values(tiny_net, masks)) and torch.all(tiny_net.fc.weight[masks["fc.weight"]] != 0)


def test_attach_again_replaces_masks_and_bad_masks_are_clear_errors(tiny_net):
    first = FineGrainedPruner(tiny_net, {"fc.weight": 0.9, "conv.weight": 0.0})
    pruner = FineGrainedPruner(tiny_net, {"fc.weight": 0.5, "conv.weight": 0.0})  # re-pruning a pruned model
    assert torch.equal(tiny_net.fc.weight_mask, pruner.masks["fc.weight"].float())
    assert len(tiny_net.fc._forward_pre_hooks) == 1
    x, y = _batches()[0]
    F.cross_entropy(tiny_net(x), y).backward()
    released = ~first.masks["fc.weight"] & pruner.masks["fc.weight"]
    assert released.sum() == round(0.9 * 875) - round(0.5 * 875) and torch.count_nonzero(tiny_net.fc.weight.grad[released]) > 0
    assert torch.all(tiny_net.fc.weight.grad[~pruner.masks["fc.weight"]] == 0)
    with pytest.raises(ValueError, match="'fc.weight'.*has \\(7, 125\\)"):
        FineGrainedPruner.from_masks({"fc.weight": torch.ones(7, 124, dtype=torch.bool)}).attach(tiny_net)
    with pytest.raises(ValueError, match="'fc2.weight'.*no such parameter"):
        FineGrainedPruner.from_masks({"fc2.weight": torch.ones(7, 125, dtype=torch.bool)}).attach(tiny_net)


@pytest.mark.parametrize("make_optimizer", [OPTIMIZERS["sgd_momentum_wd"], OPTIMIZERS["adam_l2"]], ids=["sgd", "adam"])
def test_same_weights_as_torch_prune_after_identical_steps(tiny_net, make_optimizer):
    reference = copy.deepcopy(tiny_net)
    pruner = FineGrainedPruner(tiny_net, SPARSITY)
    for name, mask in pruner.masks.items():
        module, _, attr = name.rpartition(".")
        torch_prune.custom_from_mask(reference.get_submodule(module), attr, mask)
    ours, theirs = make_optimizer(tiny_net.parameters()), make_optimizer(reference.parameters())
    for x, y in _batches() * 2:
        for model, optimizer in ((tiny_net, ours), (reference, theirs)):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    for module in ("conv", "fc"):
        mine, ref = tiny_net.get_submodule(module), reference.get_submodule(module)
        assert torch.equal(mine.weight, ref.weight_orig.detach() * ref.weight_mask), module
        assert torch.equal(mine.bias, ref.bias), module


def test_deepcopy_and_pickle_carry_working_masks_of_their_own(tiny_net):
    pruner = FineGrainedPruner(tiny_net, SPARSITY)
    copies = [copy.deepcopy(tiny_net), pickle.loads(pickle.dumps(tiny_net))]
    assert all(c.fc.weight_mask.data_ptr() != tiny_net.fc.weight_mask.data_ptr() for c in copies)
    remove(tiny_net)  # the copies' masks do not depend on the original's
    for clone in copies:
        assert is_pruned(clone) and torch.equal(clone.fc.weight_mask, pruner.masks["fc.weight"].float())
        with torch.inference_mode():  # a first forward pass without autograd (evaluate) installs the hooks too
            clone(_batches()[0][0])
        seen = []
        _user_loop(clone, torch.optim.Adam(clone.parameters(), lr=1e-2),
                   _batches(), lambda: seen.append(clone.fc.weight.grad[~pruner.masks["fc.weight"]].abs().max().item()))
        assert seen == [0.0] * 6
        assert torch.count_nonzero(_pruned_values(clone, pruner.masks)) == 0
        remove(clone)
        assert not is_pruned(clone)


def test_masks_move_with_the_model(tiny_net):
    pruner = FineGrainedPruner(tiny_net, SPARSITY)
    tiny_net.double()
    assert tiny_net.fc.weight_mask.dtype == torch.float64
    _user_loop(tiny_net, torch.optim.Adam(tiny_net.parameters(), lr=1e-2), [(x.double(), y) for x, y in _batches()])
    assert torch.count_nonzero(_pruned_values(tiny_net, pruner.masks)) == 0
    moved = copy.deepcopy(tiny_net).to("meta")
    assert moved.fc.weight_mask.device.type == "meta" and moved.conv.weight_mask.device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_masks_move_to_cuda_and_keep_working(tiny_net):
    pruner = FineGrainedPruner(tiny_net, SPARSITY)
    tiny_net.cuda()
    assert tiny_net.fc.weight_mask.is_cuda
    _user_loop(tiny_net, torch.optim.Adam(tiny_net.parameters(), lr=1e-2), [(x.cuda(), y.cuda()) for x, y in _batches()])
    assert torch.count_nonzero(_pruned_values(tiny_net.cpu(), pruner.masks)) == 0
