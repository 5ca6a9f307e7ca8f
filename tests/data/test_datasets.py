"""The other data sets, read from tiny files written in each format (no network here), and a user's own
torch Datasets: shapes, splits, labels, the orientation of the images, one line for a bad file."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from scipy.io import savemat
from test_data import write_idx, write_idx_dataset

from pyrovae import UserError, load_data


def test_kmnist_reads_its_own_folder(tmp_path):
    write_idx_dataset(tmp_path, "KMNIST")
    splits = load_data("kmnist", root=str(tmp_path))
    assert (splits.train.shape[0], splits.val.shape[0], splits.test.shape[0]) == (10, 2, 4)
    assert splits.num_classes == 10 and splits.name == "kmnist"


def test_emnist_reads_a_split_and_turns_its_transposed_images_upright(tmp_path):
    raw = tmp_path / "EMNIST" / "raw"
    raw.mkdir(parents=True)
    images = np.zeros((12, 28, 28), np.uint8)
    images[:, 0, :] = 255  # stored transposed: a first *row* on file is the first *column* of the letter
    for part, n in (("train", 12), ("test", 6)):
        write_idx(raw / f"emnist-letters-{part}-images-idx3-ubyte", images[:n])
        write_idx(raw / f"emnist-letters-{part}-labels-idx1-ubyte", np.arange(1, n + 1) % 27)
    splits = load_data("emnist", root=str(tmp_path), emnist_split="letters", binarize=False)
    assert splits.num_classes == 27 and splits.train.shape == (10, 1, 28, 28)
    assert (splits.train[:, 0, :, 0] == 1).all() and (splits.train[:, 0, 0, 1:] == 0).all()  # a column, upright


def test_omniglot_reads_burda_s_mat_file_column_major(tmp_path):
    folder = tmp_path / "OMNIGLOT"
    folder.mkdir()
    images = np.zeros((12, 28, 28), np.float32)
    images[:, 3, 5] = 1.0  # one pixel at row 3, column 5
    columns = images.reshape(12, -1, order="F").T  # each image a column, in column-major order
    target = np.eye(50)[:, np.arange(12) % 50]
    savemat(folder / "chardata.mat", {"data": columns, "testdata": columns[:, :6], "target": target,
                                      "testtarget": target[:, :6]})  # fmt: skip
    splits = load_data("omniglot", root=str(tmp_path), binarize=False)
    assert (splits.train.shape[0], splits.val.shape[0], splits.test.shape[0]) == (10, 2, 6)
    assert (splits.train[:, 0, 3, 5] == 1).all() and splits.train.sum() == 10  # the pixel where it was
    assert splits.labels("train").tolist() == list(range(10)) and splits.num_classes == 50


def write_cifar(root, n: int = 4):
    folder = root / "cifar-10-batches-bin"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        pixels = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
        (folder / f"{name}.bin").write_bytes(np.concatenate([labels[:, None], pixels], 1).tobytes())
        batches[name] = (labels, pixels)
    return batches


def test_cifar10_reads_the_binary_batches_channel_first(tmp_path):
    batches = write_cifar(tmp_path)
    splits = load_data("cifar10", root=str(tmp_path), binarize=False)
    assert splits.data_shape == (3, 32, 32) and (splits.train.shape[0], splits.val.shape[0]) == (18, 2)
    labels, pixels = batches["data_batch_1"]
    assert torch.equal(splits.labels("train")[:4], torch.from_numpy(labels.astype(np.int64)))
    red_first_row = pixels[0, :32] / 255.0  # the record's first 1,024 bytes are the red plane, row by row
    assert torch.allclose(splits.train[0, 0, 0], torch.from_numpy(red_first_row.astype(np.float32)))
    (tmp_path / "cifar-10-batches-bin" / "test_batch.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(UserError, match=r"test_batch.bin is not a CIFAR-10 binary batch: 100 bytes"):
        load_data("cifar10", root=str(tmp_path))


def test_binarized_mnist_reads_the_amat_files_and_refuses_grey_values(tmp_path):
    folder = tmp_path / "BinarizedMNIST"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for part, n in (("train", 5), ("valid", 2), ("test", 3)):
        np.savetxt(folder / f"binarized_mnist_{part}.amat", rng.integers(0, 2, (n, 784)), fmt="%d")
    splits = load_data("binarized_mnist", root=str(tmp_path))
    assert splits.train.shape == (5, 1, 28, 28) and splits.test.shape[0] == 3 and not splits.binarize
    np.savetxt(folder / "binarized_mnist_test.amat", np.full((3, 784), 0.5), fmt="%.1f")
    with pytest.raises(UserError, match=r"binarized MNIST has 784 zeros and ones a row"):
        load_data("binarized_mnist", root=str(tmp_path))


def test_missing_files_say_where_to_put_them(tmp_path):
    with pytest.raises(UserError, match=r"^CIFAR-10 \(binary version\) files are not in .*cifar-10-batches-bin"):
        load_data("cifar10", root=str(tmp_path))


def test_a_users_torch_dataset_is_split_and_recorded(tmp_path):
    x = torch.rand(40, 1, 4, 4)
    y = torch.arange(40) % 3
    splits = load_data(torch.utils.data.TensorDataset(x, y), binarize=False, val_fraction=0.25, test_fraction=0.25)
    assert (splits.train.shape[0], splits.val.shape[0], splits.test.shape[0]) == (20, 10, 10)
    together = torch.cat([splits.train, splits.val, splits.test])
    rows = {tuple(r.flatten().tolist()): int(label) for r, label in zip(x, y)}
    for split in ("train", "val", "test"):  # each label stayed with its row
        for row, label in zip(getattr(splits, split), splits.labels(split)):
            assert rows[tuple(row.flatten().tolist())] == int(label)
    assert together.shape == x.shape and splits.settings.name == "dataset" and len(splits.info["digest"]) == 16
    three = load_data(train=list(x[:20]), val=list(x[20:30]), test=list(x[30:]), binarize=False)
    assert three.train.shape == (20, 1, 4, 4) and three.labels("train") is None


def test_a_dataset_named_by_a_function_loads_again_and_an_unnamed_one_says_what_to_give(tmp_path, monkeypatch):
    (tmp_path / "my_data.py").write_text(
        "import torch\n"
        "def three():\n"
        "    g = torch.Generator().manual_seed(0)\n"
        "    return [[torch.rand(1, 4, 4, generator=g) for _ in range(n)] for n in (8, 4, 4)]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_data", raising=False)
    first = load_data("dataset", dataset="my_data:three", binarize=False)
    again = load_data("dataset", dataset="my_data:three", binarize=False)
    assert torch.equal(first.train, again.train) and first.info["digest"] == again.info["digest"]
    with pytest.raises(UserError, match=r"^this data came from a torch Dataset passed from Python"):
        load_data("dataset")
