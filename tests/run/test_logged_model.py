"""A tiny run's logged model loads in a fresh process and samples; ``pyrovae sample``; the
per-epoch pictures, checkpoints and dataset inputs of the run; the figure functions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import mlflow
import mlflow.pytorch
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from pyrovae.cli import main
from pyrovae.infer.estimators.diagnostics import posterior_means
from pyrovae.model.vae import build_vae
from pyrovae.run import config as config_mod
from pyrovae.run import figures
from tests.conftest import TINY, tracking_store


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One 2-epoch synthetic run in a module-wide tmp store: (store uri, run id)."""
    with tracking_store(tmp_path_factory.mktemp("logged")) as uri:
        args = ["train", "--no-progress"]
        for item in [*TINY, "train.epochs=2", "mlflow.experiment=logged"]:
            args += ["--set", item]
        assert main(args) == 0
        client = MlflowClient(uri)
        (found,) = client.search_runs([client.get_experiment_by_name("logged").experiment_id])
    return uri, found.info.run_id


FRESH_PROCESS = textwrap.dedent("""
    import json, sys, mlflow, mlflow.pytorch, torch
    run_id = sys.argv[1]
    out = {}
    for name in ("model", "best_model"):
        vae = mlflow.pytorch.load_model(f"runs:/{run_id}/{name}")
        x = torch.rand(5, *vae.data_shape).bernoulli()
        z = vae.encode(x)
        out[name] = {"type": type(vae).__name__, "z": list(z.shape), "decoded": list(vae.decode(z).shape),
                     "generated": list(vae.generate(7).shape), "reconstructed": list(vae.reconstruct(x).shape),
                     "finite": bool(torch.isfinite(vae.generate(7)).all()),
                     "weights": {k: v.tolist() for k, v in vae.state_dict().items()}}
    print(json.dumps(out))
""")


@pytest.mark.slow  # a fresh interpreter
def test_logged_model_loads_in_a_fresh_process_and_encodes_decodes_samples(run):
    uri, run_id = run
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    done = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, run_id], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    mlflow.set_tracking_uri(uri)
    final = torch.load(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/weights/final.pt"), weights_only=True)
    data_shape = final["data_shape"]
    for name in ("model", "best_model"):
        got = loaded[name]
        assert got["type"] == "VAE" and got["z"] == [5, 3] and got["finite"]
        assert got["decoded"] == got["reconstructed"] == [5, *data_shape]
        assert got["generated"] == [7, *data_shape]
    # "model" is the end of training; the weights are exactly the final ones
    for key, value in final["state_dict"].items():
        assert torch.equal(torch.tensor(loaded["model"]["weights"][key]), value), key
    mlflow.set_tracking_uri(None)


def test_pyrovae_sample_writes_a_png_grid_of_the_right_size_without_unpickling(run, tmp_path, monkeypatch, capsys):
    uri, run_id = run
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)

    def no_unpickling(*args, **kwargs):  # a run's pickles are other people's code: never loaded
        raise AssertionError("pyrovae sample unpickled a logged model")

    monkeypatch.setattr(mlflow.pytorch, "load_model", no_unpickling)
    out = tmp_path / "grid.png"
    assert main(["sample", run_id[:12], "--n", "10", "--out", str(out), "--best"]) == 0
    assert str(out) in capsys.readouterr().out
    mlflow.set_tracking_uri(uri)
    _, height, width = torch.load(
        mlflow.artifacts.download_artifacts(f"runs:/{run_id}/weights/final.pt"), weights_only=True
    )["data_shape"]
    mlflow.set_tracking_uri(None)
    cols, rows = 4, 3  # ceil(sqrt(10)) per row, 2-pixel padding around every image
    image = Image.open(out)
    assert image.size == (cols * (width + 2) + 2, rows * (height + 2) + 2)
    assert np.asarray(image).std() > 0  # not a blank canvas


def test_sample_of_an_unknown_run_is_one_line(run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", run[0])
    assert main(["sample", "0123456789abcdef0123456789abcdef", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pyrovae: error: no run '0123456789abcdef0123456789abcdef'") and "\n" not in err


def test_run_has_pictures_per_epoch_checkpoints_and_dataset_inputs(run):
    uri, run_id = run
    client = MlflowClient(uri)
    images = [a.path for a in client.list_artifacts(run_id, "images")]
    for key in ("reconstructions", "prior_samples", "latent", "kl_per_dimension", "loss_curves"):
        steps = sorted(
            int(p.split("+step+")[1].split("+")[0])
            for p in images
            if p.startswith(f"images/{key}+step+") and p.endswith(".png")
        )
        assert steps == [1, 2], key
    mlflow.set_tracking_uri(uri)
    for name in ("last", "best"):
        path = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/checkpoints/{name}.pt")
        state = torch.load(path, weights_only=True)  # plain data: no pickled code
        assert state["epoch"] == 2 if name == "last" else state["epoch"] == state["best_epoch"]
    mlflow.set_tracking_uri(None)
    inputs = {(i.dataset.name, i.tags[0].value) for i in client.get_run(run_id).inputs.dataset_inputs}
    assert inputs == {("synthetic-train", "training"), ("synthetic-val", "validation")}
    assert [m.step for m in client.get_metric_history(run_id, "log/seconds")] == [1, 2]


def test_figures_are_rgb_arrays_for_every_latent_shape():
    cfg = config_mod.load(None, ["model.latent_dim=2", "model.guide.hidden=[8]", "model.likelihood.hidden=[8]"])
    vae = build_vae(cfg["model"], (1, 6, 6))
    x = torch.rand(30, 1, 6, 6)
    manifold = figures.latent_manifold_grid(vae, n=5)
    assert manifold.shape == (5 * 8 + 2, 5 * 8 + 2, 3) and manifold.dtype == np.uint8
    for latent_dim in (1, 2, 5):
        cfg["model"]["latent_dim"] = latent_dim
        vae = build_vae(cfg["model"], (1, 6, 6))
        means = posterior_means(vae, x)
        assert list(means) == ["z"] and means["z"].shape == (30, latent_dim)
        for labels in (None, torch.arange(30) % 3):
            picture = figures.latent_scatter(means["z"], labels)
            assert picture.ndim == 3 and picture.shape[2] == 3 and picture.std() > 0
    chart = figures.kl_per_dimension_chart(torch.tensor([0.0, 1.5, 3.0]))
    two_sites = figures.kl_per_dimension_chart({"z1": torch.tensor([0.0, 1.5]), "z2": torch.tensor([3.0])})
    curves = figures.loss_curves([{"train/loss": 3.0, "val/loss": 2.0, "val/recon": 1.5, "val/kl": 0.5}] * 2)
    assert chart.shape[2] == curves.shape[2] == two_sites.shape[2] == 3
    assert two_sites.shape[1] > chart.shape[1]  # one panel per site


def test_latent_scatter_does_not_move_the_training_random_stream():
    cfg = config_mod.load(None, ["model.latent_dim=4", "model.guide.hidden=[8]", "model.likelihood.hidden=[8]"])
    vae = build_vae(cfg["model"], (1, 6, 6))
    torch.manual_seed(3)
    figures.latent_scatter(posterior_means(vae, torch.rand(20, 1, 6, 6))["z"])
    after = torch.rand(3)
    torch.manual_seed(3)
    torch.rand(20, 1, 6, 6)
    assert torch.equal(after, torch.rand(3))
