"""``pyrovae compare [--experiment NAME] [--metric KEY] [--param KEY] [--where K=V] [--parent RUN_ID]``.

Reads the store training writes to ($MLFLOW_TRACKING_URI, else ./mlruns/mlflow.db). Lists one
experiment (default: the one with the newest run; ``--all-experiments`` for every one). Columns:
the run, its name, the params (default: those that differ between the listed runs, as many as
fit in 120 characters) and the metrics. Rows are best first by the first metric, lower is better
(every pyrovae metric is a loss). ``--format csv|json`` for other programs (full run ids).
"""

from __future__ import annotations

import argparse

HELP = "print a table of runs: the params that differ and chosen metrics, best first"
DEFAULT_METRICS = ["val/loss", "test/loss"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--experiment", help="the experiment to list (default: the one with the newest run)")
    parser.add_argument("--all-experiments", action="store_true", help="list every experiment's runs")
    parser.add_argument(
        "--param",
        action="append",
        dest="params",
        metavar="KEY",
        help="param column (repeatable; default: the params that differ, as many as fit)",
    )
    parser.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keep runs whose param KEY is VALUE, or an MLflow filter clause such as "
        '"metrics.`val/loss` < 100" (repeatable: all must hold)',
    )
    parser.add_argument("--format", default="text", choices=("text", "csv", "json"), help="output format")
    parser.add_argument(
        "--metric",
        action="append",
        dest="metrics",
        metavar="KEY",
        help=f"metric column (repeatable; the first sorts, lower is better); default: {' '.join(DEFAULT_METRICS)}",
    )
    parser.add_argument("--parent", metavar="RUN_ID", help="only the children of this sweep/study run")
    parser.add_argument("--max-runs", type=int, default=1000, metavar="N", help="read at most N runs (newest first)")


def print_table(
    metrics: list[str] | None = None,
    experiment=None,
    parent=None,
    max_runs: int = 1000,
    uri: str = "",
    params: list[str] | None = None,
    where: list[str] = (),
    all_experiments: bool = False,
    fmt: str = "text",
) -> None:
    """Print the runs of the store ``uri`` (default: :func:`pyrovae.run.tracking.tracking_uri`).

    ``metrics=None`` shows :data:`DEFAULT_METRICS`, leaving out those no run has logged.
    """
    from pyrovae.run.compare import compare_runs, existing_store
    from pyrovae.run.tracking import MlflowRun, tracking_uri

    uri = tracking_uri(uri)
    if parent:  # a prefix, as every command takes, names the full id the tag holds
        parent = MlflowRun.existing(parent, uri).run_id
    table = compare_runs(
        existing_store(uri),
        metrics or DEFAULT_METRICS,
        experiment,
        parent,
        max_runs,
        optional=metrics is None,
        params=params,
        where=where,
        all_experiments=all_experiments,
    )
    if fmt != "text":
        print(table.render(fmt))
        return
    count = f"{len(table.rows)} run" + ("s" if len(table.rows) != 1 else "")
    where_from = f"experiment '{table.experiment}'" if table.experiment else "several experiments"
    print(f"{count} in {where_from}, best first by {table.metrics[0]} (lower is better)")
    print(table.render())
    if table.hidden:
        print(f"{len(table.hidden)} more params differ (first: {table.hidden[0]}); --param KEY shows one")
    print(f"store: {uri}")


def run(args: argparse.Namespace) -> int:
    if args.max_runs < 1:
        from pyrovae.errors import UserError

        raise UserError(f"--max-runs must be at least 1, got {args.max_runs}")
    print_table(
        args.metrics,
        args.experiment,
        args.parent,
        args.max_runs,
        params=args.params,
        where=args.where,
        all_experiments=args.all_experiments,
        fmt=args.format,
    )
    return 0
