"""A table of runs: the params that differ between them and chosen metrics, best first.

Lower is better for every metric pyrovae logs as a loss (``*/loss``, ``*/recon``, ``*/kl``,
``*/nll_*``, ``*/bpd``, ``*/mse``), so rows sort ascending on the first metric; runs without
it come last. Parent runs of a sweep or study carry no metrics of their own and are left
out; ``parent`` restricts the table to one parent's children. Only params whose values differ
between the listed runs get a column: the rest is the same for all of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mlflow.tracking import MlflowClient

from pyrovae.run import tracking
from pyrovae.errors import UserError

SKIP_PARAMS = ("mlflow.run_name",)


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    run_ids: list[str]
    metrics: list[str]  # the metric columns, the first one sorts

    def render(self) -> str:
        widths = [max(len(r[i]) for r in [self.header, *self.rows]) for i in range(len(self.header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                 for row in [self.header, *self.rows]]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def existing_store(uri: str) -> MlflowClient:
    """A client for a store that exists: a missing sqlite file or a silent server is one line,
    not a fresh empty store created in the wrong folder."""
    tracking.check_server(uri)
    db = tracking.sqlite_path(uri)
    if db is not None and not db.exists():
        raise UserError(f"no MLflow store at {db} (nothing trained from this folder yet?); run from the "
                        f"folder you trained in, or set MLFLOW_TRACKING_URI")
    return MlflowClient(uri)


def find_runs(client: MlflowClient, experiment: str | None, parent: str | None, max_runs: int):
    experiments = client.search_experiments()
    if experiment is not None:
        chosen = [e for e in experiments if e.name == experiment]
        if not chosen:
            names = ", ".join(sorted(e.name for e in experiments)) or "none"
            raise UserError(f"no experiment named '{experiment}' in this store; experiments: {names}")
        experiments = chosen
    query = f"tags.mlflow.parentRunId = '{parent}'" if parent else ""
    runs, token = [], None
    while len(runs) < max_runs:  # newest first, page by page, until max_runs runs that are not parents
        page = client.search_runs([e.experiment_id for e in experiments], filter_string=query,
                                  max_results=min(max_runs, 1000), page_token=token)
        runs += [r for r in page if r.data.tags.get("pyrovae.group") != "parent"]
        token = page.token
        if not token:
            break
    return runs[:max_runs]


def _fmt(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4f}"
    return "" if value is None else str(value)


def compare_runs(client: MlflowClient, metrics: list[str], experiment: str | None = None,
                 parent: str | None = None, max_runs: int = 1000, optional: bool = False) -> Table:
    """Build the table; raise :class:`UserError` for an unknown experiment or metric.

    ``optional``: leave out the metrics no run has (for default columns such as ``test/loss``,
    which a run only logs when it finishes) instead of failing, unless none is left.
    """
    runs = find_runs(client, experiment, parent, max_runs)
    if not runs:
        raise UserError("no runs to compare" + (f" under parent run '{parent}'" if parent else "")
                        + "; train some with 'pyrovae train' or 'pyrovae sweep'")
    known = sorted({k for r in runs for k in r.data.metrics})
    missing = [m for m in metrics if m not in known]
    if missing and (not optional or len(missing) == len(metrics)):
        ours = [k for k in known if not k.startswith("system/")]  # MLflow's CPU/memory readings: many
        extra = f" (and {len(known) - len(ours)} system/ metrics)" if len(ours) < len(known) else ""
        raise UserError(f"no run has metric '{missing[0]}'; metrics logged: {', '.join(ours) or 'none'}{extra}")
    metrics = [m for m in metrics if m in known]
    keys = sorted({k for r in runs for k in r.data.params} - set(SKIP_PARAMS))
    differing = [k for k in keys if len({r.data.params.get(k) for r in runs}) > 1]

    def order(run):
        value = run.data.metrics.get(metrics[0], math.nan)
        return (math.isnan(value), value)

    runs = sorted(runs, key=order)
    show_status = any(r.info.status != "FINISHED" for r in runs)  # a killed or running run stands out
    header = ["run", "name", *(["status"] if show_status else []), *differing, *metrics]
    rows = [[r.info.run_id[:8], r.info.run_name or "", *([r.info.status] if show_status else []),
             *(r.data.params.get(k, "") for k in differing),
             *(_fmt(r.data.metrics.get(m, math.nan)) for m in metrics)] for r in runs]
    return Table(header, rows, [r.info.run_id for r in runs], metrics)
