r"""Which validation loss? Where overfitting happens, which criterion picks the best epoch?

A VAE trained on a small training set (``data.train_subset``) with the whole validation and test
sets overfits: the training loss keeps falling while validation numbers turn up. Each run is a
``pyrovae train`` run (default 784-400-50 MLP, Bernoulli likelihood, dynamic binarization) that
logs, per epoch, ``train/loss`` (the annealed objective), ``val/loss`` (-ELBO at beta = 1 on
all validation images), ``val/recon`` (-E_q log p(x|z)), ``val/kl``, ``val/mse`` (per-pixel squared
error of the decoder mean) and, every ``every`` epochs, ``val/nll_iwae`` (IWAE with K samples on
the first ``score_n`` validation images) and ``test_curve/nll_iwae`` (the same on the first
``score_n`` test images): the outcome a modeller cares about, -log p(x) of unseen data.

A criterion c picks the scored epoch t*(c) = argmin_t c_t; its cost is the test NLL at t*(c)
minus the test NLL at the best scored epoch (the oracle no one can use). The criteria: recon
only, -ELBO, IWAE, MSE. Each cell of the table is mean +- standard error over seeds.

    PYROVAE_DATA_DIR=../shared/data python experiments/validation_loss_study.py --budget full
    PYROVAE_DATA_DIR=../shared/data python experiments/validation_loss_study.py --budget session --warmups 0 &
    PYROVAE_DATA_DIR=../shared/data python experiments/validation_loss_study.py --budget session --warmups 50 \
        --parent RUN   # the first one's parent run: two processes, one per core
    PYROVAE_DATA_DIR=../shared/data python experiments/validation_loss_study.py --budget full \
        --datasets fashion_mnist --sizes 1000 --parent RUN   # one cell of the full grid, into a study
    PYROVAE_DATA_DIR=../shared/data python experiments/validation_loss_study.py --budget smoke   # ~2 minutes
    python experiments/validation_loss_study.py --analyse PARENT_RUN_ID   # table, figure and export again

Runs are children of one MLflow parent run (experiment ``validation-loss-study``); the table is
printed and written with every run id to ``experiments/results/validation_loss_study_<budget>.json``,
the figure to ``experiments/figures/validation_loss_study_<budget>.png`` (the parent's budget, so a
study of one budget never overwrites another's export).
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

from export_runs import experiment_of, over_seeds, study_parent, write
from zoo_study import overrides

from pyrovae import Callback, iwae, train_config
from pyrovae.cli.signals import run_script
from pyrovae.run import config
from pyrovae.run.tracking import MlflowRun

HERE = Path(__file__).resolve().parent
#: budget -> grid and scoring; "session" is the part that fits a 2-core session of about half an
#: hour (two processes: --warmups 0 and --warmups 50 --parent RUN). Batches of 32 give a small
#: training set enough steps to overfit: at batch 128, 300 epochs of 1,000 images (2,400 steps)
#: still improved every validation number.
BUDGETS = {
    "full": dict(
        datasets=["mnist", "fashion_mnist"],
        sizes=[1000, 5000],
        seeds=[0, 1, 2],
        warmups=[0, 50],
        epochs=400,
        batch=32,
        every=5,
        iwae_k=50,
        score_n=2000,
    ),
    "session": dict(
        datasets=["mnist"],
        sizes=[1000],
        seeds=[0, 1, 2],
        warmups=[0, 50],
        epochs=400,
        batch=32,
        every=10,
        iwae_k=50,
        score_n=1000,
    ),
    "smoke": dict(
        datasets=["mnist"],
        sizes=[300],
        seeds=[0, 1],
        warmups=[0, 2],
        epochs=4,
        batch=32,
        every=2,
        iwae_k=5,
        score_n=200,
    ),
}
CRITERIA = {"recon": "val/recon", "-ELBO": "val/loss", "IWAE": "val/nll_iwae", "MSE": "val/mse"}
OUTCOME = "test_curve/nll_iwae"


class TestCurve(Callback):
    """``test_curve/nll_iwae``: -mean IWAE_K on the first ``n`` test images every ``every`` epochs,
    so the epoch any criterion picks has its test score without keeping every epoch's weights."""

    def __init__(self, every: int, k: int, n: int, seed: int = 0):
        self.every, self.k, self.n, self.seed = every, k, n, seed

    def add_metrics(self, trainer, split, metrics):
        if split == "val" and (trainer.epoch + 1) % self.every == 0:
            x = trainer.data.evaluation_data("test")[: self.n]
            metrics[OUTCOME] = -float(iwae(trainer.vae, x, self.k, batch_size=1000, seed=self.seed).mean())


