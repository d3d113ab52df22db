"""The ``tensors`` data set: a .npz of arrays of any sample shape, labelled or not, checked before it is read."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeprune.data import NO_LABEL, DataConfig, data_geometry, load_data, tensors_shapes
from edgeprune.task import CLASSIFICATION, RECONSTRUCTION


def arrays(n_train: int = 40, n_test: int = 12, shape: tuple = (1, 12, 8), classes: int = 3, labels: bool = True) -> dict:
    rng = np.random.default_rng(0)
    found = {"x_train": rng.normal(size=(n_train, *shape)).astype(np.float32),
             "x_test": rng.normal(size=(n_test, *shape)).astype(np.float32)}
    if labels:
        found["y_train"] = np.arange(n_train) % classes
        found["y_test"] = np.arange(n_test) % classes
    return found


def save(tmp_path: Path, name: str = "data.npz", **found) -> str:
    path = tmp_path / name
    np.savez(path, **found)
    return str(path)


def load(path: str, **cfg):
    return load_data(DataConfig("tensors", path, **{"val_size": 10, **cfg}))


def one_line_error(path: str, match: str, **cfg) -> str:
    with pytest.raises(ValueError, match=match) as info:
        load(path, **cfg)
    message = str(info.value)
    assert "\n" not in message and message.startswith(Path(path).name)
    return message


def rows(tensor: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in tensor}


def test_labelled_file_loads_its_arrays_as_they_are(tmp_path: Path) -> None:
    data = arrays()
    splits = load(save(tmp_path, **data))
    assert splits.input_shape == (1, 12, 8) and splits.num_classes == 3 and splits.task is CLASSIFICATION
    assert (len(splits.train), len(splits.val), len(splits.test)) == (30, 10, 12)
    train_x = torch.stack([x for x, _ in splits.train] + [x for x, _ in splits.val])
    train_y = torch.stack([y for _, y in splits.train] + [y for _, y in splits.val])
    # the validation split is held out of x_train: together they are x_train's rows, each with its own label
    assert rows(train_x) == rows(torch.from_numpy(data["x_train"]))
    label_of = {row.tobytes(): int(y) for row, y in zip(data["x_train"], data["y_train"])}
    assert [label_of[x.numpy().tobytes()] for x in train_x] == train_y.tolist()
    test_x, test_y = zip(*(splits.test[i] for i in range(len(splits.test))))
    assert torch.equal(torch.stack(test_x), torch.from_numpy(data["x_test"]))  # no normalization: as saved
    assert torch.equal(torch.stack(test_y), torch.from_numpy(data["y_test"]))
    assert splits.info["input_shape"] == [1, 12, 8] and splits.info["labeled"] is True


def test_file_without_labels_is_reconstruction_data(tmp_path: Path) -> None:
    data = arrays(shape=(7,), labels=False)
    data["x_test"] = data["x_test"].astype(np.float64)  # any float (or integer) dtype becomes float32
    splits = load(save(tmp_path, **data), limit=5)
    assert splits.task is RECONSTRUCTION and splits.num_classes == 0 and not splits.labeled
    assert splits.input_shape == (7,) and (splits.in_channels, splits.image_size) == (1, 1)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (5, 5, 5)
    x, y = splits.test[3]
    assert x.dtype == torch.float32 and torch.equal(x, torch.from_numpy(data["x_test"][3].astype(np.float32)))
    assert int(y) == NO_LABEL


def test_the_files_own_validation_split_is_used(tmp_path: Path) -> None:
    data = arrays()
    data["x_val"], data["y_val"] = np.full((6, 1, 12, 8), 7.0, np.float32), np.array([0, 1, 2, 0, 1, 2])
    splits = load(save(tmp_path, **data), val_size=25)  # val_size unused: x_val is the validation split
    assert (len(splits.train), len(splits.val)) == (40, 6)
    assert all(torch.equal(splits.val[i][0], torch.full((1, 12, 8), 7.0)) for i in range(6))
    assert [int(splits.val[i][1]) for i in range(6)] == [0, 1, 2, 0, 1, 2]
    limited = load(save(tmp_path, **data), limit=4)
    assert (len(limited.train), len(limited.val), len(limited.test)) == (4, 4, 4)


def test_square_images_keep_their_geometry(tmp_path: Path) -> None:
    path = save(tmp_path, **arrays(shape=(3, 16, 16)))
    assert data_geometry(DataConfig("tensors", path)) == (3, 16, None)
    splits = load(path)
    assert (splits.in_channels, splits.image_size, splits.input_shape) == (3, 16, (3, 16, 16))


def test_missing_label_key_is_named(tmp_path: Path) -> None:
    data = arrays()
    del data["y_test"]
    message = one_line_error(save(tmp_path, **data), "key 'y_test' missing")
    assert "np.savez(..., y_test=labels)" in message and "autoencoder" in message
    data = arrays()
    del data["x_test"]
    one_line_error(save(tmp_path, **data), "key 'x_test' missing")


def test_mismatched_lengths_and_shapes_are_named(tmp_path: Path) -> None:
    data = arrays()
    data["y_train"] = data["y_train"][:-1]
    one_line_error(save(tmp_path, **data), r"key 'y_train' has shape \(39,\) for 40 samples")
    data = arrays()
    data["x_test"] = np.zeros((12, 1, 8, 12), np.float32)
    one_line_error(save(tmp_path, **data), r"key 'x_test' holds samples of shape \(1, 8, 12\) but x_train's are \(1, 12, 8\)")
    data = arrays()
    data["y_train"] = data["y_train"].astype(np.float32)
    one_line_error(save(tmp_path, **data), "key 'y_train' holds float32 values; labels are integer")


def test_object_arrays_are_refused_without_unpickling(tmp_path: Path) -> None:
    data = arrays()
    data["x_train"] = np.array([object()] * 40, dtype=object).reshape(40, 1)
    path = tmp_path / "objects.npz"
    np.savez(path, **data)  # np.savez pickles object arrays
    one_line_error(str(path), "key 'x_train' holds object values")


def test_labels_beyond_the_training_classes_are_named(tmp_path: Path) -> None:
    data = arrays()
    data["y_test"][5] = 3  # training labels are 0..2
    message = one_line_error(save(tmp_path, **data), "key 'y_test' holds label 3")
    assert "0..2" in message
    data = arrays()
    data["y_train"][0] = -2
    one_line_error(save(tmp_path, **data), "key 'y_train' holds label -2")


def npy(header: dict, payload: bytes) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + payload


def test_a_header_claiming_a_huge_array_is_refused_before_allocating(tmp_path: Path) -> None:
    """A hand-written .npy header claiming 4 TB with 64 bytes behind it: refused from the header alone."""
    path = tmp_path / "forged.npz"
    good = arrays()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x_train.npy", npy({"descr": "<f4", "fortran_order": False, "shape": (10**9, 1000)}, bytes(64)))
        for key in ("x_test", "y_train", "y_test"):
            buffer = io.BytesIO()
            np.save(buffer, good[key])
            archive.writestr(f"{key}.npy", buffer.getvalue())
    message = one_line_error(str(path), r"key 'x_train' claims shape \(1000000000, 1000\) of float32 \(4,000,000,000,000 bytes\)")
    assert "holds 64 bytes" in message
    # the same with a payload one element short: the claim must fit what the zip member holds
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x_train.npy", npy({"descr": "<f4", "fortran_order": False, "shape": (40, 96)}, bytes(4 * 40 * 96 - 4)))
    with pytest.raises(ValueError, match="key 'x_train' claims shape"):
        tensors_shapes(path)


def test_not_a_npz_and_unknown_keys(tmp_path: Path) -> None:
    text = tmp_path / "data.npz"
    text.write_text("not a zip")
    one_line_error(str(text), "not a .npz file")
    data = arrays()
    one_line_error(save(tmp_path, **data, extra=np.zeros(3)), "key 'extra' is not one of x_train")
    with pytest.raises(ValueError, match="no such file"):
        load(str(tmp_path / "absent.npz"))


def test_config_refuses_image_options_and_needs_a_file() -> None:
    with pytest.raises(ValueError, match="needs --data-dir FILE.npz"):
        DataConfig("tensors")
    with pytest.raises(ValueError, match="uses its arrays as they are"):
        DataConfig("tensors", "x.npz", image_size=32)
