"""``pyrovae sample RUN_ID [--n 64] [--out FILE.png] [--best]``: an image grid of a run's samples.

Draws ``n`` samples z ~ p(z) (seeded), decodes each to the mean of p(x|z) and writes one PNG
grid, ``ceil(sqrt(n))`` images per row. The VAE is rebuilt from the run's config and its final
weights (or, with ``--best``, its best checkpoint): no pickled code from the run is loaded.
"""

from __future__ import annotations

import argparse
import os

HELP = "write an image grid of samples from a run's logged model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", metavar="RUN_ID")
    parser.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    parser.add_argument("--out", default=None, help="PNG file (default samples-<RUN_ID>.png)")
    parser.add_argument("--best", action="store_true", help="use the best epoch's model (best_model)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prior draws (default 0)")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one download: no bar
    from pathlib import Path

    from PIL import Image

    from pyrovae.errors import UserError
    from pyrovae.run.figures import prior_sample_grid
    from pyrovae.run.restore import load_vae

    if args.n < 1:
        raise UserError(f"--n must be at least 1, got {args.n}")
    out = Path(args.out or f"samples-{args.run_id}.png")
    if out.suffix.lower() != ".png":
        raise UserError(f"--out must name a .png file, got '{out}'")
    vae = load_vae(args.run_id, weights="best" if args.best else "final")
    if len(vae.data_shape) != 3 or vae.data_shape[0] not in (1, 3):
        raise UserError(f"the model's data shape {vae.data_shape} is not an image (C, H, W); nothing to draw")
    try:
        Image.fromarray(prior_sample_grid(vae, args.n, args.seed)).save(out)
    except OSError as err:
        raise UserError(f"cannot write '{out}' ({err.strerror or err}); choose another --out") from None
    print(f"wrote {args.n} samples from the {'best' if args.best else 'final'} weights of run {args.run_id} to {out}")
    return 0
