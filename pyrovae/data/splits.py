"""Train / validation / test tensors held on the training device, and how batches come out.

The whole data set lives on the device as one tensor per split: an epoch is a random
permutation and slices of it, with no ``DataLoader`` and no per-batch Python collation.
Binarization follows the literature's convention (Burda et al. 2016; Tomczak & Welling 2018):

- training: *dynamic* binarization, a fresh ``x ~ Bernoulli(grey)`` every epoch;
- validation and test: one *fixed*, seeded binarization, so every run is scored on the
  same binary images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch


@dataclass
class Splits:
    """Grey-level (or real-valued) data, ``(N, *data_shape)`` float32 per split, plus labels.

    ``binarize`` says whether batches are binarized (then the stored values are pixel
    probabilities in [0, 1]). ``info`` describes the source for MLflow's dataset inputs.
    """

    name: str
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    binarize: bool = False
    seed: int = 0
    train_labels: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    info: dict = field(default_factory=dict)
    #: the true data distribution where it is known (``ppca``): has ``log_prob(x)``
    truth: object | None = None
    #: the ``[data]`` settings it was loaded with (:func:`pyrovae.data.load_data` sets it)
    settings: object | None = None
    _fixed: dict = field(default_factory=dict, repr=False)

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(self.train.shape[1:])

    @property
    def is_image(self) -> bool:
        """(C, H, W) data with 1 or 3 channels: image grids make sense for it."""
        return len(self.data_shape) == 3 and self.data_shape[0] in (1, 3)

    def to(self, device: torch.device) -> "Splits":
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()
                 if k != "_fixed"}
        return Splits(**moved)

    def evaluation_data(self, name: str) -> torch.Tensor:
        """The tensor a split is scored on: fixed-seed binarized when ``binarize``, else as stored."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}")
        if not self.binarize:
            return getattr(self, name)
        if name not in self._fixed:
            grey = getattr(self, name)
            gen = torch.Generator(device="cpu").manual_seed(self.seed + {"train": 0, "val": 1, "test": 2}[name])
            self._fixed[name] = torch.bernoulli(grey.cpu(), generator=gen).to(grey.device)
        return self._fixed[name]

    def labels(self, name: str) -> torch.Tensor | None:
        return getattr(self, f"{name}_labels")

    def train_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """One epoch of shuffled training batches (the last one may be smaller).

        Uses the global torch RNG, which the trainer seeds, so an epoch's binarization and
        order are reproducible and resumable.
        """
        x = self.train
        order = torch.randperm(x.shape[0], device=x.device)
        if self.binarize:
            # Bernoulli(x) as P(U < x), U ~ Uniform[0, 1), kept as bool until a batch is taken:
            # about half the time of torch.bernoulli on a CPU (benchmarks/speed.py and the README have figures).
            x = torch.rand(x.shape, dtype=x.dtype, device=x.device) < x
        for start in range(0, x.shape[0], batch_size):
            yield x[order[start:start + batch_size]].to(self.train.dtype)

    def num_batches(self, batch_size: int) -> int:
        return -(-self.train.shape[0] // batch_size)

    def shard_batches(self, batch_size: int, rank: int, world_size: int, seed: int, epoch: int,
                      start: int = 0) -> Iterator[torch.Tensor]:
        """This rank's share of each global batch of one epoch (distributed training).

        The epoch's permutation comes from a generator seeded by ``(seed, epoch)``, the same on
        every rank; global batch b is split into ``world_size`` near-equal slices and rank r
        takes slice r, binarized with the global torch RNG, which each rank seeds apart. A last
        global batch with fewer rows than ranks is dropped (``pyro.plate`` cannot be empty).
        Batches before ``start`` are skipped without drawing random numbers, so a run resumed
        mid-epoch continues with the same rows and draws.
        """
        x = self.train
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(x.shape[0], generator=generator).to(x.device)
        for b in range(self.num_shard_batches(batch_size, world_size)):
            if b < start:
                continue
            rows = x[torch.tensor_split(order[b * batch_size:(b + 1) * batch_size], world_size)[rank]]
            if self.binarize:
                rows = (torch.rand(rows.shape, dtype=rows.dtype, device=rows.device) < rows).to(rows.dtype)
            yield rows

    def num_shard_batches(self, batch_size: int, world_size: int) -> int:
        full, last = divmod(self.train.shape[0], batch_size)
        return full + (1 if last >= world_size else 0)
