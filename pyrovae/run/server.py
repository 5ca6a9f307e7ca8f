"""A real ``mlflow server`` process on loopback, for ``pyrovae ui`` and for the tests.

One worker, job execution off (pyrovae needs no MLflow job runner, and it would start extra
processes), bound to 127.0.0.1 unless told otherwise, on a free port. Artifacts are served by
the server (``--serve-artifacts``) from a local folder, so runs logged over HTTP upload their
images and models through it, and runs logged straight into the sqlite store (with
``file://`` artifact locations) are read from disk.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from pyrovae.errors import UserError


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class MlflowServer:
    """``with MlflowServer(backend_uri, artifacts_dir) as server: server.url`` -- started and stopped."""

    def __init__(
        self,
        backend_uri: str,
        artifacts_dir: str | Path,
        host: str = "127.0.0.1",
        port: int | None = None,
        log_path: str | Path | None = None,
    ):
        self.backend_uri = backend_uri
        self.artifacts_dir = Path(artifacts_dir)
        self.host, self.port = host, port or free_port(host)
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        mlflow = Path(sys.executable).with_name("mlflow")
        launcher = [str(mlflow)] if mlflow.exists() else [sys.executable, "-m", "mlflow"]
        return [
            *launcher,
            "server",
            "--backend-store-uri",
            self.backend_uri,
            "--serve-artifacts",
            "--artifacts-destination",
            self.artifacts_dir.resolve().as_uri(),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]

    def start(self, timeout: float = 90.0) -> MlflowServer:
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        with socket.socket() as sock:  # a taken port would only show as a dead server later
            try:
                sock.bind((self.host, self.port))
            except OSError as err:
                raise UserError(
                    f"cannot listen on {self.host}:{self.port} ({err.strerror}); "
                    f"pick another --port, or leave it out for a free one"
                ) from None
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        env.pop("MLFLOW_TRACKING_URI", None)
        self._log = open(self.log_path, "w+") if self.log_path else tempfile.TemporaryFile("w+")
        # its own process group, so stopping it also stops the uvicorn worker it forks
        self.process = subprocess.Popen(
            self.command(), env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:  # stopped on any way out but a healthy start (Ctrl-C while waiting included)
            self._wait_until_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise UserError(
                    f"mlflow server exited before it answered (status {self.process.returncode}: "
                    f"{self.last_log_line()})"
                )
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise UserError(f"mlflow server did not answer on {self.url} within {timeout:.0f} s ({self.last_log_line()})")

    def last_log_line(self) -> str:
        """The server's last non-empty output line (its error, when it failed to start)."""
        self._log.flush()
        self._log.seek(0)
        lines = [line.strip() for line in self._log.read().splitlines() if line.strip()]
        return lines[-1][:300] if lines else "it printed nothing"

    def stop(self) -> None:
        """SIGTERM to the server's process group (server and worker); SIGKILL what lingers."""
        if self.process is None:
            return
        self._signal_group(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
            self.process.wait()
        for _ in range(40):  # the worker may outlive the server by a moment
            if not self._signal_group(0):
                break
            time.sleep(0.25)
        else:
            self._signal_group(signal.SIGKILL)
        if self._log is not None and not self._log.closed:
            self._log.close()

    def _signal_group(self, signum: int) -> bool:
        """Send ``signum`` to the server's process group; False when no process of it is left."""
        try:
            os.killpg(self.process.pid, signum)
            return True
        except ProcessLookupError:
            return False

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def runs_table_url(base: str, uri: str, experiment: str) -> str:
    """The experiment's runs table in MLflow's model-training view (MLflow 3.17 opens on its GenAI
    overview otherwise), or the server's front page when the experiment does not exist yet."""
    from pyrovae.run.tracking import client

    found = client(uri).get_experiment_by_name(experiment)
    if found is None:
        return base
    return f"{base}/#/experiments/{found.experiment_id}?workflowType=machine_learning"
