"""How long ``pyrovae compare`` takes on a store of many runs, each with an evaluation.

Writes N trained-looking runs (20 params, a few metrics) and one evaluation child each (its
settings, ``test/nll_iwae`` and a per-point array of 1,000 values) into a fresh sqlite store in a
temporary folder, then times three tables: by a run's own metric (``val/loss``), by the joined
evaluation with paired differences to the best (every evaluation's array read), and the same as
JSON. Prints seconds per table; nothing is kept.

    .venv/bin/python benchmarks/compare_speed.py --runs 1000
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def fill(uri: str, runs: int, points: int) -> None:
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from pyrovae.run.tracking import experiment_id

    client, rng = MlflowClient(uri), np.random.default_rng(0)
    experiment = experiment_id(uri, "many")
    base = rng.normal(100.0, 20.0, points)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(runs):
            run = client.create_run(experiment, run_name=f"run-{i}")
            params = [Param(f"model.key_{j}", str(j if j else i % 7)) for j in range(18)]
            params += [Param("data.name", "mnist"), Param("model.guide.name", ["diag", "iaf", "flow"][i % 3])]
            metrics = [Metric(k, float(rng.normal(100, 5)), 0, 10) for k in ("val/loss", "test/loss", "train/loss")]
            client.log_batch(run.info.run_id, metrics=metrics, params=params)
            client.set_terminated(run.info.run_id)
            tags = {"pyrovae.kind": "evaluation", "mlflow.parentRunId": run.info.run_id}
            child = client.create_run(experiment, run_name="evaluation", tags=tags)
            settings = {"eval.of": run.info.run_id, "eval.split": "test", "eval.n": points, "eval.iwae_k": 5000,
                        "eval.seed": 0, "eval.weights": "final"}  # fmt: skip
            log_px = -(base + rng.normal(0.0, 1.0, points) + i * 1e-3)
            client.log_batch(
                child.info.run_id,
                metrics=[Metric("test/nll_iwae", float(-log_px.mean()), 0, 10)],
                params=[Param(k, str(v)) for k, v in settings.items()],
            )
            np.save(Path(tmp) / "loglik_test_iwae.npy", log_px)
            client.log_artifact(child.info.run_id, str(Path(tmp) / "loglik_test_iwae.npy"), "evaluation")
            client.set_terminated(child.info.run_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--points", type=int, default=1000, help="per-point values in each evaluation")
    args = parser.parse_args()
    import pyrovae

    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        uri = f"sqlite:///{folder}/mlruns/mlflow.db"
        started = time.perf_counter()
        fill(uri, args.runs, args.points)
        print(f"store: {args.runs} runs + {args.runs} evaluations written in {time.perf_counter() - started:.0f} s")
        for label, kwargs in (
            ("val/loss (a run's own metric)", dict(metrics=["val/loss"])),
            ("joined evaluations, paired differences", dict()),
        ):
            started = time.perf_counter()
            table = pyrovae.compare(experiment="many", max_runs=args.runs, tracking_uri=uri, **kwargs)
            seconds = time.perf_counter() - started
            print(f"compare by {label}: {len(table.rows)} rows in {seconds:.1f} s")
        started = time.perf_counter()
        pyrovae.compare(experiment="many", max_runs=args.runs, tracking_uri=uri).render("json")
        print(f"the same as JSON: {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
