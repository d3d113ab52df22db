"""Models: the seed's BasicCNN, MLPerf Tiny's reference models (ResNet-8, DS-CNN, MobileNetV1, the FC autoencoder),
torchvision classifiers by name, a user's own ``module:factory``, and resizing a model to the (channel-pruned) shapes
of a state dict."""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    "BUILT_IN",
    "BasicCNN",
    "DSCNN",
    "FCAutoencoder",
    "INPUT_DIM_LIMIT",
    "MobileNetV1",
    "ModelSpec",
    "ResNet8",
    "SPEC_LIMITS",
    "WIDTH_LIMIT",
    "TORCHVISION_HINT",
    "build_model",
    "build_skeleton",
    "prunable_parameters",
    "resize_to_state_dict",
    "tf_same_padding",
]

TORCHVISION_HINT = "any torchvision classification model name, e.g. resnet18, vgg11_bn, mobilenet_v2"
# Largest values a ModelSpec accepts: far above any edge classifier, low enough that a forged
# checkpoint header cannot make a model (or a MACs count) that needs many gigabytes.
SPEC_LIMITS = {"in_channels": 256, "num_classes": 100_000, "image_size": 4096}
INPUT_DIM_LIMIT = 65_536
"""Largest dimension of a ``ModelSpec.input_shape`` (a 1-D signal may be long); its product is bounded as an image's is."""
WIDTH_LIMIT = 16.0
"""Largest width multiplier a ``ModelSpec`` accepts."""


def _hw(image_size: int | tuple[int, int]) -> tuple[int, int]:
    """``(H, W)`` of an image size given as one side or as ``(H, W)``."""
    return (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))


def _scaled(channels: int, width: float) -> int:
    """A layer's channels times a width multiplier, rounded down as Keras does (at least 1)."""
    return max(1, int(channels * width + 1e-6))


def _image_shape(name: str, shape: tuple[int, ...]) -> tuple[int, tuple[int, int]]:
    """``(channels, (H, W))`` of a C x H x W sample shape; ValueError naming ``name`` for any other rank."""
    if len(shape) != 3:
        raise ValueError(f"model {name!r} takes C x H x W samples, not shape {tuple(shape)}; give a 3-D input_shape")
    return shape[0], (shape[1], shape[2])


def _no_width(name: str, width: float | None) -> None:
    if width is not None:
        raise ValueError(f"model {name!r} has no width multiplier, got width={width}; leave width out for it")


def tf_same_padding(size: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int]) -> tuple[int, int, int, int]:
    """TensorFlow's SAME padding of a ``size`` (H, W) input as ``nn.ZeroPad2d``'s (left, right, top, bottom).

    The output is ceil(size / stride); the padding that needs is split with the odd pixel after (bottom, right).
    """
    pads = []
    for n, k, s in zip(size, kernel, stride):
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    (top, bottom), (left, right) = pads
    return left, right, top, bottom


