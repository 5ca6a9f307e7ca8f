"""Train priors and guides of the zoo on the same data and budget, as children of one MLflow run.

Each ``experiments/zoo/<name>.toml`` holds one ``[model.prior]`` or ``[model.guide]`` section;
a variant is the base config with that section swapped in (the other component stays the
baseline's), so every child differs from the baseline in exactly one component. Run from the
repository root::

    PYROVAE_DATA_DIR=../shared/data python experiments/zoo_study.py \\
        --set train.epochs=2 --set data.subset=10000

and open the parent run in the MLflow UI: the children sit under it, with ``val/loss``
(negative ELBO at beta = 1), ``val/recon``, ``val/kl`` and ``train/seconds`` side by side.
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

from pyrovae.cli.signals import run_script
from pyrovae.run.study import train_study

HERE = Path(__file__).parent
DEFAULT_VARIANTS = [
    "standard_normal",
    "mixture_of_gaussians",
    "vamp_prior",
    "flow",
    "low_rank_normal",
    "iaf",
    "neural_spline",
]


def overrides(path: Path) -> list[str]:
    """A zoo file's ``[model]`` keys and sections as ``--set`` overrides, e.g. ``model.name="hvae"``,
    ``model.guide.steps=2``."""
    out = []
    for kind, section in tomllib.loads(path.read_text())["model"].items():
        for key, value in section.items() if isinstance(section, dict) else [(None, section)]:
            name = f"model.{kind}" if key is None else f"model.{kind}.{key}"
            out.append(f"{name}={value!r}".replace("'", '"'))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=str(HERE / "mnist.toml"), help="base config")
    parser.add_argument("--set", action="append", default=[], help="override for every run")
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, help="names of zoo/*.toml")
    parser.add_argument("--name", default="zoo-study", help="parent run name")
    args = parser.parse_args(argv)
    variants = {name: overrides(HERE / "zoo" / f"{name}.toml") for name in args.variants}
    result = train_study(args.base, ["mlflow.experiment=mnist-zoo", *args.set], variants, args.name, progress=False)
    print(f"parent run {result.parent_run_id}")
    print(f"{'variant':<22}{'val/loss':>10}{'val/recon':>11}{'val/kl':>9}{'s/epoch':>9}")
    for name, child in result.children.items():
        m = child.metrics
        print(f"{name:<22}{m['val/loss']:>10.2f}{m['val/recon']:>11.2f}{m['val/kl']:>9.2f}{m['train/seconds']:>9.1f}")


if __name__ == "__main__":
    run_script(main)  # a `kill` ends the study's runs KILLED, not RUNNING
