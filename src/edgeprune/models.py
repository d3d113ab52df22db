"""Models: the seed's BasicCNN, torchvision classifiers by name, and a user's own ``module:factory``."""

from __future__ import annotations

import importlib

import torch
from torch import nn
import torch.nn.functional as F

__all__ = ["BasicCNN", "build_model", "prunable_parameters", "TORCHVISION_HINT"]

TORCHVISION_HINT = "any torchvision classification model name, e.g. resnet18, vgg11_bn, mobilenet_v2"


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


def build_model(name: str, in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> nn.Module:
    """Build a model by name: ``basiccnn``, a torchvision classifier (``resnet18``), or ``module.path:factory``.

    A user's factory is called with no arguments. A torchvision model gets ``num_classes``;
    its first layer is left as torchvision builds it (3 input channels), so give it 3-channel data.
    """
    if name.lower() == "basiccnn":
        return BasicCNN(in_channels=in_channels, num_classes=num_classes, image_size=image_size)
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(
                f"cannot load model factory {name!r}: {exc}; give 'module.path:function' where "
                "module.path is importable (on PYTHONPATH) and function returns an nn.Module"
            ) from exc
        model = factory()
        if not isinstance(model, nn.Module):
            raise ValueError(f"model factory {name!r} returned {type(model).__name__}, not a torch.nn.Module")
        return model
    import torchvision.models as tvm

    available = tvm.list_models(module=tvm)
    if name not in available:
        raise ValueError(
            f"unknown model {name!r}; use 'basiccnn', {TORCHVISION_HINT} "
            f"({len(available)} available), or your own 'module.path:factory'"
        )
    return tvm.get_model(name, weights=None, num_classes=num_classes)


def prunable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Parameters that fine-grained pruning touches by default: those with more than one dimension."""
    return {name: p for name, p in model.named_parameters() if p.dim() > 1}