class BasicCNN(nn.Module):
    """The seed's CNN: conv1 (5x5, 16) -> pool -> conv2 (5x5, 32) -> pool -> fc1 (120) -> fc2 (classes).

    ``BasicCNN()`` is exactly the seed's CIFAR-10 network (3x32x32 input), so a state_dict
    saved by the seed loads unchanged. ``BasicCNN(in_channels=1, image_size=28)`` is the
    Fashion-MNIST variant; ``image_size`` may also be ``(H, W)``.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int | tuple[int, int] = 32) -> None:
        super().__init__()
        h, w = _hw(image_size)
        if min(h, w) < 4:
            raise ValueError(f"BasicCNN: image_size must be at least 4 (two 2x2 poolings), got {image_size}")
        self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=5, stride=1, padding=2)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=5, stride=1, padding=2)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.fc1 = nn.Linear(32 * (h // 4) * (w // 4), 120)
        self.fc2 = nn.Linear(120, num_classes)

    @classmethod
    def from_shape(cls, shape: tuple[int, ...], num_classes: int, width: float | None) -> BasicCNN:
        """The model for C x H x W samples (it has no width multiplier)."""
        _no_width("basiccnn", width)
        channels, size = _image_shape("basiccnn", shape)
        return cls(channels, num_classes, size)

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
    int8 ``.tflite``) it has 77,706 parameters and 12.50 M MACs at 3x32x32. ``width`` multiplies
    every layer's filters (16, 32, 64).
    """

    def __init__(
        self, in_channels: int = 3, num_classes: int = 10, image_size: int | tuple[int, int] = 32, width: float = 1.0
    ) -> None:
        super().__init__()
        if min(_hw(image_size)) < 4:
            raise ValueError(f"ResNet8: image_size must be at least 4 (two stride-2 stages), got {image_size}")
        c1, c2, c3 = (_scaled(c, width) for c in (16, 32, 64))
        self.conv1 = nn.Conv2d(in_channels, c1, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c1)
        self.stage1 = _ResidualStage(c1, c1, 1)
        self.stage2 = _ResidualStage(c1, c2, 2)
        self.stage3 = _ResidualStage(c2, c3, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c3, num_classes)

    @classmethod
    def from_shape(cls, shape: tuple[int, ...], num_classes: int, width: float | None) -> ResNet8:
        """The model for C x H x W samples; ``width`` None is 1."""
        channels, size = _image_shape("resnet8", shape)
        return cls(channels, num_classes, size, 1.0 if width is None else width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class _DepthwiseSeparable(nn.Module):
    """Depthwise 3x3 (TensorFlow SAME padding, given ``size`` H x W in) + BN + ReLU, pointwise 1x1 + BN + ReLU."""

    def __init__(self, in_channels: int, channels: int, stride: int, size: tuple[int, int]) -> None:
        super().__init__()
        same = tf_same_padding(size, (3, 3), (stride, stride))
        # stride 1 pads 1 on every side, which Conv2d's own padding does; stride 2 pads after only: explicit
        self.pad = nn.ZeroPad2d(same) if stride != 1 else nn.Identity()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, stride, padding=1 if stride == 1 else 0,
                                   groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.pointwise = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.depthwise(self.pad(x))))
        return F.relu(self.bn2(self.pointwise(x)))


