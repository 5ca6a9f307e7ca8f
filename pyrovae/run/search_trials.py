"""A search's trials: claimed one at a time up to the study's total, trained as child runs, reported
epoch by epoch to the pruner, and never lost: a trial whose process stopped (Ctrl-C, SIGTERM, a kill)
is marked FAILED and queued again with the same values.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import signal
import socket
import sys
import time

from pyrovae.errors import UserError, first_line
from pyrovae.infer.callbacks import Callback
from pyrovae.run import config as config_mod
from pyrovae.run import lease
from pyrovae.run.search_space import suggest
from pyrovae.run.search_study import Spec, open_study, storage_lock
from pyrovae.run.tracking import MlflowRun, client, mlflow_module

#: a trial's user attributes: its MLflow run, the process that holds it, the trial it retries, asked one too many
RUN_ATTR, HOLDER_ATTR, RETRY_ATTR, SURPLUS_ATTR = (
    "pyrovae.run_id",
    "pyrovae.holder",
    "pyrovae.retry_of",
    "pyrovae.extra",
)
#: how long a trial of another machine may take to open its MLflow run before it counts as lost
STARTUP_S = 600.0
#: a worker whose trials fail this many times in a row stops: the space or the config is broken
MAX_FAILURES = 5
log = logging.getLogger("pyrovae")


class TrialReporter(Callback):
    """Tags the trial's run, reports the objective every epoch and, when the pruner says so, stops the trainer
    after this epoch as early stopping does: the logger, after this callback, still logs the epoch."""

    def __init__(self, trial, spec: Spec):
        self.trial, self.spec, self.best, self.pruned_at, self.run = trial, spec, math.inf, 0, None

    def on_train_begin(self, trainer):
        self.run = MlflowRun(mlflow_module().active_run().info.run_id, self.spec.uri)  # the lifecycle holds it
        self.trial.set_user_attr(RUN_ATTR, self.run.run_id)
        self.run.set_tags({"pyrovae.study": self.spec.study, "pyrovae.trial": str(self.trial.number)})

    def on_epoch_end(self, trainer, epoch, metrics):
        value = metrics.get(self.spec.objective, math.nan)
        if not math.isfinite(value):
            return
        self.best = min(self.best, value)
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            self.pruned_at, trainer.best.stopped_early = epoch, True
            self.run.set_tags({"pyrovae.pruned": f"epoch {epoch}"})


def fail(study, trial, why: str, retry: bool) -> None:
    """End ``trial`` FAILED, say why; ``retry`` queues its values again (a trial stopped, not a bad one)."""
    from optuna.trial import TrialState

    study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
    if retry and trial.params:
        study.enqueue_trial(trial.params, user_attrs={RETRY_ATTR: trial.number})
    log.warning(f"trial {trial.number} {why}; it is FAILED{' and queued again' if retry and trial.params else ''}")


def fail_stale(study, uri: str) -> None:
    """Fail (and queue again) each RUNNING trial whose process is gone: on this machine its pid tells, on
    another its MLflow run's lease (:mod:`pyrovae.run.lease`), or :data:`STARTUP_S` without a run or holder."""
    from optuna.trial import TrialState

    now = time.time()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        holder, run_id, why = lease.Holder.parse(trial.user_attrs.get(HOLDER_ATTR)), trial.user_attrs.get(RUN_ATTR), ""
        with contextlib.suppress(Exception):  # a store this machine cannot read leaves the trial to its owner
            run = client(uri).get_run(run_id) if run_id else None
            if holder is None:  # stopped between asking for it and saying who holds it
                age = now - trial.datetime_start.timestamp()
                why = f"no process said it held it in {age:.0f} s" if age > STARTUP_S else ""
            elif holder.host == socket.gethostname():
                why = lease.Holder(holder.host, holder.pid, holder.started, math.inf).gone(now)
            elif run is None:
                why = holder.gone(now)
            elif run.info.status != "RUNNING":
                why = f"its run ended {run.info.status}" if now - run.info.end_time / 1000 > lease.LEASE_S else ""
            else:
                why = lease.stale_reason(run, now)
            if why and run is not None:
                lease.end_stale(client(uri), run)
        if why:
            fail(study, trial, f"was left RUNNING ({why})", retry=True)


