"""``pyrovae compare [--experiment NAME] [--metric val/loss ...] [--parent RUN_ID]``: runs side by side.

Reads the store training writes to ($MLFLOW_TRACKING_URI, else ./mlruns/mlflow.db). Columns:
the run, its name, the params that differ between the listed runs, the metrics. Rows are
best first by the first metric, lower is better (every pyrovae metric is a loss).
"""

from __future__ import annotations

import argparse

HELP = "print a table of runs: the params that differ and chosen metrics, best first"
DEFAULT_METRICS = ["val/loss", "test/loss"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--experiment", help="one experiment (default: every experiment in the store)")
    parser.add_argument("--metric", action="append", dest="metrics", metavar="KEY",
                        help="metric column (repeatable; the first sorts, lower is better); "
                             f"default: {' '.join(DEFAULT_METRICS)}")
    parser.add_argument("--parent", metavar="RUN_ID", help="only the children of this sweep/study run")
    parser.add_argument("--max-runs", type=int, default=1000, metavar="N", help="read at most N runs (newest first)")


def print_table(metrics: list[str] | None = None, experiment=None, parent=None, max_runs: int = 1000,
                uri: str = "") -> None:
    """Print the runs of the store ``uri`` (default: :func:`pyrovae.run.tracking.tracking_uri`).

    ``metrics=None`` shows :data:`DEFAULT_METRICS`, leaving out those no run has logged.
    """
    from pyrovae.run.compare import compare_runs, existing_store
    from pyrovae.run.tracking import tracking_uri

    uri = tracking_uri(uri)
    table = compare_runs(existing_store(uri), metrics or DEFAULT_METRICS, experiment, parent, max_runs,
                         optional=metrics is None)
    count = f"{len(table.rows)} run" + ("s" if len(table.rows) != 1 else "")
    print(f"{count} in {uri}, best first by {table.metrics[0]} (lower is better)")
    print(table.render())


def run(args: argparse.Namespace) -> int:
    if args.max_runs < 1:
        from pyrovae.errors import UserError

        raise UserError(f"--max-runs must be at least 1, got {args.max_runs}")
    print_table(args.metrics, args.experiment, args.parent, args.max_runs)
    return 0
