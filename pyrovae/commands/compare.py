"""``pyrovae compare [--experiment NAME] [--metric val/loss ...] [--parent RUN_ID]``: runs side by side."""

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
    parser.add_argument("--max-runs", type=int, default=1000)


def print_table(metrics: list[str], experiment=None, parent=None, max_runs: int = 1000) -> None:
    from mlflow.tracking import MlflowClient

    from pyrovae.compare import compare_runs
    from pyrovae.tracking import tracking_uri

    uri = tracking_uri()
    table = compare_runs(MlflowClient(uri), metrics, experiment, parent, max_runs)
    print(f"{len(table.rows)} runs in {uri}, best first by {metrics[0]} (lower is better)")
    print(table.render())


def run(args: argparse.Namespace) -> int:
    print_table(args.metrics or DEFAULT_METRICS, args.experiment, args.parent, args.max_runs)
    return 0
