"""A table of runs: the params that differ between them and chosen metrics, best first.

Lower is better for every metric pyrovae logs as a loss (``*/loss``, ``*/recon``, ``*/kl``,
``*/nll_*``, ``*/bpd``, ``*/mse``), so rows sort ascending on the first metric; runs without
it come last. Parent runs of a sweep or study carry no metrics of their own and are left
out, and so are evaluation runs (``pyrovae evaluate`` keeps each as a child of the run it
scored); ``parent`` restricts the table to one parent's children: a study's runs, or a run's
evaluations. Only params whose values differ
between the listed runs get a column: the rest is the same for all of them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pyrovae.errors import UserError, first_line
from pyrovae.run import lease, ranking, tracking

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

SKIP_PARAMS = ("mlflow.run_name",)


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    run_ids: list[str]
    metrics: list[str]  # the metric columns, the first one sorts
    experiment: str = ""  # the one experiment listed ('' = several)
    hidden: list[str] = field(default_factory=list)  # differing params left out to fit the width

    def render(self, fmt: str = "text") -> str:
        """``text`` (aligned columns), ``csv`` or ``json`` (one object per run, full run ids)."""
        if fmt == "csv":
            out = io.StringIO()
            csv.writer(out, lineterminator="\n").writerows([self.header, *self._full_ids()])
            return out.getvalue().rstrip("\n")
        if fmt == "json":
            return json.dumps([dict(zip(self.header, row)) for row in self._full_ids()], indent=1)
        widths = [max(len(r[i]) for r in [self.header, *self.rows]) for i in range(len(self.header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [self.header, *self.rows]]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def width(self) -> int:
        return max(len(line) for line in self.render().splitlines())

    def to_dataframe(self):
        """The table as a pandas ``DataFrame`` (full run ids; numbers as numbers)."""
        import pandas as pd

        frame = pd.DataFrame(self._full_ids(), columns=self.header)
        for column in frame.columns[2:]:
            converted = pd.to_numeric(frame[column].replace("", float("nan")), errors="coerce")
            if converted.notna().sum() == (frame[column] != "").sum():  # every non-empty cell a number
                frame[column] = converted
        return frame

    def _full_ids(self) -> list[list[str]]:
        return [[run_id, *row[1:]] for run_id, row in zip(self.run_ids, self.rows)]


def compare(
    metrics: list[str] | None = None,
    experiment: str | None = None,
    parent: str | None = None,
    *,
    evaluation: list[str] = (),
    baseline: str | None = None,
    where: list[str] = (),
    params: list[str] | None = None,
    all_experiments: bool = False,
    max_runs: int = 1000,
    tracking_uri: str = "",
) -> Table:
    """``pyrovae compare`` from Python: the runs of the store ``tracking_uri`` (default: the project's),
    best first, each joined with its evaluation (see :func:`compare_runs`); ``metrics=None`` shows the
    default columns. ``.render("csv")``, ``.render("json")`` or ``.to_dataframe()`` for other programs."""
    uri = tracking.tracking_uri(tracking_uri)
    if parent:  # a prefix, as every command takes, names the full id the tag holds
        parent = tracking.MlflowRun.existing(parent, uri).run_id
    return compare_runs(
        existing_store(uri),
        metrics or DEFAULT_METRICS,
        experiment,
        parent,
        max_runs,
        optional=metrics is None,
        params=params,
        where=where,
        all_experiments=all_experiments,
        evaluation=evaluation,
        baseline=baseline,
    )


DEFAULT_METRICS = ["val/loss", "test/loss"]


def existing_store(uri: str) -> MlflowClient:
    """A client for a store that exists: a missing sqlite file or a silent server is one line,
    not a fresh empty store created in the wrong folder."""
    tracking.check_server(uri)
    db = tracking.sqlite_path(uri)
    if db is not None and not db.exists():
        raise UserError(
            f"no MLflow store at {db} (nothing trained from this folder yet?); run from the "
            f"folder you trained in, or set MLFLOW_TRACKING_URI"
        )
    return tracking.client(uri)


def newest_experiment(client: MlflowClient, experiments) -> str | None:
    """The name of the experiment that holds the most recently started run."""
    newest = client.search_runs(
        [e.experiment_id for e in experiments], max_results=1, order_by=["attributes.start_time DESC"]
    )
    by_id = {e.experiment_id: e.name for e in experiments}
    return by_id[newest[0].info.experiment_id] if newest else None


def find_runs(
    client: MlflowClient,
    experiment: str | None,
    parent: str | None,
    max_runs: int,
    where: list[str] = (),
    all_experiments: bool = False,
):
    """Runs of ``experiment`` (default: the newest run's; all with ``all_experiments`` or a
    ``parent``), newest first; ``where`` holds ``param=value`` conditions or MLflow filter clauses."""
    experiments = client.search_experiments()
    if experiment is None and not parent and not all_experiments:
        experiment = newest_experiment(client, experiments)
    if experiment is not None:
        chosen = [e for e in experiments if e.name == experiment]
        if not chosen:
            names = ", ".join(sorted(e.name for e in experiments)) or "none"
            raise UserError(f"no experiment named '{experiment}' in this store; experiments: {names}")
        experiments = chosen
    clauses = [f"tags.mlflow.parentRunId = '{parent}'"] if parent else []
    clauses += [param_clause(w) for w in where]
    query = " AND ".join(clauses)
    runs, token = [], None
    while len(runs) < max_runs:  # newest first, page by page, until max_runs runs that are not parents
        page = client.search_runs(
            [e.experiment_id for e in experiments],
            filter_string=query,
            max_results=min(max_runs, 1000),
            page_token=token,
        )
        runs += [
            r
            for r in page
            if r.data.tags.get("pyrovae.group") != "parent"
            and (parent or r.data.tags.get("pyrovae.kind") != "evaluation")
        ]  # evaluations: --parent RUN
        token = page.token
        if not token:
            break
    return runs[:max_runs]


#: how a clause in MLflow's own filter syntax starts: ``params.`model.guide.name` = 'iaf'``
MLFLOW_CLAUSE = re.compile(r"^\s*(params?|metrics?|tags?|attributes?|datasets?)\.", re.IGNORECASE)


def param_clause(condition: str) -> str:
    """``data.name=mnist`` -> MLflow's ``params.`data.name` = 'mnist'``; a clause already in MLflow's
    filter syntax (``metrics.`val/loss` < 100``, ``params.`model.guide.name` = 'iaf'``) is passed on
    as it is."""
    key, sep, value = condition.partition("=")
    if MLFLOW_CLAUSE.match(condition) or not sep or key.endswith(("<", ">", "!")) or value.startswith("="):
        return condition
    if " " in key.strip():
        return condition
    return f"params.`{key.strip()}` = '{value.strip()}'"


def _fmt(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4f}"
    return "" if value is None else str(value)


def compare_runs(
    client: MlflowClient,
    metrics: list[str],
    experiment: str | None = None,
    parent: str | None = None,
    max_runs: int = 1000,
    optional: bool = False,
    params: list[str] | None = None,
    where: list[str] = (),
    all_experiments: bool = False,
    width: int = 120,
    evaluation: list[str] = (),
    baseline: str | None = None,
) -> Table:
    """Build the table; raise :class:`UserError` for an unknown experiment, metric or filter.

    ``optional``: leave out the metrics no run has (for default columns such as ``test/loss``,
    which a run only logs when it finishes) instead of failing, unless none is left. ``params``:
    the param columns (default: those whose values differ, component names first, as many as fit in
    ``width`` characters; the rest are named in ``Table.hidden``). Each trained run is joined with
    its newest evaluation (``evaluation``: ``eval.KEY=VALUE`` conditions choose which); a metric
    the runs have only through their evaluations ranks them within groups of comparable
    evaluations, with the paired difference to the best run (or ``baseline``)
    (:mod:`pyrovae.run.ranking`).
    """
    try:
        runs = find_runs(client, experiment, parent, max_runs, list(where), all_experiments)
    except UserError:
        raise
    except Exception as err:  # MLflow's parser refused a --where clause
        raise UserError(
            f"cannot filter runs by {list(where)}: {first_line(err)}; write key=value for a param, "
            f'or an MLflow filter such as "metrics.`val/loss` < 100"'
        ) from None
    if [r for r in runs if lease.end_stale(client, r)]:  # a dead job shows as KILLED, not as training
        runs = find_runs(client, experiment, parent, max_runs, list(where), all_experiments)
    if not runs:
        raise UserError(
            "no runs to compare"
            + (f" under parent run '{parent}'" if parent else "")
            + "; train some with 'pyrovae train' or 'pyrovae sweep'"
        )
    experiment_ids = sorted({r.info.experiment_id for r in runs})
    trained = [r for r in runs if r.data.tags.get("pyrovae.kind") != "evaluation"]
    joined = ranking.join_evaluations(client, trained, experiment_ids, evaluation) if trained else []
    joined += [ranking.Joined(r, metrics=dict(r.data.metrics)) for r in runs if r not in trained]
    evaluated = any(j.evaluation is not None for j in joined)
    if optional:  # the default columns: an evaluation's NLL first where there is one
        nll = sorted({k for j in joined for k in j.metrics if NLL.search(k)}, key=nll_order)
        metrics = [*nll[:1], *metrics] if evaluated or not trained else list(metrics)
    known = sorted({k for j in joined for k in j.metrics})
    missing = [m for m in metrics if m not in known]
    if missing and (not optional or len(missing) == len(metrics)):
        ours = [k for k in known if not k.startswith("system/")]  # MLflow's CPU/memory readings: many
        extra = f" (and {len(known) - len(ours)} system/ metrics)" if len(ours) < len(known) else ""
        raise UserError(f"no run has metric '{missing[0]}'; metrics logged: {', '.join(ours) or 'none'}{extra}")
    metrics = [m for m in metrics if m in known]
    from_evaluations = evaluated and not any(metrics[0] in r.data.metrics for r in trained)
    if not from_evaluations:  # a run's own metric: one ranking, whatever scored the runs later
        for entry in joined:
            entry.group = ()
    joined = ranking.rank(client, joined, metrics[0], baseline)
    return _table(client, joined, metrics, params, width, evaluated)


#: an evaluation's log-likelihood metrics, best estimator first
NLL = re.compile(r"^(\w+)/nll_(ais|iwae|elbo)$")


def nll_order(key: str) -> tuple:
    split, estimator = NLL.search(key).groups()
    return (split != "test", ("iwae", "ais", "elbo").index(estimator), key)


def component_first(keys: list[str]) -> list[str]:
    """Params with the component names first (``model.guide.name``...), then the rest as they were."""
    return sorted(keys, key=lambda k: (not (k.startswith("model.") and k.endswith("name")), keys.index(k)))


def _table(client, joined: list, metrics: list[str], params, width: int, evaluated: bool) -> Table:
    runs = [j.run for j in joined]
    keys = sorted({k for r in runs for k in r.data.params} - set(SKIP_PARAMS))
    differing = (
        params
        if params is not None
        else component_first([k for k in keys if len({r.data.params.get(k) for r in runs}) > 1])
    )
    show_status = any(r.info.status != "FINISHED" for r in runs)  # a killed or running run stands out
    show_pruned = any("pyrovae.pruned" in r.data.tags for r in runs)  # a search's trial stopped by its pruner
    compared = any(j.difference is not None for j in joined)
    experiments = {r.info.experiment_id for r in runs}
    name = client.get_experiment(experiments.pop()).name if len(experiments) == 1 else ""

    def table(columns: list[str], hidden: list[str]) -> Table:
        header = ["run", "name", *(["status"] if show_status else []), *(["pruned"] if show_pruned else [])]
        header += [*columns, *(["evaluation"] if evaluated else [])]
        header += [*metrics, *(["vs_best", "vs_best_se", "within_2se"] if compared else [])]
        rows = []
        for j in joined:
            r, difference = j.run, j.difference
            row = [r.info.run_id[:8], r.info.run_name or "", *([r.info.status] if show_status else [])]
            row += [r.data.tags.get("pyrovae.pruned", "")] if show_pruned else []
            row += [r.data.params.get(k, "") for k in columns] + ([j.label] if evaluated else [])
            row += [_fmt(j.metrics.get(m, math.nan)) for m in metrics]
            if compared:
                noise = "~" if ranking.within_noise(difference) else ""
                row += [f"{difference[0]:+.4f}", f"{difference[1]:.4f}", noise] if difference else ["", "", ""]
            rows.append(row)
        return Table(header, rows, [r.info.run_id for r in runs], metrics, name, hidden)

    shown = list(differing)
    result = table(shown, [])
    while params is None and shown and result.width() > width:  # the last differing params give way
        shown.pop()
        result = table(shown, differing[len(shown) :])
    return result
