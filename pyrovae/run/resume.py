"""``pyrovae resume``: a run continued from its last checkpoint, in the same MLflow run.

Rank 0 reads the run (its config, the newest whole checkpoint of each kind, who holds it) and hands
the other ranks what they need, or the one line saying why not; then training goes on through the
same :func:`pyrovae.run.pipeline.fit_into_run` a new run uses.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pyrovae.errors import UserError
from pyrovae.infer import distributed
from pyrovae.infer.callbacks import Callback
from pyrovae.infer.distributed import init_from_env
from pyrovae.infer.trainer import Trainer
from pyrovae.run import checkpoint, lease
from pyrovae.run.config import parse_override, resolve, to_toml
from pyrovae.run.pipeline import RunResult, check_data, fit_into_run, log, prepare
from pyrovae.run.ranks import fit
from pyrovae.run.restore import run_config
from pyrovae.run.storage import storage_faults
from pyrovae.run.tracking import MlflowRun

#: what ``pyrovae resume --set`` may change; anything else would not be the same run
RESUMABLE = ("train.epochs", "train.patience", "train.checkpoint_every", "train.device", "mlflow.tracking_uri")


def resume_config(run: MlflowRun, overrides: Sequence[str] = ()) -> dict:
    """The run's logged config with the (few) keys a resumed run may change overridden."""
    config = run_config(run)
    for text in overrides:
        keys, value = parse_override(text)
        section, key = keys[0], ".".join(keys[1:])
        config[section][key] = value
    return resolve(config)


def _check_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``{"train.epochs": 20, ...}`` from ``--set`` texts; refuse keys a resume cannot change."""
    values = {}
    for text in overrides:
        keys, value = parse_override(text)
        if ".".join(keys) not in RESUMABLE:
            raise UserError(
                f"resume cannot change '{'.'.join(keys)}' (it would not be the same run); "
                f"it can change {', '.join(RESUMABLE)}; train a new run instead"
            )
        values[".".join(keys)] = value
    return values


@dataclass
class _Resumable:
    """What rank 0 reads from the store to resume a run, and hands the other ranks."""

    run_id: str
    config: dict
    state: dict
    best: dict | None
    written: dict[str, str]  # the slot each checkpoint was last written to


def _load_for_resume(run_id: str, uri: str, overrides: Sequence[str], taking_over: bool = False) -> _Resumable:
    """The run to resume and its last checkpoint; says where it goes on from. ``taking_over``: the
    caller knows the run's process is gone (torchrun restarted the job)."""
    run = MlflowRun.existing(run_id, uri)
    run_id = run.run_id
    config = resume_config(run, overrides)
    state, last_slot = checkpoint.newest(run, "last")
    epochs, changed = config["train"]["epochs"], {o.partition("=")[0].strip() for o in overrides}
    if state["stopped_early"] and state["finished"] and "train.patience" not in changed:
        raise UserError(
            f"run '{run_id}' stopped early at epoch {state['epoch']} (val/loss last improved at "
            f"epoch {state['best_epoch']}); to go on anyway: --set train.patience=0 (off) or more"
        )
    if state["finished"] and state["epoch"] >= epochs and not state["stopped_early"]:
        raise UserError(
            f"run '{run_id}' already finished its {state['epoch']} epochs; "
            f"to train longer: pyrovae resume {run_id} --set train.epochs=N (N > {state['epoch']})"
        )
    position = state.get("mid_epoch") or state.get("partial")
    where = f"epoch {state['epoch']}" + (
        f", batch {position['batch']} of epoch {state['epoch'] + 1}" if position else ""
    )
    _take_over(run, where, taking_over)
    best, best_slot = checkpoint.newest(run, "best") if state["best_epoch"] else (None, "best-b")
    return _Resumable(run_id, config, state, best and best["module"], {"last": last_slot, "best": best_slot})


def _take_over(run: MlflowRun, where: str, taking_over: bool) -> None:
    """Refuse a run another live process is training; end a stale one (its process gone) KILLED."""
    found = run.client.get_run(run.run_id)
    if found.info.status != "RUNNING":
        log.info(f"resuming {found.info.status} run '{run.run_id}' from {where}")
        return
    holder = lease.Holder.parse(found.data.tags.get(lease.LEASE_TAG))
    gone = holder.gone(time.time()) if holder else "its process ended without closing it (killed?)"
    if not gone and not taking_over:
        raise UserError(
            f"run '{run.run_id}' is being trained by process {holder.pid} on {holder.host} (its lease runs "
            f"{holder.until - time.time():.0f} s more); stop that process first, or wait for its lease to run out"
        )
    if holder:
        lease.end_stale(run.client, found, say=False)  # the line below says it
    log.warning(
        f"run '{run.run_id}' was left RUNNING: {gone or 'its torchrun job restarted'}; "
        f"continuing from its last checkpoint ({where}), work after that is redone"
    )


def resume(
    run_id: str,
    overrides: Sequence[str] = (),
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
    tracking_uri: str = "",
    taking_over: bool = False,
    **train_keys: Any,
) -> RunResult:
    """Continue run ``run_id`` from ``checkpoints/last.pt`` in the same MLflow run.

    Weights, optimizer and schedule state, RNG states, the epoch and the beta schedule's step
    come back as they were, so metrics continue at the next step with the values an
    uninterrupted run would have logged (on CPU; CUDA kernels need not be deterministic). What a
    resume may change is given as ``[train]`` keywords, as :func:`train` takes them
    (``resume(run_id, epochs=20)``), or as ``--set`` texts (``overrides=["train.epochs=20"]``);
    ``tracking_uri`` names the store. A run another live process is training (its lease:
    :mod:`pyrovae.run.lease`) is refused, unless ``taking_over`` (torchrun restarted its job).
    """
    overrides = [*overrides, *(f"train.{k}={v!r}".replace("'", '"') for k, v in train_keys.items())]
    if tracking_uri:
        overrides.append(f'mlflow.tracking_uri="{tracking_uri}"')
    changes = _check_overrides(overrides)
    uri = changes.get("mlflow.tracking_uri", "")
    world, _ = init_from_env(changes.get("train.device", "auto"))
    found, error = None, ""
    if world.is_main:
        try:
            found = _load_for_resume(run_id, uri, overrides, taking_over)
        except UserError as err:
            error = str(err)
    if world.distributed:  # rank 0 reads the store and hands the others what they need (or its error)
        found, error = distributed.broadcast_object((found, error))
    if error:
        raise UserError(error)
    vae, data = prepare(found.config)
    check_data(vae, data)
    settings, validation = found.config["train"], found.config["validation"]
    trainer = Trainer(vae, data, settings=settings, validation=validation, progress=progress)
    trainer.load_state_dict(checkpoint.upgrade(found.state, trainer))
    if trainer.reseeded and world.is_main:
        log.warning(trainer.reseeded)
    run = MlflowRun(found.run_id, uri)
    if not world.is_main:
        fit(trainer, run.run_id, run.uri)
        return RunResult("", run.uri)
    with run.lifecycle(), storage_faults(run, lambda: found.state["epoch"]):
        run.set_tags({f"pyrovae.resumed.epoch_{found.state['epoch']}": " ".join(overrides) or "no overrides"})
        run.log_text(to_toml(found.config), "config.toml")  # a later resume reads the extended config
        return fit_into_run(trainer, run, found.config, callbacks, found.best, found.written)
