"""``pyrovae sweep [CONFIG] --grid section.key=v1,v2 [--grid ...] [--set ...]``: every combination as
child runs under one parent run.

Grid values are read like ``--set`` values (TOML, else a string). Commas inside brackets or
quotes belong to the value: ``--grid 'model.guide.hidden=[256,256],[512]'`` is two values (quote
it, so the shell leaves the brackets alone). Grid values apply after ``--set``. Each child is
named after its combination as typed, e.g. ``train.lr=1e-3 model.latent_dim=10``, and logs the full
flat config; the parent logs ``variants.json``. The end prints ``pyrovae compare --parent``'s
table of the children.
"""

from __future__ import annotations

import argparse
import itertools

from pyrovae.cli.train import add_config_arguments
from pyrovae.errors import UserError

HELP = "train every combination of a grid as child runs under one parent run"


def split_values(text: str) -> list[str]:
    """``"1,[2,3],'a,b'"`` -> ``["1", "[2,3]", "'a,b'"]``: commas outside brackets and quotes split."""
    values, depth, quote, current = [], 0, None, ""
    for char in text:
        if quote:
            quote = None if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            values.append(current)
            current = ""
            continue
        current += char
    values.append(current)
    return [v.strip() for v in values]


def variants(grid: list[str]) -> dict[str, list[str]]:
    """``["a.b=1,2", "c.d=x,y"]`` -> ``{"a.b=1 c.d=x": ["a.b=1", "c.d=x"], ...}`` (every combination)."""
    axes = []
    for item in grid:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise UserError(f"--grid needs section.key=v1,v2,..., got '{item}'")
        axis = [f"{key.strip()}={v}" for v in split_values(values) if v]
        if len(set(axis)) < len(axis):
            raise UserError(f"--grid {item} lists a value twice; each value once, please")
        axes.append(axis)
    keys = [axis[0].partition("=")[0] for axis in axes]
    if len(set(keys)) < len(keys):
        raise UserError(f"--grid names a key twice ({', '.join(keys)}); put all its values in one --grid")
    return {" ".join(combo): list(combo) for combo in itertools.product(*axes)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "--grid",
        action="append",
        default=[],
        required=True,
        metavar="SECTION.KEY=V1,V2",
        help="values to sweep (repeatable: the product of all grids is trained)",
    )
    parser.add_argument("--name", default="sweep", help="the parent run's name")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from pyrovae.cli.compare import print_table
    from pyrovae.run import config as config_mod
    from pyrovae.run.study import train_study

    grid = variants(args.grid)
    print(f"sweep: {len(grid)} run{'s' if len(grid) != 1 else ''}: {', '.join(grid)}")
    result = train_study(args.config, args.set, grid, args.name, progress=not args.no_progress)
    print(f"parent run {result.parent_run_id}")
    store = config_mod.load(args.config, args.set)["mlflow"]["tracking_uri"]  # where the runs went
    print_table(parent=result.parent_run_id, uri=store)
    return 0
