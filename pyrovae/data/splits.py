"""Train / validation / test tensors held on the training device, and how batches come out.

The whole data set lives on the device as one tensor per split: an epoch is a random
permutation and slices of it, with no ``DataLoader`` and no per-batch Python collation.
Binarization follows the literature's convention (Burda et al. 2016; Tomczak & Welling 2018):

- training: *dynamic* binarization, a fresh ``x ~ Bernoulli(grey)`` every epoch;
- validation and test: one *fixed*, seeded binarization, so every run is scored on the
  same binary images.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

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
    #: how many classes the labels have (set by the loader; else the largest label + 1)
    classes: int | None = None
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

    def to(self, device: torch.device) -> Splits:
        moved = {
            k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items() if k != "_fixed"
        }
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
        """The labels of a split (integer classes, ``(N,)``), or None when the data have none."""
        return getattr(self, f"{name}_labels")

    @property
    def num_classes(self) -> int | None:
        """The number of classes of the labels, or None without labels."""
        if self.classes is not None:
            return self.classes
        found = [y for y in (self.train_labels, self.val_labels, self.test_labels) if y is not None and y.numel()]
        return int(max(int(y.max()) for y in found)) + 1 if found else None

    def train_batches(self, batch_size: int, labelled: bool = False) -> Iterator:
        """One epoch of shuffled training batches (the last one may be smaller); with ``labelled``,
        pairs ``(x, y)`` of each batch and its labels (``y`` None when the data have none).

        Uses the global torch RNG, which the trainer seeds, so an epoch's binarization and
        order are reproducible and resumable.
        """
        x = self.train
        order = torch.randperm(x.shape[0], device=x.device)
        if self.binarize:
            # Bernoulli(x) as P(U < x), U ~ Uniform[0, 1), kept as bool until a batch is taken:
            # about half the time of torch.bernoulli on a CPU (benchmarks/speed.py and the README have figures).
            x = torch.rand(x.shape, dtype=x.dtype, device=x.device) < x
        labels = self.train_labels if labelled else None
        for start in range(0, x.shape[0], batch_size):
            rows = order[start : start + batch_size]
            batch = x[rows].to(self.train.dtype)
            yield (batch, None if labels is None else labels[rows]) if labelled else batch

    def num_batches(self, batch_size: int) -> int:
        return -(-self.train.shape[0] // batch_size)

    @property
    def semi_supervised(self) -> bool:
        """Whether some training rows are unlabelled (label -1, ``data.labelled``) and others not."""
        y = self.train_labels
        return y is not None and bool((y < 0).any()) and bool((y >= 0).any())

    def semi_supervised_batches(
        self, batch_size: int, every: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """One epoch of a partly labelled training set: every unlabelled row once, in shuffled
        batches ``(x, None)``, with labelled batches ``(x, y)`` among them.

        ``every = 0``: every labelled row once too, its batches spread evenly among the unlabelled
        ones (Pyro's ``ss_vae_M2``), so each part weighs by its size. ``every = k``: a labelled
        batch (``min(batch_size, labelled rows)`` rows, cycling through the labelled rows in a fresh
        order each pass) after every k unlabelled batches, as Kingma et al. put labelled examples in
        every minibatch: with 100 labels the classifier then sees them at every other step.
        Dynamically binarized as :meth:`train_batches`.
        """
        labelled = self.train_labels >= 0
        free = labelled.logical_not().nonzero().flatten()
        free = free[torch.randperm(free.numel(), device=free.device)]
        unlabelled = [free[i : i + batch_size] for i in range(0, free.numel(), batch_size)]
        known = labelled.nonzero().flatten()
        if every:
            size, order, pool = (
                min(batch_size, known.numel()),
                [],
                torch.empty(0, dtype=known.dtype, device=known.device),
            )
            for i, rows in enumerate(unlabelled):
                order.append((rows, False))
                if (i + 1) % every == 0:
                    if pool.numel() < size:  # a fresh pass over the labelled rows
                        pool = torch.cat([pool, known[torch.randperm(known.numel(), device=known.device)]])
                    order.append((pool[:size], True))
                    pool = pool[size:]
        else:
            known = known[torch.randperm(known.numel(), device=known.device)]
            labelled_batches = [known[i : i + batch_size] for i in range(0, known.numel(), batch_size)]
            spread = sorted(
                [(i / len(unlabelled), 0, b) for i, b in enumerate(unlabelled)]
                + [((i + 0.5) / len(labelled_batches), 1, b) for i, b in enumerate(labelled_batches)],
                key=lambda t: (t[0], t[1]),
            )
            order = [(rows, bool(has_labels)) for _, has_labels, rows in spread]
        for rows, has_labels in order:
            x = self.train[rows]
            if self.binarize:
                x = (torch.rand(x.shape, dtype=x.dtype, device=x.device) < x).to(x.dtype)
            yield x, (self.train_labels[rows] if has_labels else None)

    def num_semi_supervised_batches(self, batch_size: int, every: int = 0) -> int:
        labelled = int((self.train_labels >= 0).sum())
        unlabelled = -(-(self.train.shape[0] - labelled) // batch_size)
        return unlabelled + (unlabelled // every if every else -(-labelled // batch_size))

    def shard_batches(
        self, batch_size: int, rank: int, world_size: int, seed: int, epoch: int, start: int = 0, labelled: bool = False
    ) -> Iterator:
        """This rank's share of each global batch of one epoch (distributed training).

        The epoch's permutation comes from a generator seeded by ``(seed, epoch)``, the same on
        every rank; global batch b is split into ``world_size`` near-equal slices and rank r
        takes slice r, binarized with the global torch RNG, which each rank seeds apart. A last
        global batch with fewer rows than ranks is dropped (``pyro.plate`` cannot be empty).
        Batches before ``start`` are skipped without drawing random numbers, so a run resumed
        mid-epoch continues with the same rows and draws. ``labelled``: pairs ``(x, y)`` as in
        :meth:`train_batches`, the labels sharded with their rows.
        """
        x = self.train
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(x.shape[0], generator=generator).to(x.device)
        for b in range(self.num_shard_batches(batch_size, world_size)):
            if b < start:
                continue
            index = torch.tensor_split(order[b * batch_size : (b + 1) * batch_size], world_size)[rank]
            rows = x[index]
            if self.binarize:
                rows = (torch.rand(rows.shape, dtype=rows.dtype, device=rows.device) < rows).to(rows.dtype)
            if labelled:
                yield rows, None if self.train_labels is None else self.train_labels[index]
            else:
                yield rows

    def num_shard_batches(self, batch_size: int, world_size: int) -> int:
        full, last = divmod(self.train.shape[0], batch_size)
        return full + (1 if last >= world_size else 0)
