"""MNIST and Fashion-MNIST through torchvision, with the standard 50k / 10k / 10k split.

The split follows the literature (Burda et al. 2016; Tomczak & Welling 2018): the first
50,000 training images train, the last 10,000 validate, and the 10,000 test images test.
Fashion-MNIST (Xiao et al. 2017) has the same file names, shapes and split. The root folder is
``data.root``, else ``$PYROVAE_DATA_DIR``, else a user cache folder; it must hold
``MNIST/raw/`` (``FashionMNIST/raw/``) as torchvision lays it out. Missing files are downloaded;
if that fails (no network), the error says where to put the four files.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import torch

from pyrovae.data.splits import Splits
from pyrovae.errors import UserError

RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
NUM_TRAIN = 50_000


def data_root(configured: str = "") -> Path:
    """``data.root``, else ``$PYROVAE_DATA_DIR``, else ``$XDG_CACHE_HOME/pyrovae`` (~/.cache/pyrovae)."""
    if configured:
        return Path(configured).expanduser()
    if os.environ.get("PYROVAE_DATA_DIR"):
        return Path(os.environ["PYROVAE_DATA_DIR"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "pyrovae"


def _read(dataset: str, root: Path, train: bool):
    import torchvision.datasets

    make = getattr(torchvision.datasets, dataset)
    try:
        return make(str(root), train=train, download=False)
    except RuntimeError as missing:
        if "not found" not in str(missing).lower():
            raise
    try:
        return make(str(root), train=train, download=True)
    except Exception as err:
        raise UserError(
            f"{dataset} files are not in {root / dataset / 'raw'} and downloading them failed "
            f"({type(err).__name__}); copy {', '.join(RAW_FILES)} there, or point data.root "
            f"(or PYROVAE_DATA_DIR) at a folder that holds {dataset}/raw/"
        ) from None


def _load(dataset: str, root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        ds = _read(dataset, root, train)
        images, labels = ds.data, ds.targets
    except UserError:
        raise
    except Exception as err:  # torchvision asserts on bad magic numbers and short files
        raise UserError(
            f"{dataset} files in {root / dataset / 'raw'} are corrupt or truncated ({type(err).__name__}: "
            f"{err}); replace them with the original IDX files"
        ) from None
    if images.dim() != 3 or images.shape[0] != labels.shape[0]:
        raise UserError(
            f"{dataset} files in {root / dataset / 'raw'} hold {tuple(images.shape)} images and "
            f"{tuple(labels.shape)} labels; replace them with the original IDX files"
        )
    return images, labels


def load_idx_images(cfg: dict, dataset: str = "MNIST", name: str = "mnist") -> Splits:
    """The three splits of the torchvision data set ``dataset`` as grey levels in [0, 1], shape
    ``(N, 1, 28, 28)``."""
    root = data_root(cfg["root"])
    train_images, train_labels = _load(dataset, root, train=True)
    test_images, test_labels = _load(dataset, root, train=False)
    grey = lambda images: images.unsqueeze(1).float() / 255.0  # noqa: E731
    n_train = min(NUM_TRAIN, train_images.shape[0] * 5 // 6)  # tiny test files keep a val split
    return Splits(
        name=name,
        train=grey(train_images[:n_train]),
        train_labels=train_labels[:n_train],
        val=grey(train_images[n_train:]),
        val_labels=train_labels[n_train:],
        test=grey(test_images),
        test_labels=test_labels,
        binarize=cfg["binarize"],
        seed=cfg["seed"],
        classes=10,
        info={"source": str(root / dataset / "raw"), "split": f"train[:{n_train}] / train[{n_train}:] / test"},
    )


load_mnist = partial(load_idx_images, dataset="MNIST", name="mnist")
load_fashion_mnist = partial(load_idx_images, dataset="FashionMNIST", name="fashion_mnist")
