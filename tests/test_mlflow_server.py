"""A real ``mlflow server`` on loopback: a run logged over HTTP, read back through the REST API,
and the experiment page rendered by headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from pathlib import Path

import mlflow
import pytest

from pyrovae.cli import main
from pyrovae.server import MlflowServer

ARTIFACTS_OUT = Path(__file__).resolve().parents[1] / "test-artifacts"


def rest(server, path, payload=None, method=None):
    """GET (``payload`` as query) or POST JSON to the server; the decoded JSON reply."""
    url = f"{server.url}/api/2.0/mlflow/{path}"
    data = None
    if method == "POST":
        data = json.dumps(payload).encode()
    elif payload:
        url += "?" + "&".join(f"{k}={urllib.request.quote(str(v))}" for k, v in payload.items())
    request = urllib.request.Request(url, data=data, method=method or "GET",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.loads(reply.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("server")
    with MlflowServer(f"sqlite:///{root}/mlflow.db", root / "artifacts", log_path=root / "server.log") as srv:
        yield srv
    assert srv.process.poll() is not None  # stopped cleanly, no process left behind


@pytest.fixture(scope="module")
def http_run(server, tmp_path_factory):
    """A two-epoch run logged over HTTP by ``pyrovae train``."""
    workdir = tmp_path_factory.mktemp("client")
    args = ["train", "--no-progress"]
    for item in ["data.name=synthetic", "data.subset=200", "train.epochs=2", "train.batch_size=50",
                 "model.latent_dim=2", "model.guide.hidden=[16]", "model.likelihood.hidden=[16]",
                 f'mlflow.tracking_uri="{server.url}"', "mlflow.experiment=served",
                 "mlflow.run_name=over-http"]:
        args += ["--set", item]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        assert main(args) == 0
    experiment = rest(server, "experiments/get-by-name", {"experiment_name": "served"})["experiment"]
    runs = rest(server, "runs/search", {"experiment_ids": [experiment["experiment_id"]]}, "POST")["runs"]
    assert len(runs) == 1
    return runs[0]["info"]["run_id"], experiment["experiment_id"]


def test_run_logged_over_http_reads_back_through_rest(server, http_run):
    run_id, _ = http_run
    run = rest(server, "runs/get", {"run_id": run_id})["run"]
    assert run["info"]["status"] == "FINISHED"
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["model.latent_dim"] == "2" and params["train.epochs"] == "2"
    history = {key: rest(server, "metrics/get-history", {"run_id": run_id, "metric_key": key})["metrics"]
               for key in ("val/loss", "val/recon", "val/kl", "train/loss")}
    assert [m["step"] for m in history["val/loss"]] == [1, 2]
    assert [m["step"] for m in history["train/loss"]] == [1, 2]
    for loss, recon, kl in zip(history["val/loss"], history["val/recon"], history["val/kl"]):
        assert loss["value"] == pytest.approx(recon["value"] + kl["value"], rel=1e-6)
    files = rest(server, "artifacts/list", {"run_id": run_id, "path": "images"}).get("files", [])
    pngs = [f["path"] for f in files if f["path"].endswith(".png")]
    assert any(p.startswith("images/reconstructions+step+2") for p in pngs)
    assert any(p.startswith("images/prior_samples+step+1") for p in pngs)
    top = {f["path"] for f in rest(server, "artifacts/list", {"run_id": run_id})["files"]}
    assert {"config.toml", "weights"} <= top


def test_logged_model_loads_back_over_http(server, http_run):
    run_id, experiment_id = http_run
    models = rest(server, "logged-models/search", {"experiment_ids": [experiment_id]}, "POST")["models"]
    names = {m["info"]["name"] for m in models if m["info"].get("source_run_id") == run_id}
    assert "model" in names
    mlflow.set_tracking_uri(server.url)
    try:
        vae = mlflow.pytorch.load_model(f"runs:/{run_id}/model")
    finally:
        mlflow.set_tracking_uri(None)
    images = vae.generate(3)
    assert images.shape == (3, 1, 12, 12) and float(images.min()) >= 0 and float(images.max()) <= 1


def test_browser_shows_the_runs(server, http_run, tmp_path):
    _, experiment_id = http_run
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "chromium is not installed (Debian package 'chromium'; .ci/run installs it)"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,900",
             "--virtual-time-budget=20000"]
    url = f"{server.url}/#/experiments/{experiment_id}/runs"
    dom = subprocess.run([browser, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, f"chromium could not start: {dom.stderr[-2000:]}"
    assert "over-http" in dom.stdout  # the run's name is on the rendered experiment page
    ARTIFACTS_OUT.mkdir(exist_ok=True)
    shot = ARTIFACTS_OUT / "mlflow-experiment-page.png"
    result = subprocess.run([browser, *flags, f"--screenshot={shot}", url], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and shot.exists(), f"screenshot failed: {result.stderr[-2000:]}"
    from PIL import Image

    pixels = Image.open(shot).convert("L")
    low, high = pixels.getextrema()
    assert pixels.size == (1400, 900) and high - low > 100  # not a blank page
