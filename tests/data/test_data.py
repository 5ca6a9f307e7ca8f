"""Data loading: MNIST from IDX files the test writes, user arrays, synthetic sets, binarization."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from pyrovae.data import load_data
from pyrovae.errors import UserError
from pyrovae.run import config


def write_idx(path, array: np.ndarray) -> None:
    """IDX format: magic (0, 0, type 0x08 = ubyte, ndim), big-endian dims, raw bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_idx_dataset(root, folder: str = "MNIST", seed: int = 0):
    """12 training and 4 test images of random grey levels, as torchvision reads ``folder``."""
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    write_idx(raw / "train-images-idx3-ubyte", rng.integers(0, 256, (12, 28, 28)))
    write_idx(raw / "train-labels-idx1-ubyte", np.arange(12) % 10)
    write_idx(raw / "t10k-images-idx3-ubyte", rng.integers(0, 256, (4, 28, 28)))
    write_idx(raw / "t10k-labels-idx1-ubyte", np.arange(4))
    return root


@pytest.fixture
def mnist_root(tmp_path):
    return write_idx_dataset(tmp_path)


def data_cfg(*overrides):
    return config.load(None, list(overrides))["data"]


def test_mnist_loader_reads_idx_files_splits_and_binarizes(mnist_root):
    splits = load_data(data_cfg(f'data.root="{mnist_root}"'))
    # 12 training images: the first 5/6 train, the rest validate (50k / 10k on the real files)
    assert splits.train.shape == (10, 1, 28, 28) and splits.val.shape == (2, 1, 28, 28)
    assert splits.test.shape == (4, 1, 28, 28)
    assert torch.equal(splits.train_labels, torch.arange(10) % 10)
    assert 0.0 <= splits.train.min() and splits.train.max() <= 1.0
    raw = np.frombuffer((mnist_root / "MNIST/raw/t10k-images-idx3-ubyte").read_bytes()[16:], np.uint8)
    assert torch.allclose(splits.test.flatten(), torch.from_numpy(raw.astype(np.float32) / 255))
    fixed = splits.evaluation_data("test")
    assert set(fixed.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(fixed, splits.evaluation_data("test"))  # fixed binarization
    again = load_data(data_cfg(f'data.root="{mnist_root}"'))
    assert torch.equal(again.evaluation_data("test"), fixed)  # ... and seeded
    torch.manual_seed(0)
    epoch1 = torch.cat(list(splits.train_batches(5)))
    epoch2 = torch.cat(list(splits.train_batches(5)))
    assert set(epoch1.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(epoch1, epoch2)  # dynamic binarization (and order) per epoch


def test_train_subset_cuts_only_the_training_split(mnist_root):
    full = load_data("mnist", root=str(mnist_root))
    small = load_data("mnist", root=str(mnist_root), train_subset=3)
    assert torch.equal(small.train, full.train[:3]) and torch.equal(small.train_labels, full.train_labels[:3])
    assert torch.equal(small.val, full.val) and torch.equal(small.test, full.test)
    both = load_data("mnist", root=str(mnist_root), subset=2, train_subset=5)  # the smaller limit wins
    assert [both.train.shape[0], both.val.shape[0], both.test.shape[0]] == [2, 2, 2]


def test_fashion_mnist_reads_its_own_folder(tmp_path):
    write_idx_dataset(tmp_path, "MNIST", seed=0)
    write_idx_dataset(tmp_path, "FashionMNIST", seed=1)
    fashion = load_data("fashion_mnist", root=str(tmp_path))
    raw = np.frombuffer((tmp_path / "FashionMNIST/raw/t10k-images-idx3-ubyte").read_bytes()[16:], np.uint8)
    assert fashion.name == "fashion_mnist" and fashion.info["source"] == str(tmp_path / "FashionMNIST" / "raw")
    assert torch.allclose(fashion.test.flatten(), torch.from_numpy(raw.astype(np.float32) / 255))
    assert not torch.equal(fashion.test, load_data("mnist", root=str(tmp_path)).test)
    with pytest.raises(UserError, match=r"FashionMNIST files are not in .*FashionMNIST/raw"):
        load_data("fashion_mnist", root=str(tmp_path / "empty"))


def test_mnist_root_from_environment(mnist_root, monkeypatch):
    monkeypatch.setenv("PYROVAE_DATA_DIR", str(mnist_root))
    assert load_data(data_cfg()).test.shape[0] == 4


def test_missing_mnist_says_where_to_put_the_files(tmp_path):
    with pytest.raises(UserError, match=r"MNIST/raw.*copy train-images-idx3-ubyte"):
        load_data(data_cfg(f'data.root="{tmp_path / "empty"}"'))


def test_truncated_mnist_file_is_reported(mnist_root):
    path = mnist_root / "MNIST/raw/t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(UserError, match="corrupt or truncated"):
        load_data(data_cfg(f'data.root="{mnist_root}"'))


def test_user_arrays_one_file_split_by_fraction_and_seed(tmp_path):
    x = np.random.default_rng(0).random((50, 3, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    args = [
        "data.name=arrays",
        f'data.file="{tmp_path / "x.npy"}"',
        "data.binarize=false",
        "data.val_fraction=0.2",
        "data.test_fraction=0.1",
    ]
    splits = load_data(data_cfg(*args))
    assert (splits.train.shape[0], splits.val.shape[0], splits.test.shape[0]) == (35, 10, 5)
    together = torch.cat([splits.train, splits.val, splits.test])
    assert sorted(together.sum((1, 2)).tolist()) == pytest.approx(sorted(x.sum((1, 2)).tolist()), rel=1e-6)
    assert torch.equal(load_data(data_cfg(*args)).val, splits.val)


def test_user_arrays_three_files_pt_and_uint8(tmp_path):
    for name, n in (("tr", 8), ("va", 3), ("te", 2)):
        torch.save(torch.randint(0, 256, (n, 5), dtype=torch.uint8), tmp_path / f"{name}.pt")
    splits = load_data(
        data_cfg(
            "data.name=arrays",
            f'data.train="{tmp_path / "tr.pt"}"',
            f'data.val="{tmp_path / "va.pt"}"',
            f'data.test="{tmp_path / "te.pt"}"',
        )
    )
    assert splits.data_shape == (5,) and splits.train.max() <= 1.0  # uint8 scaled to [0, 1]


def test_nan_in_user_data_is_refused(tmp_path):
    x = np.zeros((10, 4), np.float32)
    x[3, 1] = np.nan
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(UserError, match="NaN"):
        load_data(data_cfg("data.name=arrays", f'data.file="{tmp_path / "x.npy"}"', "data.binarize=false"))


def test_synthetic_and_ppca_are_reproducible():
    a, b = load_data(data_cfg("data.name=synthetic")), load_data(data_cfg("data.name=synthetic"))
    assert torch.equal(a.train, b.train) and a.is_image
    ppca = load_data(data_cfg("data.name=ppca", "data.binarize=false"))
    exact = ppca.truth.log_prob(ppca.test)
    assert exact.shape == (500,) and torch.isfinite(exact).all()


def test_user_arrays_carry_labels_split_with_their_rows(tmp_path):
    x = np.arange(40, dtype=np.float32).repeat(3).reshape(40, 3) / 40
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", (np.arange(40) % 5).astype(np.int64))
    splits = load_data(
        data_cfg(
            "data.name=arrays",
            f'data.file="{tmp_path / "x.npy"}"',
            f'data.labels="{tmp_path / "y.npy"}"',
            "data.binarize=false",
        )
    )
    for split in ("train", "val", "test"):
        rows, labels = getattr(splits, split), splits.labels(split)
        assert torch.equal(labels, (rows[:, 0] * 40).round().long() % 5)  # each label stayed with its row
    assert splits.num_classes == 5


@pytest.mark.parametrize(
    "labels, keys, message",
    [
        (np.zeros(40, np.float32), {}, r"^data.labels must hold 40 integer labels, shape \(40,\)"),
        (np.arange(39), {}, r"^data.labels must hold 40 integer labels"),
        (np.arange(40) - 1, {}, r"^data.labels holds negative labels such as -1"),
        (
            np.arange(40) % 7,
            {"data.num_classes": 5},
            r"^the labels of arrays go up to 6, outside 0 .. 4 "
            r"\(data.num_classes = 5\)",
        ),
    ],
)
def test_labels_that_cannot_be_classes_are_one_line(tmp_path, labels, keys, message):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((40, 3)).astype(np.float32))
    np.save(tmp_path / "y.npy", labels)
    args = [
        "data.name=arrays",
        f'data.file="{tmp_path / "x.npy"}"',
        f'data.labels="{tmp_path / "y.npy"}"',
        "data.binarize=false",
        *(f"{k}={v}" for k, v in keys.items()),
    ]
    with pytest.raises(UserError, match=message):
        load_data(data_cfg(*args))


def test_labels_for_some_splits_only_are_refused(tmp_path):
    for name in ("tr", "va", "te"):
        np.save(tmp_path / f"{name}.npy", np.zeros((4, 2), np.float32))
    np.save(tmp_path / "ytr.npy", np.zeros(4, np.int64))
    with pytest.raises(UserError, match=r"^labels for some splits only \(data.train_labels\)"):
        load_data(
            data_cfg(
                "data.name=arrays",
                *(f'data.{s}="{tmp_path / n}.npy"' for s, n in (("train", "tr"), ("val", "va"), ("test", "te"))),
                f'data.train_labels="{tmp_path / "ytr.npy"}"',
                "data.binarize=false",
            )
        )


LABELLED_ROWS = [1, 4, 6, 11, 17]


def _partly_labelled(n: int = 23, binarize: bool = False):
    from pyrovae.data import Splits

    x = torch.arange(n, dtype=torch.float32).unsqueeze(1).repeat(1, 3) / n  # row i holds i / n
    y = torch.full((n,), -1)
    y[LABELLED_ROWS] = torch.tensor([3, 0, 4, 1, 5])  # class 0 is a label too
    return Splits("partly", x, x[:2], x[:2], binarize=binarize, train_labels=y, classes=6)


def _rows(x: torch.Tensor, n: int) -> list[int]:
    return [round(v) for v in (x[:, 0] * n).tolist()]


@pytest.mark.parametrize("every, n", [(0, 23), (3, 39)])
def test_semi_supervised_batches_mix_labelled_and_unlabelled_rows_by_value(every, n):
    batch = 4
    data = _partly_labelled(n)
    torch.manual_seed(0)
    epoch = list(data.semi_supervised_batches(batch, every=every))
    assert len(epoch) == data.num_semi_supervised_batches(batch, every=every)
    flags = [y is not None for _, y in epoch]
    unlabelled = [r for x, y in epoch if y is None for r in _rows(x, n)]
    assert sorted(unlabelled) == sorted(set(range(n)) - set(LABELLED_ROWS))  # each unlabelled row once
    assert all(len(x) <= batch for x, _ in epoch) and flags.count(False) == -(-(n - 5) // batch)
    for x, y in epoch:
        if y is not None:  # a labelled batch carries its own rows' labels
            assert y.tolist() == data.train_labels[_rows(x, n)].tolist()
    seen = [r for x, y in epoch if y is not None for r in _rows(x, n)]
    if every == 0:  # each labelled row once, its 2 batches spread among the 5 unlabelled ones
        assert data.num_semi_supervised_batches(batch) == len(epoch)  # every = 0 is the default
        assert sorted(seen) == LABELLED_ROWS and flags == [False, False, True, False, False, True, False]
    else:  # a full labelled batch after every 3rd of the 9 unlabelled ones, cycling through the labelled rows
        assert flags == [False, False, False, True] * 3
        assert [len(x) for x, y in epoch if y is not None] == [4, 4, 4]
        assert sorted(seen[:5]) == LABELLED_ROWS and sorted(seen[5:10]) == LABELLED_ROWS  # each once per pass
        assert data.num_semi_supervised_batches(batch, every=2) == len(list(data.semi_supervised_batches(batch, 2)))


def test_semi_supervised_batches_draw_a_bernoulli_binarization_of_each_row():
    grey, n = _partly_labelled(binarize=False), 23
    data = _partly_labelled(binarize=True)
    torch.manual_seed(0)
    drawn = list(data.semi_supervised_batches(4))
    torch.manual_seed(0)
    kept = list(grey.semi_supervised_batches(4))  # the same rows in the same order, not binarized
    x, p = torch.cat([b for b, _ in drawn]), torch.cat([b for b, _ in kept])
    assert set(x.unique().tolist()) == {0.0, 1.0}
    assert bool(((p < 0.5) & (x == 1)).any()) and bool(((p > 0.5) & (x == 0)).any())  # drawn, not rounded
    assert x.shape == p.shape and len(_rows(p, n)) == n


def test_batches_asked_for_with_labels_pair_each_with_none_when_the_data_have_none():
    from pyrovae.data import Splits

    x = torch.arange(10.0).unsqueeze(1)  # row i holds i
    data = Splits("unlabelled", x, x[:2], x[:2])
    torch.manual_seed(0)
    pairs = list(data.train_batches(4, labelled=True))
    assert [len(b) for b, _ in pairs] == [4, 4, 2] and all(y is None for _, y in pairs)
    assert sorted(torch.cat([b for b, _ in pairs]).flatten().tolist()) == x.flatten().tolist()
    for rank in (0, 1):
        shards = list(data.shard_batches(4, rank=rank, world_size=2, seed=0, epoch=0, labelled=True))
        assert [len(b) for b, _ in shards] == [2, 2, 1] and all(y is None for _, y in shards)
