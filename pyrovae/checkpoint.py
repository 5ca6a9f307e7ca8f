"""Checkpoints: everything a trainer needs to continue exactly where it stopped, as plain data.

A checkpoint is one ``torch.save`` file holding only tensors, numbers, strings, lists, tuples
and dicts, so ``torch.load(path, weights_only=True)`` reads it and no code from the file ever
runs. It holds

- ``module``: the VAE's ``state_dict`` (CPU tensors);
- ``optimizer``: ``trainer.optim.get_state()``, Pyro's ``{param name: torch optimizer
  state_dict}`` (any ``PyroOptim`` writes and reads it, whatever torch optimizer is inside);
- ``rng``: torch CPU (and every CUDA device's), NumPy and Python RNG states, taken at the end
  of an epoch, so the next epoch's shuffling, dynamic binarization and z samples are the same
  as in a run that never stopped;
- ``epoch`` and ``step`` (the position in the beta schedule), ``best_val_loss``,
  ``best_epoch``, ``bad_epochs`` (the early-stopping counter), ``stopped_early``, ``finished``
  and ``history`` (each epoch's metrics, for the loss curves).

:func:`log` writes it to a temporary file and then logs it as the run artifact
``checkpoints/<name>.pt``; :class:`Checkpointer` writes ``last.pt`` every
``train.checkpoint_every`` epochs and at the end, and ``best.pt`` whenever val/loss improves.
:func:`save` is what a signal handler or a NaN guard calls to keep the state it has now.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from pyrovae.errors import UserError
from pyrovae.rng import get_rng_state, set_rng_state
from pyrovae.trainer import Callback

FORMAT = 1
COUNTERS = ("epoch", "step", "best_val_loss", "best_epoch", "bad_epochs", "stopped_early")


def _to_cpu(obj):
    """Tensors anywhere inside dicts/lists/tuples, moved to the CPU (a checkpoint loads anywhere)."""
    if torch.is_tensor(obj):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def capture(trainer, finished: bool = False) -> dict:
    """The trainer's full state now (call it between steps, e.g. at the end of an epoch)."""
    return {"format": FORMAT, "finished": finished,
            **{k: getattr(trainer, k) for k in COUNTERS},
            "history": [dict(m) for m in trainer.history],
            "partial": trainer.partial,  # where in an epoch a signal stopped it, else None
            "module": _to_cpu(trainer.vae.state_dict()),
            "optimizer": _to_cpu(trainer.optim.get_state()),
            "rng": get_rng_state()}


def restore(trainer, state: dict) -> None:
    """Put ``state`` (from :func:`capture`) into a freshly built trainer before ``fit``."""
    trainer.vae.load_state_dict(state["module"])  # copies into the existing parameters
    trainer.optim.set_state(state["optimizer"])   # applied when SVI first hands each parameter over
    for key in COUNTERS:
        setattr(trainer, key, state[key])
    trainer.history = [dict(m) for m in state["history"]]
    trainer.partial = state.get("partial")
    trainer.last_checkpoint_epoch = state["epoch"]
    set_rng_state(state["rng"])


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
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise UserError(f"{what} is corrupt or truncated ({reason}); "
                        f"resume from another checkpoint or train again") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{what} is not a pyrovae checkpoint (format {FORMAT}); train again")
    return state


def log(state: dict, name: str) -> None:
    """Log ``state`` as the run artifact ``checkpoints/<name>.pt`` (replacing the previous one)."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        mlflow.log_artifact(str(save(state, Path(tmp) / f"{name}.pt")), "checkpoints")


def download(run_id: str, name: str = "last") -> dict:
    """``checkpoints/<name>.pt`` of a run, loaded (UserError when absent or damaged)."""
    import mlflow

    try:
        local = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/checkpoints/{name}.pt")
    except Exception as err:
        raise UserError(f"run '{run_id}' has no checkpoints/{name}.pt ({type(err).__name__}); "
                        f"it was trained before checkpoints existed or never finished an epoch") from None
    return load(local, f"checkpoints/{name}.pt of run '{run_id}'")


class Checkpointer(Callback):
    """``checkpoints/last.pt`` every ``train.checkpoint_every`` epochs and at the end; ``best.pt``
    at each new best val/loss; at the end, the best epoch's VAE as the logged model ``best_model``.

    ``best_module`` is the best state_dict so far (a resumed run passes its ``best.pt``'s).
    """

    def __init__(self, model_config: dict, best_module: dict | None = None):
        self.model_config = model_config
        self.best_module = best_module

    def on_epoch_end(self, trainer, epoch, metrics):
        state = None
        if trainer.improved:
            state = capture(trainer)
            self.best_module = state["module"]
            log(state, "best")
        if epoch % trainer.train_cfg["checkpoint_every"] == 0:
            log(state or capture(trainer), "last")
            trainer.last_checkpoint_epoch = epoch

    def on_interrupt(self, trainer):
        """A signal stopped training between two steps: keep exactly this point."""
        log(capture(trainer), "last")

    def on_train_end(self, trainer, metrics):
        from pyrovae.logged_model import log_vae

        log(capture(trainer, finished=True), "last")
        if self.best_module is not None:
            log_vae(trainer.vae, self.model_config, "best_model", state_dict=self.best_module,
                    step=trainer.best_epoch)
