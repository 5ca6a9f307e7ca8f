"""``pyrovae evaluate RUN_ID``: tighter estimates of log p(x) (IWAE, AIS, BDMC), kept as an evaluation
run of their own under the trained run (which is never reopened).

A thin command over ``pyrovae.evaluate_run``, whose documentation says what is computed and logged.
"""

from __future__ import annotations

import argparse

HELP = "estimate log p(x) of a trained run (IWAE, AIS, BDMC), kept as an evaluation run under it"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pyrovae.infer.estimators.ais import AISSettings as AIS  # its defaults, declared once

    parser.add_argument("run_id", help="the MLflow run id (or 8+ first characters) of a `pyrovae train` run")
    parser.add_argument(
        "--best", action="store_true", help="score the best epoch's weights (checkpoints/best.pt), not the final ones"
    )
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--iwae-k", type=int, default=5000, help="importance samples K (0 = skip IWAE)")
    parser.add_argument("--subset", type=int, default=0, help="only the first N datapoints of the split (0 = all)")
    parser.add_argument("--batch-size", type=int, default=100, help="datapoints per batch")
    parser.add_argument("--ais", action="store_true", help="also annealed importance sampling with HMC")
    parser.add_argument("--ais-steps", type=int, default=AIS.steps, help="intermediate distributions T")
    parser.add_argument("--ais-chains", type=int, default=AIS.chains, help="chains per datapoint C")
    parser.add_argument("--ais-leapfrog", type=int, default=AIS.leapfrog_steps, help="leapfrog steps per HMC move")
    parser.add_argument(
        "--ais-start",
        default="prior",
        choices=("prior", "posterior"),
        help="anneal from p(z) (Wu et al. 2017) or from q(z|x)",
    )
    parser.add_argument("--ais-subset", type=int, default=100, help="AIS on the first N datapoints")
    parser.add_argument("--bdmc", action="store_true", help="BDMC bounds on --ais-subset simulated datapoints")
    parser.add_argument("--seed", type=int, default=0, help="seed of every estimator's random numbers")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--time-limit",
        type=float,
        metavar="SECONDS",
        help="stop each pass once the evaluation has run this long, keeping the estimates over the "
        "datapoints done (logged with their number, the run tagged pyrovae.evaluate.truncated)",
    )


def run(args: argparse.Namespace) -> int:
    import sys

    from pyrovae.infer.estimators.ais import AISSettings
    from pyrovae.run.evaluation import evaluate_run

    settings = AISSettings(
        steps=args.ais_steps, chains=args.ais_chains, leapfrog_steps=args.ais_leapfrog, start=args.ais_start
    )
    result = evaluate_run(
        args.run_id,
        args.split,
        args.iwae_k,
        args.subset,
        args.batch_size,
        args.ais,
        settings,
        args.ais_subset,
        args.bdmc,
        args.seed,
        args.device,
        progress=not args.no_progress,
        weights="best" if args.best else "final",
        time_limit=args.time_limit,
    )
    print(f"run {result.of}: {args.split} split, {result.n} datapoints; kept as evaluation run {result.run_id}")
    for key in sorted(result.metrics):
        print(f"  {key:<32} {result.metrics[key]:.4f}")
    for warning in result.warnings:
        print(f"pyrovae: warning: {warning}", file=sys.stderr)
    return 0
