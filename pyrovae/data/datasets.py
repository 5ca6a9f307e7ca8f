"""A user's own torch ``Dataset`` (or three), as the :class:`~pyrovae.data.splits.Splits` pyrovae trains on.

``load_data(my_dataset)`` (or ``load_data(train=..., val=..., test=...)``) reads every item once into
device tensors -- an item is ``x`` or ``(x, label)``, ``x`` a tensor or array of the data's shape -- and
one dataset is split by ``data.val_fraction`` / ``data.test_fraction`` with a permutation seeded by
``data.seed``. The run records the data set's name, sizes and a SHA-1 digest of its values.

A run can load its data again only from a name: ``data.name = "dataset"`` with ``data.dataset =
"package.module:function"``, a function returning a Dataset or a ``(train, val, test)`` tuple, which
``pyrovae train``, ``evaluate``, ``resume`` and ``sample`` call. Data passed as objects from Python
train and are recorded, and a later ``evaluate``/``resume`` of that run says in one line to name
such a function.
"""

from __future__ import annotations

import hashlib
import importlib

import numpy as np
import torch

from pyrovae.data.splits import Splits
from pyrovae.errors import UserError


def _value_and_label(item) -> tuple:
    """An item as ``(value, label or None)``: a tensor, a ``(value,)`` tuple (``TensorDataset(x)``)
    or a ``(value, label, ...)`` tuple."""
    if isinstance(item, (tuple, list)):
        return item[0], (item[1] if len(item) > 1 else None)
    return item, None


def materialize(dataset, what: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Every item of ``dataset`` stacked: ``(N, *shape)`` float32 values and ``(N,)`` labels (or None)."""
    xs, ys = [], []
    try:
        for item in dataset:
            x, y = _value_and_label(item)
            xs.append(torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x, dtype=torch.float32))
            ys.append(y)
    except Exception as err:
        raise UserError(f"cannot read the {what} dataset ({type(err).__name__}: {err}); its items must be tensors "
                        f"or (tensor, label) pairs (torchvision: pass transform=ToTensor())") from None  # fmt: skip
    if not xs:
        raise UserError(f"the {what} dataset is empty")
    if len({tuple(x.shape) for x in xs}) > 1:
        raise UserError(f"the {what} dataset's items have different shapes; pyrovae needs one shape for all")
    labels = None if any(y is None for y in ys) else torch.as_tensor([int(y) for y in ys])
    return torch.stack(xs), labels


def digest(*tensors: torch.Tensor | None) -> str:
    sha = hashlib.sha1()
    for t in tensors:
        if t is not None:
            sha.update(t.cpu().contiguous().numpy().tobytes())
    return sha.hexdigest()[:16]


def splits_of(train, val=None, test=None, *, name: str = "dataset", cfg: dict) -> Splits:
    """:class:`Splits` from one dataset (split by the fractions of ``cfg``) or three."""
    if (val is None) != (test is None):
        raise UserError(
            "give one dataset (split by data.val_fraction and data.test_fraction) or three: train, val, test"
        )
    if val is None:
        x, y = materialize(train, "training")
        n = x.shape[0]
        n_val, n_test = int(n * cfg["val_fraction"]), int(n * cfg["test_fraction"])
        if n - n_val - n_test < 1 or n_val < 1 or n_test < 1:
            raise UserError(f"the dataset has {n} items: too few to split by data.val_fraction and data.test_fraction")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg["seed"]))
        x, y = x[order], None if y is None else y[order]
        cuts = [slice(n_val + n_test, None), slice(0, n_val), slice(n_val, n_val + n_test)]
        parts = [(x[c], None if y is None else y[c]) for c in cuts]
    else:
        parts = [materialize(d, w) for d, w in ((train, "training"), (val, "validation"), (test, "test"))]
    (tx, ty), (vx, vy), (sx, sy) = parts
    if not tx.shape[1:] == vx.shape[1:] == sx.shape[1:]:
        raise UserError(f"the datasets' items have different shapes: {tuple(tx.shape[1:])}, {tuple(vx.shape[1:])}, "
                        f"{tuple(sx.shape[1:])}")  # fmt: skip
    sizes = f"{tx.shape[0]} / {vx.shape[0]} / {sx.shape[0]}"
    return Splits(name, tx, vx, sx, binarize=cfg["binarize"], seed=cfg["seed"], train_labels=ty, val_labels=vy,
                  test_labels=sy, info={"source": name, "split": sizes, "digest": digest(tx, vx, sx)})  # fmt: skip


def load_named(cfg: dict) -> Splits:
    """``data.name = "dataset"``: the datasets the function ``data.dataset`` returns."""
    path = cfg["dataset"]
    if not path:
        raise UserError("this data came from a torch Dataset passed from Python, which pyrovae cannot load again: "
                        "give data.dataset = 'package.module:function' (a function returning the Dataset or "
                        "(train, val, test)) to train, evaluate and resume such a run")  # fmt: skip
    module, _, attr = path.partition(":")
    try:
        make = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as err:
        raise UserError(f"data.dataset = '{path}' cannot be imported ({err}); give 'package.module:function' "
                        f"on PYTHONPATH") from None  # fmt: skip
    made = make()
    datasets = made if isinstance(made, (tuple, list)) else (made,)
    return splits_of(*datasets, name=path, cfg=cfg)
