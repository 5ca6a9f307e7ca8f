"""The file loaders by value, each error as its exact line: torchvision's IDX files and the data root
(``pyrovae.data.mnist``), the archives of the literature (``archives``), a user's arrays and labels
(``arrays``) and a user's torch Datasets (``datasets``). Every file is a tiny one written here in its
format; the download sources are local folders (empty ones where a download must fail), so no test reaches
the network."""

from __future__ import annotations

import fractions
import gzip
import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets
from scipy.io import savemat
from test_data import write_idx, write_idx_dataset

from pyrovae.data import archives, arrays, datasets, mnist
from pyrovae.data.settings import DataSettings
from pyrovae.errors import UserError


def cfg(**keys) -> dict:
    """The ``[data]`` section a loader receives: the defaults with ``keys`` changed."""
    return {**DataSettings().as_dict(), **keys}


def message(call, *args, **keys) -> str:
    with pytest.raises(UserError) as raised:
        call(*args, **keys)
    return str(raised.value)


def grey(images: np.ndarray) -> torch.Tensor:
    """What the IDX loaders promise: uint8 pixels / 255 as float32, a channel dimension added."""
    return torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)


# --- pyrovae.data.mnist: the data root -----------------------------------------------------------


def test_data_root_is_the_setting_then_the_environment_then_the_user_cache(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("PYROVAE_DATA_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert mnist.data_root() == home / ".cache" / "pyrovae"
    assert mnist.data_root("") == home / ".cache" / "pyrovae"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert mnist.data_root() == tmp_path / "xdg" / "pyrovae"
    monkeypatch.setenv("PYROVAE_DATA_DIR", "")  # set but empty: not a folder, the cache still wins
    assert mnist.data_root() == tmp_path / "xdg" / "pyrovae"
    monkeypatch.setenv("PYROVAE_DATA_DIR", "~/env")
    assert mnist.data_root() == home / "env"
    assert mnist.data_root("~/set") == home / "set" and mnist.data_root("/abs/set") == Path("/abs/set")


# --- pyrovae.data.mnist: the IDX files -----------------------------------------------------------


def raw_images(root, folder: str = "MNIST", part: str = "train") -> np.ndarray:
    name = "train-images-idx3-ubyte" if part == "train" else "t10k-images-idx3-ubyte"
    data = (root / folder / "raw" / name).read_bytes()
    return np.frombuffer(data[16:], np.uint8).reshape(-1, 28, 28)


def test_mnist_trains_on_the_first_five_sixths_and_validates_on_the_rest_by_value(tmp_path):
    write_idx_dataset(tmp_path)
    splits = mnist.load_idx_images(cfg(root=str(tmp_path), binarize=False, seed=3))  # the defaults: MNIST
    train, test = raw_images(tmp_path), raw_images(tmp_path, part="test")
    assert splits.name == "mnist" and splits.classes == 10 and splits.train.dtype == torch.float32
    assert torch.equal(splits.train, grey(train[:10])) and torch.equal(splits.val, grey(train[10:]))
    assert torch.equal(splits.test, grey(test))
    assert splits.train_labels.tolist() == list(range(10)) and splits.val_labels.tolist() == [0, 1]
    assert splits.test_labels.tolist() == [0, 1, 2, 3]
    assert splits.binarize is False and splits.seed == 3
    assert splits.info == {"source": str(tmp_path / "MNIST" / "raw"), "split": "train[:10] / train[10:] / test"}
    assert mnist.load_idx_images(cfg(root=str(tmp_path))).binarize is True


def test_mnist_keeps_the_standard_50000_training_images_of_a_larger_file(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    n = 60_002  # 5/6 of it is 50,001: one more than the literature's 50,000 (1x1 images keep it small)
    write_idx(raw / "train-images-idx3-ubyte", np.arange(n).reshape(n, 1, 1) % 251)
    write_idx(raw / "train-labels-idx1-ubyte", np.arange(n) % 10)
    write_idx(raw / "t10k-images-idx3-ubyte", np.zeros((2, 1, 1)))
    write_idx(raw / "t10k-labels-idx1-ubyte", np.arange(2))
    splits = mnist.load_mnist(cfg(root=str(tmp_path)))
    assert (splits.train.shape[0], splits.val.shape[0]) == (50_000, 10_002)
    assert splits.info["split"] == "train[:50000] / train[50000:] / test"
    assert splits.val[0, 0, 0, 0] == (50_000 % 251) / 255.0


def test_fashion_mnist_and_kmnist_read_their_own_folders_under_their_names(tmp_path):
    for seed, folder in enumerate(("MNIST", "FashionMNIST", "KMNIST")):
        write_idx_dataset(tmp_path, folder, seed=seed)
    for load, folder, name in ((mnist.load_fashion_mnist, "FashionMNIST", "fashion_mnist"),
                               (mnist.load_kmnist, "KMNIST", "kmnist")):  # fmt: skip
        splits = load(cfg(root=str(tmp_path)))
        assert splits.name == name and splits.info["source"] == str(tmp_path / folder / "raw")
        assert torch.equal(splits.test, grey(raw_images(tmp_path, folder, "test"))) and splits.classes == 10


@pytest.mark.parametrize(
    "split, classes", [("byclass", 62), ("bymerge", 47), ("balanced", 47), ("letters", 27), ("digits", 10),
                       ("mnist", 10)],
)  # fmt: skip
def test_emnist_reads_the_split_asked_for_with_its_classes_and_turns_images_upright(tmp_path, split, classes):
    raw = tmp_path / "EMNIST" / "raw"
    raw.mkdir(parents=True)
    images = np.random.default_rng(0).integers(0, 256, (12, 28, 28))
    for part, n in (("train", 12), ("test", 6)):
        write_idx(raw / f"emnist-{split}-{part}-images-idx3-ubyte", images[:n])
        write_idx(raw / f"emnist-{split}-{part}-labels-idx1-ubyte", np.arange(n) % 10)
    splits = mnist.load_emnist(cfg(root=str(tmp_path), emnist_split=split))
    assert splits.name == "emnist" and splits.classes == classes
    upright = grey(images.transpose(0, 2, 1).copy())  # the files hold each image transposed
    assert torch.equal(splits.train, upright[:10]) and torch.equal(splits.test, upright[:6])
    assert splits.info["source"] == str(tmp_path / "EMNIST" / "raw")


def test_emnist_test_files_missing_are_downloaded_not_replaced_by_the_training_files(tmp_path, monkeypatch):
    """EMNIST checks each part's files alone, so the training files read and the test files go to the
    download (here from an empty local folder, which fails), never to the training files."""
    monkeypatch.setattr(torchvision.datasets.EMNIST, "url", (tmp_path / "mirror" / "gzip.zip").as_uri())
    raw = tmp_path / "EMNIST" / "raw"
    raw.mkdir(parents=True)
    write_idx(raw / "emnist-digits-train-images-idx3-ubyte", np.zeros((12, 28, 28)))
    write_idx(raw / "emnist-digits-train-labels-idx1-ubyte", np.arange(12) % 10)
    assert message(mnist.load_emnist, cfg(root=str(tmp_path), emnist_split="digits")) == (
        f"EMNIST files are not in {raw} and downloading them failed (URLError); copy "
        f"emnist-digits-train-images-idx3-ubyte, emnist-digits-train-labels-idx1-ubyte, "
        f"emnist-digits-test-images-idx3-ubyte, "
        f"emnist-digits-test-labels-idx1-ubyte there, or point data.root "
        f"(or PYROVAE_DATA_DIR) at a folder that holds EMNIST/raw/"
    )


def test_a_labels_file_of_another_length_than_the_images_is_one_line(tmp_path):
    write_idx_dataset(tmp_path)
    write_idx(tmp_path / "MNIST/raw/train-labels-idx1-ubyte", np.arange(11))
    assert message(mnist.load_mnist, cfg(root=str(tmp_path))) == (
        f"MNIST files in {tmp_path / 'MNIST' / 'raw'} hold (12, 28, 28) images and (11,) labels; "
        f"replace them with the original IDX files"
    )


def test_a_truncated_idx_file_is_one_line_naming_the_error(tmp_path):
    write_idx_dataset(tmp_path)
    path = tmp_path / "MNIST/raw/t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:500])
    text = message(mnist.load_mnist, cfg(root=str(tmp_path)))
    assert text.startswith(f"MNIST files in {tmp_path / 'MNIST' / 'raw'} are corrupt or truncated (RuntimeError: ")
    assert text.endswith("); replace them with the original IDX files")


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A local folder as MNIST's only download mirror (``file://``), so no test reaches the network."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", [folder.as_uri() + "/"])
    return folder


def test_files_missing_but_their_downloaded_archives_are_unpacked_and_read(tmp_path, mirror, monkeypatch):
    """The download fallback: torchvision finds the ``.gz`` archives (checksums of these test files) in
    ``raw/`` and unpacks them rather than fetch them again; a read without download would refuse."""
    write_idx_dataset(tmp_path / "source")
    raw = tmp_path / "root" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    resources = []
    for name in mnist.RAW_FILES:
        packed = gzip.compress((tmp_path / "source/MNIST/raw" / name).read_bytes())
        (raw / f"{name}.gz").write_bytes(packed)
        resources.append((f"{name}.gz", hashlib.md5(packed).hexdigest()))
    monkeypatch.setattr(torchvision.datasets.MNIST, "resources", resources)
    splits = mnist.load_mnist(cfg(root=str(tmp_path / "root"), binarize=False))
    assert torch.equal(splits.test, grey(raw_images(tmp_path / "source", part="test")))
    assert torch.equal(splits.train, grey(raw_images(tmp_path / "source")[:10]))
    assert (raw / "t10k-images-idx3-ubyte").is_file()


def test_missing_files_that_cannot_be_downloaded_say_where_to_put_them(tmp_path, mirror):
    root = tmp_path / "empty"
    assert message(mnist.load_mnist, cfg(root=str(root))) == (
        f"MNIST files are not in {root / 'MNIST' / 'raw'} and downloading them failed (RuntimeError); copy "
        f"train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte there, "
        f"or point data.root (or PYROVAE_DATA_DIR) at a folder that holds MNIST/raw/"
    )


# --- pyrovae.data.archives: Omniglot ----------------------------------------------------------------


def write_omniglot(root, n_train: int = 12, n_test: int = 6, **replace):
    """Burda et al.'s ``chardata.mat``: images as column-major columns, one-hot alphabets; returns them."""
    folder = root / "OMNIGLOT"
    folder.mkdir()
    rng = np.random.default_rng(0)
    images = rng.random((n_train + n_test, 28, 28)).astype(np.float32)
    images[:, 3, 5] = 1.0  # row 3, column 5: a transposed image would put it at row 5, column 3
    images[:, 5, 3] = 0.0
    alphabets = (np.arange(n_train + n_test) * 7) % 50
    columns = images.reshape(n_train + n_test, -1, order="F").T
    onehot = np.eye(50)[:, alphabets]
    mat = {"data": columns[:, :n_train], "testdata": columns[:, n_train:], "target": onehot[:, :n_train],
           "testtarget": onehot[:, n_train:], **replace}  # fmt: skip
    savemat(folder / "chardata.mat", {k: v.astype(np.float64) for k, v in mat.items()})  # as Burda's file: float64
    return images, alphabets


def test_omniglot_reads_each_column_as_a_column_major_image_with_its_alphabet(tmp_path):
    images, alphabets = write_omniglot(tmp_path)
    splits = archives.load_omniglot(cfg(binarize=False, seed=4), tmp_path)
    expected = torch.from_numpy(images).unsqueeze(1)
    assert splits.train.dtype == torch.float32 and splits.train.shape == (10, 1, 28, 28)
    assert torch.equal(splits.train, expected[:10]) and torch.equal(splits.val, expected[10:12])
    assert torch.equal(splits.test, expected[12:])
    assert splits.train_labels.tolist() == alphabets[:10].tolist()
    assert splits.val_labels.tolist() == alphabets[10:12].tolist()
    assert splits.test_labels.tolist() == alphabets[12:].tolist()
    assert splits.name == "omniglot" and splits.classes == 50 and splits.binarize is False and splits.seed == 4
    assert splits.info == {"source": str(tmp_path / "OMNIGLOT" / "chardata.mat"),
                           "split": "train[:5/6] / train[5/6:] / test"}  # fmt: skip
    assert archives.load_omniglot(cfg(), tmp_path).binarize is True


def test_the_last_sixth_validates_and_data_without_labels_have_none_to_split():
    x = torch.arange(13.0).unsqueeze(1)
    assert archives._sixth_for_validation(x, None)[1] == (None, None)
    (train, val), (train_y, val_y) = archives._sixth_for_validation(x, x.squeeze(1).long())
    assert train.flatten().tolist() == list(range(10)) and val.flatten().tolist() == [10, 11, 12]
    assert train_y.tolist() == list(range(10)) and val_y.tolist() == [10, 11, 12]


def test_an_omniglot_file_without_a_needed_array_is_one_line(tmp_path):
    write_omniglot(tmp_path)
    path = tmp_path / "OMNIGLOT" / "chardata.mat"
    savemat(path, {"data": np.zeros((784, 6)), "testdata": np.zeros((784, 1)), "target": np.eye(50)[:, :6]})
    assert message(archives.load_omniglot, cfg(), tmp_path) == (
        f"{path} is not Burda et al.'s Omniglot file (KeyError: 'testtarget'); it needs data, testdata, "
        f"target and testtarget"
    )


def test_a_file_that_is_not_a_mat_file_is_one_line(tmp_path):
    write_omniglot(tmp_path)
    path = tmp_path / "OMNIGLOT" / "chardata.mat"
    path.write_bytes(b"not a mat file at all" * 10)
    text = message(archives.load_omniglot, cfg(), tmp_path)
    assert text.startswith(f"{path} is not Burda et al.'s Omniglot file (ValueError: ")
    assert text.endswith("); it needs data, testdata, target and testtarget")


def test_missing_omniglot_says_which_file_and_where(tmp_path):
    assert message(archives.load_omniglot, cfg(), tmp_path) == (
        f"Omniglot (28x28, Burda et al.) files are not in {tmp_path / 'OMNIGLOT'} (missing chardata.mat); copy them "
        f"there, or point data.root (or PYROVAE_DATA_DIR) at the folder that holds OMNIGLOT/"
    )


# --- pyrovae.data.archives: CIFAR-10 ---------------------------------------------------------------

BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def write_cifar(root, n: int = 2, skip: tuple[str, ...] = ()) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``n`` records per batch file: a label byte, then 3 x 32 x 32 pixel bytes."""
    folder = root / "cifar-10-batches-bin"
    folder.mkdir()
    rng = np.random.default_rng(1)
    batches = {}
    for name in BATCHES:
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        pixels = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
        if name not in skip:
            (folder / f"{name}.bin").write_bytes(np.concatenate([labels[:, None], pixels], 1).tobytes())
        batches[name] = (labels, pixels)
    return batches


def test_cifar10_reads_the_five_training_batches_in_order_and_keeps_a_tenth_to_validate(tmp_path):
    batches = write_cifar(tmp_path)
    splits = archives.load_cifar10(cfg(binarize=False, seed=5), tmp_path)
    pixels = np.concatenate([batches[b][1] for b in BATCHES[:5]])
    labels = np.concatenate([batches[b][0] for b in BATCHES[:5]])
    images = torch.from_numpy(pixels.reshape(10, 3, 32, 32).astype(np.float32) / 255.0)
    assert torch.equal(splits.train, images[:9]) and torch.equal(splits.val, images[9:])
    assert splits.train_labels.tolist() == labels[:9].tolist() and splits.val_labels.tolist() == labels[9:].tolist()
    assert splits.train_labels.dtype == torch.int64
    test_labels, test_pixels = batches["test_batch"]
    assert torch.equal(splits.test, torch.from_numpy(test_pixels.reshape(2, 3, 32, 32).astype(np.float32) / 255.0))
    assert splits.test_labels.tolist() == test_labels.tolist()
    assert splits.name == "cifar10" and splits.classes == 10 and splits.binarize is False and splits.seed == 5
    assert splits.info == {"source": str(tmp_path / "cifar-10-batches-bin"),
                           "split": "train[:9/10] / train[9/10:] / test"}  # fmt: skip
    assert archives.load_cifar10(cfg(), tmp_path).binarize is True


@pytest.mark.parametrize("size", [0, 100, 3074])
def test_a_cifar10_batch_of_a_length_that_is_not_whole_records_is_one_line(tmp_path, size):
    write_cifar(tmp_path)
    path = tmp_path / "cifar-10-batches-bin" / "test_batch.bin"
    path.write_bytes(b"\x01" * size)
    assert message(archives.load_cifar10, cfg(), tmp_path) == (
        f"{path} is not a CIFAR-10 binary batch: {size} bytes, not a multiple of 3073"
    )


def test_missing_cifar10_batches_are_listed(tmp_path):
    write_cifar(tmp_path, skip=("data_batch_3", "test_batch"))
    assert message(archives.load_cifar10, cfg(), tmp_path) == (
        f"CIFAR-10 (binary version) files are not in {tmp_path / 'cifar-10-batches-bin'} (missing data_batch_3.bin, "
        f"test_batch.bin); copy them there, or point data.root (or PYROVAE_DATA_DIR) at the folder that holds "
        f"cifar-10-batches-bin/"
    )


# --- pyrovae.data.archives: binarized MNIST -------------------------------------------------------


def write_amat(root, sizes=(("train", 3), ("valid", 2), ("test", 1))) -> dict[str, np.ndarray]:
    folder = root / "BinarizedMNIST"
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(2)
    rows = {}
    for part, n in sizes:
        rows[part] = rng.integers(0, 2, (n, 784))
        np.savetxt(folder / f"binarized_mnist_{part}.amat", rows[part], fmt="%d")
    return rows


def test_binarized_mnist_reads_its_three_files_as_binary_images_it_never_binarizes_again(tmp_path):
    rows = write_amat(tmp_path)  # the test file holds a single row
    splits = archives.load_binarized_mnist(cfg(binarize=True, seed=6), tmp_path)
    for split, part in (("train", "train"), ("val", "valid"), ("test", "test")):
        x = getattr(splits, split)
        assert x.dtype == torch.float32
        assert torch.equal(x, torch.from_numpy(rows[part].astype(np.float32)).reshape(-1, 1, 28, 28))
    assert splits.name == "binarized_mnist" and splits.binarize is False and splits.seed == 6
    assert splits.info == {"source": str(tmp_path / "BinarizedMNIST"),
                           "split": "the files' own 50,000 / 10,000 / 10,000"}  # fmt: skip
    assert splits.classes is None and splits.train_labels is None


def test_an_amat_file_of_other_rows_or_other_values_is_one_line(tmp_path):
    write_amat(tmp_path)
    path = tmp_path / "BinarizedMNIST" / "binarized_mnist_valid.amat"
    np.savetxt(path, np.ones((2, 783)), fmt="%d")
    expected = "holds rows of {} values; binarized MNIST has 784 zeros and ones a row"
    assert message(archives.load_binarized_mnist, cfg(), tmp_path) == f"{path} " + expected.format(783)
    np.savetxt(path, np.full((2, 784), 0.5), fmt="%.1f")
    assert message(archives.load_binarized_mnist, cfg(), tmp_path) == f"{path} " + expected.format(784)
    np.savetxt(path, np.full((2, 784), 2), fmt="%d")
    assert message(archives.load_binarized_mnist, cfg(), tmp_path) == f"{path} " + expected.format(784)
    path.write_text("0 1 x\n")
    text = message(archives.load_binarized_mnist, cfg(), tmp_path)
    assert text.startswith(f"{path} is not a binarized MNIST .amat file (") and "'x'" in text


def test_missing_binarized_mnist_lists_the_files(tmp_path):
    write_amat(tmp_path, sizes=(("valid", 1),))
    assert message(archives.load_binarized_mnist, cfg(), tmp_path) == (
        f"binarized MNIST (Larochelle & Murray) files are not in {tmp_path / 'BinarizedMNIST'} (missing "
        f"binarized_mnist_train.amat, binarized_mnist_test.amat); copy them there, or point data.root (or "
        f"PYROVAE_DATA_DIR) at the folder that holds BinarizedMNIST/"
    )


# --- pyrovae.data.arrays: read_array ----------------------------------------------------------------


def test_arrays_of_every_number_type_read_as_float32_and_only_uint8_is_scaled(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    values = [[0, 1, 2], [3, 4, 255]]
    np.save(tmp_path / "u8.npy", np.array(values, np.uint8))
    np.save(tmp_path / "f64.npy", np.array(values, np.float64) / 7)
    assert torch.equal(arrays.read_array("~/u8.npy"), torch.tensor(values, dtype=torch.float32) / 255.0)
    f64 = arrays.read_array(str(tmp_path / "f64.npy"))
    assert f64.dtype == torch.float32 and torch.equal(f64, torch.tensor(values, dtype=torch.float64).div(7).float())
    for dtype in (torch.int16, torch.int32, torch.int64, torch.float16):
        torch.save(torch.tensor(values, dtype=dtype), tmp_path / "x.pt")
        x = arrays.read_array(str(tmp_path / "x.pt"))
        assert x.dtype == torch.float32 and x.tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 255.0]]
    torch.save(torch.tensor([[True, False]]), tmp_path / "b.pt")  # one row is enough
    assert arrays.read_array(str(tmp_path / "b.pt")).tolist() == [[1.0, 0.0]]


def _saved(tmp_path, name: str, value) -> str:
    path = tmp_path / name
    if name.endswith(".npy"):
        np.save(path, value, allow_pickle=True)
    elif name.endswith(".pt"):
        torch.save(value, path)
    else:
        path.write_bytes(value)
    return str(path)


@pytest.mark.parametrize(
    "name, value, expected",
    [
        ("x.txt", b"1 2\n3 4\n", "data file '{}' must end in .npy or .pt"),
        ("list.pt", [[1.0, 2.0]], "data file '{}' must hold one array of shape (N, ...), N > 0"),
        ("flat.npy", np.ones(3, np.float32), "data file '{}' must hold one array of shape (N, ...), N > 0"),
        ("empty.npy", np.ones((0, 3), np.float32), "data file '{}' must hold one array of shape (N, ...), N > 0"),
        (
            "complex.pt",
            torch.ones(2, 2, dtype=torch.complex64),
            "data file '{}' holds torch.complex64 values; numbers are needed",
        ),  # fmt: skip
        ("int8.pt", torch.ones(2, 2, dtype=torch.int8), "data file '{}' holds torch.int8 values; numbers are needed"),
        ("inf.npy", np.array([[1.0, np.inf]]), "data file '{}' holds NaN or infinite values; clean them first"),
        ("nan.npy", np.array([[np.nan, 1.0]]), "data file '{}' holds NaN or infinite values; clean them first"),
        (
            "object.npy",
            np.array([[{"a": 1}]], dtype=object),
            "cannot read data file '{}': Object arrays cannot be loaded when allow_pickle=False",
        ),  # fmt: skip
    ],
)
def test_an_array_file_that_is_not_numbers_of_shape_n_by_something_is_one_line(tmp_path, name, value, expected):
    path = _saved(tmp_path, name, value)
    assert message(arrays.read_array, path) == expected.format(path)


def test_an_array_file_that_would_run_code_or_cannot_be_read_is_refused(tmp_path):
    missing = str(tmp_path / "none.npy")
    assert message(arrays.read_array, missing) == f"data file '{missing}' does not exist"
    path = _saved(tmp_path, "f.pt", fractions.Fraction(1, 2))  # a pickled object: weights_only refuses it
    assert message(arrays.read_array, path).startswith(f"cannot read data file '{path}': Weights only load failed")
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    assert message(arrays.read_array, str(tmp_path / "bad.npy")).startswith(
        f"cannot read data file '{tmp_path / 'bad.npy'}': "
    )


def test_array_and_label_files_never_unpickle_even_when_the_environment_allows_it(tmp_path, monkeypatch):
    """``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` turns unpickling on only where ``torch.load`` is not told
    ``weights_only=True``: these readers always tell it."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    path = _saved(tmp_path, "f.pt", fractions.Fraction(1, 2))
    assert message(arrays.read_array, path).startswith(f"cannot read data file '{path}': Weights only load failed")
    assert message(arrays.read_labels, path, 1, "labels").startswith(
        f"cannot read data.labels file '{path}': Weights only load failed"
    )


# --- pyrovae.data.arrays: read_labels ---------------------------------------------------------------


def test_labels_read_from_npy_or_pt_as_int64_with_zero_a_class(tmp_path):
    np.save(tmp_path / "y.npy", np.array([0, 2, 1], np.int32))
    torch.save(torch.tensor([1, 0], dtype=torch.uint8), tmp_path / "y.pt")
    y = arrays.read_labels(str(tmp_path / "y.npy"), 3, "labels")
    assert y.dtype == torch.int64 and y.tolist() == [0, 2, 1]
    assert arrays.read_labels(str(tmp_path / "y.pt"), 2, "val_labels").tolist() == [1, 0]


@pytest.mark.parametrize(
    "name, value, expected",
    [
        (
            "list.pt",
            [1, 2, 3],
            "data.test_labels must hold 3 integer labels, shape (3,), one per example; got list of shape ()",
        ),  # fmt: skip
        (
            "two.npy",
            np.zeros((3, 1), np.int64),
            "data.test_labels must hold 3 integer labels, shape (3,), one per example; got torch.int64 of shape (3, 1)",
        ),  # fmt: skip
        (
            "short.npy",
            np.zeros(2, np.int64),
            "data.test_labels must hold 3 integer labels, shape (3,), one per example; got torch.int64 of shape (2,)",
        ),  # fmt: skip
        (
            "float.npy",
            np.zeros(3, np.float32),
            "data.test_labels must hold 3 integer labels, shape (3,), one per example; got torch.float32 of shape (3,)",
        ),  # fmt: skip
        (
            "bool.pt",
            torch.zeros(3, dtype=torch.bool),
            "data.test_labels must hold 3 integer labels, shape (3,), one per example; got torch.bool of shape (3,)",
        ),  # fmt: skip
        (
            "neg.npy",
            np.array([0, -3, -1]),  # the first negative one, 0 a class
            "data.test_labels holds negative labels such as -3; classes are 0, 1, 2, ...",
        ),  # fmt: skip
    ],
)
def test_labels_that_are_not_one_class_per_example_are_one_line(tmp_path, name, value, expected):
    assert message(arrays.read_labels, _saved(tmp_path, name, value), 3, "test_labels") == expected


def test_a_labels_file_that_is_missing_or_unreadable_names_its_key(tmp_path):
    missing = str(tmp_path / "none.npy")
    assert message(arrays.read_labels, missing, 3, "val_labels") == f"data.val_labels file '{missing}' does not exist"
    path = _saved(tmp_path, "y.txt", b"0 1 2\n")  # neither .npy nor torch's format
    assert message(arrays.read_labels, path, 3, "labels").startswith(f"cannot read data.labels file '{path}': ")
    path = _saved(tmp_path, "y.npy", np.array([{"a": 1}, 2, 3], dtype=object))
    assert message(arrays.read_labels, path, 3, "labels") == (
        f"cannot read data.labels file '{path}': Object arrays cannot be loaded when allow_pickle=False"
    )
    path = _saved(tmp_path, "y.pt", fractions.Fraction(1, 2))  # a pickled object: weights_only refuses it
    assert message(arrays.read_labels, path, 3, "labels").startswith(
        f"cannot read data.labels file '{path}': Weights only load failed"
    )


# --- pyrovae.data.arrays: load_arrays ---------------------------------------------------------------


def test_one_array_file_is_split_by_a_permutation_seeded_by_data_seed(tmp_path):
    x = np.arange(20, dtype=np.float32).reshape(10, 2)  # row i holds 2i, 2i + 1
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.arange(10) % 4)
    keys = dict(file=str(tmp_path / "x.npy"), labels=str(tmp_path / "y.npy"), val_fraction=0.2, test_fraction=0.3)
    splits = arrays.load_arrays(cfg(seed=7, binarize=False, **keys))
    order = torch.randperm(10, generator=torch.Generator().manual_seed(7))
    rows = torch.from_numpy(x)[order]
    assert torch.equal(splits.val, rows[:2]) and torch.equal(splits.test, rows[2:5])
    assert torch.equal(splits.train, rows[5:])
    labels = order % 4
    assert splits.val_labels.tolist() == labels[:2].tolist() and splits.test_labels.tolist() == labels[2:5].tolist()
    assert splits.train_labels.tolist() == labels[5:].tolist()
    assert splits.name == "arrays" and splits.info == {"source": str(tmp_path / "x.npy")}
    assert splits.binarize is False and splits.seed == 7
    other = arrays.load_arrays(cfg(seed=8, **keys))
    assert not torch.equal(other.train, splits.train) and other.binarize is True
    assert arrays.load_arrays(cfg(file=str(tmp_path / "x.npy"))).train_labels is None


def test_one_array_file_needs_a_row_for_each_split(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((3, 2), np.float32))
    path = str(tmp_path / "x.npy")
    splits = arrays.load_arrays(cfg(file=path, val_fraction=0.34, test_fraction=0.34))  # one row each: enough
    assert [splits.train.shape[0], splits.val.shape[0], splits.test.shape[0]] == [1, 1, 1]
    for val, test in ((0.0, 0.34), (0.34, 0.0), (0.67, 0.34)):  # no validation, no test, no training row
        assert message(arrays.load_arrays, cfg(file=path, val_fraction=val, test_fraction=test)) == (
            f"data.file has 3 examples: too few to split by val_fraction {val} and test_fraction {test}"
        )


def _three(tmp_path, sizes=(4, 3, 2), shapes=((2,), (2,), (2,))) -> dict:
    keys = {}
    for split, n, shape in zip(("train", "val", "test"), sizes, shapes):
        np.save(tmp_path / f"{split}.npy", np.full((n, *shape), sizes.index(n) + 1, np.float32))
        np.save(tmp_path / f"{split}_y.npy", np.arange(n))
        keys[split] = str(tmp_path / f"{split}.npy")
    return keys


def test_three_array_files_are_the_three_splits_with_their_labels(tmp_path):
    keys = _three(tmp_path)
    labels = {f"{s}_labels": str(tmp_path / f"{s}_y.npy") for s in ("train", "val", "test")}
    splits = arrays.load_arrays(cfg(seed=9, binarize=False, **keys, **labels))
    assert splits.train.tolist() == [[1.0, 1.0]] * 4 and splits.val.tolist() == [[2.0, 2.0]] * 3
    assert splits.test.tolist() == [[3.0, 3.0]] * 2
    assert [splits.labels(s).tolist() for s in ("train", "val", "test")] == [[0, 1, 2, 3], [0, 1, 2], [0, 1]]
    assert splits.info == {"source": f"{keys['train']}, {keys['val']}, {keys['test']}"}
    assert splits.binarize is False and splits.seed == 9 and splits.name == "arrays"
    unlabelled = arrays.load_arrays(cfg(**keys))
    assert unlabelled.train_labels is None and unlabelled.binarize is True
    labels["val_labels"] = labels["test_labels"]  # 2 labels for 3 validation rows
    assert message(arrays.load_arrays, cfg(**keys, **labels)).startswith(
        "data.val_labels must hold 3 integer labels, shape (3,)"
    )


def test_three_array_files_of_different_shapes_or_labels_for_some_are_refused(tmp_path):
    keys = _three(tmp_path, shapes=((2,), (2,), (3,)))
    assert message(arrays.load_arrays, cfg(**keys)) == (
        "data.train, data.val and data.test have different shapes per example: (2,), (2,), (3,)"
    )
    keys = _three(tmp_path)
    some = {"train_labels": str(tmp_path / "train_y.npy"), "test_labels": str(tmp_path / "test_y.npy")}
    assert message(arrays.load_arrays, cfg(**keys, **some)) == (
        "labels for some splits only (data.train_labels, data.test_labels): give data.train_labels, "
        "data.val_labels and data.test_labels, or none"
    )
    needs = "data.name = 'arrays' needs data.file, or all of data.train, data.val and data.test"
    assert message(arrays.load_arrays, cfg()) == needs
    assert message(arrays.load_arrays, cfg(train=keys["train"], val=keys["val"])) == needs


# --- pyrovae.data.datasets: materialize and digest --------------------------------------------------


def test_materialize_stacks_tensors_arrays_and_pairs_as_float32_with_int_labels():
    items = [(torch.tensor([1, 2]), 3), [np.array([4, 5], np.int64), torch.tensor(6)]]  # tuple and list pairs
    x, y = datasets.materialize(items, "training")
    assert x.dtype == torch.float32 and x.tolist() == [[1.0, 2.0], [4.0, 5.0]]
    assert y.tolist() == [3, 6] and y.dtype == torch.int64
    x, y = datasets.materialize([np.array([[1, 2]], np.uint8), torch.ones(1, 2)], "test")  # bare items
    assert x.tolist() == [[[1.0, 2.0]], [[1.0, 1.0]]] and x.dtype == torch.float32 and y is None
    x, y = datasets.materialize([torch.tensor([0.5, 2.0], dtype=torch.bfloat16)], "test")  # no such numpy type
    assert x.dtype == torch.float32 and x.tolist() == [[0.5, 2.0]] and y is None
    x, y = datasets.materialize([(torch.zeros(2), 1), torch.ones(2)], "test")  # one unlabelled item: no labels
    assert x.tolist() == [[0.0, 0.0], [1.0, 1.0]] and y is None


def test_a_tensor_dataset_without_labels_is_read_as_unlabelled_values():
    """``TensorDataset(x)`` yields 1-tuples ``(x_i,)``: values without labels (it was refused once,
    its missing second element read as a failure); extra elements after the label are ignored."""
    values = torch.arange(6.0).reshape(3, 2)
    x, y = datasets.materialize(torch.utils.data.TensorDataset(values), "training")
    assert torch.equal(x, values) and y is None
    x, y = datasets.materialize([(values[0], 4, "extra"), [values[1], 5]], "training")
    assert torch.equal(x, values[:2]) and y.tolist() == [4, 5]


def test_materialize_reads_pil_images_as_their_pixel_values():
    from PIL import Image

    pixels = np.array([[0, 128], [255, 7]], np.uint8)
    x, y = datasets.materialize([(Image.fromarray(pixels), 2)], "training")
    assert x.tolist() == [pixels.astype(np.float32).tolist()] and y.tolist() == [2]


def test_a_dataset_that_cannot_be_stacked_is_one_line():
    assert message(datasets.materialize, [], "validation") == "the validation dataset is empty"
    assert message(datasets.materialize, [torch.zeros(2), torch.zeros(3)], "test") == (
        "the test dataset's items have different shapes; pyrovae needs one shape for all"
    )
    text = message(datasets.materialize, ["abc"], "training")
    assert text.startswith("cannot read the training dataset (TypeError: can't convert np.ndarray of type numpy.str_")
    assert text.endswith("); its items must be tensors or (tensor, label) pairs (torchvision: pass "
                         "transform=ToTensor())")  # fmt: skip


def test_digest_is_the_first_16_hex_digits_of_the_sha1_of_the_values_none_skipped():
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([[3, 4]], dtype=torch.int64)
    expected = hashlib.sha1(a.numpy().tobytes() + b.numpy().tobytes()).hexdigest()[:16]
    assert datasets.digest(a, None, b) == expected and datasets.digest(a, b) == expected
    assert datasets.digest(b.t(), a) == hashlib.sha1(b.numpy().tobytes() + a.numpy().tobytes()).hexdigest()[:16]
    assert datasets.digest() == hashlib.sha1().hexdigest()[:16]


# --- pyrovae.data.datasets: splits_of and load_named ------------------------------------------------


def test_one_dataset_is_split_by_a_permutation_seeded_by_data_seed_with_its_labels():
    x = torch.arange(20.0).reshape(10, 2)
    items = [(row, i % 4) for i, row in enumerate(x)]
    splits = datasets.splits_of(items, cfg=cfg(seed=7, binarize=False, val_fraction=0.2, test_fraction=0.3))
    order = torch.randperm(10, generator=torch.Generator().manual_seed(7))
    assert torch.equal(splits.val, x[order[:2]]) and torch.equal(splits.test, x[order[2:5]])
    assert torch.equal(splits.train, x[order[5:]])
    assert splits.val_labels.tolist() == (order[:2] % 4).tolist()
    assert splits.test_labels.tolist() == (order[2:5] % 4).tolist()
    assert splits.train_labels.tolist() == (order[5:] % 4).tolist()
    assert splits.name == "dataset" and splits.binarize is False and splits.seed == 7
    assert splits.info == {"source": "dataset", "split": "5 / 2 / 3",
                           "digest": datasets.digest(splits.train, splits.val, splits.test)}  # fmt: skip
    unlabelled = datasets.splits_of(list(x), name="mine", cfg=cfg(seed=8, val_fraction=0.2, test_fraction=0.3))
    assert unlabelled.train_labels is None and unlabelled.val_labels is None and unlabelled.test_labels is None
    assert unlabelled.name == "mine" and unlabelled.binarize is True
    assert not torch.equal(unlabelled.train, splits.train) and unlabelled.info["source"] == "mine"


def test_one_dataset_needs_an_item_for_each_split():
    three = datasets.splits_of(list(torch.zeros(3, 2)), cfg=cfg(val_fraction=0.34, test_fraction=0.34))
    assert three.info["split"] == "1 / 1 / 1"
    for val, test in ((0.0, 0.34), (0.34, 0.0), (0.67, 0.34)):  # no validation, no test, no training item
        assert message(datasets.splits_of, list(torch.zeros(3, 2)), cfg=cfg(val_fraction=val, test_fraction=test)) == (
            "the dataset has 3 items: too few to split by data.val_fraction and data.test_fraction"
        )


def test_three_datasets_are_the_three_splits_named_in_their_errors():
    splits = datasets.splits_of([(torch.ones(2), 1)] * 3, [torch.zeros(2)] * 2, [torch.full((2,), 2.0)],
                                cfg=cfg(binarize=False))  # fmt: skip
    assert splits.train.tolist() == [[1.0, 1.0]] * 3 and splits.train_labels.tolist() == [1, 1, 1]
    assert splits.val.tolist() == [[0.0, 0.0]] * 2 and splits.val_labels is None
    assert splits.test.tolist() == [[2.0, 2.0]] and splits.info["split"] == "3 / 2 / 1"
    for empty, name in ((0, "training"), (1, "validation"), (2, "test")):
        three = [[torch.ones(2)] if i != empty else [] for i in range(3)]
        assert message(datasets.splits_of, *three, cfg=cfg()) == f"the {name} dataset is empty"
    assert message(datasets.splits_of, [], cfg=cfg()) == "the training dataset is empty"
    assert message(datasets.splits_of, [torch.ones(2)], [torch.ones(2)], [torch.ones(3)], cfg=cfg()) == (
        "the datasets' items have different shapes: (2,), (2,), (3,)"
    )
    one_or_three = "give one dataset (split by data.val_fraction and data.test_fraction) or three: train, val, test"
    assert message(datasets.splits_of, [torch.ones(2)], [torch.ones(2)], cfg=cfg()) == one_or_three
    assert message(datasets.splits_of, [torch.ones(2)], test=[torch.ones(2)], cfg=cfg()) == one_or_three


@pytest.fixture
def data_module(tmp_path, monkeypatch):
    """A module ``loaders_for_test`` on the path with a function per way of returning datasets."""
    (tmp_path / "loaders_for_test.py").write_text(
        "import torch\n"
        "def items():\n"
        "    return [torch.full((2,), float(i)) for i in range(10)]\n"
        "def one():\n"
        "    return torch.utils.data.TensorDataset(torch.stack(items()), torch.arange(10) % 3)\n"
        "def three():\n"
        "    return (items()[:4], items()[4:6], items()[6:7])\n"
        "def three_list():\n"
        "    return list(three())\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "loaders_for_test", raising=False)


def test_a_named_function_returns_one_dataset_or_three(data_module):
    one = datasets.load_named(cfg(dataset="loaders_for_test:one", val_fraction=0.2, test_fraction=0.3))
    assert one.name == "loaders_for_test:one" and one.info["source"] == "loaders_for_test:one"
    assert one.info["split"] == "5 / 2 / 3"
    for function in ("three", "three_list"):
        three = datasets.load_named(cfg(dataset=f"loaders_for_test:{function}", binarize=False))
        assert three.train[:, 0].tolist() == [0.0, 1.0, 2.0, 3.0] and three.val[:, 0].tolist() == [4.0, 5.0]
        assert three.test[:, 0].tolist() == [6.0] and three.name == f"loaders_for_test:{function}"


def test_a_named_function_that_cannot_be_imported_is_one_line(data_module):
    for path, error in (
        ("loaders_for_test:none", "module 'loaders_for_test' has no attribute 'none'"),
        ("no_such_module_here:f", "No module named 'no_such_module_here'"),
        (":one", "Empty module name"),
        ("loaders_for_test:one:more", "module 'loaders_for_test' has no attribute 'one:more'"),  # the first colon
    ):
        assert message(datasets.load_named, cfg(dataset=path)) == (
            f"data.dataset = '{path}' cannot be imported ({error}); give 'package.module:function' on PYTHONPATH"
        )
    assert message(datasets.load_named, cfg()) == (
        "this data came from a torch Dataset passed from Python, which pyrovae cannot load again: give "
        "data.dataset = 'package.module:function' (a function returning the Dataset or (train, val, test)) to "
        "train, evaluate and resume such a run"
    )
