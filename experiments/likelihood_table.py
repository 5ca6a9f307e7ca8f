r"""A likelihood table: every shipped prior and guide, and the two-level HVAE, on one training budget,
log p(x) by IWAE and AIS.

One child run per variant under one MLflow parent run (experiment ``likelihood-table``): the
baseline (784-400-50 MLP, N(0, I) prior, diagonal Gaussian q, Bernoulli likelihood, dynamic
binarization, ``Trace_ELBO``, Adam 1e-3, batch 128) over ``baseline_seeds``, and each file of
``experiments/zoo/`` (a prior or a guide swapped into the baseline, the other component staying the
baseline's; or, ``hvae``, a second latent layer above the baseline's) at ``seed``. Every variant gets
the same epochs on the same training images.

After training, each run is scored by ``pyrovae evaluate`` in a fresh process (so its peak
memory is the estimators' own): on the first ``test_n`` test images (0 = all 10,000) the
-ELBO, KL and active units, IWAE with K = ``iwae_k``, and AIS (``ais_steps`` annealing steps,
``ais_chains`` chains from q(z|x) or, for the flow guides, from p(z): ``AIS_START``) on the
first ``ais_n`` of them, each with its seconds and peak memory. Each cell is a mean over test
images +- its standard error; the baseline's spread over seeds is reported beside the table.

    PYROVAE_DATA_DIR=../shared/data python experiments/likelihood_table.py --budget full      # ~10 h on 2 cores
    PYROVAE_DATA_DIR=../shared/data python experiments/likelihood_table.py --budget session   # ~1.3 h
    python experiments/likelihood_table.py --budget smoke   # 1 epoch on 1,000 MNIST images, ~3 min
    python experiments/likelihood_table.py --analyse PARENT_RUN_ID   # table, figure, export again
    # part of a budget, added to an existing parent run:
    ... --budget full --variants baseline iaf --baseline-seeds 1 --parent RUN
    # continued in a store that lacks the earlier runs (a fresh clone): carry the committed rows over
    ... --budget full --variants flow --earlier experiments/results/likelihood_table_full.json

Prints the table and writes every run id, config and metric to
``experiments/results/likelihood_table_<budget>.json``, each evaluation's per-image test NLL
(IWAE) to the ``.npz`` beside it (:mod:`carried_rows`), and the figure to
``experiments/figures/likelihood_table_<budget>.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from carried_rows import carry_over, load_per_image, save_per_image
from export_runs import collect, experiment_of, over_seeds, study_parent, write
from mlflow.exceptions import MlflowException
from zoo_study import overrides

from pyrovae import train_config
from pyrovae.cli.signals import run_script
from pyrovae.run import config
from pyrovae.run.tracking import MlflowRun

HERE = Path(__file__).resolve().parent
ZOO = ["mixture_of_gaussians", "vamp_prior", "flow", "low_rank_normal", "iaf", "neural_spline", "hvae"]
#: AIS starts from q(z|x) (it converges in far fewer steps), except where log q(z|x) of a point q
#: did not draw needs the flow's inverse, one pass per latent dimension at every leapfrog step
#: (27 s per point at 10 steps for the spline guide): those start from the prior.
AIS_START = {"iaf": "prior", "neural_spline": "prior"}
BUDGETS = {
    "full": dict(
        epochs=100,
        subset=0,
        baseline_seeds=[0, 1],
        seed=0,
        iwae_k=5000,
        test_n=0,
        ais_n=100,
        ais_steps=500,
        ais_chains=16,
    ),
    "session": dict(
        epochs=20,
        subset=0,
        baseline_seeds=[0, 1],
        seed=0,
        iwae_k=5000,
        test_n=1000,
        ais_n=10,
        ais_steps=200,
        ais_chains=8,
    ),
    "smoke": dict(
        epochs=1, subset=1000, baseline_seeds=[0], seed=0, iwae_k=10, test_n=100, ais_n=4, ais_steps=10, ais_chains=2
    ),
}


def runs_to_train(budget: dict, variants: list[str]) -> list[tuple[str, list[str], int]]:
    """``(run name, --set overrides, seed)`` per run: the baseline's seeds first and last, so a
    session cut short still has one baseline beside the variants it trained."""
    zoo = [(name, overrides(HERE / "zoo" / f"{name}.toml"), budget["seed"]) for name in variants if name in ZOO]
    baselines = [(f"baseline-seed{s}", [], s) for s in budget["baseline_seeds"]] if "baseline" in variants else []
    return baselines[:1] + zoo + baselines[1:]


def train_and_score(budget: dict, variants: list[str], parent: MlflowRun, experiment: str) -> None:
    for name, sets, seed in runs_to_train(budget, variants):
        cfg = config.load(
            HERE / "mnist.toml",
            [
                *sets,
                f"train.epochs={budget['epochs']}",
                f"train.seed={seed}",
                f"data.subset={budget['subset']}",
                f"train.checkpoint_every={budget['epochs']}",
                "mlflow.images_every=0",
                f'mlflow.experiment="{experiment}"',
                f'mlflow.run_name="{name}"',
            ],
        )
        run_id = train_config(cfg, progress=False, parent_run_id=parent.run_id).run_id
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pyrovae",
                "evaluate",
                run_id,
                "--iwae-k",
                str(budget["iwae_k"]),
                "--subset",
                str(budget["test_n"]),
                "--ais",
                "--ais-start",
                AIS_START.get(name, "posterior"),
                "--ais-subset",
                str(budget["ais_n"]),
                "--ais-steps",
                str(budget["ais_steps"]),
                "--ais-chains",
                str(budget["ais_chains"]),
                "--no-progress",
            ],
            check=True,
        )
        print(f"{name}: run {run_id}", flush=True)


def variant_of(run: dict) -> str:
    return run["name"].split("-seed")[0]


def rows(record: dict) -> list[dict]:
    """One row per finished, evaluated run: its numbers from the newest evaluation."""
    out = []
    for run in record["runs"]:
        evaluations = [e for e in run["evaluations"] if e["status"] == "FINISHED"]
        if run["status"] != "FINISHED" or not evaluations:
            continue
        e = max(evaluations, key=lambda e: int(e["params"]["eval.n"]))  # the one on the most points
        m, p = e["metrics"], e["params"]
        epochs = int(run["params"]["train.epochs"])
        out.append(
            {
                "variant": variant_of(run),
                "run_id": run["run_id"],
                "evaluation_run_id": e["run_id"],
                "parent_run_id": record["parent_run_id"],
                "seed": int(run["params"]["train.seed"]),
                "epochs": epochs,
                "n": int(p["eval.n"]),
                "iwae_k": int(p["eval.iwae_k"]),
                "ais_n": int(p.get("ais.subset", 0)),
                "train_seconds_per_epoch": statistics.fmean(v for _, v in run["curves"]["train/seconds"]),
                **{
                    key: m.get(f"test/{key}")
                    for key in (
                        "nll_elbo",
                        "nll_elbo_se",
                        "kl",
                        "active_units",
                        "nll_iwae",
                        "nll_iwae_se",
                        "nll_ais",
                        "nll_ais_se",
                        "ais_subset/nll_iwae",
                        "ais_subset/nll_elbo",
                        "ais_subset/ais_minus_iwae",
                        "ais_subset/ais_minus_iwae_se",
                        "elbo_seconds",
                        "elbo_peak_mib",
                        "iwae_seconds",
                        "iwae_peak_mib",
                        "ais_seconds_per_point",
                        "ais_peak_mib",
                    )
                },
            }
        )
    return out


def per_image_nll(table: list[dict], client, saved: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each row's per-image test NLL by IWAE, shape ``(n,)``, by evaluation run id: from ``saved``
    or from the evaluation's artifact; rows whose store is gone and that were saved without
    them are left out."""
    arrays = {}
    for run_id in (row["evaluation_run_id"] for row in table):
        if run_id in saved:
            arrays[run_id] = saved[run_id]
            continue
        try:
            with tempfile.TemporaryDirectory() as tmp:  # the evaluation keeps log p(x), per image
                arrays[run_id] = -np.load(client.download_artifacts(run_id, "evaluation/loglik_test_iwae.npy", tmp))
        except MlflowException:
            pass
    return arrays


