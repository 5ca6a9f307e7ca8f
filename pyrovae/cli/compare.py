"""``pyrovae compare [--experiment NAME] [--metric KEY] [--param KEY] [--where K=V] [--parent RUN_ID]``.

Reads the store training writes to ($MLFLOW_TRACKING_URI, else ./mlruns/mlflow.db). Lists one
experiment (default: the one with the newest run; ``--all-experiments`` for every one). Columns:
the run, its name, the params (default: those that differ between the listed runs, as many as
fit in 120 characters, component names first) and the metrics. Rows are best first by the first
metric, lower is better (every pyrovae metric is a loss). Each trained run is joined with its
newest evaluation (``--evaluation eval.KEY=VALUE`` chooses which); ranked by an evaluation's
number, runs scored with other settings are ranked apart, with the paired difference to the best
(or ``--baseline``) and a mark where it is within 2 standard errors (:mod:`pyrovae.run.ranking`).
``--format csv|json`` for other programs (full run ids).
"""

from __future__ import annotations

import argparse

from pyrovae.run.compare import DEFAULT_METRICS

HELP = "print a table of runs, best first: the params that differ, each run's evaluation, paired differences"


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
    parser.add_argument(
        "--evaluation",
        action="append",
        default=[],
        metavar="eval.KEY=VALUE",
        help="join each run's newest evaluation with these settings (repeatable), e.g. eval.iwae_k=5000",
    )
    parser.add_argument(
        "--baseline", metavar="RUN_ID", help="paired differences to this run (default: the best of each group)"
    )
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
    evaluation: list[str] = (),
    baseline: str | None = None,
) -> None:
    """Print the runs of the store ``uri`` (default: :func:`pyrovae.run.tracking.tracking_uri`).

    ``metrics=None`` shows :data:`DEFAULT_METRICS`, leaving out those no run has logged.
    """
    from pyrovae.run.compare import compare
    from pyrovae.run.tracking import tracking_uri

    uri = tracking_uri(uri)
    table = compare(
        metrics,
        experiment,
        parent,
        evaluation=evaluation,
        baseline=baseline,
        where=where,
        params=params,
        all_experiments=all_experiments,
        max_runs=max_runs,
        tracking_uri=uri,
    )
    if fmt != "text":
        print(table.render(fmt))
        return
    count = f"{len(table.rows)} run" + ("s" if len(table.rows) != 1 else "")
    where_from = f"experiment '{table.experiment}'" if table.experiment else "several experiments"
    print(f"{count} in {where_from}, best first by {table.metrics[0]} (lower is better)")
    print(table.render())
    if "evaluation" in table.header:
        chosen = f"the newest with {' and '.join(evaluation)}" if evaluation else "the newest"
        print(f"evaluation: each run's {chosen} (--evaluation eval.KEY=VALUE chooses); [A], [B]: ranked apart")
    if "vs_best" in table.header:
        against = f"run {baseline}" if baseline else "the best of its group"
        print(
            f"vs_best: paired difference to {against} on the same points (+- vs_best_se); "
            f"~: within 2 standard errors, so that ranking is noise"
        )
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
        evaluation=args.evaluation,
        baseline=args.baseline,
    )
    return 0
