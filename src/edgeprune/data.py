"""Datasets by name, found on disk first (a --data-dir, then Debian's packages), downloaded only when allowed."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from torchvision import datasets, transforms

from .files import atomic_path, remove_stale_temporaries

__all__ = [
    "DATASETS", "DataConfig", "DataSplits", "load_data", "make_loader", "make_loaders", "cache_dir", "native_geometry",
    "data_geometry", "class_folders", "IMAGEFOLDER_GEOMETRY",
]

DATASETS = ("fashion-mnist", "mnist", "cifar10", "imagefolder")
# name -> (torchvision class, channels, image size, Debian folder or None)
_NATIVE = {
    "fashion-mnist": (datasets.FashionMNIST, 1, 28, "/usr/share/datasets/fashion-mnist"),
    "mnist": (datasets.MNIST, 1, 28, None),
    "cifar10": (datasets.CIFAR10, 3, 32, None),
}
IMAGEFOLDER_GEOMETRY = (3, 32)
"""(channels, image size) of an image folder's images as loaded: read as RGB, resized to 32x32 (``--channels``, ``--image-size`` change them)."""


def native_geometry(name: str) -> tuple[int, int, int] | None:
    """(channels, image size, classes) of a built-in data set as stored; None for ``imagefolder``."""
    if name not in _NATIVE:
        return None
    _, channels, size, _ = _NATIVE[name]
    return channels, size, 10


def cache_dir() -> Path:
    """Where prepared data sets are kept: ``$EDGEPRUNE_CACHE`` or ``~/.cache/edgeprune``."""
    return Path(os.environ.get("EDGEPRUNE_CACHE", Path.home() / ".cache" / "edgeprune"))


@dataclass
class DataConfig:
    """Which data set, where to find it, and how to preprocess and split it."""

    name: str = "fashion-mnist"
    data_dir: str | None = None
    download: bool = False
    channels: int | None = None  # convert images to this many channels (e.g. 3 for a torchvision model)
    image_size: int | None = None  # resize images to this side length
    mean: float = 0.5  # Normalize mean and std, the same for every channel (the seed's 0.5, 0.5)
    std: float = 0.5
    batch_size: int = 64
    val_size: int = 5000  # images held out of the training set for scans and model selection
    seed: int = 0
    limit: int | None = None  # keep at most this many images of each split (quick trials, tests)

    def __post_init__(self) -> None:
        if self.name not in DATASETS:
            raise ValueError(f"unknown dataset {self.name!r}; choose one of {', '.join(DATASETS)}")
        if self.name == "imagefolder" and not self.data_dir:
            raise ValueError("dataset 'imagefolder' needs --data-dir, a folder with train/ and test/ class subfolders")
        if self.channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.image_size is not None and self.image_size < 4:
            raise ValueError(f"image_size must be at least 4, got {self.image_size}")
        if self.std <= 0:
            raise ValueError(f"std must be positive, got {self.std}")
        if self.batch_size < 1 or self.val_size < 0:
            raise ValueError("batch_size must be at least 1 and val_size at least 0")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be at least 1 image, got {self.limit}")


@dataclass
class DataSplits:
    """Train (minus the held-out validation part), validation and test sets, and the image geometry."""

    train: Dataset
    val: Dataset | None
    test: Dataset
    in_channels: int
    image_size: int
    num_classes: int
    info: dict = field(default_factory=dict)


def _idx_folder(candidates: list[Path], files: list[str]) -> Path | None:
    """The first candidate folder holding every IDX file, gzipped or not."""
    for folder in candidates:
        if all((folder / f).is_file() or (folder / f.removesuffix(".gz")).is_file() for f in files):
            return folder
    return None


def _stage_idx(tv_class: type, folder: Path) -> Path:
    """Lay the IDX files out as torchvision expects (``root/<Class>/raw/`` uncompressed) in the cache; return root."""
    source_key = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:12]  # one staging per source folder
    root = cache_dir() / "datasets" / source_key
    raw = root / tv_class.__name__ / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for url, _ in tv_class.resources:
        gz_name = os.path.basename(url)
        plain = raw / gz_name.removesuffix(".gz")
        remove_stale_temporaries(plain)  # left by a staging that was killed
        if plain.is_file():
            continue
        source = folder / gz_name
        with atomic_path(plain) as tmp:
            if source.is_file():
                with gzip.open(source, "rb") as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            else:
                shutil.copyfile(folder / gz_name.removesuffix(".gz"), tmp)
    return root