def paired_with_baseline(table: list[dict], arrays: dict[str, np.ndarray]) -> None:
    """Add ``nll_iwae_vs_baseline`` (+ ``_se``) to every row with per-image numbers: the mean over
    the same test images of its per-image NLL minus the first baseline's (``paired_with``);
    pairing removes the spread between images, which dominates the standard error of each row
    alone. A row carried without them keeps the difference it was exported with."""
    base = next((r for r in table if r["variant"] == "baseline" and r["evaluation_run_id"] in arrays), None)
    if base is None:
        return
    reference_id = base["evaluation_run_id"]
    for row in table:
        if row["evaluation_run_id"] in arrays:
            difference = arrays[row["evaluation_run_id"]] - arrays[reference_id]
            row["nll_iwae_vs_baseline"] = float(difference.mean())
            row["nll_iwae_vs_baseline_se"] = float(difference.std(ddof=1) / np.sqrt(difference.size))
            row["paired_with"] = reference_id


def baseline_spread(table: list[dict]) -> dict:
    """Mean +- se over the baseline's seeds of its test NLL (IWAE) and -ELBO; no se from one seed."""
    base = [r for r in table if r["variant"] == "baseline"]
    return {key: over_seeds([r[key] for r in base]) for key in ("nll_iwae", "nll_elbo")} | {"seeds": len(base)}


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else value


