"""Time the naive and the fast sensitivity scan of BatchNorm models, statistics re-estimated after each pruning, in one
process, and check they give identical numbers.

(a) MLPerf Tiny's ResNet-8 on Fashion-MNIST as 3 x 32 x 32 images (``DataConfig(channels=3, image_size=32)``; no
    CIFAR-10 here). (b) The keyword-spotting DS-CNN on 1 x 49 x 10 inputs: there is no keyword data here, so a
    ``tensors`` .npz of synthetic samples (a class's fixed random pattern plus noise, 12 classes), written to a
    temporary folder.

Both go through the pipeline's own functions, as ``edgeprune run`` does: ``load_data``, ``build_baseline``,
``train_baseline`` (1 epoch), then, once per method, ``scan_model`` on the validation split, which re-estimates
BatchNorm on ``recalibration_batches`` (10 shuffled training batches of 64) after pruning each layer at each
sparsity. The benchmark's own parts: the synthetic DS-CNN data, holding the resized validation images in memory (so
the loader costs both methods the same little), the timing and the comparison of the two results with ``==``.

    python benchmarks/bench_scan_batchnorm.py --threads 1 --images 1000
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from edgeprune.data import DataConfig, load_data
from edgeprune.device import pick_device
from bench_scan import time_both, trained  # the benchmarks run as scripts from this folder

__all__: list[str] = []


def in_memory(dataset: Dataset) -> TensorDataset:
    """Every (image, label) of ``dataset`` transformed once and stacked."""
    images, labels = zip(*(dataset[i] for i in range(len(dataset))))
    return TensorDataset(torch.stack(images), torch.as_tensor(labels))


def keyword_npz(folder: Path, train: int, val: int, test: int, seed: int) -> Path:
    """A ``tensors`` file of 1 x 49 x 10 samples: 12 classes, each a fixed random pattern plus unit noise."""
    g = torch.Generator().manual_seed(seed)
    patterns = torch.randn(12, 1, 49, 10, generator=g) * 0.7
    arrays = {}
    for split, count in (("train", train), ("val", val), ("test", test)):
        labels = torch.randint(0, 12, (count,), generator=g)
        arrays[f"x_{split}"] = (patterns[labels] + torch.randn(count, 1, 49, 10, generator=g)).numpy()
        arrays[f"y_{split}"] = labels.numpy().astype(np.int64)
    path = folder / "keywords.npz"
    np.savez(path, **arrays)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1000, help="validation images each model is scanned on")
    parser.add_argument("--train-images", type=int, default=3000, help="training images (1 epoch; recalibration batches)")
    parser.add_argument("--start", type=float, default=0.1, help="first sparsity")
    parser.add_argument("--step", type=float, default=0.2, help="sparsity step")
    parser.add_argument("--device", help="cpu or cuda (default: CUDA when present)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", choices=["resnet8", "dscnn"], help="leave one benchmark out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {device}")

    if args.skip != "resnet8":
        splits = load_data(DataConfig(channels=3, image_size=32, val_size=args.images, limit=args.train_images,
                                      seed=args.seed))
        splits = replace(splits, val=in_memory(splits.val))
        model = trained("resnet8", splits, device, args.seed)
        time_both(f"ResNet-8, Fashion-MNIST as 3x32x32 (no CIFAR-10 here), trained 1 epoch on {len(splits.train)} images",
                  model, splits, device, args.start, args.step, split="val")

    if args.skip != "dscnn":
        with tempfile.TemporaryDirectory() as folder:
            path = keyword_npz(Path(folder), args.train_images, args.images, 100, args.seed)
            splits = load_data(DataConfig(name="tensors", data_dir=str(path), seed=args.seed))
            model = trained("dscnn", splits, device, args.seed)
            time_both(f"DS-CNN, synthetic 1x49x10 keyword-like samples (12 classes), trained 1 epoch on "
                      f"{len(splits.train)}", model, splits, device, args.start, args.step, split="val")


if __name__ == "__main__":
    main()
