r"""Which run is better: each trained run joined with its evaluation, ranked within comparable groups,
with the paired difference to the best and its standard error.

Every ``pyrovae evaluate`` is a child run of the run it scored (:mod:`pyrovae.run.evaluation`). For
each trained run, :func:`join_evaluations` picks its newest evaluation (or the newest that matches
``eval.KEY=VALUE`` conditions) and puts its numbers beside the run's own. Two evaluations are
*comparable* when they scored the same points the same way: the same data settings (``data.*`` of
the trained runs), split, number of points, K, seed, weights and AIS settings. Runs are ranked only
within such a group; groups never mix.

Within a group, the per-point estimates each evaluation keeps (``evaluation/loglik_<split>_<est>.npy``)
give the **paired difference** to the best run (or a chosen baseline): for the same points
:math:`x_1..x_n` and the same seed,

.. math:: \bar d = \frac1n \sum_i \big(\mathrm{NLL}_a(x_i) - \mathrm{NLL}_b(x_i)\big), \qquad
          \mathrm{se}(\bar d) = \frac{\mathrm{sd}(d)}{\sqrt n},

far smaller than either NLL's own standard error, since most of a point's NLL is the point's
difficulty, which both runs share. A run within 2 standard errors of the baseline is marked: the
ranking between them is noise at this number of points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

#: evaluation params that make two evaluations comparable (besides the trained runs' data settings)
SETTINGS = ("eval.split", "eval.n", "eval.iwae_k", "eval.iwae_n", "eval.seed", "eval.weights")
#: how a metric's per-point estimates are stored: ``<split>/nll_<est>`` -> ``loglik_<split>_<est>.npy``
PER_POINT = ("iwae", "ais", "elbo")


@dataclass
class Joined:
    """A trained run, the evaluation joined to it (None: none matched), and its comparison group."""

    run: object
    evaluation: object | None = None
    group: tuple = ()
    label: str = ""
    difference: tuple[float, float] | None = None  # paired (mean, se) to the group's baseline
    metrics: dict[str, float] = field(default_factory=dict)


def evaluations_by_run(client, experiment_ids: list[str]) -> dict[str, list]:
    """Every evaluation run of the experiments, by the id of the run it scored, newest first."""
    found, token = {}, None
    while True:
        page = client.search_runs(
            experiment_ids,
            filter_string="tags.`pyrovae.kind` = 'evaluation'",
            max_results=1000,
            order_by=["attributes.start_time DESC"],
            page_token=token,
        )
        for run in page:
            of = run.data.params.get("eval.of") or run.data.tags.get("mlflow.parentRunId")
            found.setdefault(of, []).append(run)
        token = page.token
        if not token:
            return found


def matches(evaluation, conditions: list[str]) -> bool:
    """Whether an evaluation's params satisfy every ``KEY=VALUE`` (``eval.iwae_k=5000``)."""
    for condition in conditions:
        key, _, value = condition.partition("=")
        if evaluation.data.params.get(key.strip()) != value.strip():
            return False
    return True


def group_of(run, evaluation) -> tuple:
    """What must be equal for two evaluations to be ranked together."""
    data = tuple(sorted((k, v) for k, v in run.data.params.items() if k.startswith("data.")))
    own = tuple(evaluation.data.params.get(k, "") for k in SETTINGS)
    ais = tuple(sorted((k, v) for k, v in evaluation.data.params.items() if k.startswith("ais.")))
    return data, own, ais


def describe(p: dict) -> str:
    """``test n=10000 K=5000 seed=0 final`` (+ AIS settings): an evaluation's settings (its params), as its name."""
    text = f"{p.get('eval.split', '?')} n={p.get('eval.n', '?')} K={p.get('eval.iwae_k', '?')}"
    if "eval.iwae_n" in p:
        text += f" (IWAE n={p['eval.iwae_n']})"
    text += f" seed={p.get('eval.seed', '?')} {p.get('eval.weights', 'final')}"
    if "ais.steps" in p:
        text += f" AIS T={p['ais.steps']} n={p.get('ais.subset', '?')}"
    return text


def join_evaluations(client, runs: list, experiment_ids: list[str], conditions: list[str] = ()) -> list[Joined]:
    """Each run with its newest evaluation matching ``conditions``, and the group label it ranks in."""
    by_run = evaluations_by_run(client, experiment_ids)
    joined, groups = [], {}
    for run in runs:
        chosen = next((e for e in by_run.get(run.info.run_id, []) if matches(e, list(conditions))), None)
        entry = Joined(run, chosen, metrics=dict(run.data.metrics))
        if chosen is not None:
            entry.group = group_of(run, chosen)
            letter = groups.setdefault(entry.group, chr(ord("A") + len(groups)))
            entry.label = f"[{letter}] {describe(chosen.data.params)}"
            entry.metrics.update({k: v for k, v in chosen.data.metrics.items() if k not in run.data.metrics})
        joined.append(entry)
    return joined


def per_point(client, evaluation, metric: str) -> np.ndarray | None:
    """The per-point NLLs behind an evaluation's ``<split>/nll_<est>`` (None when not kept)."""
    split, _, name = metric.partition("/nll_")
    if not name or name not in PER_POINT:
        return None
    import tempfile

    try:
        local = client.download_artifacts(
            evaluation.info.run_id, f"evaluation/loglik_{split}_{name}.npy", tempfile.mkdtemp(prefix="pyrovae-")
        )
    except Exception:  # an evaluation before the file was kept, or without that estimator
        return None
    return -np.load(local).astype(np.float64)


def paired(a: np.ndarray, b: np.ndarray) -> tuple[float, float] | None:
    """Mean and standard error of ``a - b`` over the same points (None when they are not the same count)."""
    if a is None or b is None or a.shape != b.shape or a.size < 2:
        return None
    d = a - b
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(d.size))


#: what runs without the ranking metric are ordered by
VALIDATION_LOSS = "val/loss"


def rank(client, joined: list[Joined], metric: str, baseline: str | None = None) -> list[Joined]:
    """Sort by ``metric`` within each group (groups in order of their best), runs without it last
    (by ``val/loss``);
    fill in each evaluated run's paired difference to its group's best run (or ``baseline``)."""

    def value(entry: Joined) -> float:
        return entry.metrics.get(metric, math.nan)

    def order(entry: Joined) -> tuple[bool, float]:
        """By ``metric``; runs without it after, by their own validation loss (a search's
        unevaluated trials in the order that chose the evaluated ones)."""
        fallback = entry.metrics.get(VALIDATION_LOSS, math.inf)
        return math.isnan(value(entry)), fallback if math.isnan(value(entry)) else value(entry)

    by_group: dict[tuple, list[Joined]] = {}
    for entry in joined:
        by_group.setdefault(entry.group, []).append(entry)
    for members in by_group.values():
        members.sort(key=order)
    ordered = sorted(by_group.values(), key=lambda m: (m[0].group == (), math.isnan(value(m[0])), value(m[0])))
    for members in ordered:
        evaluated = [e for e in members if e.evaluation is not None and not math.isnan(value(e))]
        if len(evaluated) < 2:
            continue
        base = next((e for e in evaluated if baseline and e.run.info.run_id.startswith(baseline)), evaluated[0])
        reference = per_point(client, base.evaluation, metric)
        for entry in evaluated:
            if entry is not base:
                entry.difference = paired(per_point(client, entry.evaluation, metric), reference)
    return [entry for members in ordered for entry in members]


def within_noise(difference: tuple[float, float] | None) -> bool:
    """A paired difference within 2 standard errors of zero: this ranking is noise."""
    return difference is not None and abs(difference[0]) <= 2 * difference[1]