def claim(study, spec: Spec):
    """The next trial to train, or None once the study holds ``spec.trials`` COMPLETE, PRUNED or RUNNING ones."""
    from optuna.trial import TrialState

    counted = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    with storage_lock(spec.storage):
        fail_stale(study, spec.uri)
        if len(study.get_trials(deepcopy=False, states=counted)) >= spec.trials:
            return None
        trial = study.ask()
        trial.set_user_attr(HOLDER_ATTR, lease.Holder.this_process(STARTUP_S).text())
    if trial.number in sorted(t.number for t in study.get_trials(deepcopy=False, states=counted))[: spec.trials]:
        return trial
    trial.set_user_attr(SURPLUS_ATTR, True)  # another machine asked at the same moment: not trained, not counted
    study.tell(trial, state=TrialState.FAIL)
    return None


def run_trial(study, trial, spec: Spec) -> str:
    """Train ``trial`` as a child run of the study's parent and tell Optuna how it ended; the state's name."""
    from optuna.trial import TrialState

    from pyrovae.run.pipeline import train_config

    values = suggest(trial, spec.space)
    reporter = TrialReporter(trial, spec)
    try:
        config = config_mod.load(spec.config, [*spec.overrides, *values])
        config["mlflow"]["run_name"] = f"trial {trial.number}"
        train_config(config, progress=spec.progress, callbacks=[reporter], parent_run_id=spec.parent_run_id)
    except KeyboardInterrupt:
        fail(study, trial, "was interrupted", retry=True)
        raise
    except UserError as err:  # values that do not fit this config, a loss that diverged, a store gone
        fail(study, trial, f"failed: {first_line(err)}", retry=False)
        return "FAIL"
    except BaseException as err:
        fail(study, trial, f"failed: {type(err).__name__}: {first_line(err)}", retry=False)
        raise
    if not math.isfinite(reporter.best):
        fail(study, trial, f"logged no {spec.objective}", retry=False)
        return "FAIL"
    if reporter.pruned_at:
        study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
        log.info(f"trial {trial.number}: pruned after epoch {reporter.pruned_at} ({' '.join(values)})")
        return "PRUNED"
    study.tell(trial, reporter.best, skip_if_finished=True)
    log.info(f"trial {trial.number}: {spec.objective} {reporter.best:.4f} ({' '.join(values)})")
    return "COMPLETE"


def work(spec: Spec, worker: int = 0, study=None) -> None:
    """Claim and train trials until the study holds ``spec.trials`` of them."""
    study = study or open_study(spec, worker)
    failures = 0
    while (trial := claim(study, spec)) is not None:
        failures = failures + 1 if run_trial(study, trial, spec) == "FAIL" else 0
        if failures >= MAX_FAILURES:
            raise UserError(f"{failures} trials in a row failed (said above); fix the space or the config, then "
                            f"the same command continues study '{spec.study}'")  # fmt: skip


def _terminated(signum, frame):
    raise KeyboardInterrupt("stopped by SIGTERM")


def _worker_process(spec: Spec, worker: int) -> None:
    """A spawned worker: its share of the CPU threads, SIGTERM as Ctrl-C, pyrovae's lines printed."""
    import torch

    torch.set_num_threads(spec.threads)
    signal.signal(signal.SIGTERM, _terminated)
    if spec.log_level is not None:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter(f"pyrovae: [worker {worker}] %(message)s"))
        log.addHandler(handler)
        log.setLevel(spec.log_level)
        log.propagate = False
    try:
        work(spec, worker)
    except KeyboardInterrupt:
        sys.exit(130)
    except UserError as err:
        print(f"pyrovae: error: {err}", file=sys.stderr)
        sys.exit(2)


def run_workers(spec: Spec, workers: int) -> None:
    """``workers`` spawned processes on this machine; Ctrl-C or SIGTERM here stops each (its trial FAILED)."""
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_worker_process, args=(spec, i), name=f"worker {i}") for i in range(workers)]
    previous = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(spec.threads)  # read by each worker's torch as it starts
    try:
        for process in processes:
            process.start()
        for process in processes:
            process.join()
    except KeyboardInterrupt:
        alive = [p for p in processes if p.is_alive()]
        for process in alive:
            process.terminate()  # SIGTERM: each ends its run KILLED and its trial FAILED
        for process in alive:
            process.join(60)
            if process.is_alive():
                process.kill()
        raise
    finally:
        os.environ.pop("OMP_NUM_THREADS") if previous is None else os.environ.update(OMP_NUM_THREADS=previous)
    failed = [f"{p.name} (exit status {p.exitcode})" for p in processes if p.exitcode]
    if failed:
        raise UserError(f"{', '.join(failed)} stopped early (said above); the same command continues study "
                        f"'{spec.study}'")  # fmt: skip