class DSCNN(nn.Module):
    """MLPerf Tiny's keyword-spotting model (DS-CNN), for 1 x 49 x 10 MFCC features and 12 keywords.

    A 10x4 stride-2 conv of 64 filters (TensorFlow SAME padding, made explicit by a ``ZeroPad2d``) with BN
    and ReLU; four depthwise-separable blocks (depthwise 3x3 + BN + ReLU, pointwise 1x1 + BN + ReLU);
    global average pooling (25 x 5, as the reference ``.tflite`` has it); a linear layer to the classes.
    Dropout 0.2 and 0.4 where the reference has it. ``width`` multiplies the 64 filters.
    """

    def __init__(
        self, in_channels: int = 1, num_classes: int = 12, input_size: tuple[int, int] = (49, 10), width: float = 1.0
    ) -> None:
        super().__init__()
        h, w = input_size
        filters = _scaled(64, width)
        self.pad = nn.ZeroPad2d(tf_same_padding((h, w), (10, 4), (2, 2)))
        self.conv1 = nn.Conv2d(in_channels, filters, (10, 4), stride=2, bias=False)
        self.bn1 = nn.BatchNorm2d(filters)
        self.drop1 = nn.Dropout(0.2)
        size = (math.ceil(h / 2), math.ceil(w / 2))
        self.blocks = nn.Sequential(*(_DepthwiseSeparable(filters, filters, 1, size) for _ in range(4)))
        self.drop2 = nn.Dropout(0.4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(filters, num_classes)

    @classmethod
    def from_shape(cls, shape: tuple[int, ...], num_classes: int, width: float | None) -> DSCNN:
        """The model for C x H x W samples (1 x 49 x 10 in MLPerf Tiny); ``width`` None is 1."""
        channels, size = _image_shape("dscnn", shape)
        return cls(channels, num_classes, size, 1.0 if width is None else width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop1(F.relu(self.bn1(self.conv1(self.pad(x)))))
        x = self.drop2(self.blocks(x))
        return self.fc(torch.flatten(self.pool(x), 1))


# MobileNetV1's depthwise-separable blocks at width 1: (pointwise filters, depthwise stride)
_MOBILENET_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
                     (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))


class MobileNetV1(nn.Module):
    """MobileNetV1 as MLPerf Tiny's visual-wake-words model (width 0.25, 3 x 96 x 96 images, 2 classes).

    A 3x3 stride-2 conv of 32 * width with BN and ReLU (not ReLU6, as the reference), 13 depthwise-separable
    blocks, global average pooling and a linear layer. Stride-2 convs pad as TensorFlow's SAME (after only,
    on even sizes) through an explicit ``ZeroPad2d``.
    """

    def __init__(
        self, in_channels: int = 3, num_classes: int = 2, image_size: int | tuple[int, int] = 96, width: float = 0.25
    ) -> None:
        super().__init__()
        size = _hw(image_size)
        if min(size) < 1:
            raise ValueError(f"MobileNetV1: image_size must be positive, got {image_size}")
        stem = _scaled(32, width)
        self.pad = nn.ZeroPad2d(tf_same_padding(size, (3, 3), (2, 2)))
        self.conv1 = nn.Conv2d(in_channels, stem, 3, stride=2, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        size = (math.ceil(size[0] / 2), math.ceil(size[1] / 2))
        blocks, channels = [], stem
        for filters, stride in _MOBILENET_BLOCKS:
            blocks.append(_DepthwiseSeparable(channels, _scaled(filters, width), stride, size))
            channels, size = _scaled(filters, width), (math.ceil(size[0] / stride), math.ceil(size[1] / stride))
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    @classmethod
    def from_shape(cls, shape: tuple[int, ...], num_classes: int, width: float | None) -> MobileNetV1:
        """The model for C x H x W samples; ``width`` None is MLPerf Tiny's 0.25."""
        channels, size = _image_shape("mobilenet_v1", shape)
        return cls(channels, num_classes, size, 0.25 if width is None else width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.bn1(self.conv1(self.pad(x)))))
        return self.fc(torch.flatten(self.pool(x), 1))


class _DenseBlock(nn.Module):
    """Linear + BatchNorm1d + ReLU."""

    def __init__(self, in_features: int, features: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, features, bias=False)
        self.bn = nn.BatchNorm1d(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.fc(x)))


class FCAutoencoder(nn.Module):
    """MLPerf Tiny's anomaly-detection model: a dense autoencoder of 640 features (5 frames x 128 mel bins).

    Linear layers of 128, 128, 128, 128, 8 (the bottleneck), 128, 128, 128, 128, each with BatchNorm1d and
    ReLU, then a linear layer back to the input's features: it outputs a reconstruction, not classes.
    """

    def __init__(self, features: int = 640) -> None:
        super().__init__()
        sizes = (features, 128, 128, 128, 128, 8, 128, 128, 128, 128)
        self.layers = nn.Sequential(*(_DenseBlock(a, b) for a, b in zip(sizes, sizes[1:])))
        self.out = nn.Linear(sizes[-1], features)

    @classmethod
    def from_shape(cls, shape: tuple[int, ...], num_classes: int, width: float | None) -> FCAutoencoder:
        """The model for 1-D samples of F features; ``num_classes`` is ignored (the output is F features)."""
        _no_width("fc_autoencoder", width)
        if len(shape) != 1:
            raise ValueError(f"model 'fc_autoencoder' takes 1-D samples of features, not shape {tuple(shape)}; "
                             "give input_shape=(640,) (or your feature count)")
        return cls(shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.layers(x))


BUILT_IN = {"basiccnn": BasicCNN, "resnet8": ResNet8, "dscnn": DSCNN, "mobilenet_v1": MobileNetV1,
            "fc_autoencoder": FCAutoencoder}
"""The models edgeprune defines itself, by ``--model`` name; each is built by its ``from_shape(shape, num_classes, width)``."""


