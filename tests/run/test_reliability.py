"""Bad input gets one clear line, exit status 2, and leaves no MLflow run RUNNING; concurrent runs stay whole."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from pyrovae.cli import main


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(args, capsys):
    code = main(args)
    err = capsys.readouterr().err.strip()
    return code, err


def cli_args(overrides):
    args = ["train", "--no-progress"]
    for item in overrides:
        args += ["--set", item]
    return args


def runs_in(store):
    if not Path(store.removeprefix("sqlite:///")).exists():
        return []  # no store, no run (and opening one would create its schema: seconds)
    client = MlflowClient(store)
    return [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


def user_module(tmp_path, monkeypatch, source: str) -> str:
    (tmp_path / "userparts.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "userparts", raising=False)  # another test's module of that name
    return "userparts"


BAD_INPUTS = [
    (["train.epochs=-1"], "config key 'train.epochs' must be at least 1"),
    (["train.warmup_epochs=-2"], "config key 'train.warmup_epochs' must be at least 0"),
    (["model.likelihood.name=bernouli"], "unknown likelihood 'bernouli' (did you mean 'bernoulli'?)"),
    (["model.guide.name=pkg_that_is_not_there:Guide"], "cannot import module 'pkg_that_is_not_there'"),
    (["data.binarize=false"], "likelihood Bernoulli needs data in"),  # grey levels under a Bernoulli
    (["data.name=arrays"], "data.name = 'arrays' needs data.file"),
    (['data.name="arrays"', 'data.file="/no/such/file.npy"'], "data file '/no/such/file.npy' does not exist"),
    (["train.device=cuda:7"] if not __import__("torch").cuda.is_available() else ["train.device=tpu"], "train.device"),
]


@pytest.mark.parametrize("overrides, message", BAD_INPUTS)
def test_bad_input_one_line_exit_2_no_run(overrides, message, store, tiny_overrides, capsys):
    code, err = run_cli(cli_args([*tiny_overrides, *overrides]), capsys)
    assert code == 2
    assert err.startswith("pyrovae: error: ") and message in err and "\n" not in err
    assert all(r.info.status != "RUNNING" for r in runs_in(store))


def test_nan_in_data_file(tmp_path, store, tiny_overrides, capsys):
    x = np.random.default_rng(0).random((30, 4)).astype(np.float32)
    x[2, 2] = np.inf
    np.save(tmp_path / "x.npy", x)
    code, err = run_cli(
        cli_args(
            [*tiny_overrides, "data.name=arrays", f'data.file="{tmp_path}/x.npy"', "model.likelihood.name=gaussian"]
        ),
        capsys,
    )
    assert code == 2 and "NaN or infinite values" in err


def test_likelihood_that_does_not_fit_the_data_shape(tmp_path, monkeypatch, store, tiny_overrides, capsys):
    module = user_module(
        tmp_path,
        monkeypatch,
        """
        import pyro.distributions as dist, torch
        from torch import nn
        class WrongShape(nn.Module):
            def __init__(self, latent_dim):
                super().__init__()
                self.net = nn.Linear(latent_dim, 10)
            def forward(self, z):
                return dist.Bernoulli(logits=self.net(z)).to_event(1)
    """,
    )
    overrides = [o for o in tiny_overrides if not o.startswith("model.likelihood.")]
    code, err = run_cli(cli_args([*overrides, f'model.likelihood.name="{module}:WrongShape"']), capsys)
    assert code == 2
    assert "likelihood WrongShape returned batch_shape (4,), event_shape (10,)" in err
    assert "(1, 12, 12)" in err


def test_tracking_server_that_does_not_answer_fails_within_seconds(tiny_overrides, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    code, err = run_cli(cli_args([*tiny_overrides, f'mlflow.tracking_uri="{uri}"']), capsys)
    assert code == 2 and f"the MLflow tracking server at {uri} does not answer" in err


def test_store_folder_that_cannot_be_created(tiny_overrides, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mlruns").write_text("a file where the store folder should be")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code, err = run_cli(cli_args(tiny_overrides), capsys)
    assert code == 2 and "MLflow store" in err and str(tmp_path / "mlruns") in err


def test_debug_shows_the_traceback(store, tiny_overrides, capsys):
    code = main(["--debug", *cli_args([*tiny_overrides, "train.epochs=0"])])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" in err and err.strip().endswith("must be at least 1, got 0")


@pytest.mark.slow
def test_four_concurrent_trainings_into_one_fresh_store(tmp_path, tiny_overrides):
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONUNBUFFERED": "1"}
    procs = []
    for i in range(4):
        args = [sys.executable, "-m", "pyrovae", "train", "--no-progress"]
        for item in [*tiny_overrides, f"train.seed={i}", f'mlflow.run_name="concurrent-{i}"']:
            args += ["--set", item]
        procs.append(
            subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], outputs
    runs = runs_in(uri)
    assert sorted(r.info.run_name for r in runs) == [f"concurrent-{i}" for i in range(4)]
    client = MlflowClient(uri)
    for run in runs:
        assert run.info.status == "FINISHED"
        assert {"val/loss", "val/recon", "val/kl", "test/loss"} <= set(run.data.metrics)
        assert len(client.get_metric_history(run.info.run_id, "val/loss")) == 1
    assert Path(tmp_path / "mlruns" / "mlflow.db").exists()


@pytest.mark.parametrize(
    "source, name, message",
    [
        (
            """
        import pyro.distributions as dist
        from torch import nn
        class PlainBernoulli(nn.Module):  # no data check of its own: pyrovae reads its data site's support
            def __init__(self, latent_dim, data_shape):
                super().__init__()
                self.data_shape = tuple(data_shape)
                self.net = nn.Linear(latent_dim, 144)
            def forward(self, z):
                logits = self.net(z).reshape(*z.shape[:-1], *self.data_shape)
                return dist.Bernoulli(logits=logits).to_event(3)
    """,
            'model.likelihood.name="userparts:PlainBernoulli"',
            "likelihood PlainBernoulli needs data in Boolean()",
        ),
        (
            """
        import pyro, pyro.distributions as dist, torch
        from torch import nn
        class ScaleMixture(nn.Module):  # a prior with a latent of its own: a site the guide never samples
            def __init__(self, latent_dim):
                super().__init__()
                self.latent_dim = latent_dim
            def forward(self):
                tau = pyro.sample("tau", dist.LogNormal(0.0, 1.0))
                return dist.Normal(torch.zeros(self.latent_dim), tau.unsqueeze(-1)).to_event(1)
    """,
            'model.prior.name="userparts:ScaleMixture"',
            "site 'tau' is sampled by the model of VAE but not by its guide",
        ),
        (
            """
        import pyro, pyro.distributions as dist, torch
        from pyrovae import Model
        class Global(Model):  # a latent variable shared by the whole data set
            def __init__(self, data_shape):
                super().__init__()
                self.shift = torch.nn.Parameter(torch.zeros(()))
            def model(self, x):
                s = pyro.sample("s", dist.Normal(0.0, 1.0))
                with pyro.plate("data", x.shape[0]):
                    pyro.sample("x", dist.Normal(s + self.shift, 1.0).expand(x.shape[1:]).to_event(3), obs=x)
            def guide(self, x):
                pyro.sample("s", dist.Normal(self.shift, 1.0))
    """,
            'model="userparts:Global"',
            "site 's' of the model of Global is outside pyro.plate('data', B)",
        ),
    ],
)
def test_a_user_model_or_component_that_cannot_be_scored_is_one_line_and_no_run(
    source, name, message, tmp_path, monkeypatch, store, tiny_overrides, capsys
):
    user_module(tmp_path, monkeypatch, source)
    key = name.split("=")[0].removesuffix(".name")  # the table the user's class takes over
    overrides = [o for o in tiny_overrides if not o.startswith(key + ".")]
    if key == "model":  # the whole [model] table is the user's class
        overrides = [o for o in overrides if not o.startswith("model.")]
        name = f"model.name={name.split('=', 1)[1]}"
    extra = ["data.binarize=false"] if "PlainBernoulli" in source else []
    code, err = run_cli(cli_args([*overrides, name, *extra]), capsys)
    assert code == 2 and err.startswith("pyrovae: error: ") and message in err and "\n" not in err, err
    assert runs_in(store) == []
