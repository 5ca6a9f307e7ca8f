"""``pyrovae resume RUN_ID [--set train.epochs=N ...]``: continue a run from its last checkpoint.

The same MLflow run goes on: metrics continue at the next epoch, and on the CPU they equal
those of a run that was never stopped. ``--set`` may change only ``train.epochs`` (to train
a finished run longer), ``train.patience``, ``train.checkpoint_every``, ``train.device`` and
``mlflow.tracking_uri`` (where to find the run); the run's other settings are its own.
"""

from __future__ import annotations

import argparse
import os

HELP = "continue a run from its last checkpoint, in the same MLflow run"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", metavar="RUN_ID")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="change train.epochs, train.patience, train.checkpoint_every, train.device "
        "or mlflow.tracking_uri (repeatable)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one download: no bar
    from pyrovae.cli.train import print_result
    from pyrovae.run.resume import resume

    print_result(resume(args.run_id, args.set, progress=not args.no_progress))
    return 0
