"""Real processes for the tests: torchrun launches of ``pyrovae`` with 2 CPU ranks (gloo) and a
store to read what they logged."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
from mlflow.tracking import MlflowClient

from tests.stores import fresh_store

HERE = Path(__file__).parent  # tests/: the helper scripts and modules (faulty.py, ddp_gradient.py)
SMALL = [
    "data.name=synthetic",
    "data.subset=300",
    "train.batch_size=40",
    "model.latent_dim=3",
    "model.guide.hidden=[16]",
    "model.likelihood.hidden=[16]",
    "validation.batch_size=300",
    "mlflow.experiment=ddp",
    "train.epochs=3",
]  # 300 rows: 7 global batches of 40 and one of 20


def overrides(*extra: str) -> list[str]:
    return [arg for item in [*SMALL, *extra] for arg in ("--set", item)]


def torchrun(*args: str, restarts: int = 0) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "--max-restarts",
        str(restarts),
        *args,
    ]


class Store:
    def __init__(self, folder: Path):
        self.folder = folder
        self.uri = fresh_store(folder)
        self.env = {**os.environ, "MLFLOW_TRACKING_URI": self.uri, "PYTHONPATH": str(HERE), "OMP_NUM_THREADS": "1"}
        self.client = MlflowClient(self.uri)

    def run(self, command: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(command, cwd=self.folder, env=self.env, capture_output=True, text=True, timeout=timeout)

    def named(self, name: str):
        experiment = self.client.get_experiment_by_name("ddp")
        (run,) = self.client.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = '{name}'")
        return run

    def history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        return [
            (m.step, m.value)
            for m in sorted(self.client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
        ]

    def first_run(self, experiment: str = "ddp"):
        """The experiment's one run once it logged an epoch (else None)."""
        try:
            found = self.client.get_experiment_by_name(experiment)
            runs = self.client.search_runs([found.experiment_id]) if found else []
        except Exception:  # the store is being created
            return None
        return runs[0] if runs and self.history(runs[0].info.run_id, "val/loss") else None


def wait_for(predicate, timeout: float = 180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError("timed out waiting")


def workers(launcher: subprocess.Popen) -> dict[int, psutil.Process]:
    """torchrun's worker processes by rank."""
    children = psutil.Process(launcher.pid).children(recursive=True)
    return {int(p.environ()["RANK"]): p for p in children if "RANK" in p.environ()}
