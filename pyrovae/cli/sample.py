"""``pyrovae sample RUN_ID [--n 64] [--out FILE.png] [--best] [--labels 0,1,...]``: an image grid of a run's samples.

Draws ``n`` samples of the latent sites from the model itself (seeded), takes the mean of the data
site at each and writes one PNG grid, ``ceil(sqrt(n))`` images per row. A conditional model (one
whose ``model`` needs labels ``y``) samples p(x | y): ``--labels`` gives the labels, cycled over the
``n`` samples. The model is rebuilt from the run's config and its final weights (or, with
``--best``, its best checkpoint): no pickled code from the run is loaded.
"""

from __future__ import annotations

import argparse
import os

HELP = "write an image grid of samples from a run's model (rebuilt from its config and weights)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", metavar="RUN_ID")
    parser.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    parser.add_argument("--out", default=None, help="PNG file (default samples-<RUN_ID>.png)")
    parser.add_argument("--best", action="store_true", help="use the best epoch's model (best_model)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prior draws (default 0)")
    parser.add_argument(
        "--labels",
        default="",
        help="a conditional model's labels, comma-separated, cycled over the samples (e.g. 0,1,2)",
    )


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
    labels = sample_labels(vae, args.labels, args.n)
    try:
        Image.fromarray(prior_sample_grid(vae, args.n, args.seed, vae.data_shape, labels)).save(out)
    except OSError as err:
        raise UserError(f"cannot write '{out}' ({err.strerror or err}); choose another --out") from None
    given = f" with labels {args.labels}" if labels is not None else ""
    print(
        f"wrote {args.n} samples{given} from the {'best' if args.best else 'final'} weights of run "
        f"{args.run_id} to {out}"
    )
    return 0


def sample_labels(model, text: str, n: int):
    """The ``--labels`` of a conditional model, cycled to ``n`` (None for a model without labels)."""
    import torch

    from pyrovae.errors import UserError
    from pyrovae.infer.traces import needs_labels

    if not needs_labels(model):
        if text:
            raise UserError(f"--labels is for a conditional model; {type(model).__name__} samples without labels")
        return None
    classes = getattr(model, "num_classes", None)
    if not text:
        raise UserError(
            f"{type(model).__name__} is conditional: give the labels to sample, e.g. --labels 0,1,2"
            + (f" (classes 0 .. {classes - 1})" if classes else "")
        )
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"--labels must be comma-separated integers, got '{text}'") from None
    bad = [v for v in values if v < 0 or (classes is not None and v >= classes)]
    if bad:
        raise UserError(f"label {bad[0]} is out of range: the model has classes 0 .. {(classes or 1) - 1}")
    device = next(model.parameters()).device
    return torch.tensor(values, device=device).repeat(-(-n // len(values)))[:n]
