"""The Python API as the README and the docs show it, and runs logged by older pyrovae versions.

The README's example, and the two Python blocks of ``docs/getting-started.md`` (a user's prior
module, then the script), are written to a folder and run there as a user would; the run they log
must be the run ``pyrovae train`` logs for the
same settings, and every command must work on it. A run made by pyrovae 0.1 (checkpoint format 1,
``tests/fixtures/legacy_run_format1``) must still evaluate, sample and resume with the numbers
that version would have logged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from doc_examples import python_blocks
from mlflow.tracking import MlflowClient

from pyrovae.cli import main
from pyrovae.run import config
from pyrovae.run.tracking import experiment_id

ROOT = Path(__file__).parents[2]
LEGACY = Path(__file__).parents[1] / "fixtures" / "legacy_run_format1"
RUN_0_2 = Path(__file__).parents[1] / "fixtures" / "run_0_2"
TINY_0_2 = [
    "data.name=synthetic",
    "data.subset=200",
    "train.batch_size=50",
    "model.latent_dim=3",
    "model.guide.hidden=[16]",
    "model.likelihood.hidden=[16]",
    "validation.batch_size=100",
]
VARIANTS_0_2 = {
    "default": [],
    "meanfield_warmup": ["train.elbo=meanfield", "train.beta_start=0.2", "train.warmup_epochs=2"],
    "jit_warmup": ["train.jit=true", "train.beta_start=0.2", "train.warmup_epochs=2"],
}


def log_fixture(client, store: str, folder: Path, experiment: str) -> str:
    """A finished run in ``store`` holding the pyrovae artifacts of a fixture folder."""
    run_id = client.create_run(experiment_id(store, experiment), run_name=experiment).info.run_id
    for path in sorted(folder.rglob("*")):
        if path.suffix in (".pt", ".toml") and path.parent.name != "data":
            sub = str(path.parent.relative_to(folder)) if path.parent != folder else None
            client.log_artifact(run_id, str(path), sub)
    client.set_terminated(run_id, "FINISHED")
    return run_id


@pytest.mark.slow
def test_the_readme_example_runs_and_reloads(tmp_path):
    (script,) = python_blocks("README.md", "## From Python")
    (tmp_path / "demo.py").write_text(script)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the default ./mlruns
    done = subprocess.run(
        [sys.executable, "demo.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert "'val/loss'" in lines[0] and "'val/kl'" in lines[0] and "'val/mse'" in lines[0]
    val_loss = float(lines[0].split("'val/loss': ")[1].split(",")[0])
    assert 0 < float(lines[1].split(":")[1]) < val_loss + 5  # IWAE's NLL: a tighter bound, near the -ELBO
    assert lines[2] == "torch.Size([8, 1, 12, 12]) torch.Size([4, 1, 12, 12])"


@pytest.mark.slow
def test_the_getting_started_example_runs_and_its_run_is_a_normal_pyrovae_run(tmp_path, monkeypatch, capsys):
    prior_module, script = python_blocks("docs/getting-started.md", "## From Python")
    (tmp_path / "my_prior.py").write_text(prior_module)
    (tmp_path / "demo.py").write_text(script)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the default ./mlruns
    env["PYTHONPATH"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "demo.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
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
    same_from_the_cli = config.load(
        None,
        [
            "data.name=synthetic",
            "model.latent_dim=8",
            'model.prior={name="my_prior:ShiftedNormal", shift=0.5}',
            "model.likelihood.hidden=[200]",
            "train.epochs=1",
            "train.jit=true",  # the path train.jit = "auto" took: what a run records
            "mlflow.experiment=python-api",
        ],
    )
    expected = {k: str(v) for k, v in config.flatten(same_from_the_cli).items() if k != "mlflow.run_name"}
    assert {k: v for k, v in run.data.params.items() if k != "mlflow.run_name"} == expected

    run_id = run.info.run_id
    assert main(["evaluate", run_id, "--iwae-k", "5", "--subset", "20", "--no-progress"]) == 0
    assert main(["sample", run_id, "--n", "4", "--out", str(tmp_path / "s.png")]) == 0
    assert main(["resume", run_id, "--set", "train.epochs=2", "--no-progress"]) == 0
    assert [m.step for m in client.get_metric_history(run_id, "val/loss")] == [1, 2]


@pytest.mark.slow  # a fresh interpreter
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
    run_id = log_fixture(client, store, LEGACY, "legacy")

    assert main(["evaluate", run_id, "--iwae-k", "5", "--subset", "20", "--no-progress"]) == 0
    assert main(["sample", run_id, "--n", "4", "--best", "--out", str(tmp_path / "s.png")]) == 0
    assert main(["resume", run_id, "--set", "train.epochs=3", "--no-progress"]) == 0
    expected = json.loads((LEGACY / "expected.json").read_text())
    for key in ("train/loss", "val/loss"):
        (third,) = client.get_metric_history(run_id, key)
        assert third.step == 3 and third.value == pytest.approx(expected[key][2], rel=1e-6), key


@pytest.mark.slow
def test_the_default_model_gives_the_numbers_pyrovae_0_2_logged(store):
    """Same seed, same numbers (to float rounding): the loss, the validation terms, the test terms
    and the IWAE bound of every test point, without and with KL annealing, eager and JIT (the JIT
    run against today's eager run: see below)."""
    import torch

    from pyrovae import iwae, load_data, load_vae

    expected = json.loads((RUN_0_2 / "expected.json").read_text())
    client = MlflowClient(store)
    logged = {}
    for name, extra in {**VARIANTS_0_2, "eager_warmup": ["train.jit=false", *VARIANTS_0_2["jit_warmup"][1:]]}.items():
        overrides = [*TINY_0_2, *extra, "train.epochs=3", f"mlflow.run_name={name}"]
        assert main(["train", "--no-progress", *sum((["--set", o] for o in overrides), [])]) == 0
        (run,) = client.search_runs([experiment_id(store, "pyrovae")], filter_string=f"attributes.run_name = '{name}'")
        numbers = {k: [m.value for m in sorted(client.get_metric_history(run.info.run_id, k), key=lambda m: m.step)]
                   for k in ("train/loss", "val/loss", "val/recon", "val/kl")}  # fmt: skip
        numbers.update({k: run.data.metrics[k] for k in ("test/loss", "test/recon", "test/kl")})
        test = load_data("synthetic", subset=200).evaluation_data("test")
        numbers["iwae_k50_test"] = iwae(load_vae(run.info.run_id), test, 50, seed=0).tolist()
        logged[name] = numbers
    # 0.2 compiled its JIT graph at the first step, which drew that batch's latents twice; the graph now
    # compiles before training, off the random stream, so a JIT run is the eager run (the default,
    # traced since train.jit = "auto", still gives 0.2's eager numbers): jit_warmup is pinned to it
    expected["jit_warmup-3"] = logged["eager_warmup"]
    for name in VARIANTS_0_2:
        old, new = expected[f"{name}-3"], logged[name]
        for key in ("train/loss", "val/loss", "val/recon", "val/kl", "test/loss", "test/recon", "test/kl"):
            assert new[key] == pytest.approx(old[key], rel=1e-6, abs=1e-6), (name, key)
        bound, old_bound = (torch.tensor(b["iwae_k50_test"], dtype=torch.float64) for b in (new, old))
        assert torch.allclose(bound, old_bound, rtol=1e-6, atol=1e-5), name


@pytest.mark.slow
def test_a_run_logged_by_pyrovae_0_2_evaluates_samples_resumes_and_loads_in_mlflow(store, tmp_path):
    import mlflow.pytorch
    import torch

    from pyrovae import VAE

    client = MlflowClient(store)
    run_id = log_fixture(client, store, RUN_0_2, "run-0-2")
    assert main(["evaluate", run_id, "--iwae-k", "5", "--subset", "20", "--no-progress"]) == 0
    assert main(["sample", run_id, "--n", "4", "--best", "--out", str(tmp_path / "s.png")]) == 0
    assert main(["resume", run_id, "--set", "train.epochs=3", "--no-progress"]) == 0
    third = json.loads((RUN_0_2 / "expected.json").read_text())["default-3"]
    for key in ("train/loss", "val/loss"):
        (metric,) = client.get_metric_history(run_id, key)
        assert metric.step == 3 and metric.value == pytest.approx(third[key][2], rel=1e-6), key
    logged = mlflow.pytorch.load_model(str(RUN_0_2 / "model"))  # the pickled 0.2 VAE, with today's class
    assert isinstance(logged, VAE) and logged.config["latent_dim"] == 3
    x = torch.bernoulli(torch.full((5, 1, 12, 12), 0.3))
    assert logged.decode(logged.encode(x)).shape == x.shape and logged.generate(2).shape == (2, 1, 12, 12)
    from pyrovae.infer.estimators.iwae import iwae

    assert iwae(logged, x, 4).shape == (5,)  # scored from its traces like any model


def test_every_callback_given_to_train_sees_every_step(store):
    from pyrovae import Callback, load_data, train
    from pyrovae.model.vae import VAE

    class Count(Callback):
        def __init__(self):
            self.steps, self.epochs = 0, 0

        def on_step_end(self, trainer, loss):
            self.steps += 1

        def on_epoch_end(self, trainer, epoch, metrics):
            self.epochs += 1

    data = load_data("synthetic", subset=120)
    vae = VAE(
        guide={"name": "diagonal_normal", "hidden": [8]},
        likelihood={"name": "bernoulli", "hidden": [8]},
        latent_dim=2,
        data_shape=data.data_shape,
    )
    count = Count()
    train(
        vae,
        data,
        epochs=2,
        batch_size=50,
        callbacks=[count],
        progress=False,
        tracking={"images_every": 0},
        validation={"batch_size": 200},
    )
    assert (count.steps, count.epochs) == (2 * 3, 2)  # 120 rows in batches of 50: 3 steps an epoch


@pytest.mark.slow
def test_a_vae_subclass_with_a_parameter_of_its_own_is_logged_and_rebuilt_as_itself(store):
    import torch
    from exact_models import Tempered

    from pyrovae import evaluate_run, load_data, load_vae, train

    data = load_data("synthetic", subset=200)
    model = Tempered(
        temperature=1.5,
        latent_dim=2,
        data_shape=data.data_shape,
        guide={"name": "diagonal_normal", "hidden": [8]},
        likelihood={"name": "bernoulli", "hidden": [8]},
    )
    result = train(model, data, epochs=1, batch_size=50, progress=False)
    client = MlflowClient(store)
    params = client.get_run(result.run_id).data.params
    assert params["model.name"] == "exact_models:Tempered" and params["model.temperature"] == "1.5"
    again = load_vae(result.run_id)
    assert type(again) is Tempered
    assert torch.equal(again.temperature, model.temperature.detach()) and float(again.temperature) != 1.5  # trained
    assert evaluate_run(result.run_id, iwae_k=5, subset=20, progress=False).metrics["test/nll_iwae"] > 0
    assert main(["resume", result.run_id, "--set", "train.epochs=2", "--no-progress"]) == 0


@pytest.mark.slow
def test_the_docs_own_model_trains_scores_samples_and_reloads_from_the_cli_and_python(
    store, tmp_path, monkeypatch, capsys
):
    module, script = python_blocks("docs/models.md", "## Your own model: any Pyro model/guide pair")
    assert module == (ROOT / "experiments" / "own_model.py").read_text()  # the page shows the file itself
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    tiny = [
        "--set",
        "data.name=synthetic",
        "--set",
        "data.subset=300",
        "--set",
        "train.epochs=1",
        "--set",
        "model.z1=4",
        "--set",
        "model.hidden=32",
        "--no-progress",
    ]
    assert main(["train", str(ROOT / "experiments" / "own_model.toml"), *tiny]) == 0
    assert "val/kl/z1" in capsys.readouterr().out
    client = MlflowClient(store)
    (trained,) = client.search_runs([client.get_experiment_by_name("own-model").experiment_id])
    run_id = trained.info.run_id
    assert trained.data.params["model.name"] == "own_model:TwoLevelCVAE"
    assert {"val/kl/z1", "val/kl/z2", "test/kl/z1"} <= set(trained.data.metrics)
    assert (
        main(
            [
                "evaluate",
                run_id,
                "--iwae-k",
                "20",
                "--subset",
                "30",
                "--ais",
                "--ais-steps",
                "20",
                "--ais-subset",
                "5",
                "--no-progress",
            ]
        )
        == 0
    )
    scores = {
        line.split()[0]: float(line.split()[1])
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("  ")
    }
    assert scores["test/nll_elbo"] > 0 and scores["test/nll_ais"] > 0 and "test/active_units/z2" in scores
    assert main(["sample", run_id, "--n", "8", "--out", str(tmp_path / "s.png")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("pyrovae: error: TwoLevelCVAE is conditional") and "\n" not in error
    assert main(["sample", run_id, "--n", "8", "--out", str(tmp_path / "s.png"), "--labels", "0,3"]) == 0
    assert (tmp_path / "s.png").stat().st_size > 0

    (tmp_path / "demo.py").write_text(script)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = str(ROOT / "experiments")
    done = subprocess.run(
        [sys.executable, "demo.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "'val/kl/z1'" in done.stdout and "test -log p(x|y), IWAE K=100:" in done.stdout
    assert done.stdout.strip().endswith("TwoLevelCVAE")


def test_a_metric_a_callback_adds_at_the_end_of_an_epoch_is_logged(store):
    from pyrovae import Callback, load_data, train
    from pyrovae.model.vae import VAE

    class Sharpness(Callback):
        def on_epoch_end(self, trainer, epoch, metrics):
            metrics["val/sharpness"] = 10.0 * epoch

    data = load_data("synthetic", subset=120)
    vae = VAE(guide={"name": "diagonal_normal", "hidden": [8]}, likelihood={"name": "bernoulli", "hidden": [8]},
              latent_dim=2, data_shape=data.data_shape)  # fmt: skip
    result = train(vae, data, epochs=2, batch_size=60, callbacks=[Sharpness()], progress=False,
                   tracking={"images_every": 0}, validation={"batch_size": 200})  # fmt: skip
    history = MlflowClient(store).get_metric_history(result.run_id, "val/sharpness")
    assert sorted((m.step, m.value) for m in history) == [(1, 10.0), (2, 20.0)]


@pytest.mark.slow
def test_resume_takes_train_keywords_like_train_and_load_vae_the_tracking_uri(store):
    from pyrovae import load_data, load_vae, resume, train
    from pyrovae.model.vae import VAE

    data = load_data("synthetic", subset=120)
    vae = VAE(guide={"name": "diagonal_normal", "hidden": [8]}, likelihood={"name": "bernoulli", "hidden": [8]},
              latent_dim=2, data_shape=data.data_shape)  # fmt: skip
    run_id = train(vae, data, epochs=1, batch_size=60, progress=False, tracking={"images_every": 0}).run_id
    resume(run_id, epochs=2, progress=False, tracking_uri=store)
    steps = [m.step for m in MlflowClient(store).get_metric_history(run_id, "val/loss")]
    assert sorted(steps) == [1, 2]
    assert load_vae(run_id, tracking_uri=store).latent_dim == 2
    with pytest.raises(Exception, match="resume cannot change 'train.lr'"):
        resume(run_id, lr=0.1)
