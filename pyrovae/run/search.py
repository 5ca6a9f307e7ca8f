"""Hyperparameter search with Optuna: each trial is a ``pyrovae train`` child run of one parent run per study.

A search space maps config keys to ``{float = [low, high], log = true}``, ``{int = [low, high]}`` or
``{choice = [...]}``; a trial's values become ``--set`` overrides over the base config, so a trial trains
exactly as ``pyrovae train`` would. The objective is the lowest per-epoch value of ``val/loss`` (the full
negative ELBO at beta = 1) or ``val/nll_iwae`` a trial reached; the pruner sees every epoch's value and a
pruned trial stops after that epoch is logged, as early stopping does (its run ends FINISHED with the tag
``pyrovae.pruned``). Trials are kept in an Optuna storage (a journal file beside the MLflow store, or a
database URL that workers on several machines share), so a stopped search continues where it was: a trial
cut short by Ctrl-C, SIGTERM or a killed process is marked FAILED and queued again with the same values.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyrovae.errors import UserError
from pyrovae.run.search_space import check_space, parse_space
from pyrovae.run.search_study import Spec, default_storage, open_study, shown, storage_lock
from pyrovae.run.search_trials import RUN_ATTR, SURPLUS_ATTR, run_workers, work
from pyrovae.run.tracking import MlflowRun, client, experiment_id, tracking_uri

OBJECTIVES = ("val/loss", "val/nll_iwae")
PRUNERS = ("median", "hyperband", "none")
log = logging.getLogger("pyrovae")


@dataclass
class SearchResult:
    """A search's outcome: the best COMPLETE trial (None when none completed) and the trials by state."""

    study: str
    parent_run_id: str
    storage: str
    tracking_uri: str
    best_trial: int | None = None
    best_value: float | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    best_run_id: str = ""
    complete: int = 0
    pruned: int = 0
    failed: int = 0


def parent_run(spec: Spec, base: dict) -> MlflowRun:
    """The study's parent run, found by its tags (so workers and resumed searches share one), else created:
    under the storage's file lock, and when two machines create one at once both keep the older."""
    store, experiment = client(spec.uri), base["mlflow"]["experiment"]
    where = f"tags.`pyrovae.group` = 'parent' and tags.`pyrovae.study` = '{spec.study}'"

    def oldest() -> str:
        runs = store.search_runs([experiment_id(spec.uri, experiment)], filter_string=where, max_results=1000)
        return min(((r.info.start_time, r.info.run_id) for r in runs), default=(0, ""))[1]

    with storage_lock(spec.storage):
        if found := oldest():
            return MlflowRun(found, spec.uri)
        tags = {"pyrovae.group": "parent", "pyrovae.study": spec.study, "pyrovae.storage": shown(spec.storage)}
        run = MlflowRun.create(spec.uri, experiment, f"study {spec.study}", tags)
        if (found := oldest()) != run.run_id:
            store.delete_run(run.run_id)
            return MlflowRun(found, spec.uri)
        run.log_config(base)
        run.log_dict(spec.space, "space.json")
        run.log_params({"search.objective": spec.objective, "search.storage": shown(spec.storage)})
    return run


# -- the end: the best trial, figures, the result -------------------------------------------
def summarize(study, parent: MlflowRun, spec: Spec) -> SearchResult:
    """The trials by state; the best one's number, value and values on the parent (tags, ``best_trial.json``)."""
    from optuna.trial import TrialState

    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get(SURPLUS_ATTR)]
    count = {state: sum(t.state == state for t in trials) for state in TrialState}
    result = SearchResult(spec.study, parent.run_id, shown(spec.storage), spec.uri, complete=count[TrialState.COMPLETE],
                          pruned=count[TrialState.PRUNED], failed=count[TrialState.FAIL])  # fmt: skip
    if result.complete:
        best = study.best_trial
        result.best_trial, result.best_value, result.best_params = best.number, best.value, dict(best.params)
        result.best_run_id = best.user_attrs.get(RUN_ATTR, "")
        tags = {"pyrovae.best_trial": str(best.number), "pyrovae.best_value": repr(best.value)}
        parent.set_tags(
            {**tags, "pyrovae.best_run": result.best_run_id, **{f"best.{k}": str(v) for k, v in best.params.items()}}
        )
        parent.log_dict({"objective": spec.objective, **result.__dict__}, "best_trial.json")
    log_figures(study, parent, result.complete)
    return result


