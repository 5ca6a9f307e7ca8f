"""A trainer's whole state as plain data, and a trainer continued from it (:meth:`Trainer.state_dict`).

The state holds the model's and the optimizer's ``state_dict``, the schedule's position, the
counters (``epoch``, ``step`` and :class:`~pyrovae.infer.stopping.BestEpoch`'s), the per-epoch
``history``, every RNG stream (every rank's, under torchrun) and, after an interrupt, ``mid_epoch``,
the position inside the epoch: only tensors, numbers, strings, lists and dicts, so
``torch.load(..., weights_only=True)`` reads it back and no code from a file runs.
"""

from __future__ import annotations

from collections.abc import Mapping

import pyro
import torch

from pyrovae.errors import UserError
from pyrovae.infer.optim import apply_schedule
from pyrovae.infer.rng import get_rng_state, set_rng_state


def capture(trainer) -> dict:
    """Everything needed to continue exactly here, as tensors (on the CPU) and plain data."""
    ranks = {"rng_per_rank": trainer._rng_per_rank} if trainer.world.distributed else {}
    return _to_cpu({"epoch": trainer.epoch, "step": trainer.step, **trainer.best.state_dict(),
                    "history": [dict(m) for m in trainer.history], "mid_epoch": trainer.mid_epoch,
                    "module": trainer.vae.state_dict(), "optimizer": trainer.optimizer.state_dict(),
                    "scheduler": trainer.scheduler.state_dict(), "rng": get_rng_state(),
                    "world_size": trainer.world.size, **ranks})  # fmt: skip


def restore(trainer, state: Mapping) -> None:
    """``trainer`` continues from ``state``: at the same world size, with the same random streams."""
    trainer.vae.load_state_dict(state["module"])
    try:
        trainer.optimizer.load_state_dict(state["optimizer"])
    except (KeyError, ValueError, RuntimeError) as err:  # the state of another optimizer (or other groups)
        raise UserError(
            f"the checkpoint's optimizer state does not fit train.optimizer = {trainer.settings.optimizer} "
            f"({type(err).__name__}: {err}); was the optimizer replaced during training? Name the optimizer the run "
            f"was trained with in train.optimizer (an import path and train.optimizer_args) and train again"
        ) from None
    trainer.scheduler.load_state_dict(state["scheduler"])
    apply_schedule(trainer.scheduler)  # the rate of the schedule in force (train.epochs may have changed)
    trainer.epoch, trainer.step = state["epoch"], state["step"]
    trainer.best.load_state_dict(state)
    trainer.history, trainer.mid_epoch = [dict(m) for m in state["history"]], state.get("mid_epoch")
    world, saved = trainer.world, state.get("world_size", 1)
    if saved == world.size:
        set_rng_state(state["rng_per_rank"][world.rank] if world.distributed else state["rng"])
    else:  # another world size: the streams cannot continue; a fresh one per rank and epoch
        trainer.mid_epoch = None
        pyro.set_rng_seed(trainer.settings.seed + 1_000 * trainer.epoch + world.rank)
        trainer.reseeded = f"trained on {saved} process(es), resumed on {world.size}: random streams reseeded"


def enter_epoch(trainer) -> tuple[dict | None, dict]:
    """Start an epoch, or re-enter the one an interrupt stopped (``trainer.mid_epoch``): its counters
    restored and its start's random state set again, so that its order and binarization come out the
    same. Returns that position (or None) and the random state at the epoch's start."""
    resumed, trainer.mid_epoch = trainer.mid_epoch, None
    trainer.batches_done = resumed["batch"] if resumed else 0
    trainer._loss_sum, trainer._count = (resumed["loss_sum"], resumed["n"]) if resumed else (0.0, 0)
    if resumed:
        set_rng_state(resumed["epoch_rng"])
    return resumed, get_rng_state()


def position(trainer, epoch_rng: dict) -> dict:
    """Where inside an epoch the trainer stands (for ``mid_epoch``): batches done, the summed loss and
    rows so far, the random state at the epoch's start and now."""
    return {"batch": trainer.batches_done, "loss_sum": trainer._loss_sum, "n": trainer._count,
            "epoch_rng": epoch_rng, "rng": get_rng_state()}  # fmt: skip


def _to_cpu(obj):
    """Tensors anywhere inside dicts/lists/tuples, detached copies on the CPU (loadable anywhere)."""
    if torch.is_tensor(obj):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj
