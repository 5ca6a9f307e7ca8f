"""``pyrovae train [CONFIG.toml] [--set section.key=value ...]``: train one VAE into one MLflow run."""

from __future__ import annotations

import argparse

HELP = "train a VAE and log the run to MLflow"


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The config file and ``--set`` overrides, shared by every command that builds a config."""
    parser.add_argument("config", nargs="?", help="TOML config (default: the MNIST baseline)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value (repeatable), e.g. --set train.epochs=2",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def print_result(result) -> None:
    """The run id, its final val/ and test/ metrics, and how to look at it (rank 0 of torchrun's only)."""
    if not result.run_id:
        return
    print(f"run {result.run_id} finished")
    for key in sorted(result.metrics):
        if key.startswith(("val/", "test/")) and not key.endswith("seconds"):
            print(f"  {key:<14} {result.metrics[key]:.4f}")
    print(f"tracking store: {result.tracking_uri}")
    if result.tracking_uri.startswith(("http://", "https://")):
        print(f"see it in the MLflow UI: open {result.tracking_uri} in a browser")
    else:
        print(f"see it in the MLflow UI:  pyrovae ui   (or: mlflow ui --backend-store-uri {result.tracking_uri})")


def run(args: argparse.Namespace) -> int:
    from pyrovae.run import config as config_mod
    from pyrovae.run.pipeline import train_config

    config = config_mod.load(args.config, args.set)
    print_result(train_config(config, progress=not args.no_progress))
    return 0