def _missing(cfg: DataConfig, looked: list[Path]) -> FileNotFoundError:
    where = ", ".join(str(p) for p in looked) or "nowhere"
    hint = {
        "fashion-mnist": "install Debian's package (apt-get install dataset-fashion-mnist), ",
        "imagefolder": "",
    }.get(cfg.name, "")
    layout = (
        "a folder with train/<class>/*.png and test/<class>/*.png"
        if cfg.name == "imagefolder"
        else "the torchvision layout or the raw IDX/CIFAR files"
    )
    return FileNotFoundError(
        f"dataset {cfg.name!r} not found (looked in: {where}). To get it: {hint}"
        f"give --data-dir pointing at {layout}, or allow a download with --download (needs the network)."
    )


def _build_transform(cfg: DataConfig, channels: int, size: int, native_size: int | None) -> transforms.Compose:
    steps: list = []
    if native_size is None or size != native_size:
        steps.append(transforms.Resize((size, size)))
    if channels == 1 and cfg.channels == 3:
        steps.append(transforms.Grayscale(num_output_channels=3))
    elif cfg.channels == 1 and channels == 3:
        steps.append(transforms.Grayscale(num_output_channels=1))
    out_channels = cfg.channels or channels
    steps += [transforms.ToTensor(), transforms.Normalize((cfg.mean,) * out_channels, (cfg.std,) * out_channels)]
    return transforms.Compose(steps)


def _in_memory(ds, cfg: DataConfig, channels: int) -> Dataset:
    """The whole preprocessed data set as one tensor: the same numbers ToTensor + Normalize give, computed once.

    ToTensor divides the uint8 pixels by 255 and Normalize subtracts the mean and divides by
    the std; doing those element-wise steps on the whole array gives bit-identical floats
    without the per-image PIL round trip (a test checks this against the transform).
    """
    pixels = torch.as_tensor(ds.data)
    if pixels.dim() == 4 and channels == 1:
        return ds  # RGB to grey goes through PIL's formula: keep the per-image transform
    images = (pixels.unsqueeze(1) if pixels.dim() == 3 else pixels.permute(0, 3, 1, 2)).float().div(255)
    images = images.expand(-1, channels, -1, -1).contiguous() if images.shape[1] != channels else images
    images = images.sub(cfg.mean).div(cfg.std)
    return TensorDataset(images, torch.as_tensor(ds.targets, dtype=torch.long))


def _load_image(path: str) -> Image.Image:
    """An image file as RGB; a file that cannot be decoded is a ValueError naming it."""
    try:
        with open(path, "rb") as f, Image.open(f) as img:
            return img.convert("RGB")
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ValueError(f"{path}: cannot be read as an image ({reason}); delete or replace the file") from exc


def _is_image_file(path: str) -> bool:
    """An image by its extension, and not hidden (macOS's ``._name.jpg`` companions are not images)."""
    return not os.path.basename(path).startswith(".") and datasets.folder.has_file_allowed_extension(
        path, datasets.folder.IMG_EXTENSIONS
    )


