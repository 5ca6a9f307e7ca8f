"""Data sets: a name -> loader table; each loader takes :class:`DataSettings` and returns :class:`Splits`.

``load_data("mnist", root="../shared/data", subset=1000)`` from Python, or the ``[data]`` section
of a config: the same settings class checks both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from pyrovae.data import archives
from pyrovae.data.arrays import load_arrays
from pyrovae.data.datasets import load_named, splits_of
from pyrovae.data.mnist import data_root, load_emnist, load_fashion_mnist, load_kmnist, load_mnist
from pyrovae.data.settings import DataSettings
from pyrovae.data.splits import Splits
from pyrovae.data.synthetic import PPCA, load_ppca, load_synthetic
from pyrovae.errors import UserError

LOADERS = {
    "mnist": load_mnist,
    "fashion_mnist": load_fashion_mnist,
    "kmnist": load_kmnist,
    "emnist": load_emnist,
    "omniglot": lambda cfg: archives.load_omniglot(cfg, data_root(cfg["root"])),
    "cifar10": lambda cfg: archives.load_cifar10(cfg, data_root(cfg["root"])),
    "binarized_mnist": lambda cfg: archives.load_binarized_mnist(cfg, data_root(cfg["root"])),
    "synthetic": load_synthetic,
    "ppca": load_ppca,
    "arrays": load_arrays,
    "dataset": load_named,
}

__all__ = ["LOADERS", "PPCA", "DataSettings", "Splits", "keep_labels", "load_data"]


def keep_labels(labels: torch.Tensor | None, n: int, classes: int | None, seed: int) -> torch.Tensor:
    """``labels`` with ``n`` kept, balanced over the classes, and the rest set to -1 (unlabelled).

    Each class keeps ``n // classes`` labels, the first ``n % classes`` classes one more, drawn
    without replacement from its rows by a generator seeded with ``seed``: the same labelled set
    for every run with the same data settings (Kingma et al. 2014 keep a balanced labelled set).
    """
    if labels is None:
        raise UserError("data.labelled needs labels, but this data set has none")
    if n < classes:
        raise UserError(
            f"data.labelled = {n} keeps fewer labels than the {classes} classes: keep at least one per class"
        )
    generator = torch.Generator().manual_seed(seed)
    kept = torch.full_like(labels, -1)
    for c in range(classes):
        rows = (labels == c).nonzero().flatten()
        want = n // classes + (1 if c < n % classes else 0)
        if rows.numel() < want:
            raise UserError(
                f"data.labelled = {n} asks for {want} labels of class {c}, but the training split has "
                f"{rows.numel()}: lower data.labelled"
            )
        chosen = rows[torch.randperm(rows.numel(), generator=generator)[:want]]
        kept[chosen] = c
    return kept


def load_data(
    name: str | DataSettings | Mapping[str, Any] = "mnist", device: torch.device | str = "cpu", **keys: Any
) -> Splits:
    """Load a data set, keep at most ``subset`` examples per split (``train_subset``: training
    examples, after ``subset``), move it to ``device``.

    ``name`` is a data set name with the other ``[data]`` keys as keyword arguments, or a whole
    ``[data]`` section (a :class:`DataSettings` or a mapping), or a torch ``Dataset`` of your own --
    or three, ``load_data(train=..., val=..., test=...)`` (:mod:`pyrovae.data.datasets`).
    """
    objects = [name] if not isinstance(name, (str, Mapping, DataSettings)) else []
    objects += [keys.pop(k) for k in ("train", "val", "test") if k in keys and not isinstance(keys[k], str)]
    if isinstance(name, DataSettings):
        base = name.as_dict()
    else:
        base = dict(name) if isinstance(name, Mapping) else {"name": name if isinstance(name, str) else "dataset"}
    if objects:
        base["name"] = "dataset"
    settings = DataSettings(**{**base, **keys})
    cfg = settings.as_dict()
    splits = splits_of(*objects, name=type(objects[0]).__name__, cfg=cfg) if objects else LOADERS[settings.name](cfg)
    for split in ("train", "val", "test"):
        x = getattr(splits, split)
        if not torch.isfinite(x).all():
            raise UserError(f"the {split} split holds NaN or infinite values")
        limits = [n for n in (settings.subset, settings.train_subset if split == "train" else 0) if n]  # 0: none
        keep = min(limits, default=x.shape[0])
        setattr(splits, split, x[:keep])
        labels = splits.labels(split)
        if labels is not None:
            setattr(splits, f"{split}_labels", labels[:keep])
    classes = splits.num_classes
    if settings.labelled:
        splits.train_labels = keep_labels(splits.train_labels, settings.labelled, classes, settings.seed)
    if settings.num_classes and classes is not None:
        if classes > settings.num_classes:
            raise UserError(
                f"the labels of {settings.name} go up to {classes - 1}, outside 0 .. "
                f"{settings.num_classes - 1} (data.num_classes = {settings.num_classes}): "
                f"raise data.num_classes or fix the labels"
            )
        splits.classes = settings.num_classes
    if splits.binarize and not ((splits.train >= 0) & (splits.train <= 1)).all():
        raise UserError(
            "data.binarize = true needs values in [0, 1] (pixel intensities); "
            "set data.binarize = false for real-valued data"
        )
    splits.settings = settings
    return splits.to(device)
