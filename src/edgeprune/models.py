"""Models: the seed's BasicCNN, torchvision classifiers by name, a user's own ``module:factory``, and resizing a model to
the (channel-pruned) shapes of a state dict."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    "BUILT_IN",
    "BasicCNN",
    "ModelSpec",
    "ResNet8",
    "SPEC_LIMITS",
    "TORCHVISION_HINT",
    "build_model",
    "build_skeleton",
    "prunable_parameters",
    "resize_to_state_dict",
]

TORCHVISION_HINT = "any torchvision classification model name, e.g. resnet18, vgg11_bn, mobilenet_v2"
# Largest values a ModelSpec accepts: far above any edge classifier, low enough that a forged
# checkpoint header cannot make a model (or a MACs count) that needs many gigabytes.
SPEC_LIMITS = {"in_channels": 256, "num_classes": 100_000, "image_size": 4096}


class BasicCNN(nn.Module):
    """The seed's CNN: conv1 (5x5, 16) -> pool -> conv2 (5x5, 32) -> pool -> fc1 (120) -> fc2 (classes).

    ``BasicCNN()`` is exactly the seed's CIFAR-10 network (3x32x32 input), so a state_dict
    saved by the seed loads unchanged. ``BasicCNN(in_channels=1, image_size=28)`` is the
    Fashion-MNIST variant.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> None:
        super().__init__()
        if image_size < 4:
            raise ValueError(f"BasicCNN: image_size must be at least 4 (two 2x2 poolings), got {image_size}")
        self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=5, stride=1, padding=2)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=5, stride=1, padding=2)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        side = image_size // 2 // 2
        self.fc1 = nn.Linear(32 * side * side, 120)
        self.fc2 = nn.Linear(120, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        return self.fc2(x)


class _ResidualStage(nn.Module):
    """One ResNet-8 stage: conv-BN-ReLU, conv-BN, plus the input (or its 1x1 strided conv), then ReLU."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = nn.Conv2d(in_channels, channels, 1, stride=stride) if stride != 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet8(nn.Module):
    """MLPerf Tiny's image-classification model (ResNet-8 v1, ``resnet_v1_eembc``), for 32x32 images.

    A 3x3 conv of 16 with BN and ReLU; three residual stages of 16, 32 and 64 filters, the 2nd and
    3rd with stride 2 and a 1x1 stride-2 shortcut conv (no BN on the shortcut); global average
    pooling; a linear layer to the classes. With batch norm folded into the convolutions (as in its
    int8 ``.tflite``) it has 77,706 parameters and 12.50 M MACs at 3x32x32.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> None:
        super().__init__()
        if image_size < 4:
            raise ValueError(f"ResNet8: image_size must be at least 4 (two stride-2 stages), got {image_size}")
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.stage1 = _ResidualStage(16, 16, 1)
        self.stage2 = _ResidualStage(16, 32, 2)
        self.stage3 = _ResidualStage(32, 64, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


BUILT_IN = {"basiccnn": BasicCNN, "resnet8": ResNet8}
"""The models edgeprune defines itself, by ``--model`` name."""


def _one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` of an exception raised by a user's code."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def build_model(name: str, in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> nn.Module:
    """Build a model by name: ``basiccnn``, ``resnet8``, a torchvision classifier (``resnet18``), or ``module.path:factory``.

    A user's factory is called with no arguments. A torchvision model gets ``num_classes``;
    its first layer is left as torchvision builds it (3 input channels), so give it 3-channel data.
    """
    if name.lower() in BUILT_IN:
        return BUILT_IN[name.lower()](in_channels=in_channels, num_classes=num_classes, image_size=image_size)
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except Exception as exc:  # importing the user's module runs it: any error, as one line
            raise ValueError(
                f"cannot load model factory {name!r}: {_one_line(exc)}; give 'module.path:function' where "
                "module.path is importable (on PYTHONPATH) and function returns an nn.Module"
            ) from exc
        try:
            model = factory()
        except Exception as exc:  # the user's code may raise anything; report it as one line
            raise ValueError(
                f"model factory {name!r} raised {_one_line(exc)}; fix it so that "
                f"{attr}() with no arguments returns a torch.nn.Module"
            ) from exc
        if not isinstance(model, nn.Module):
            raise ValueError(
                f"model factory {name!r} returned {type(model).__name__}, not a torch.nn.Module; "
                f"make {attr}() return the model itself (e.g. return MyNet())"
            )
        return model
    import torchvision.models as tvm

    available = tvm.list_models(module=tvm)
    if name not in available:
        raise ValueError(
            f"unknown model {name!r}; use 'basiccnn', 'resnet8', {TORCHVISION_HINT} "
            f"({len(available)} available), or your own 'module.path:factory'"
        )
    if in_channels != 3:
        raise ValueError(
            f"torchvision model {name!r} takes 3-channel images, not {in_channels}; "
            "use --channels 3 (grey images are repeated to RGB)"
        )
    return tvm.get_model(name, weights=None, num_classes=num_classes)


def build_skeleton(spec: ModelSpec) -> nn.Module:
    """The model of ``spec`` with every tensor on the ``meta`` device: true shapes, no memory.

    Use it to check a file's tensors before building the real model. A model whose
    construction computes with tensor values cannot be built on ``meta`` (torchvision's
    RegNets, some factories); it is built on the CPU instead, which
    ``SPEC_LIMITS`` keeps affordable. A spec that cannot be built at all raises the same error there.
    """
    try:
        with torch.device("meta"):
            return spec.build()
    except Exception:  # noqa: BLE001 - anything that fails on meta is retried, and reported, on the CPU
        return spec.build()


def prunable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Parameters that fine-grained pruning touches by default: those with more than one dimension."""
    return {name: p for name, p in model.named_parameters() if p.dim() > 1}


@dataclass(frozen=True)
class ModelSpec:
    """What is needed to rebuild a model before loading its weights."""

    name: str = "basiccnn"
    in_channels: int = 1
    num_classes: int = 10
    image_size: int = 28

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"model name must be a non-empty string, got {self.name!r}")
        for field_name, limit in SPEC_LIMITS.items():
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
                raise ValueError(
                    f"{field_name} must be a positive int of at most {limit}, got {value!r}; "
                    "give the value the model was trained with"
                )

    def build(self, seed: int | None = None) -> nn.Module:
        """A freshly initialised model of this spec; its initial weights are seeded when ``seed`` is given."""
        if seed is not None:
            torch.manual_seed(seed)
        return build_model(self.name, self.in_channels, self.num_classes, self.image_size)


def _new_parameter(old: torch.Tensor, shape: torch.Size) -> nn.Parameter:
    return nn.Parameter(torch.empty(shape, dtype=old.dtype, device=old.device), requires_grad=old.requires_grad)


def _resize_conv(module: nn.Conv2d, shape: torch.Size, name: str) -> None:
    out_channels, in_per_group = shape[0], shape[1]
    if module.groups == 1:
        groups = 1
    else:  # depthwise and grouped convs keep their output channels per group
        per_group = module.out_channels // module.groups
        if out_channels % per_group:
            raise ValueError(f"{name}.weight: {out_channels} output channels do not fit {per_group} per group; the checkpoint does not match this model")
        groups = out_channels // per_group
    module.out_channels, module.in_channels, module.groups = out_channels, groups * in_per_group, groups
    module.weight = _new_parameter(module.weight, shape)
    if module.bias is not None:
        module.bias = _new_parameter(module.bias, torch.Size([out_channels]))


def resize_to_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Resize ``model``'s Conv2d, Linear and BatchNorm modules in place to the shapes stored in ``state_dict``.

    The channel counts (``in_channels``, ``out_channels``, ``groups``, ``in_features``,
    ``out_features``, ``num_features``) follow the stored weights; depthwise convs stay depthwise.
    """
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        weight = state_dict.get(f"{prefix}weight")
        if isinstance(module, nn.Conv2d) and weight is not None and weight.shape != module.weight.shape:
            _resize_conv(module, weight.shape, name)
        elif isinstance(module, nn.Linear) and weight is not None and weight.shape != module.weight.shape:
            module.out_features, module.in_features = weight.shape
            module.weight = _new_parameter(module.weight, weight.shape)
            if module.bias is not None:
                module.bias = _new_parameter(module.bias, weight.shape[:1])
        elif isinstance(module, _BatchNorm):
            stored = weight if weight is not None else state_dict.get(f"{prefix}running_mean")
            if stored is None or stored.shape[0] == module.num_features:
                continue
            size = torch.Size([stored.shape[0]])
            module.num_features = size[0]
            if module.affine:
                module.weight, module.bias = _new_parameter(module.weight, size), _new_parameter(module.bias, size)
            if module.track_running_stats:
                module.running_mean = torch.zeros(size, dtype=module.running_mean.dtype, device=module.running_mean.device)
                module.running_var = torch.ones(size, dtype=module.running_var.dtype, device=module.running_var.device)
    return model
