"""Data sets: a name -> loader table; each loader takes the ``[data]`` config and returns :class:`Splits`."""

from __future__ import annotations

import torch

from pyrovae.data.arrays import load_arrays
from pyrovae.data.mnist import load_mnist
from pyrovae.data.splits import Splits
from pyrovae.data.synthetic import PPCA, load_ppca, load_synthetic
from pyrovae.errors import UserError

LOADERS = {"mnist": load_mnist, "synthetic": load_synthetic, "ppca": load_ppca, "arrays": load_arrays}

__all__ = ["LOADERS", "PPCA", "Splits", "load_data"]


def load_data(cfg: dict, device: torch.device | str = "cpu") -> Splits:
    """Load the data set ``cfg["name"]``, keep at most ``cfg["subset"]`` per split, move to ``device``."""
    splits = LOADERS[cfg["name"]](cfg)
    for name in ("train", "val", "test"):
        x = getattr(splits, name)
        if not torch.isfinite(x).all():
            raise UserError(f"the {name} split holds NaN or infinite values")
        if cfg["subset"]:
            setattr(splits, name, x[: cfg["subset"]])
            labels = splits.labels(name)
            if labels is not None:
                setattr(splits, f"{name}_labels", labels[: cfg["subset"]])
    if splits.binarize and not ((splits.train >= 0) & (splits.train <= 1)).all():
        raise UserError("data.binarize = true needs values in [0, 1] (pixel intensities); "
                        "set data.binarize = false for real-valued data")
    return splits.to(device)
