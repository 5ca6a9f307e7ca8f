"""Data sets read from the files the literature distributes, with no download and no checksum.

Each reader parses its format (checking shapes and lengths, so a truncated or foreign file is one
line) and never runs code from a file (no pickle). The files sit under ``data.root`` (else
``$PYROVAE_DATA_DIR``):

- ``omniglot``: the 28x28 Omniglot of Burda et al. 2016, ``OMNIGLOT/chardata.mat`` from their
  repository (``data``: 784 x 24,345 training images, ``testdata``: 784 x 8,070, pixels in [0, 1],
  each column a 28x28 image in column-major order; ``target``/``testtarget`` one-hot over the 50
  alphabets, the labels here). The last sixth of the training images validate. torchvision's
  ``Omniglot`` is the 105x105 original, not this one.
- ``cifar10``: CIFAR-10's binary version (Krizhevsky 2009), ``cifar-10-batches-bin/data_batch_1.bin``
  ... ``_5.bin`` and ``test_batch.bin``, each record a label byte then 3 x 32 x 32 pixel bytes;
  45,000 / 5,000 / 10,000 images, 3 x 32 x 32 in [0, 1]. Grey levels: choose ``data.binarize =
  false`` and the discretized logistic likelihood, which reports bits per dimension.
- ``binarized_mnist``: the fixed binarization of Larochelle & Murray 2011,
  ``BinarizedMNIST/binarized_mnist_{train,valid,test}.amat`` (text, 784 zeros and ones a line):
  50,000 / 10,000 / 10,000, binary already (no labels).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pyrovae.data.splits import Splits
from pyrovae.errors import UserError


def _folder(root: Path, name: str, files: list[str], what: str) -> Path:
    folder = root / name
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise UserError(f"{what} files are not in {folder} (missing {', '.join(missing)}); copy them there, or point "
                        f"data.root (or PYROVAE_DATA_DIR) at the folder that holds {name}/")  # fmt: skip
    return folder


def _sixth_for_validation(x: torch.Tensor, y: torch.Tensor | None):
    n = x.shape[0] * 5 // 6
    return (x[:n], x[n:]), (None, None) if y is None else (y[:n], y[n:])


def load_omniglot(cfg: dict, root: Path) -> Splits:
    from scipy.io import loadmat

    folder = _folder(root, "OMNIGLOT", ["chardata.mat"], "Omniglot (28x28, Burda et al.)")
    try:
        mat = loadmat(folder / "chardata.mat")
        images = {k: torch.from_numpy(np.asarray(mat[k], np.float32)) for k in ("data", "testdata")}
        labels = {k: torch.from_numpy(np.asarray(mat[k])).argmax(0) for k in ("target", "testtarget")}
    except Exception as err:
        raise UserError(f"{folder / 'chardata.mat'} is not Burda et al.'s Omniglot file ({type(err).__name__}: "
                        f"{err}); it needs data, testdata, target and testtarget") from None  # fmt: skip
    # each column is a 28x28 image in column-major (Fortran) order
    to_images = lambda m: m.T.reshape(-1, 28, 28).transpose(1, 2).unsqueeze(1).contiguous()  # noqa: E731
    (train, val), (train_y, val_y) = _sixth_for_validation(to_images(images["data"]), labels["target"])
    return Splits("omniglot", train, val, to_images(images["testdata"]), binarize=cfg["binarize"], seed=cfg["seed"],
                  train_labels=train_y, val_labels=val_y, test_labels=labels["testtarget"], classes=50,
                  info={"source": str(folder / "chardata.mat"), "split": "train[:5/6] / train[5/6:] / test"},
                  )  # fmt: skip


RECORD = 1 + 3 * 32 * 32


def _cifar_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD:
        raise UserError(f"{path} is not a CIFAR-10 binary batch: {raw.size} bytes, not a multiple of {RECORD}")
    records = raw.reshape(-1, RECORD)
    images = torch.from_numpy(records[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)
    return images, torch.from_numpy(records[:, 0].astype(np.int64))


def load_cifar10(cfg: dict, root: Path) -> Splits:
    names = [f"data_batch_{i}.bin" for i in range(1, 6)]
    folder = _folder(root, "cifar-10-batches-bin", [*names, "test_batch.bin"], "CIFAR-10 (binary version)")
    parts = [_cifar_batch(folder / n) for n in names]
    x, y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    n = x.shape[0] * 9 // 10  # 45,000 / 5,000
    test_x, test_y = _cifar_batch(folder / "test_batch.bin")
    return Splits("cifar10", x[:n], x[n:], test_x, train_labels=y[:n], val_labels=y[n:], test_labels=test_y,
                  binarize=cfg["binarize"], seed=cfg["seed"], classes=10,
                  info={"source": str(folder), "split": "train[:9/10] / train[9/10:] / test"})  # fmt: skip


def _amat(path: Path) -> torch.Tensor:
    try:
        x = np.loadtxt(path, dtype=np.float32, ndmin=2)
    except ValueError as err:
        raise UserError(f"{path} is not a binarized MNIST .amat file ({err})") from None
    if x.shape[1] != 784 or not np.isin(x, (0.0, 1.0)).all():
        raise UserError(f"{path} holds rows of {x.shape[1]} values; binarized MNIST has 784 zeros and ones a row")
    return torch.from_numpy(x).reshape(-1, 1, 28, 28)


def load_binarized_mnist(cfg: dict, root: Path) -> Splits:
    names = [f"binarized_mnist_{s}.amat" for s in ("train", "valid", "test")]
    folder = _folder(root, "BinarizedMNIST", names, "binarized MNIST (Larochelle & Murray)")
    train, val, test = (_amat(folder / n) for n in names)
    return Splits("binarized_mnist", train, val, test, binarize=False, seed=cfg["seed"],
                  info={"source": str(folder), "split": "the files' own 50,000 / 10,000 / 10,000"})  # fmt: skip
