"""A user's own data from ``.npy`` or ``.pt`` array files, shape ``(N, *data_shape)``.

Either three files (``data.train``, ``data.val``, ``data.test``) or one (``data.file``) split
by ``data.val_fraction`` / ``data.test_fraction`` with a permutation seeded by ``data.seed``.
Integer arrays (``uint8`` images) are scaled to [0, 1] by 255. Class labels, optional, come the
same way: ``data.train_labels``, ``data.val_labels``, ``data.test_labels`` (or ``data.labels`` with
``data.file``, split with it), integer arrays of shape ``(N,)`` with one label per example.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pyrovae.data.splits import Splits
from pyrovae.errors import UserError


def read_array(path: str) -> torch.Tensor:
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"data file '{p}' does not exist")
    try:
        if p.suffix == ".npy":
            x = torch.from_numpy(np.load(p, allow_pickle=False))
        elif p.suffix == ".pt":
            x = torch.load(p, weights_only=True, map_location="cpu")
        else:
            raise UserError(f"data file '{p}' must end in .npy or .pt")
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"cannot read data file '{p}': {err}") from None
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[0] == 0:
        raise UserError(f"data file '{p}' must hold one array of shape (N, ...), N > 0")
    if not (x.is_floating_point() or x.dtype in (torch.uint8, torch.int16, torch.int32, torch.int64, torch.bool)):
        raise UserError(f"data file '{p}' holds {x.dtype} values; numbers are needed")
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    if not torch.isfinite(x).all():
        raise UserError(f"data file '{p}' holds NaN or infinite values; clean them first")
    return x


def read_labels(path: str, n: int, key: str) -> torch.Tensor:
    """Integer class labels from a ``.npy``/``.pt`` file: shape ``(n,)``, values >= 0."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"data.{key} file '{p}' does not exist")
    try:
        y = (
            torch.from_numpy(np.load(p, allow_pickle=False))
            if p.suffix == ".npy"
            else torch.load(p, weights_only=True, map_location="cpu")
        )
    except Exception as err:
        raise UserError(f"cannot read data.{key} file '{p}': {err}") from None
    if (
        not isinstance(y, torch.Tensor)
        or y.dim() != 1
        or y.shape[0] != n
        or y.is_floating_point()
        or y.dtype == torch.bool
    ):
        raise UserError(
            f"data.{key} must hold {n} integer labels, shape ({n},), one per example; "
            f"got {getattr(y, 'dtype', type(y).__name__)} of shape {tuple(getattr(y, 'shape', ()))}"
        )
    if (y < 0).any():
        raise UserError(f"data.{key} holds negative labels such as {int(y[y < 0][0])}; classes are 0, 1, 2, ...")
    return y.long()


def load_arrays(cfg: dict) -> Splits:
    if cfg["file"]:
        x = read_array(cfg["file"])
        n = x.shape[0]
        n_val, n_test = int(n * cfg["val_fraction"]), int(n * cfg["test_fraction"])
        if n - n_val - n_test < 1 or n_val < 1 or n_test < 1:
            raise UserError(
                f"data.file has {n} examples: too few to split by val_fraction "
                f"{cfg['val_fraction']} and test_fraction {cfg['test_fraction']}"
            )
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg["seed"]))
        x = x[order]
        train, val, test = x[n_val + n_test :], x[:n_val], x[n_val : n_val + n_test]
        labels = {}
        if cfg["labels"]:
            y = read_labels(cfg["labels"], n, "labels")[order]
            labels = {"train": y[n_val + n_test :], "val": y[:n_val], "test": y[n_val : n_val + n_test]}
        source = cfg["file"]
    elif cfg["train"] and cfg["val"] and cfg["test"]:
        train, val, test = (read_array(cfg[k]) for k in ("train", "val", "test"))
        if not train.shape[1:] == val.shape[1:] == test.shape[1:]:
            raise UserError(
                f"data.train, data.val and data.test have different shapes per example: "
                f"{tuple(train.shape[1:])}, {tuple(val.shape[1:])}, {tuple(test.shape[1:])}"
            )
        source = f"{cfg['train']}, {cfg['val']}, {cfg['test']}"
        keys = [f"{s}_labels" for s in ("train", "val", "test")]
        given = [k for k in keys if cfg[k]]
        if given and len(given) < 3:
            raise UserError(
                f"labels for some splits only ({', '.join('data.' + k for k in given)}): "
                f"give data.train_labels, data.val_labels and data.test_labels, or none"
            )
        labels = (
            {
                s: read_labels(cfg[f"{s}_labels"], x.shape[0], f"{s}_labels")
                for s, x in (("train", train), ("val", val), ("test", test))
            }
            if given
            else {}
        )
    else:
        raise UserError("data.name = 'arrays' needs data.file, or all of data.train, data.val and data.test")
    return Splits(
        name="arrays",
        train=train,
        val=val,
        test=test,
        binarize=cfg["binarize"],
        seed=cfg["seed"],
        info={"source": source},
        train_labels=labels.get("train"),
        val_labels=labels.get("val"),
        test_labels=labels.get("test"),
    )