def log_figures(study, parent: MlflowRun, complete: int) -> None:
    """``figures/optimization_history.png`` and, from 2 COMPLETE trials, ``figures/param_importances.png``:
    PED-ANOVA importances (Optuna's default, fANOVA, and mean decrease impurity need scikit-learn)."""
    import tempfile
    import warnings

    if "matplotlib.pyplot" not in sys.modules:  # no display needed; a user's own pyplot backend is kept
        import matplotlib

        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as plots

    figures = {"optimization_history.png": lambda: plots.plot_optimization_history(study)}
    if complete >= 2:
        evaluator = optuna.importance.PedAnovaImportanceEvaluator()
        figures["param_importances.png"] = lambda: plots.plot_param_importances(study, evaluator=evaluator)
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name, draw in figures.items():
            figure = draw().figure
            figure.savefig(Path(folder) / name, dpi=100, bbox_inches="tight")
            plt.close(figure)
            parent.log_artifact(Path(folder) / name, "figures")


def search(
    config: str | Path | None = None,
    overrides: list[str] = (),
    space: dict | str | Path | None = None,
    trials: int = 20,
    workers: int = 1,
    storage: str | None = None,
    study: str | None = None,
    pruner: Any = "median",
    objective: str = "val/loss",
    seed: int | None = None,
    progress: bool = False,
) -> SearchResult:
    """``pyrovae search``: an Optuna study of ``space`` over the config ``config`` + ``overrides``.

    ``trials`` COMPLETE or PRUNED trials in all (across every worker and machine of the study), trained by
    ``workers`` processes here; TPE seeded by ``seed`` (default ``train.seed``); ``pruner`` one of
    :data:`PRUNERS` or an Optuna pruner; ``storage`` a database URL or a journal file (default: beside the
    MLflow store); ``study`` its name (default ``"search"``): the same name and storage continue a study.
    Every entry of the space is checked against the config before any run starts.
    """
    if trials < 1 or workers < 1:
        raise UserError(f"trials and workers must be at least 1, got {trials} and {workers}")
    if objective not in OBJECTIVES:
        raise UserError(f"unknown objective '{objective}'; one of {', '.join(OBJECTIVES)}")
    if isinstance(pruner, str) and pruner not in PRUNERS:
        raise UserError(f"unknown pruner '{pruner}'; one of {', '.join(PRUNERS)}")
    name = study or "search"
    if not re.fullmatch(r"[\w.:@+-]+", name):
        raise UserError(f"study name '{name}' may hold letters, digits and . : @ + - _ only")
    entries = parse_space(space)
    base = check_space(None if config is None else str(config), list(overrides), entries)
    if objective == "val/nll_iwae" and not base["validation"]["iwae_every"]:
        raise UserError("objective val/nll_iwae needs validation.iwae_every >= 1 (e.g. --set validation.iwae_every=1)")
    uri = tracking_uri(base["mlflow"]["tracking_uri"])
    epochs = "auto" if "train.epochs" in entries else base["train"]["epochs"]
    spec = Spec(None if config is None else str(config), list(overrides), entries, trials,
                storage or default_storage(uri), name, pruner, objective,
                base["train"]["seed"] if seed is None else seed, epochs, uri, progress and workers == 1,
                max(1, (os.cpu_count() or 1) // workers), log_level=log.level if log.handlers else None)  # fmt: skip
    first = open_study(spec, worker=0)
    parent = parent_run(spec, base)
    spec.parent_run_id = parent.run_id
    with parent.lifecycle(system_metrics=False):
        try:
            if workers == 1:
                work(spec, 0, first)
            else:
                run_workers(spec, workers)
        except KeyboardInterrupt:
            log.warning(f"search stopped: the same command continues study '{name}' in {shown(spec.storage)}")
            raise
        return summarize(first, parent, spec)