def class_folders(folder: str | os.PathLike) -> list[str]:
    """The class names of an image folder: its visible subfolders, sorted (hidden ones such as ``.ipynb_checkpoints`` skipped)."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def data_geometry(cfg: DataConfig) -> tuple[int, int, int | None]:
    """(channels, image size, classes) of the images ``load_data(cfg)`` gives, found without loading them.

    A built-in data set: its :func:`native_geometry` with ``cfg.channels`` and ``cfg.image_size`` applied. An image
    folder: ``IMAGEFOLDER_GEOMETRY`` with the same overrides, and as many classes as ``train/`` has class folders
    (None when it has none, or there is no ``train/``: then the classes must be given).
    """
    if cfg.name == "imagefolder":
        train = Path(cfg.data_dir) / "train"
        (channels, size), classes = IMAGEFOLDER_GEOMETRY, len(class_folders(train)) if train.is_dir() else 0
    else:
        channels, size, classes = native_geometry(cfg.name)
    return cfg.channels or channels, cfg.image_size or size, classes or None


class _ClassFolder(datasets.ImageFolder):
    """An ImageFolder labelled by a given class list, so that every split numbers the classes alike.

    Images are decoded by :func:`_load_image`, so an unreadable file is an error naming it,
    and hidden files and folders are skipped.
    """

    def __init__(self, root: Path, transform: transforms.Compose, classes: list[str]) -> None:
        self._classes = classes
        super().__init__(str(root), transform=transform, loader=_load_image, is_valid_file=_is_image_file, allow_empty=True)

    def find_classes(self, directory: str | os.PathLike) -> tuple[list[str], dict[str, int]]:
        """The given classes, numbered in their order (ImageFolder's own numbering is per folder)."""
        return list(self._classes), {name: i for i, name in enumerate(self._classes)}


def _image_folders(root: Path, tf: transforms.Compose) -> tuple[_ClassFolder, _ClassFolder]:
    """train/ and test/ of an image folder, both labelled by the training classes; a test class training lacks is an error."""
    classes = class_folders(root / "train")
    if not classes:
        raise ValueError(f"{root / 'train'}: holds no class folders; put each class's images in train/<class>/")
    unseen = [name for name in class_folders(root / "test") if name not in classes]
    if unseen:
        raise ValueError(
            f"{root / 'test'}: class folder(s) {', '.join(map(repr, unseen[:5]))}{' ...' if len(unseen) > 5 else ''} "
            f"are not in {root / 'train'}, so the model has no label for them; add them to train/ or remove them from test/"
        )
    train, test = _ClassFolder(root / "train", tf, classes), _ClassFolder(root / "test", tf, classes)
    empty = sorted(set(classes) - {classes[label] for label in train.targets})
    if empty:
        raise ValueError(
            f"{root / 'train'}: class folder(s) {', '.join(map(repr, empty[:5]))} hold no images "
            f"({', '.join(datasets.folder.IMG_EXTENSIONS)}); add images or remove the folders"
        )
    if not len(test):
        raise ValueError(f"{root / 'test'}: holds no images; put test images in test/<class>/")
    return train, test


def load_data(cfg: DataConfig) -> DataSplits:
    """Load train/validation/test splits of ``cfg.name``; the validation split is held out of train, seeded."""
    looked: list[Path] = []
    if cfg.name == "imagefolder":
        root = Path(cfg.data_dir)
        looked = [root / "train", root / "test"]
        if not all(p.is_dir() for p in looked):
            raise _missing(cfg, looked)
        channels, size, _ = data_geometry(cfg)
        train, test = _image_folders(root, _build_transform(cfg, IMAGEFOLDER_GEOMETRY[0], size, None))
        num_classes = len(train.classes)
    else:
        tv_class, stored_channels, native, debian = _NATIVE[cfg.name]
        channels, size, _ = data_geometry(cfg)
        tf = _build_transform(cfg, stored_channels, size, native)
        if cfg.name == "cifar10":
            root = Path(cfg.data_dir) if cfg.data_dir else cache_dir() / "datasets"
            looked = [root / "cifar-10-batches-py"]
            if not cfg.download and not looked[0].is_dir():
                raise _missing(cfg, looked)
        else:
            candidates = []
            if cfg.data_dir:
                d = Path(cfg.data_dir)
                if not d.is_dir():  # never fall back silently to other data than the folder the user named
                    raise FileNotFoundError(f"--data-dir {d}: no such folder; give the folder holding the {cfg.name} "
                                            "files, or leave --data-dir out to use the installed data set")
                candidates += [d, d / tv_class.__name__ / "raw"]
            if debian:
                candidates.append(Path(debian))
            candidates.append(cache_dir() / "datasets" / tv_class.__name__ / "raw")  # an earlier --download
            looked = candidates
            folder = _idx_folder(candidates, [os.path.basename(u) for u, _ in tv_class.resources])
            if folder is not None:
                root = _stage_idx(tv_class, folder)
            elif cfg.download:
                root = Path(cfg.data_dir) if cfg.data_dir else cache_dir() / "datasets"
            else:
                raise _missing(cfg, looked)
        train = tv_class(str(root), train=True, download=cfg.download, transform=tf)
        test = tv_class(str(root), train=False, download=cfg.download, transform=tf)
        num_classes = len(train.classes)
        if size == native:
            train, test = _in_memory(train, cfg, channels), _in_memory(test, cfg, channels)
    val = None
    if cfg.val_size:
        if cfg.val_size >= len(train):
            raise ValueError(
                f"--val-size {cfg.val_size} leaves no training images (the training set has {len(train)}); give a smaller --val-size"
            )
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
        val = Subset(train, order[: cfg.val_size][: cfg.limit])
        train = Subset(train, order[cfg.val_size :][: cfg.limit])
    elif cfg.limit is not None:
        train = Subset(train, range(min(cfg.limit, len(train))))
    if cfg.limit is not None:
        test = Subset(test, range(min(cfg.limit, len(test))))
    info = {**asdict(cfg), "train_images": len(train), "val_images": len(val) if val else 0, "test_images": len(test)}
    return DataSplits(train, val, test, channels, size, num_classes, info)


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool = False, seed: int = 0, limit: int | None = None) -> DataLoader:
    """A DataLoader; ``shuffle`` is seeded; ``limit`` keeps only the first ``limit`` samples."""
    if limit is not None and limit < len(dataset):
        dataset = Subset(dataset, range(limit))
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


def make_loaders(splits: DataSplits, batch_size: int, seed: int = 0) -> tuple[DataLoader, DataLoader | None, DataLoader]:
    """Loaders for (train, validation or None, test): training shuffled with ``seed``; evaluation in batches of 256 or more."""
    eval_batch = max(batch_size, 256)
    val = make_loader(splits.val, eval_batch) if splits.val is not None else None
    return make_loader(splits.train, batch_size, shuffle=True, seed=seed), val, make_loader(splits.test, eval_batch)