def run_name(dataset: str, size: int, warmup: int, seed: int, model: str = "vae") -> str:
    return f"{'' if model == 'vae' else model + '-'}{dataset}-n{size}-warmup{warmup}-seed{seed}"


#: the axes of the grid, outermost first; each can be cut on the command line to split a budget
#: over sessions (``--datasets fashion_mnist --sizes 1000``), the runs joining one parent
AXES = ("datasets", "sizes", "seeds", "warmups")


def grid(budget: dict) -> list[tuple]:
    """(dataset, train size, seed, warm-up epochs) of each run, in training order: seeds outside
    warm-ups, so a study cut short still pairs each seed's runs with and without warm-up."""
    return list(itertools.product(*(budget[axis] for axis in AXES)))


def train_grid(budget: dict, parent: MlflowRun, experiment: str, model: str = "vae") -> None:
    """Every run of the grid; ``model``: the default VAE, or a file of ``experiments/zoo/`` (e.g. the
    two-level ``hvae``) for every run."""
    sets = [] if model == "vae" else overrides(HERE / "zoo" / f"{model}.toml")
    for dataset, size, seed, warmup in grid(budget):
        name = run_name(dataset, size, warmup, seed, model)
        cfg = config.load(
            None,
            [
                *sets,
                f'data.name="{dataset}"',
                f"data.train_subset={size}",
                f"train.epochs={budget['epochs']}",
                f"train.batch_size={budget['batch']}",
                f"train.seed={seed}",
                f"train.warmup_epochs={warmup}",
                f"train.beta_start={0.01 if warmup else 1.0}",
                f"train.checkpoint_every={budget['epochs']}",
                f"validation.iwae_every={budget['every']}",
                f"validation.iwae_k={budget['iwae_k']}",
                f"validation.iwae_n={budget['score_n']}",
                "mlflow.images_every=0",
                f'mlflow.experiment="{experiment}"',
                f'mlflow.run_name="{name}"',
            ],
        )
        result = train_config(
            cfg,
            progress=False,
            parent_run_id=parent.run_id,
            callbacks=[TestCurve(budget["every"], budget["iwae_k"], budget["score_n"])],
        )
        print(f"{name}: run {result.run_id}", flush=True)


def picks(histories: dict[str, dict[int, float]]) -> dict[str, dict]:
    """For each criterion the scored epoch it picks and the test NLL there; also the oracle's and the last's."""
    test = histories[OUTCOME]
    scored = sorted(test)
    chosen = {name: min(scored, key=lambda t, key=key: histories[key][t]) for name, key in CRITERIA.items()}
    chosen |= {"last epoch": scored[-1], "oracle (test)": min(scored, key=test.get)}
    return {name: {"epoch": t, "test_nll": test[t]} for name, t in chosen.items()}


def analyse(parent: MlflowRun) -> dict:
    client = parent.client
    children = client.search_runs(
        [parent.info().experiment_id],
        f"tags.mlflow.parentRunId = '{parent.run_id}'",
        order_by=["attributes.start_time ASC"],
    )
    runs = []
    for run in children:
        if run.info.status != "FINISHED":
            continue
        keys = [*CRITERIA.values(), OUTCOME, "train/loss"]
        histories = {k: {m.step: m.value for m in client.get_metric_history(run.info.run_id, k)} for k in keys}
        p = run.data.params
        runs.append(
            {
                "run_id": run.info.run_id,
                "name": run.info.run_name,
                "dataset": p["data.name"],
                "model": p.get("model.name", "vae"),
                "train_size": int(p["data.train_subset"]),
                "batch_size": int(p["train.batch_size"]),
                "warmup_epochs": float(p["train.warmup_epochs"]),
                "seed": int(p["train.seed"]),
                "epochs": int(p["train.epochs"]),
                "iwae_k": int(p.get("validation.iwae_k", p.get("eval.iwae_k"))),  # eval.*: runs before 0.3
                "score_n": int(p.get("validation.iwae_n", p.get("eval.iwae_n"))),
                "picks": picks(histories),
                "curves": {k: sorted(v.items()) for k, v in histories.items()},
            }
        )
    return {"parent_run_id": parent.run_id, "store": parent.uri, "runs": runs, "table": tabulate(runs)}


