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
an interrupt and at the end, and ``checkpoints/best.pt`` whenever val/loss improves. Each goes to
two slots in turn (``last.pt`` and ``last-b.pt``; ``best.pt`` and ``best-b.pt``): an artifact
store copies files in place, so a write cut short (a full disk, a SIGKILL) spoils the slot it was
writing and never the other; :func:`newest` reads the newest whole one.
"""

from __future__ import annotations

import logging
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


def slots(name: str) -> tuple[str, str]:
    """The two files a checkpoint ``name`` is written to in turn: ``name.pt`` and ``name-b.pt``."""
    return name, f"{name}-b"


def log(run: MlflowRun, state: dict, slot: str) -> None:
    """Log ``state`` as the run artifact ``checkpoints/<slot>.pt`` (replacing the previous one)."""
    with tempfile.TemporaryDirectory() as tmp:
        run.log_artifact(save(state, Path(tmp) / f"{slot}.pt"), "checkpoints")


def newest(run: MlflowRun, name: str = "last") -> tuple[dict, str]:
    """The newest readable checkpoint ``name`` of a run (of its two slots) and the slot it came from.

    Newest is the most optimizer steps (the finished one first at a tie). A slot that is damaged (a
    write cut short by a full disk or a kill) is passed over with a warning; when no slot can be
    read, one :class:`UserError` line says why.
    """
    readable, problems = [], []
    for slot in slots(name):
        try:
            local = run.download(f"checkpoints/{slot}.pt")
        except Exception:
            continue  # never written: a run of one checkpoint, or one older than the slots
        try:
            readable.append((load(local, f"checkpoints/{slot}.pt of run '{run.run_id}'"), slot))
        except UserError as err:
            problems.append((slot, str(err)))
    if problems and not readable:
        raise UserError(problems[0][1])
    if not readable:
        raise UserError(
            f"run '{run.run_id}' has no checkpoints/{name}.pt; "
            f"it was trained before checkpoints existed or never finished an epoch"
        )
    state, slot = max(readable, key=lambda found: (found[0]["step"], found[0]["finished"]))
    if problems:
        logging.getLogger("pyrovae").warning(
            f"checkpoints/{problems[0][0]}.pt is damaged (a write cut short?); "
            f"using checkpoints/{slot}.pt (epoch {state['epoch']}) instead"
        )
    return state, slot


def download(run: MlflowRun, name: str = "last") -> dict:
    """The newest readable checkpoint ``name`` of a run (:func:`newest`)."""
    return newest(run, name)[0]


class Checkpointer(Callback):
    """``checkpoints/last.pt`` every ``train.checkpoint_every`` epochs and at the end; ``best.pt``
    at each new best val/loss; at the end, the best epoch's VAE as the logged model ``best_model``.
    Each is written in two slots in turn (``last.pt``, ``last-b.pt``), so one cut short leaves the
    one before it whole.

    ``best_module`` is the best state_dict so far (a resumed run passes its ``best.pt``'s);
    ``last_epoch`` is the epoch of the last ``last.pt`` written (0: none yet); ``written`` the slot
    each checkpoint was last written to (a resumed run's newest ones).
    """

    def __init__(
        self,
        run: MlflowRun,
        model_config: dict,
        best_module: dict | None = None,
        last_epoch: int = 0,
        written: dict[str, str] | None = None,
    ):
        self.run = run
        self.model_config = model_config
        self.best_module = best_module
        self.last_epoch = last_epoch
        self.written = {"last": "last-b", "best": "best-b", **(written or {})}  # so the first write is last.pt

    def log(self, state: dict, name: str) -> None:
        """Write ``state`` to the slot of ``name`` not holding its newest checkpoint."""
        slot = next(s for s in slots(name) if s != self.written[name])
        log(self.run, state, slot)
        self.written[name] = slot  # only once whole: a write that failed is retried in the same slot

    def on_epoch_end(self, trainer, epoch, metrics):
        state = None
        if trainer.improved:
            state = capture(trainer)
            self.best_module = state["module"]
            self.log(state, "best")
        if epoch % trainer.settings.checkpoint_every == 0:
            self.log(state or capture(trainer), "last")
            self.last_epoch = epoch

    def on_interrupt(self, trainer):
        """A stop was requested between two steps: keep exactly this point."""
        self.log(capture(trainer), "last")

    def on_train_end(self, trainer, metrics):
        self.log(capture(trainer, finished=True), "last")
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
