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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pyrovae.errors import UserError, first_line
from pyrovae.run import lease, tracking

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

    def _full_ids(self) -> list[list[str]]:
        return [[run_id, *row[1:]] for run_id, row in zip(self.run_ids, self.rows)]


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


def param_clause(condition: str) -> str:
    """``data.name=mnist`` -> MLflow's ``params.`data.name` = 'mnist'``; a clause already in MLflow's
    filter syntax (``metrics.`val/loss` < 100``) is passed on as it is."""
    key, sep, value = condition.partition("=")
    if sep and not key.endswith(("<", ">", "!")) and not value.startswith("=") and " " not in key.strip():
        return f"params.`{key.strip()}` = '{value.strip()}'"
    return condition


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
) -> Table:
    """Build the table; raise :class:`UserError` for an unknown experiment, metric or filter.

    ``optional``: leave out the metrics no run has (for default columns such as ``test/loss``,
    which a run only logs when it finishes) instead of failing, unless none is left. ``params``:
    the param columns (default: those whose values differ, as many as fit in ``width``
    characters; the rest are named in ``Table.hidden``).
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
    known = sorted({k for r in runs for k in r.data.metrics})
    missing = [m for m in metrics if m not in known]
    if missing and (not optional or len(missing) == len(metrics)):
        ours = [k for k in known if not k.startswith("system/")]  # MLflow's CPU/memory readings: many
        extra = f" (and {len(known) - len(ours)} system/ metrics)" if len(ours) < len(known) else ""
        raise UserError(f"no run has metric '{missing[0]}'; metrics logged: {', '.join(ours) or 'none'}{extra}")
    metrics = [m for m in metrics if m in known]
    keys = sorted({k for r in runs for k in r.data.params} - set(SKIP_PARAMS))
    differing = params if params is not None else [k for k in keys if len({r.data.params.get(k) for r in runs}) > 1]

    def order(run):
        value = run.data.metrics.get(metrics[0], math.nan)
        return (math.isnan(value), value)

    runs = sorted(runs, key=order)
    show_status = any(r.info.status != "FINISHED" for r in runs)  # a killed or running run stands out
    experiments = {r.info.experiment_id for r in runs}
    name = client.get_experiment(experiments.pop()).name if len(experiments) == 1 else ""

    def table(columns: list[str], hidden: list[str]) -> Table:
        header = ["run", "name", *(["status"] if show_status else []), *columns, *metrics]
        rows = [
            [
                r.info.run_id[:8],
                r.info.run_name or "",
                *([r.info.status] if show_status else []),
                *(r.data.params.get(k, "") for k in columns),
                *(_fmt(r.data.metrics.get(m, math.nan)) for m in metrics),
            ]
            for r in runs
        ]
        return Table(header, rows, [r.info.run_id for r in runs], metrics, name, hidden)

    shown = list(differing)
    result = table(shown, [])
    while params is None and shown and result.width() > width:  # the last differing params give way
        shown.pop()
        result = table(shown, differing[len(shown) :])
    return result
