"""Cut the test fixture: the first images of Debian's Fashion-MNIST, in its own IDX gzip format.

Run from the repository root: ``python tests/data/cut_fashion_mnist.py``. The output is
byte-for-byte reproducible (gzip without a file name or time stamp).
"""

from __future__ import annotations

import gzip
import struct
import sys
from pathlib import Path

SOURCE = Path("/usr/share/datasets/fashion-mnist")
TARGET = Path(__file__).resolve().parent / "fashion-mnist"
COUNTS = {"train": 600, "t10k": 300}


def cut_idx(data: bytes, count: int) -> bytes:
    """The first ``count`` records of an IDX file, with the header's first dimension set to ``count``.

    An IDX header is the magic ``0x00 0x00 <type> <dims>`` then one big-endian uint32 size per
    dimension; the records follow, row-major, one byte each (type 0x08, unsigned byte).
    """
    zero, kind, dims = struct.unpack_from(">HBB", data)
    if zero != 0 or kind != 0x08:
        raise ValueError(f"not an unsigned-byte IDX file (magic {data[:4].hex()}); give the original Fashion-MNIST files")
    sizes = list(struct.unpack_from(f">{dims}I", data, 4))
    if count > sizes[0]:
        raise ValueError(f"the file holds {sizes[0]} records, fewer than the {count} asked for")
    record = 1
    for size in sizes[1:]:
        record *= size
    start = 4 + 4 * dims
    return data[:4] + struct.pack(f">{dims}I", count, *sizes[1:]) + data[start : start + count * record]


def main() -> None:
    """Write the cut IDX files under ``TARGET``."""
    TARGET.mkdir(parents=True, exist_ok=True)
    for split, count in COUNTS.items():
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            name = f"{split}-{kind}.gz"
            cut = cut_idx(gzip.decompress((SOURCE / name).read_bytes()), count)
            (TARGET / name).write_bytes(gzip.compress(cut, compresslevel=9, mtime=0))
            print(f"{TARGET / name}: {count} records", file=sys.stderr)


if __name__ == "__main__":
    main()
