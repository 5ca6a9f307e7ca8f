"""``pyrovae sample RUN_ID [--n 64] [--out FILE.png] [--best]``: an image grid from a run's logged model.

Draws ``n`` samples z ~ p(z) (seeded), decodes each to the mean of p(x|z) and writes one PNG
grid, ``ceil(sqrt(n))`` images per row. The model is the run's ``model`` (end of training) or,
with ``--best``, its ``best_model`` (the epoch with the lowest val/loss).
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

    import mlflow
    from PIL import Image

    from pyrovae.errors import UserError
    from pyrovae.figures import prior_sample_grid
    from pyrovae.logged_model import load_logged_vae
    from pyrovae.tracking import tracking_uri

    if args.n < 1:
        raise UserError(f"--n must be at least 1, got {args.n}")
    out = Path(args.out or f"samples-{args.run_id}.png")
    if out.suffix.lower() != ".png":
        raise UserError(f"--out must name a .png file, got '{out}'")
    mlflow.set_tracking_uri(tracking_uri())
    vae = load_logged_vae(args.run_id, best=args.best)
    if len(vae.data_shape) != 3 or vae.data_shape[0] not in (1, 3):
        raise UserError(f"the model's data shape {vae.data_shape} is not an image (C, H, W); nothing to draw")
    try:
        Image.fromarray(prior_sample_grid(vae, args.n, args.seed)).save(out)
    except OSError as err:
        raise UserError(f"cannot write '{out}' ({err.strerror or err}); choose another --out") from None
    print(f"wrote {args.n} samples from {'best_model' if args.best else 'model'} of run {args.run_id} to {out}")
    return 0