def print_table(table: list[dict]) -> None:
    print(
        f"{'variant':<22}{'seed':>5}{'ep':>5}{'-ELBO':>9}{'KL':>7}{'AU':>4}{'NLL IWAE':>16}{'vs baseline':>16}"
        f"{'NLL AIS':>9}{'IWAE same':>10}{'s/epoch':>8}{'IWAE s':>8}{'MiB':>6}{'AIS s/pt':>9}{'MiB':>6}"
    )
    for r in table:
        print(
            f"{r['variant']:<22}{r['seed']:>5}{r['epochs']:>5}{r['nll_elbo']:>9.2f}{r['kl']:>7.2f}"
            f"{r['active_units']:>4.0f}{r['nll_iwae']:>9.2f} +- {r['nll_iwae_se']:<4.2f}"
            f"{_or_nan(r.get('nll_iwae_vs_baseline')):>9.2f} +- {_or_nan(r.get('nll_iwae_vs_baseline_se')):<4.2f}"
            f"{r['nll_ais']:>9.2f}"
            f"{r['ais_subset/nll_iwae']:>10.2f}{r['train_seconds_per_epoch']:>8.1f}{r['iwae_seconds']:>8.0f}"
            f"{r['iwae_peak_mib']:>6.0f}{r['ais_seconds_per_point']:>9.2f}{r['ais_peak_mib']:>6.0f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", choices=list(BUDGETS), default="full")
    parser.add_argument("--variants", nargs="+", default=["baseline", *ZOO], choices=["baseline", *ZOO])
    parser.add_argument(
        "--baseline-seeds",
        nargs="+",
        type=int,
        metavar="SEED",
        help="the baseline's seeds (default: the budget's), to split a budget over sessions",
    )
    parser.add_argument("--parent", metavar="RUN_ID", help="add these runs to an existing parent run")
    parser.add_argument("--analyse", metavar="PARENT_RUN_ID", help="only export and tabulate a parent run")
    parser.add_argument(
        "--earlier",
        metavar="EXPORT",
        type=Path,
        help="carry over the rows of this earlier export of the table whose runs this store lacks",
    )
    parser.add_argument("--experiment", default="likelihood-table")
    args = parser.parse_args()
    budget = BUDGETS[args.budget]  # the parent's params: the whole budget, however many sessions run it
    this_call = budget | ({"baseline_seeds": args.baseline_seeds} if args.baseline_seeds else {})
    if args.analyse:
        parent = MlflowRun.existing(args.analyse)
    else:
        with study_parent(
            args.experiment, f"likelihood-table-{args.budget}", args.budget, budget, args.parent
        ) as parent:
            train_and_score(this_call, args.variants, parent, experiment_of(parent))
    name = parent.client.get_run(parent.run_id).data.tags.get("study.budget", args.budget)
    record = collect(parent.run_id)
    record["table"] = rows(record)
    saved = {}
    if args.earlier:  # read before this export may overwrite it
        carry_over(record, json.loads(args.earlier.read_text()))
        saved = load_per_image(args.earlier)
    out = HERE / "results" / f"likelihood_table_{name}.json"
    arrays = per_image_nll(record["table"], parent.client, saved)
    paired_with_baseline(record["table"], arrays)
    record["baseline_over_seeds"] = baseline_spread(record["table"])
    write(record, out)
    save_per_image(arrays, out)
    print_table(record["table"])
    from likelihood_figure import draw  # matplotlib only when drawing

    figure = draw(record, HERE / "figures" / f"likelihood_table_{name}.png")
    print(f"parent run {parent.run_id}; {len(record['table'])} rows -> results/likelihood_table_{name}.json, {figure}")


if __name__ == "__main__":
    run_script(main)  # a `kill` ends the study's runs KILLED, not RUNNING
