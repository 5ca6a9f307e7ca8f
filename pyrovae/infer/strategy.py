r"""Where the steps run: one process (:class:`OneProcess`), or several joined by ``torch.distributed``
(:class:`Distributed`), each a small object the trainer calls at the same points.

Under torchrun (:mod:`pyrovae.infer.distributed`) the ELBO module runs inside
``DistributedDataParallel``: each rank steps on its slice of every global batch with its own random
numbers (seeded ``seed + rank``), and one small all-reduce per step sums the loss, the row count and
a stop flag, so ``train/loss`` is the global mean and a NaN or a signal on any rank stops every rank
after the same step. DDP *averages* gradients and each rank's loss is summed over its rows, so it is
multiplied by the world size W before ``backward``:

.. math:: \frac{1}{W}\sum_{r=1}^{W} \nabla (W\,L_r) = \nabla \sum_{r} L_r,

the gradient of the whole global batch: the learning rate keeps its single-process meaning. With
``train.loss_reduction = "mean"`` each rank divides by the rows of the *global* batch, not its own
share (a share's mean made the gradient W times too large; Adam's scale invariance hid it). At
world size 1 none of this runs.
"""

from __future__ import annotations

import pyro
import torch

from pyrovae.errors import UserError
from pyrovae.infer import distributed
from pyrovae.infer.rng import get_rng_state


class OneProcess:
    """Batches of the whole training set, ``backward`` as it is, nothing to agree on."""

    def __init__(self, world: distributed.World | None = None):
        self.world = world or distributed.World()

    def prepare(self, loss: torch.nn.Module, device: torch.device, seed: int) -> torch.nn.Module:
        return loss

    def steps_per_epoch(self, data, settings, semi_supervised: bool) -> int:
        if semi_supervised:
            return data.num_semi_supervised_batches(settings.batch_size, settings.labelled_every)
        return data.num_batches(settings.batch_size)

    def global_rows(self, data, batch_size: int, index: int, rows: int) -> int:
        """How many rows batch ``index`` holds over all processes (``rows``: this process's)."""
        return rows

    def batches(self, data, settings, epoch: int, done: int, labelled: bool, semi_supervised: bool):
        """This epoch's ``(x, y)`` batches, ``y`` None without labels."""
        if semi_supervised:
            return data.semi_supervised_batches(settings.batch_size, settings.labelled_every)
        if labelled:
            return data.train_batches(settings.batch_size, labelled=True)
        return ((x, None) for x in data.train_batches(settings.batch_size))

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def reduce(self, loss: float, rows: int, stop: bool, device: torch.device) -> tuple[float, int, bool]:
        """The step's loss and rows over all processes, and whether any of them must stop."""
        return loss, rows, stop

    def rng_states(self) -> list | None:
        """Every rank's RNG state (only where there are several), before a checkpoint may be written."""
        return None


class Distributed(OneProcess):
    """DDP over the ranks of ``torch.distributed``: shards, scaled losses, one collective per step."""

    def prepare(self, loss, device, seed):
        from torch.nn.parallel import DistributedDataParallel

        pyro.set_rng_seed(seed + self.world.rank)  # each rank its own noise and binarization
        return DistributedDataParallel(loss, device_ids=[device] if device.type == "cuda" else None)

    def steps_per_epoch(self, data, settings, semi_supervised):
        refusal = self._refusal(data, settings, semi_supervised)
        if refusal:  # the same on every rank: let all reach it, so that none exits (and torchrun stops
            torch.distributed.barrier()  # the others) before every rank can say it in its own line
            raise UserError(refusal)
        return data.num_shard_batches(settings.batch_size, self.world.size)

    def _refusal(self, data, settings, semi_supervised) -> str:
        """Why these settings cannot be split over the processes ('' when they can)."""
        if semi_supervised:
            return (
                "semi-supervised training (data.labelled) runs in one process: its labelled and unlabelled "
                "batches are not sharded across ranks; run it without torchrun"
            )
        if settings.free_bits:
            return (
                f"train.free_bits floors the KL's batch mean, which each of the {self.world.size} processes would "
                f"take over its own share of the batch (another objective); train with free bits in one process"
            )
        batch_size, w, rows = settings.batch_size, self.world.size, data.train.shape[0]
        if batch_size < w or rows < w:  # a rank with no rows: pyro.plate cannot be empty
            too_small = f"train.batch_size = {batch_size}" if batch_size < w else f"the training split ({rows} rows)"
            return (
                f"{too_small} cannot give each of the {w} processes of this torchrun job a row of every batch; "
                f"use train.batch_size >= {w} (the global batch, split over the processes) and at least {w} "
                f"training rows, or fewer processes (--nproc-per-node)"
            )
        return ""

    def global_rows(self, data, batch_size, index, rows):
        return min(batch_size, data.train.shape[0] - index * batch_size)

    def batches(self, data, settings, epoch, done, labelled, semi_supervised):
        """This rank's slices, the ``done`` first ones left out (None placeholders keep batch indices global)."""
        w = self.world
        shards = data.shard_batches(settings.batch_size, w.rank, w.size, settings.seed, epoch, start=done,
                                    labelled=labelled)  # fmt: skip
        if not labelled:
            shards = ((x, None) for x in shards)
        return (x for part in ([None] * done, shards) for x in part)

    def backward(self, loss):
        (loss * self.world.size).backward()

    def reduce(self, loss, rows, stop, device):
        total, rows, votes = distributed.all_reduce_sum([loss, rows, float(stop)], device)
        return total, int(rows), votes > 0

    def rng_states(self):
        return distributed.gather_objects(get_rng_state())


def strategy_for(world: distributed.World) -> OneProcess:
    return Distributed(world) if world.distributed else OneProcess(world)
