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

    def __init__(self, backend_uri: str, artifacts_dir: str | Path, host: str = "127.0.0.1",
                 port: int | None = None, log_path: str | Path | None = None):
        self.backend_uri = backend_uri
        self.artifacts_dir = Path(artifacts_dir)
        self.host, self.port = host, port or free_port(host)
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        mlflow = Path(sys.executable).with_name("mlflow")
        launcher = [str(mlflow)] if mlflow.exists() else [sys.executable, "-m", "mlflow"]
        return [*launcher, "server", "--backend-store-uri", self.backend_uri,
                "--serve-artifacts", "--artifacts-destination", self.artifacts_dir.resolve().as_uri(),
                "--host", self.host, "--port", str(self.port), "--workers", "1"]

    def start(self, timeout: float = 90.0) -> "MlflowServer":
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        env.pop("MLFLOW_TRACKING_URI", None)
        out = open(self.log_path, "w") if self.log_path else subprocess.DEVNULL
        # its own process group, so stopping it also stops the workers it forks
        self.process = subprocess.Popen(self.command(), env=env, stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise UserError(f"mlflow server exited with status {self.process.returncode} before it "
                                f"answered{f'; see {self.log_path}' if self.log_path else ''}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as reply:
                    if reply.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise UserError(f"mlflow server did not answer on {self.url} within {timeout:.0f} s")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        except ProcessLookupError:
            pass

    def __enter__(self) -> "MlflowServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
