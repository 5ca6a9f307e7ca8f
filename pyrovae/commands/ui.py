"""``pyrovae ui [--port N] [--host 127.0.0.1]``: the MLflow UI on this project's store, until Ctrl-C."""

from __future__ import annotations

import argparse
import time

from pyrovae.errors import UserError

HELP = "start the MLflow UI on the project's store (127.0.0.1, a free port) and print its URL"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to bind (default 127.0.0.1: only this machine can connect)")
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")


def run(args: argparse.Namespace) -> int:
    from pyrovae.server import MlflowServer
    from pyrovae.tracking import DEFAULT_STORE, tracking_uri

    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        raise UserError(f"MLFLOW_TRACKING_URI points at a server already: open {uri} in a browser")
    artifacts = (uri.removeprefix("sqlite:///").rsplit("/", 1)[0] + "/artifacts"
                 if uri.startswith("sqlite:///") else f"{DEFAULT_STORE}/artifacts")
    server = MlflowServer(uri, artifacts, host=args.host, port=args.port or None)
    with server:
        print(f"MLflow UI for {uri}: {server.url}  (Ctrl-C stops it)", flush=True)
        try:
            while server.process.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            print("stopping the MLflow UI")
    return 0
