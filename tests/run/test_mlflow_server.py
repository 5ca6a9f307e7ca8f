"""A real ``mlflow server`` on loopback, started by ``pyrovae ui`` on a tmp project's store: a run
logged into the sqlite store and one logged over HTTP, read back through the REST API, the
experiment page rendered by headless Chromium, and the server stopped by Ctrl-C."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import mlflow
import psutil
import pytest
from mlflow.tracking import MlflowClient

from pyrovae.cli import main
from pyrovae.run.server import free_port
from pyrovae.run.tracking import experiment_id
from tests.conftest import TINY, tracking_store

pytestmark = pytest.mark.slow  # starts servers / trains several runs

ARTIFACTS_OUT = Path(__file__).resolve().parents[2] / "test-artifacts"
SMALL = [*TINY, "train.epochs=2", "model.latent_dim=2"]  # two epochs: the histories have two points


@dataclass
class UI:
    url: str
    process: subprocess.Popen
    local_run_id: str  # logged straight into the sqlite store before the server started


def get(ui: UI, route: str, **query) -> bytes:
    url = f"{ui.url}/{route}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    with urllib.request.urlopen(url, timeout=30) as reply:
        return reply.read()


def rest(ui: UI, endpoint: str, payload: dict | None = None, **query) -> dict:
    """``/api/2.0/mlflow/<endpoint>``: GET with ``query``, or POST ``payload`` as JSON; the reply's JSON."""
    if payload is None:
        return json.loads(get(ui, f"api/2.0/mlflow/{endpoint}", **query))
    request = urllib.request.Request(
        f"{ui.url}/api/2.0/mlflow/{endpoint}",
        data=json.dumps(payload).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.loads(reply.read())


def train(*overrides: str) -> None:
    args = ["train", "--no-progress"]
    for item in [*SMALL, *overrides]:
        args += ["--set", item]
    assert main(args) == 0


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """``pyrovae ui`` in a project folder with one local run; stopped with SIGINT (Ctrl-C) at the end,
    which must end the mlflow server and its worker too."""
    project = tmp_path_factory.mktemp("project")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the default store, found
    with tracking_store(project) as uri:
        experiment_id(uri, "pyrovae")  # the store exists now, so `pyrovae ui` accepts it
        # a shell's background job (`nohup ... &`) inherits SIGINT ignored; Ctrl-C in a terminal is not
        process = subprocess.Popen(
            [sys.executable, "-m", "pyrovae", "ui", "--port", str(port)],
            cwd=project,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        train("mlflow.run_name=local-run", "train.epochs=1")  # while the server starts
        (local,) = mlflow.search_runs(experiment_names=["pyrovae"], output_format="list")
    assert uri == f"sqlite:///{project}/mlruns/mlflow.db"  # the default store of a run from `project`
    server = UI(f"http://127.0.0.1:{port}", process, local.info.run_id)
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, f"pyrovae ui exited: {process.stdout.read()}"
        try:
            if get(server, "health").strip() == b"OK":
                break
        except OSError:
            assert time.monotonic() < deadline, "the MLflow server did not answer within 120 s"
            time.sleep(0.5)
    family = [process, *psutil.Process(process.pid).children(recursive=True)]
    assert any("mlflow" in " ".join(p.cmdline()) and "server" in p.cmdline() for p in family[1:])
    yield server
    process.send_signal(signal.SIGINT)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 0, out
    experiment = MlflowClient(uri).get_experiment_by_name("pyrovae").experiment_id
    # the URL opens the runs table in the model-training view, not MLflow's GenAI overview
    assert f"MLflow UI for {uri}: {server.url}/#/experiments/{experiment}?workflowType=machine_learning" in out
    assert "MLflow UI stopped" in out
    _, alive = psutil.wait_procs(family[1:], timeout=10)
    assert not alive, f"left running after Ctrl-C: {[p.cmdline() for p in alive]}"


@pytest.fixture(scope="module")
def http_run(ui, tmp_path_factory):
    """A two-epoch run logged over HTTP by ``pyrovae train``: (run id, experiment id)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path_factory.mktemp("client"))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        try:
            train(f'mlflow.tracking_uri="{ui.url}"', "mlflow.experiment=served", "mlflow.run_name=over-http")
        finally:
            mlflow.set_tracking_uri(None)
    experiment = rest(ui, "experiments/get-by-name", experiment_name="served")["experiment"]
    (run,) = rest(ui, "runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
    return run["info"]["run_id"], experiment["experiment_id"]


def test_run_logged_over_http_reads_back_through_rest(ui, http_run):
    run_id, _ = http_run
    run = rest(ui, "runs/get", run_id=run_id)["run"]
    assert run["info"]["status"] == "FINISHED" and run["info"]["run_name"] == "over-http"
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["model.latent_dim"] == "2" and params["train.epochs"] == "2"
    assert params["data.name"] == "synthetic" and params["model.guide.hidden"] == "[16]"
    history = {
        key: rest(ui, "metrics/get-history", run_id=run_id, metric_key=key)["metrics"]
        for key in ("val/loss", "val/recon", "val/kl", "train/loss")
    }
    for key, points in history.items():
        assert [m["step"] for m in points] == [1, 2], key  # one value per epoch
    for loss, recon, kl in zip(history["val/loss"], history["val/recon"], history["val/kl"]):
        assert loss["value"] == pytest.approx(recon["value"] + kl["value"], rel=1e-6)
    images = [f["path"] for f in rest(ui, "artifacts/list", run_id=run_id, path="images")["files"]]
    for key in ("reconstructions", "prior_samples", "latent", "loss_curves"):
        for epoch in (1, 2):
            assert any(p.startswith(f"images/{key}+step+{epoch}+") and p.endswith(".png") for p in images)
    top = {f["path"] for f in rest(ui, "artifacts/list", run_id=run_id)["files"]}
    assert {"config.toml", "weights", "checkpoints"} <= top
    png = next(p for p in images if p.endswith(".png"))
    assert get(ui, "get-artifact", run_id=run_id, path=png)[:4] == b"\x89PNG"


def test_logged_model_loads_back_over_http(ui, http_run):
    run_id, experiment_id = http_run
    models = rest(ui, "logged-models/search", {"experiment_ids": [experiment_id]})["models"]
    assert "model" in {m["info"]["name"] for m in models if m["info"].get("source_run_id") == run_id}
    mlflow.set_tracking_uri(ui.url)
    try:
        vae = mlflow.pytorch.load_model(f"runs:/{run_id}/model")
    finally:
        mlflow.set_tracking_uri(None)
    images = vae.generate(3)
    assert images.shape == (3, 1, 12, 12) and float(images.min()) >= 0 and float(images.max()) <= 1


def test_ui_serves_the_artifacts_of_runs_logged_into_the_local_store(ui):
    """What the run page's artifact browser asks for: the files under mlruns/artifacts, read from disk."""
    listing = json.loads(get(ui, "ajax-api/2.0/mlflow/artifacts/list", run_id=ui.local_run_id, path="images"))
    assert listing["root_uri"].startswith("file://") and "/mlruns/artifacts/pyrovae/" in listing["root_uri"]
    assert any(f["path"].startswith("images/prior_samples+step+1+") for f in listing["files"])
    config = get(ui, "get-artifact", run_id=ui.local_run_id, path="config.toml").decode()
    assert "[model]" in config and 'run_name = "local-run"' in config


def test_compare_reads_the_server(ui, http_run, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", ui.url)
    assert main(["compare", "--experiment", "served"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "1 run in experiment 'served', best first by val/loss (lower is better)"
    assert lines[3].split()[:2] == [http_run[0][:8], "over-http"]
    assert lines[-1] == f"store: {ui.url}"


def test_browser_shows_the_runs(ui, http_run, tmp_path):
    _, experiment_id = http_run
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        assert os.environ.get("PYROVAE_REQUIRE_BROWSER") != "1", (
            "PYROVAE_REQUIRE_BROWSER=1 but chromium is not installed (Debian package 'chromium')"
        )
        pytest.skip(
            "no chromium on this machine: the rendered MLflow page is not checked "
            "(.ci/run installs it and sets PYROVAE_REQUIRE_BROWSER=1)"
        )
    ARTIFACTS_OUT.mkdir(exist_ok=True)
    shot = ARTIFACTS_OUT / "mlflow-experiment-page.png"
    shot.unlink(missing_ok=True)
    url = f"{ui.url}/#/experiments/{experiment_id}/runs"
    # one launch renders the page, prints its DOM and saves the screenshot
    result = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1400,900",
            "--virtual-time-budget=15000",
            f"--screenshot={shot}",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and shot.exists(), f"chromium failed: {result.stderr[-2000:]}"
    assert "over-http" in result.stdout, "the run's name is not on the rendered experiment page"
    from PIL import Image

    pixels = Image.open(shot).convert("L")
    low, high = pixels.getextrema()
    assert pixels.size == (1400, 900) and high - low > 100  # not a blank page
    assert len(pixels.getcolors(1 << 16)) > 50  # text and widgets, not a flat error page


def test_ui_refuses_a_folder_without_a_store_or_a_server_uri(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["ui"]) == 2
    assert "no MLflow store at" in capsys.readouterr().err and not (tmp_path / "mlruns").exists()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert main(["ui"]) == 2
    assert "points at a server already: open http://127.0.0.1:5000" in capsys.readouterr().err
    assert main(["ui", "--host", "0.0.0.0"]) == 2  # reachable by others, no authentication: opt in
    assert "add --allow-remote" in capsys.readouterr().err
    for port in ("65536", "-1"):  # the socket would raise OverflowError: a traceback, not a line
        assert main(["ui", "--port", port]) == 2
        assert f"--port must be between 1 and 65535 (or 0 for a free one), got {port}" in capsys.readouterr().err
