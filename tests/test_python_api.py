"""The Python API as the README shows it, and runs logged by older pyrovae versions.

The README's two Python blocks (a user's prior module, then the script) are written to a folder
and run there as a user would; the run they log must be the run ``pyrovae train`` logs for the
same settings, and every command must work on it. A run made by pyrovae 0.1 (checkpoint format 1,
``tests/fixtures/legacy_run_format1``) must still evaluate, sample and resume with the numbers
that version would have logged.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pyrovae.cli import main
from pyrovae.run import config
from pyrovae.run.tracking import experiment_id

ROOT = Path(__file__).parent.parent
LEGACY = Path(__file__).parent / "fixtures" / "legacy_run_format1"


def readme_python_blocks() -> list[str]:
    section = ROOT.joinpath("README.md").read_text().split("## From Python", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


@pytest.mark.slow
def test_the_readme_example_runs_and_its_run_is_a_normal_pyrovae_run(tmp_path, monkeypatch, capsys):
    prior_module, script = readme_python_blocks()
    (tmp_path / "my_prior.py").write_text(prior_module)
    (tmp_path / "demo.py").write_text(script)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the default ./mlruns
    env["PYTHONPATH"] = str(tmp_path)
    done = subprocess.run([sys.executable, "demo.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "'val/loss'" in done.stdout and "'val/kl'" in done.stdout and "'val/mse'" in done.stdout
    assert "torch.Size([8, 1, 12, 12]) torch.Size([4, 1, 12, 12])" in done.stdout

    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("python-api").experiment_id])
    assert run.info.status == "FINISHED"
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    same_from_the_cli = config.load(None, [
        "data.name=synthetic", "model.latent_dim=8", 'model.prior={name="my_prior:ShiftedNormal", shift=0.5}',
        "model.likelihood.hidden=[200]", "train.epochs=1", "mlflow.experiment=python-api"])
    expected = {k: str(v) for k, v in config.flatten(same_from_the_cli).items() if k != "mlflow.run_name"}
    assert {k: v for k, v in run.data.params.items() if k != "mlflow.run_name"} == expected

    run_id = run.info.run_id
    assert main(["evaluate", run_id, "--iwae-k", "5", "--subset", "20", "--no-progress"]) == 0
    assert main(["sample", run_id, "--n", "4", "--out", str(tmp_path / "s.png")]) == 0
    assert main(["resume", run_id, "--set", "train.epochs=2", "--no-progress"]) == 0
    assert [m.step for m in client.get_metric_history(run_id, "val/loss")] == [1, 2]


def test_a_class_defined_in_main_trains_but_is_refused_for_tracking_in_one_line(tmp_path):
    script = """
import pyro.distributions as dist, torch
from torch import nn
from pyrovae import VAE, Trainer, UserError, load_data, train
class Mine(nn.Module):
    def __init__(self, latent_dim: int):
        super().__init__(); self.register_buffer("loc", torch.zeros(latent_dim))
    def forward(self):
        return dist.Normal(self.loc, 1.0).to_event(1)
data = load_data("synthetic", subset=100)
vae = VAE(prior=Mine, latent_dim=2, data_shape=data.data_shape, guide={"name": "diagonal_normal", "hidden": [8]},
          likelihood={"name": "bernoulli", "hidden": [8]})
print(sorted(Trainer(vae, data, epochs=1, batch_size=50, progress=False).fit()))
try:
    train(vae, data, epochs=1, progress=False)
except UserError as err:
    print("refused:", err)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert "['test/kl', 'test/kl/z', 'test/loss', 'test/mse', 'test/recon']" in done.stdout, done.stderr[-2000:]
    assert "refused: prior class Mine is defined in __main__" in done.stdout
    assert not (tmp_path / "mlruns").exists()  # nothing was logged


@pytest.mark.slow
def test_a_run_logged_by_pyrovae_0_1_evaluates_samples_and_resumes_with_its_numbers(store, tmp_path):
    client = MlflowClient(store)
    run_id = client.create_run(experiment_id(store, "legacy"), run_name="legacy").info.run_id
    for path in sorted(LEGACY.rglob("*")):
        if path.suffix in (".pt", ".toml"):
            folder = str(path.parent.relative_to(LEGACY)) if path.parent != LEGACY else None
            client.log_artifact(run_id, str(path), folder)
    client.set_terminated(run_id, "FINISHED")

    assert main(["evaluate", run_id, "--iwae-k", "5", "--subset", "20", "--no-progress"]) == 0
    assert main(["sample", run_id, "--n", "4", "--best", "--out", str(tmp_path / "s.png")]) == 0
    assert main(["resume", run_id, "--set", "train.epochs=3", "--no-progress"]) == 0
    expected = json.loads((LEGACY / "expected.json").read_text())
    for key in ("train/loss", "val/loss"):
        (third,) = client.get_metric_history(run_id, key)
        assert third.step == 3 and third.value == pytest.approx(expected[key][2], rel=1e-6), key