def _one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` of an exception raised by a user's code."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def build_model(
    name: str, in_channels: int = 3, num_classes: int = 10, image_size: int = 32, *,
    input_shape: tuple[int, ...] | None = None, width: float | None = None,
) -> nn.Module:
    """Build a model by name: a built-in (``basiccnn``, ``resnet8``, ``dscnn``, ``mobilenet_v1``, ``fc_autoencoder``),
    a torchvision classifier (``resnet18``), or ``module.path:factory``.

    A built-in is built for one sample of ``input_shape`` (None: ``in_channels`` x ``image_size`` x ``image_size``)
    with the width multiplier ``width`` (None: the model's default). A user's factory is called with no arguments.
    A torchvision model gets ``num_classes``; its first layer is left as torchvision builds it (3 input channels),
    so give it 3-channel data.
    """
    shape = tuple(input_shape) if input_shape is not None else (in_channels, image_size, image_size)
    if name.lower() in BUILT_IN:
        return BUILT_IN[name.lower()].from_shape(shape, num_classes, width)
    if width is not None:
        raise ValueError(f"model {name!r} is not built in, so it takes no width multiplier (got width={width}); leave width out")
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
            f"unknown model {name!r}; use one of {', '.join(BUILT_IN)}, {TORCHVISION_HINT} "
            f"({len(available)} available), or your own 'module.path:factory'"
        )
    if len(shape) != 3:
        raise ValueError(f"torchvision model {name!r} takes C x H x W images, not samples of shape {shape}; "
                         "give a 3-D input_shape (or an image data set)")
    if shape[0] != 3:
        raise ValueError(
            f"torchvision model {name!r} takes 3-channel images, not {shape[0]}; "
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
    """What is needed to rebuild a model before loading its weights.

    ``input_shape`` is one sample's shape without the batch (None: ``in_channels`` x ``image_size`` x ``image_size``);
    ``width`` is the width multiplier of a built-in model that has one (None: the model's default).
    """

    name: str = "basiccnn"
    in_channels: int = 1
    num_classes: int = 10
    image_size: int = 28
    input_shape: tuple[int, ...] | None = None
    width: float | None = None

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
        if self.input_shape is not None:
            object.__setattr__(self, "input_shape", _checked_input_shape(self.input_shape, self.in_channels))
        if self.width is not None:
            width = self.width
            if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width <= WIDTH_LIMIT:
                raise ValueError(f"width must be a number above 0 and at most {WIDTH_LIMIT}, got {width!r}; "
                                 "give the width multiplier the model was trained with (e.g. 0.25), or none")
            object.__setattr__(self, "width", float(width))

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """One sample's shape without the batch: ``input_shape``, or ``(in_channels, image_size, image_size)``."""
        return self.input_shape if self.input_shape is not None else (self.in_channels, self.image_size, self.image_size)

    def build(self, seed: int | None = None) -> nn.Module:
        """A freshly initialised model of this spec; its initial weights are seeded when ``seed`` is given."""
        if seed is not None:
            torch.manual_seed(seed)
        return build_model(self.name, self.in_channels, self.num_classes, self.image_size,
                           input_shape=self.input_shape, width=self.width)


def _checked_input_shape(shape: object, in_channels: int) -> tuple[int, ...]:
    """``shape`` (a tuple, or a list as JSON stores it) as a tuple of 1 to 4 bounded ints; ValueError otherwise."""
    limit = SPEC_LIMITS["in_channels"] * SPEC_LIMITS["image_size"] ** 2
    fix = f"give one sample's shape without the batch, 1 to 4 ints of 1 to {INPUT_DIM_LIMIT} each, e.g. (1, 49, 10)"
    if not isinstance(shape, (tuple, list)) or not 1 <= len(shape) <= 4:
        raise ValueError(f"input_shape must be a tuple of 1 to 4 dimensions, got {shape!r}; {fix}")
    if any(isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= INPUT_DIM_LIMIT for d in shape):
        raise ValueError(f"input_shape {list(shape)} has a dimension that is not an int of 1 to {INPUT_DIM_LIMIT}; {fix}")
    if math.prod(shape) > limit:
        raise ValueError(f"input_shape {list(shape)} has {math.prod(shape):,} values per sample, above {limit:,}; {fix}")
    if len(shape) >= 2 and shape[0] != in_channels:
        raise ValueError(f"input_shape {list(shape)} has {shape[0]} channels (its first dimension) but in_channels is "
                         f"{in_channels}; give in_channels={shape[0]}")
    return tuple(shape)


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
