"""MNIST, Fashion-MNIST, KMNIST and EMNIST through torchvision, with the standard 50k / 10k / 10k split.

The split follows the literature (Burda et al. 2016; Tomczak & Welling 2018): the first
50,000 training images train, the last 10,000 validate, and the 10,000 test images test.
Fashion-MNIST (Xiao et al. 2017) and KMNIST (Clanuwat et al. 2018; ``KMNIST/raw/``) have the same
file names, shapes and split; EMNIST (Cohen et al. 2017; ``EMNIST/raw/emnist-<split>-{train,test}-*``,
``data.emnist_split``, ``balanced`` by default) keeps the last sixth of its training images for
validation, and its images, stored transposed, are turned upright. torchvision reads the IDX
files (no checksum is computed on reading: the MD5 sums are checked on download only), and the
loader checks their magic numbers and lengths, so any file in the original format reads. The root folder is
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


def raw_files(dataset: str, options: dict) -> tuple[str, ...]:
    """The four IDX files torchvision reads from ``<root>/<dataset>/raw/``; EMNIST's name the split
    (``options["split"]``, the keyword its torchvision class takes)."""
    if dataset == "EMNIST":
        return tuple(f"emnist-{options['split']}-{part}-{kind}" for part in ("train", "test")
                     for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"))  # fmt: skip
    return RAW_FILES


def _read(dataset: str, root: Path, train: bool, **options):
    import torchvision.datasets

    make = partial(getattr(torchvision.datasets, dataset), **options)
    try:
        return make(str(root), train=train, download=False)
    except RuntimeError as missing:
        if "not found" not in str(missing).lower():
            raise
    try:
        return make(str(root), train=train, download=True)
    except Exception as err:
        files = ", ".join(raw_files(dataset, options))
        raise UserError(
            f"{dataset} files are not in {root / dataset / 'raw'} and downloading them failed "
            f"({type(err).__name__}); copy {files} there, or point data.root "
            f"(or PYROVAE_DATA_DIR) at a folder that holds {dataset}/raw/"
        ) from None


def _load(dataset: str, root: Path, train: bool, **options) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        ds = _read(dataset, root, train, **options)
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


def load_idx_images(cfg: dict, dataset: str = "MNIST", name: str = "mnist", classes: int = 10,
                    transposed: bool = False, **options) -> Splits:  # fmt: skip
    """The three splits of the torchvision data set ``dataset`` as grey levels in [0, 1], shape
    ``(N, 1, 28, 28)``."""
    root = data_root(cfg["root"])
    train_images, train_labels = _load(dataset, root, True, **options)
    test_images, test_labels = _load(dataset, root, False, **options)
    if transposed:  # EMNIST's files hold each image transposed
        train_images, test_images = train_images.transpose(1, 2), test_images.transpose(1, 2)
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
        classes=classes,
        info={"source": str(root / dataset / "raw"), "split": f"train[:{n_train}] / train[{n_train}:] / test"},
    )


load_mnist = partial(load_idx_images, dataset="MNIST", name="mnist")
load_fashion_mnist = partial(load_idx_images, dataset="FashionMNIST", name="fashion_mnist")
load_kmnist = partial(load_idx_images, dataset="KMNIST", name="kmnist")

#: the classes of each EMNIST split (torchvision's lists; ``letters`` counts an unused class 0)
EMNIST_CLASSES = {"byclass": 62, "bymerge": 47, "balanced": 47, "letters": 27, "digits": 10, "mnist": 10}


def load_emnist(cfg: dict) -> Splits:
    split = cfg["emnist_split"]
    return load_idx_images(cfg, "EMNIST", "emnist", EMNIST_CLASSES[split], transposed=True, split=split)