def tabulate(runs: list[dict]) -> list[dict]:
    """One row per cell (data set, size, batch, warm-up) and criterion: the epoch it picks, the
    test NLL there and its cost against the oracle, each as mean +- se over the cell's seeds."""
    table = []
    for cell, members in itertools.groupby(sorted(runs, key=cell_of), key=cell_of):
        members = list(members)
        oracle = [r["picks"]["oracle (test)"]["test_nll"] for r in members]
        for name in [*CRITERIA, "last epoch", "oracle (test)"]:
            nll = [r["picks"][name]["test_nll"] for r in members]
            table.append(
                {
                    "model": cell[4],
                    "dataset": cell[0],
                    "train_size": cell[1],
                    "batch_size": cell[2],
                    "warmup_epochs": cell[3],
                    "criterion": name,
                    "seeds": len(members),
                    "epoch": over_seeds([r["picks"][name]["epoch"] for r in members]),
                    "test_nll": over_seeds(nll),
                    "cost": over_seeds([a - b for a, b in zip(nll, oracle)]),
                }
            )
    return table


def cell_of(run: dict) -> tuple:
    return run["dataset"], run["train_size"], run["batch_size"], run["warmup_epochs"], run.get("model", "vae")


def print_table(record: dict) -> None:
    print(
        f"{'model':<6}{'data':<14}{'n':>6}{'batch':>6}{'warm-up':>8}  {'criterion':<14}{'epoch':>12}{'test NLL':>18}"
        f"{'cost vs oracle':>18}"
    )
    for row in record["table"]:
        epoch, nll, cost = row["epoch"], row["test_nll"], row["cost"]
        print(
            f"{row.get('model', 'vae'):<6}{row['dataset']:<14}{row['train_size']:>6}{row['batch_size']:>6}"
            f"{row['warmup_epochs']:>8g}  "
            f"{row['criterion']:<14}"
            f"{epoch[0]:>7.1f}+-{_se(epoch, 1)}{nll[0]:>11.2f} +- {_se(nll, 2)}{cost[0]:>11.2f} +- {_se(cost, 2)}"
        )


def _se(value: list, digits: int) -> str:
    return f"{'-' if value[1] is None else f'{value[1]:.{digits}f}':<4}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", choices=list(BUDGETS), default="full")
    parser.add_argument("--analyse", metavar="PARENT_RUN_ID", help="only analyse a study already trained")
    parser.add_argument("--parent", metavar="RUN_ID", help="add this grid's runs to an existing study")
    parser.add_argument("--datasets", nargs="+", choices=["mnist", "fashion_mnist"], help="instead of the budget's")
    parser.add_argument("--sizes", type=int, nargs="+", help="training-set sizes instead of the budget's")
    parser.add_argument("--seeds", type=int, nargs="+", help="instead of the budget's seeds")
    parser.add_argument("--warmups", type=int, nargs="+", help="instead of the budget's warm-up epochs")
    parser.add_argument(
        "--model",
        default="vae",
        help="vae (the default model) or a file of experiments/zoo/ naming another model, e.g. hvae",
    )
    parser.add_argument("--experiment", default="validation-loss-study")
    parser.add_argument("--out", type=Path, help="the export (default: results/validation_loss_study_<budget>.json)")
    parser.add_argument("--figure", type=Path, help="default: figures/validation_loss_study_<budget>.png")
    args = parser.parse_args()
    budget = BUDGETS[args.budget] | {axis: getattr(args, axis) for axis in AXES if getattr(args, axis)}
    if args.analyse:
        parent = MlflowRun.existing(args.analyse)
    else:
        with study_parent(
            args.experiment, f"validation-loss-{args.budget}", args.budget, BUDGETS[args.budget], args.parent
        ) as parent:
            train_grid(budget, parent, experiment_of(parent), args.model)
    name = parent.client.get_run(parent.run_id).data.tags.get("study.budget", args.budget)
    out = args.out or HERE / "results" / f"validation_loss_study_{name}.json"
    record = analyse(parent)
    print_table(record)
    write(record, out)
    from validation_loss_figure import draw  # matplotlib only when drawing

    figure = draw(record, args.figure or HERE / "figures" / f"validation_loss_study_{name}.png")
    print(f"parent run {parent.run_id}; {len(record['runs'])} runs -> {out}, {figure}")


if __name__ == "__main__":
    run_script(main)  # a `kill` ends the study's runs KILLED, not RUNNING
