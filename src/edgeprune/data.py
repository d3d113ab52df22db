"""Datasets by name, found on disk first (a --data-dir, then Debian's packages), downloaded only when allowed; and a
``tensors`` data set, arrays of any sample shape in a ``.npz`` file, with integer labels or none (an autoencoder's)."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from torchvision import datasets, transforms

from .files import atomic_path, npy_header, remove_stale_temporaries
from .task import CLASSIFICATION, RECONSTRUCTION, Task

__all__ = [
    "DATASETS", "DataConfig", "DataSplits", "load_data", "make_loader", "make_loaders", "cache_dir", "native_geometry",
    "data_geometry", "class_folders", "IMAGEFOLDER_GEOMETRY", "MAX_TENSOR_BYTES", "NO_LABEL", "TENSOR_KEYS", "load_tensors",
    "tensors_labeled", "tensors_shapes",
]

DATASETS = ("fashion-mnist", "mnist", "cifar10", "imagefolder", "tensors")
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
        if self.name == "tensors":
            if not self.data_dir:
                raise ValueError("dataset 'tensors' needs --data-dir FILE.npz holding x_train, x_test (and y_train, y_test "
                                 "for labels); see np.savez")
            if self.channels is not None or self.image_size is not None:
                raise ValueError("--channels and --image-size convert images; dataset 'tensors' uses its arrays as they "
                                 "are: drop them (reshape the arrays before saving them instead)")
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
    """Train (minus the held-out validation part), validation and test sets, the image geometry, one sample's shape
    (``input_shape``, without the batch; by default ``(in_channels, image_size, image_size)``), the classes (0 for
    data without labels) and the task the data is scored by (classification, or reconstruction without labels).

    For a ``tensors`` data set whose samples are not square ``C x H x W`` images, ``in_channels`` and ``image_size``
    are only placeholders (the first dimension, and H of a ``C x H x W`` sample, else 1): use ``input_shape``.
    """

    train: Dataset
    val: Dataset | None
    test: Dataset
    in_channels: int
    image_size: int
    num_classes: int
    info: dict = field(default_factory=dict)
    input_shape: tuple[int, ...] | None = None
    task: Task = CLASSIFICATION

    def __post_init__(self) -> None:
        if self.input_shape is None:
            self.input_shape = (self.in_channels, self.image_size, self.image_size)
        self.input_shape = tuple(self.input_shape)

    @property
    def labeled(self) -> bool:
        """Whether the samples have class labels (an autoencoder's data has none)."""
        return self.num_classes > 0


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

    A ``tensors`` file: its sample shape's (see :class:`DataSplits`), classes unknown (None) until its labels are read.
    A built-in data set: its :func:`native_geometry` with ``cfg.channels`` and ``cfg.image_size`` applied. An image
    folder: ``IMAGEFOLDER_GEOMETRY`` with the same overrides, and as many classes as ``train/`` has class folders
    (None when it has none, or there is no ``train/``: then the classes must be given).
    """
    if cfg.name == "tensors":
        channels, size = _tensor_geometry(tensors_shapes(cfg.data_dir)["x_train"][0][1:])
        return channels, size, None
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
    """Load train/validation/test splits of ``cfg.name``; the validation split is held out of train, seeded (a
    ``tensors`` file's own ``x_val`` is its validation split when it has one)."""
    if cfg.name == "tensors":
        return load_tensors(cfg)
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
    train, val, test = _split(cfg, train, None, test)
    info = {**asdict(cfg), "train_images": len(train), "val_images": len(val) if val else 0, "test_images": len(test)}
    return DataSplits(train, val, test, channels, size, num_classes, info)


def _split(cfg: DataConfig, train: Dataset, val: Dataset | None, test: Dataset) -> tuple[Dataset, Dataset | None, Dataset]:
    """(train, validation, test) with ``cfg.limit`` applied; without a given ``val``, ``cfg.val_size`` samples are held
    out of ``train`` (seeded)."""
    if val is not None:
        val = Subset(val, range(len(val) if cfg.limit is None else min(cfg.limit, len(val))))
        if cfg.limit is not None:
            train = Subset(train, range(min(cfg.limit, len(train))))
    elif cfg.val_size:
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
    return train, val, test


# --------------------------------------------------------------------------- a tensors data set: arrays in a .npz file

TENSOR_KEYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
"""The arrays a ``tensors`` .npz file may hold; ``x_train`` and ``x_test`` are required, the ``y_*`` all or none."""
MAX_TENSOR_BYTES = 16 * 2**30
"""Largest array a ``tensors`` file may claim (16 GiB): a header claiming more is refused before anything is allocated."""
NO_LABEL = -1
"""The label every sample of a data set without labels carries (an autoencoder's: its target is its input)."""
_MAX_DEFLATE_RATIO = 1100  # deflate cannot compress more than about 1032:1; a zip entry claiming more lies


def _npz_error(path: Path, key: str | None, what: str) -> ValueError:
    where = f"{path.name}: key {key!r}" if key else path.name
    return ValueError(f"{where} {what}")


def tensors_shapes(path: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """(shape, dtype) of each array of a ``tensors`` .npz file, read from the .npy headers alone, each checked.

    Checks, before any array is read: the file is a zip of ``.npy`` members named in :data:`TENSOR_KEYS`; each header
    parses; the dtype is numeric (``x_*`` integer or float, ``y_*`` integer; never objects, which would need pickle);
    the bytes it claims fit in what the zip holds for it (and under :data:`MAX_TENSOR_BYTES`); ``x_train`` and
    ``x_test`` are there with the same sample shape as ``x_val``; the ``y_*`` arrays are all there or none, 1-D, one
    label per sample. Each problem is a one-line ValueError naming the key and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--data-dir {path}: no such file; give the .npz file of a tensors data set "
                         "(np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...))")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"{path.name}: not a .npz file ({exc}); save the arrays with np.savez or np.savez_compressed") from None
    found: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    with archive:
        for member in archive.infolist():
            key = member.filename.removesuffix(".npy")
            if key not in TENSOR_KEYS or not member.filename.endswith(".npy"):
                raise _npz_error(path, key, f"is not one of {', '.join(TENSOR_KEYS)}; save only those arrays")
            if key in found:
                raise _npz_error(path, key, "is stored twice; save the file again with np.savez")
            found[key] = _npy_header(path, key, archive, member)
    for key in ("x_train", "x_test"):
        if key not in found:
            raise _npz_error(path, key, f"missing; save it with np.savez(..., {key}=samples)")
    labeled = "y_train" in found or "y_test" in found
    for split in ("train", "val", "test"):
        x, y = f"x_{split}", f"y_{split}"
        if y in found and x not in found:
            raise _npz_error(path, y, f"has no {x} to label; save {x} too or leave {y} out")
        if labeled and x in found and y not in found:
            raise _npz_error(path, y, f"missing; save it with np.savez(..., {y}=labels) or leave out every y_* key "
                                      "for an autoencoder")
    sample = found["x_train"][0][1:]
    for key, (shape, dtype) in found.items():
        if key.startswith("x_"):
            if dtype.kind not in "iuf":
                raise _npz_error(path, key, f"holds {dtype} values; save the samples as floats (e.g. x.astype(np.float32))")
            if len(shape) < 2 or shape[0] < 1 or 0 in shape:
                raise _npz_error(path, key, f"has shape {shape}; save at least one sample, one row per sample "
                                            "(a 1-D feature vector per sample is shape (n, features))")
            if shape[1:] != sample:
                raise _npz_error(path, key, f"holds samples of shape {shape[1:]} but x_train's are {sample}; "
                                            "save every split with the same sample shape")
        else:
            count = found["x" + key[1:]][0][0]
            if dtype.kind not in "iu":
                raise _npz_error(path, key, f"holds {dtype} values; labels are integer class ids 0..classes-1 "
                                            "(e.g. y.astype(np.int64))")
            if shape != (count,):
                raise _npz_error(path, key, f"has shape {shape} for {count} samples in x{key[1:]}; save one "
                                            "integer label per sample, a 1-D array")
    return found


def _npy_header(path: Path, key: str, archive: zipfile.ZipFile, member: zipfile.ZipInfo) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from a member's .npy header; the bytes it claims checked against the zip's sizes and the cap."""
    fix = "save the file again with np.savez"
    if member.compress_type == zipfile.ZIP_STORED and member.compress_size != member.file_size:
        raise _npz_error(path, key, f"is damaged (stored with {member.compress_size} bytes for {member.file_size}); {fix}")
    if member.file_size > max(member.compress_size, 1) * _MAX_DEFLATE_RATIO or member.file_size > MAX_TENSOR_BYTES + 2**20:
        raise _npz_error(path, key, f"claims {member.file_size:,} bytes uncompressed from {member.compress_size:,}, "
                                    f"more than deflate gives or than {MAX_TENSOR_BYTES:,}; {fix}")
    try:
        with archive.open(member) as f:
            shape, dtype, header_bytes = npy_header(f)
    except Exception as exc:  # zip, zlib and numpy's header parser raise many kinds
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise _npz_error(path, key, f"is not a readable .npy array ({reason}); {fix}") from None
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise _npz_error(path, key, f"holds {dtype} values (Python objects or records, which need pickle); save plain "
                                    "numeric arrays")
    claimed = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if claimed > MAX_TENSOR_BYTES or claimed > member.file_size - header_bytes:
        raise _npz_error(path, key, f"claims shape {shape} of {dtype} ({claimed:,} bytes) but holds "
                                    f"{member.file_size - header_bytes:,} bytes (at most {MAX_TENSOR_BYTES:,}); {fix}")
    return tuple(int(d) for d in shape), dtype


def tensors_labeled(path: str | os.PathLike) -> bool:
    """Whether a ``tensors`` .npz file has labels (``y_*`` arrays), from its headers alone (:func:`tensors_shapes`)."""
    return "y_train" in tensors_shapes(path)


def _tensor_geometry(shape: tuple[int, ...]) -> tuple[int, int]:
    """(in_channels, image_size) of a sample shape: the first dimension (1 for a 1-D sample) and the second of a
    ``C x H x W`` sample (the image's side when H == W), else 1."""
    return (shape[0] if len(shape) >= 2 else 1), (shape[1] if len(shape) == 3 else 1)


def load_tensors(cfg: DataConfig) -> DataSplits:
    """The splits of a ``tensors`` .npz file (``cfg.data_dir``), checked by :func:`tensors_shapes` before any array is
    read, loaded without pickle, and used as they are (no normalization: ``mean``/``std`` do not apply).

    Samples become float32; labels must be 0..classes-1 with classes = the largest training label + 1 (at least 2),
    and no validation or test label beyond it. Without labels every sample's label is :data:`NO_LABEL` and the
    task is reconstruction. A file's ``x_val`` is the validation split (``val_size`` then unused), else ``val_size``
    samples are held out of ``x_train`` as for images; ``limit`` applies to each split.
    """
    path = Path(cfg.data_dir)
    shapes = tensors_shapes(path)
    labeled = "y_train" in shapes
    arrays: dict[str, np.ndarray] = {}
    with np.load(path, allow_pickle=False) as npz:
        for key in shapes:
            arrays[key] = npz[key]
    for key, array in arrays.items():
        if key.startswith("x_") and array.dtype.kind == "f" and not np.isfinite(array).all():
            raise _npz_error(path, key, "holds NaN or infinite values; replace them (e.g. np.nan_to_num) before saving")
    num_classes = 0
    if labeled:
        train_labels = arrays["y_train"]
        low = int(train_labels.min())
        if low < 0:
            raise _npz_error(path, "y_train", f"holds label {low}; labels are class ids 0..classes-1")
        num_classes = int(train_labels.max()) + 1
        if num_classes < 2:
            raise _npz_error(path, "y_train", "holds a single class (0); a classifier needs at least two, or leave out "
                                              "every y_* key for an autoencoder")
        for key in ("y_val", "y_test"):
            if key in arrays:
                labels = arrays[key]
                bad = labels[(labels < 0) | (labels >= num_classes)]
                if bad.size:
                    raise _npz_error(path, key, f"holds label {int(bad[0])}, but y_train's labels are 0..{num_classes - 1} "
                                                f"(classes = largest training label + 1 = {num_classes}); relabel it, or add "
                                                "training samples of that class")

    def dataset(split: str) -> Dataset | None:
        x = f"x_{split}"
        if x not in arrays:
            return None
        samples = torch.from_numpy(arrays[x].astype(np.float32, copy=False))
        labels = (torch.from_numpy(arrays[f"y_{split}"].astype(np.int64, copy=False)) if labeled
                  else torch.full((len(samples),), NO_LABEL, dtype=torch.long))
        return TensorDataset(samples, labels)

    train, val, test = _split(cfg, dataset("train"), dataset("val"), dataset("test"))
    sample = shapes["x_train"][0][1:]
    channels, size = _tensor_geometry(sample)
    info = {**asdict(cfg), "train_images": len(train), "val_images": len(val) if val else 0, "test_images": len(test),
            "input_shape": list(sample), "labeled": labeled}
    return DataSplits(train, val, test, channels, size, num_classes, info, sample,
                      CLASSIFICATION if labeled else RECONSTRUCTION)


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
