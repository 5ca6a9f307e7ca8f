"""Checkpoints: a trainer's :meth:`~pyrovae.infer.trainer.Trainer.state_dict` as a run artifact.

A checkpoint is one ``torch.save`` file holding only tensors, numbers, strings, lists, tuples
and dicts, so ``torch.load(path, weights_only=True)`` reads it and no code from the file ever
runs. Format 2 is ``{"format": 2, "finished": bool, **trainer.state_dict()}``: the VAE's
``state_dict``, the torch optimizer's and the learning-rate scheduler's ``state_dict``, every
RNG state, the counters (``epoch``, ``step``, ``best_val_loss``, ``best_epoch``,
``bad_epochs``, ``stopped_early``), the per-epoch ``history`` and, after an interrupt,
``mid_epoch`` (where inside the epoch training stopped).

Format 1 (pyrovae before the trainer stepped a torch optimizer) kept the optimizer state in
Pyro's ``{param store name: torch state_dict}`` form and the mid-epoch position as
``partial``; :func:`upgrade` turns it into format 2 for a given trainer, so those runs resume.

:class:`Checkpointer` logs ``checkpoints/last.pt`` every ``train.checkpoint_every`` epochs, at
an interrupt and at the end, and ``checkpoints/best.pt`` whenever val/loss improves.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from pyrovae.errors import UserError, first_line
from pyrovae.infer.callbacks import Callback
from pyrovae.run.logged_model import log_vae
from pyrovae.run.tracking import MlflowRun

FORMAT = 2
READABLE = (1, 2)
PYRO_MODULE_NAME = "vae"  # format 1 keyed optimizer state by "vae$$$<parameter name>"


def capture(trainer, finished: bool = False) -> dict:
    return {"format": FORMAT, "finished": finished, **trainer.state_dict()}


def upgrade(state: dict, trainer) -> dict:
    """A format-1 checkpoint as format 2 for ``trainer`` (whose VAE has the same parameters)."""
    if state["format"] == FORMAT:
        return state
    state = dict(state)
    names = [name for name, _ in trainer.vae.named_parameters()]
    per_param = state.pop("optimizer")
    optimizer = trainer.optimizer.state_dict()  # this trainer's groups and hyperparameters
    optimizer["state"] = {
        i: per_param[f"{PYRO_MODULE_NAME}$$${name}"]["state"][0]
        for i, name in enumerate(names)
        if per_param.get(f"{PYRO_MODULE_NAME}$$${name}", {}).get("state")
    }
    scheduler = trainer.scheduler.state_dict()  # format 1 had no schedule: a constant rate
    scheduler.update(last_epoch=state["step"], _step_count=state["step"] + 1)
    state.update(format=FORMAT, optimizer=optimizer, scheduler=scheduler, mid_epoch=state.pop("partial", None))
    return state


def save(state: dict, path: str | Path) -> Path:
    """Write ``state`` atomically: to a temporary file beside ``path``, then rename it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
        torch.save(state, tmp)
    Path(tmp.name).replace(path)
    return path


def load(path: str | Path, what: str = "checkpoint") -> dict:
    """Read a checkpoint with ``weights_only=True``; a damaged file is one :class:`UserError` line."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, random bytes, a pickle that wants code: all unusable
        raise UserError(
            f"{what} is corrupt or truncated ({first_line(err, 200)}); resume from another checkpoint or train again"
        ) from None
    if not isinstance(state, dict) or state.get("format") not in READABLE:
        found = state.get("format") if isinstance(state, dict) else None
        raise UserError(
            f"{what} is not a pyrovae checkpoint this version reads (format {found}; reads "
            f"{', '.join(map(str, READABLE))}); train again, or use the pyrovae that wrote it"
        )
    return state


def log(run: MlflowRun, state: dict, name: str) -> None:
    """Log ``state`` as the run artifact ``checkpoints/<name>.pt`` (replacing the previous one)."""
    with tempfile.TemporaryDirectory() as tmp:
        run.log_artifact(save(state, Path(tmp) / f"{name}.pt"), "checkpoints")


def download(run: MlflowRun, name: str = "last") -> dict:
    """``checkpoints/<name>.pt`` of a run, loaded (UserError when absent or damaged)."""
    try:
        local = run.download(f"checkpoints/{name}.pt")
    except Exception as err:
        raise UserError(
            f"run '{run.run_id}' has no checkpoints/{name}.pt ({type(err).__name__}); "
            f"it was trained before checkpoints existed or never finished an epoch"
        ) from None
    return load(local, f"checkpoints/{name}.pt of run '{run.run_id}'")


class Checkpointer(Callback):
    """``checkpoints/last.pt`` every ``train.checkpoint_every`` epochs and at the end; ``best.pt``
    at each new best val/loss; at the end, the best epoch's VAE as the logged model ``best_model``.

    ``best_module`` is the best state_dict so far (a resumed run passes its ``best.pt``'s);
    ``last_epoch`` is the epoch of the last ``last.pt`` written (0: none yet).
    """

    def __init__(self, run: MlflowRun, model_config: dict, best_module: dict | None = None, last_epoch: int = 0):
        self.run = run
        self.model_config = model_config
        self.best_module = best_module
        self.last_epoch = last_epoch

    def on_epoch_end(self, trainer, epoch, metrics):
        state = None
        if trainer.improved:
            state = capture(trainer)
            self.best_module = state["module"]
            log(self.run, state, "best")
        if epoch % trainer.settings.checkpoint_every == 0:
            log(self.run, state or capture(trainer), "last")
            self.last_epoch = epoch

    def on_interrupt(self, trainer):
        """A stop was requested between two steps: keep exactly this point."""
        log(self.run, capture(trainer), "last")

    def on_train_end(self, trainer, metrics):
        log(self.run, capture(trainer, finished=True), "last")
        if self.best_module is not None:
            log_vae(
                self.run,
                trainer.vae,
                self.model_config,
                trainer.data.data_shape,
                "best_model",
                state_dict=self.best_module,
                step=trainer.best.best_epoch,
                num_classes=trainer.data.num_classes,
            )
