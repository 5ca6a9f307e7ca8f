"""The ``[data]`` section: which data set, where its files are, how it is binarized and cut."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pyrovae.settings import Settings


class DataSettings(Settings):
    """Which data set, where its files are, how it is binarized, cut and labelled."""

    section = "data"

    name: Literal["mnist", "fashion_mnist", "kmnist", "emnist", "omniglot", "cifar10", "binarized_mnist",
                  "synthetic", "ppca", "arrays", "dataset"] = Field(
        "mnist",
        description="MNIST, Fashion-MNIST, KMNIST, EMNIST, the 28x28 Omniglot of Burda et al., CIFAR-10 (binary "
        "version), the fixed binarized MNIST of Larochelle & Murray, a synthetic image set, linear-Gaussian data "
        "(exact log p(x)), your arrays, or your torch Dataset (data.dataset)",
    )  # fmt: skip
    root: str = Field("", description="folder holding MNIST/raw; '' = $PYROVAE_DATA_DIR, else ~/.cache/pyrovae")
    binarize: bool = Field(True, description="binary pixels: dynamic for training, fixed-seed for val/test")
    seed: int = Field(0, ge=0, description="seed of the fixed val/test binarization, the split and synthetic data")
    subset: int = Field(0, ge=0, description="keep at most this many examples per split (0 = all)")
    train_subset: int = Field(
        0,
        ge=0,
        description="keep at most this many training examples; validation and "
        "test stay whole (0 = all): a small training set that overfits",
    )
    emnist_split: Literal["byclass", "bymerge", "balanced", "letters", "digits", "mnist"] = Field(
        "balanced", description="emnist: which of its splits"
    )
    dataset: str = Field(
        "", description="dataset: 'package.module:function' returning a torch Dataset or (train, val, test) Datasets"
    )
    train: str = Field("", description="arrays: training file (.npy or .pt)")
    val: str = Field("", description="arrays: validation file")
    test: str = Field("", description="arrays: test file")
    file: str = Field("", description="arrays: one file to split by val_fraction/test_fraction")
    train_labels: str = Field("", description="arrays: integer class labels of data.train, shape (N,) (.npy or .pt)")
    val_labels: str = Field("", description="arrays: labels of data.val")
    test_labels: str = Field("", description="arrays: labels of data.test")
    labels: str = Field("", description="arrays: labels of data.file, split with it")
    labelled: int = Field(
        0,
        ge=0,
        description="semi-supervised: keep N training labels, balanced over the classes "
        "(seeded by data.seed), and treat the other training rows as "
        "unlabelled (0 = keep every label)",
    )
    num_classes: int = Field(
        0,
        ge=0,
        description="how many classes the labels have (0 = the largest label + 1); "
        "a label outside 0 .. num_classes - 1 is refused",
    )
    val_fraction: float = Field(
        0.1, ge=0.0, le=0.9, description="arrays with data.file: the share of rows that validate"
    )
    test_fraction: float = Field(0.1, ge=0.0, le=0.9, description="arrays with data.file: the share of rows that test")
