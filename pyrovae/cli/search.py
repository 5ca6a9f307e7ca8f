"""``pyrovae search [CONFIG] --space SPACE.toml [--trials N] [--workers N] [--study NAME] [--storage URL]``:
a hyperparameter search with Optuna, each trial a child run under one parent run per study.

The space file maps config keys to ranges: ``train.lr = {float = [1e-4, 3e-3], log = true}``,
``model.latent_dim = {int = [2, 32]}``, ``model.guide.name = {choice = ["diagonal_normal", "iaf"]}``;
each trial's values apply after the config and ``--set``. TPE proposes the values; the pruner stops
trials whose per-epoch objective trails the others. The study lives in ``--storage`` (default: a
journal file beside the MLflow store); the same ``--study`` and storage continue it, from any number of
processes or machines (a database URL for several machines). The end prints the best trial and
``pyrovae compare --parent``'s table of the trials.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pyrovae.cli.train import add_config_arguments

HELP = "search hyperparameters with Optuna: trials as child runs under one parent run"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--space", required=True, metavar="FILE", help="TOML file of the search space")
    parser.add_argument("--trials", type=int, default=20, metavar="N", help="complete + pruned trials of the study")
    parser.add_argument("--workers", type=int, default=1, metavar="N", help="worker processes on this machine")
    parser.add_argument("--study", metavar="NAME", help="the study's name (default: the space file's name)")
    parser.add_argument(
        "--storage", metavar="URL", help="a database URL or journal file (default: optuna-journal.log beside the store)"
    )
    parser.add_argument(
        "--pruner", default="median", choices=("median", "hyperband", "none"), help="stops trials that trail, per epoch"
    )
    parser.add_argument(
        "--objective", default="val/loss", choices=("val/loss", "val/nll_iwae"), help="minimized: its best epoch"
    )
    parser.add_argument("--seed", type=int, metavar="N", help="the sampler's seed (default: train.seed)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from pyrovae.cli.compare import print_table
    from pyrovae.run.search import search

    result = search(
        args.config,
        args.set,
        args.space,
        trials=args.trials,
        workers=args.workers,
        storage=args.storage,
        study=args.study or Path(args.space).stem,
        pruner=args.pruner,
        objective=args.objective,
        seed=args.seed,
        progress=not args.no_progress,
    )
    print(
        f"study '{result.study}' in {result.storage}: {result.complete} complete, {result.pruned} pruned, "
        f"{result.failed} failed; parent run {result.parent_run_id}"
    )
    if result.best_trial is not None:
        values = " ".join(f"{k}={v}" for k, v in result.best_params.items())
        print(f"best: trial {result.best_trial}, {args.objective} {result.best_value:.4f} ({values})")
    searched = list(result.best_params) or None  # the searched keys as columns, the rest as compare picks
    print_table(parent=result.parent_run_id, uri=result.tracking_uri, params=searched)
    return 0
