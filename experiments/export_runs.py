"""Export a study's runs (the children of one parent run) to JSON, so that numbers in the README
stay traceable although ``mlruns/`` is not in git: run ids, names, status, params, the last value
of every metric, the per-epoch history of a few curves, and each run's evaluations
(``pyrovae evaluate`` keeps them as child runs).

    python experiments/export_runs.py PARENT_RUN_ID experiments/results/NAME.json
    python experiments/export_runs.py experiments/results/NAME.json --runs RUN_ID [RUN_ID ...]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlflow.tracking import MlflowClient

from pyrovae.run.evaluation import mean_and_se
from pyrovae.run.tracking import MlflowRun

CURVES = ("train/loss", "val/loss", "val/recon", "val/kl", "train/seconds", "test/accuracy")  # the last: M2


def run_record(client: MlflowClient, run) -> dict:
    """One run as exported: ids, status, params, last metrics, curves and its evaluations."""
    return {
        "run_id": run.info.run_id,
        "name": run.info.run_name,
        "status": run.info.status,
        "params": dict(run.data.params),
        "metrics": {k: v for k, v in run.data.metrics.items() if not k.startswith("system/")},
        "curves": {key: [[m.step, m.value] for m in client.get_metric_history(run.info.run_id, key)] for key in CURVES},
        "evaluations": [
            {
                "run_id": e.info.run_id,
                "status": e.info.status,
                "params": dict(e.data.params),
                "metrics": {k: v for k, v in e.data.metrics.items() if not k.startswith("system/")},
            }
            for e in client.search_runs(
                [run.info.experiment_id],
                filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}' AND tags.`pyrovae.kind` = 'evaluation'",
            )
        ],
    }


def collect(parent_id: str, uri: str = "") -> dict:
    """The record of a parent run's children: what :func:`export` writes."""
    parent = MlflowRun.existing(parent_id, uri)
    client: MlflowClient = parent.client
    children = client.search_runs(
        [parent.info().experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.run_id}'",
        order_by=["attributes.start_time ASC"],
    )
    return {"parent_run_id": parent.run_id, "store": parent.uri, "runs": [run_record(client, r) for r in children]}


def collect_runs(run_ids: list[str], uri: str = "") -> dict:
    """The record of runs that share no parent (one run per model family, say)."""
    runs = [MlflowRun.existing(run_id, uri) for run_id in run_ids]
    client: MlflowClient = runs[0].client
    return {"store": runs[0].uri, "runs": [run_record(client, client.get_run(r.run_id)) for r in runs]}


def write(record: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))


def export(parent_id: str, out: Path, uri: str = "") -> dict:
    record = collect(parent_id, uri)
    write(record, out)
    return record


@contextmanager
def study_parent(
    experiment: str, name: str, budget_name: str, budget: dict, existing: str | None = None
) -> Iterator[MlflowRun]:
    """A study's parent run, open while its children train: ``existing`` (a run id) or a new one
    tagged ``study.budget`` with the budget as ``study.*`` params; FAILED if the study fails."""
    parent = (
        MlflowRun.existing(existing)
        if existing
        else MlflowRun.create("", experiment, name, tags={"pyrovae.group": "parent", "study.budget": budget_name})
    )
    with parent.lifecycle():
        if not existing:
            parent.log_params({f"study.{k}": v for k, v in budget.items()})
        yield parent


def over_seeds(values: list[float]) -> list[float | None]:
    """[mean, standard error over seeds]; no standard error (``None``, not NaN: exports stay
    JSON) from one seed, as a study split over sessions has for a while."""
    mean, se = mean_and_se(values)
    return [mean, se if len(values) > 1 else None]


def experiment_of(run: MlflowRun) -> str:
    """The name of ``run``'s experiment: a parent's children go where the parent is."""
    return run.client.get_experiment(run.info().experiment_id).name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parent_run_id", nargs="?", help="export this parent run's children")
    parser.add_argument("out", type=Path)
    parser.add_argument("--runs", nargs="+", metavar="RUN_ID", help="export these runs instead (no parent)")
    args = parser.parse_args()
    if bool(args.parent_run_id) == bool(args.runs):
        parser.error("give a parent run id or --runs, not both")
    record = collect_runs(args.runs) if args.runs else collect(args.parent_run_id)
    write(record, args.out)
    print(f"{len(record['runs'])} runs -> {args.out}")


if __name__ == "__main__":
    main()
