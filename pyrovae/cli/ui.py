"""``pyrovae ui [--port N] [--host 127.0.0.1]``: the MLflow UI on this project's store, until Ctrl-C.

The store is the one training writes to: ``$MLFLOW_TRACKING_URI`` if it names a database,
else ``./mlruns/mlflow.db``. Runs logged there keep their artifacts in files beside the
database (``mlruns/artifacts``), which the server reads; runs logged through it over HTTP
put theirs in the same folder. One worker, MLflow's job runner off; Ctrl-C or SIGTERM stop
the server and its worker.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pyrovae.errors import UserError

HELP = "start the MLflow UI on the project's store (127.0.0.1, a free port) and print its URL"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: only this machine can connect)"
    )
    parser.add_argument("--port", type=int, default=0, help="port (0: a free one)")
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="needed with a --host other machines reach: the server has no authentication",
    )
    parser.add_argument("--experiment", default="pyrovae", help="the experiment whose runs table the URL opens")


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def run(args: argparse.Namespace) -> int:
    from pyrovae.run.compare import existing_store
    from pyrovae.run.server import MlflowServer, runs_table_url
    from pyrovae.run.tracking import DEFAULT_STORE, tracking_uri

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be between 1 and 65535 (or 0 for a free one), got {args.port}")
    if args.host not in LOOPBACK and not args.allow_remote:
        raise UserError(
            f"--host {args.host} lets other machines read and change every run: the MLflow server "
            f"has no authentication; add --allow-remote if that is what you want, or serve it "
            f"with MLflow's own authentication (mlflow server --app-name basic-auth)"
        )
    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        raise UserError(f"MLFLOW_TRACKING_URI points at a server already: open {uri} in a browser")
    from pyrovae.run.lease import end_stale_runs

    end_stale_runs(existing_store(uri))  # the UI shows a dead job KILLED, not training
    db = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else None
    artifacts = Path(db).parent / "artifacts" if db else Path(DEFAULT_STORE) / "artifacts"
    server = MlflowServer(uri, artifacts, host=args.host, port=args.port or None)
    try:
        with server:  # SIGTERM too stops it: pyrovae.cli.main
            print(
                f"MLflow UI for {uri}: {runs_table_url(server.url, uri, args.experiment)}  (Ctrl-C stops it)",
                flush=True,
            )
            while server.process.poll() is None:
                time.sleep(0.5)
            raise UserError(
                f"the MLflow server stopped by itself (status {server.process.returncode}): {server.last_log_line()}"
            )
    except KeyboardInterrupt:
        print("MLflow UI stopped", flush=True)
    return 0
