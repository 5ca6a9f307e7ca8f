"""The trainer's own steps, by value: run as one process or under torchrun (2 ranks, gloo) by
``tests/infer/test_distributed.py``; rank 0 saves, for every objective, the parameters after one
epoch and the epoch's ``train/loss`` to ``<folder>/world-<world size>.pt``.

Three steps of :class:`~pyrovae.infer.trainer.Trainer` (its strategy's sharding, loss scaling and
all-reduce) on one global batch of 64 binary rows, with plain SGD (Adam's invariance to the gradient's
scale would hide a gradient W times too large) and a guide whose noise is a function of the
datapoint (:class:`DataNoiseGuide`), so that one process and two ranks draw the same z for each
row. The parameters must then agree whichever way the batch was split.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from ddp_gradient import SHAPE, make_vae

from pyrovae.data import Splits
from pyrovae.errors import UserError
from pyrovae.infer.distributed import init_from_env
from pyrovae.infer.trainer import Trainer

#: every objective the trainer offers, as [train] settings
OBJECTIVES = {
    "trace": {},
    "meanfield": {"elbo": "meanfield"},
    "iwae": {"elbo": "iwae", "num_particles": 3},
    "dreg": {"elbo": "iwae", "num_particles": 3, "iwae_gradient": "dreg"},
    "renyi": {"elbo": "renyi", "num_particles": 3, "renyi_alpha": 0.5},
    "free_bits": {"free_bits": 0.3},
    "mean_reduction": {"loss_reduction": "mean", "lr": 0.3},
    "warmup": {"beta_start": 0.2, "warmup_epochs": 2},
}


def main(folder: Path) -> None:
    world, _ = init_from_env("cpu")
    rows = torch.bernoulli(torch.full((96, *SHAPE), 0.4), generator=torch.Generator().manual_seed(1))
    data = Splits("binary", train=rows[:64], val=rows[64:80], test=rows[80:], binarize=False)
    # one global batch per epoch: one process and two ranks order their epochs differently, but a
    # batch's loss and gradient do not depend on the order of its rows
    settings = {"batch_size": 64, "epochs": 3, "optimizer": "torch.optim.SGD", "lr": 0.01, "seed": 0}
    results = {}
    for objective, extra in OBJECTIVES.items():
        try:
            trainer = Trainer(make_vae(), data, settings={**settings, **extra}, progress=False)
        except UserError as refused:  # what cannot be split over processes is refused
            results[objective] = {"refused": str(refused)}
            continue
        losses = [trainer.train_epoch()["train/loss"] for _ in range(3)]
        params = {name: p.detach().clone() for name, p in trainer.vae.named_parameters()}
        results[objective] = {"params": params, "losses": losses}
    if world.is_main:
        torch.save(results, folder / f"world-{world.size}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
