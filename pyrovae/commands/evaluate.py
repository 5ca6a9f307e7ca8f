"""``pyrovae evaluate RUN_ID``: tighter estimates of log p(x) for a trained run, logged into that run.

Loads the run's VAE (``config.toml`` + ``weights/final.pt``) and data, then computes

- ``<split>/nll_iwae``: minus the mean IWAE bound with K importance samples (default 5000,
  the literature's standard: Burda et al. 2016), over the whole split;
- with ``--ais``: ``<split>/nll_ais``, minus the mean AIS estimate on the first ``--ais-subset``
  datapoints, beside ``<split>/ais_subset/nll_elbo`` and ``.../nll_iwae`` on the same points,
  so the three compare like with like (ELBO >= IWAE >= AIS in nats of NLL, up to noise);
- with ``--bdmc``: forward and reverse AIS on data simulated from the model, ``bdmc/gap``
  (upper minus lower bound on log p(x), nats per datapoint).

Settings go in as tags (``eval.iwae_k``, ``ais.steps``, ...: tags can be overwritten by a later
evaluation, params cannot); a histogram of the per-datapoint estimates and the values
themselves (``.npy``) go in as artifacts under ``evaluation/``. The run's status is restored
afterwards, also when the evaluation fails (its error is left in the tag
``pyrovae.evaluate.error``).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

HELP = "estimate log p(x) of a trained run (IWAE, AIS, BDMC) and log it into that run"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", help="the MLflow run id of a finished `pyrovae train`")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--iwae-k", type=int, default=5000, help="importance samples K (0 = skip IWAE)")
    parser.add_argument("--subset", type=int, default=0, help="only the first N datapoints of the split (0 = all)")
    parser.add_argument("--batch-size", type=int, default=100, help="datapoints per batch")
    parser.add_argument("--ais", action="store_true", help="also annealed importance sampling with HMC")
    parser.add_argument("--ais-steps", type=int, default=500, help="intermediate distributions T")
    parser.add_argument("--ais-chains", type=int, default=16, help="chains per datapoint C")
    parser.add_argument("--ais-leapfrog", type=int, default=10, help="leapfrog steps per HMC move")
    parser.add_argument("--ais-start", default="prior", choices=("prior", "posterior"),
                        help="anneal from p(z) (Wu et al. 2017) or from q(z|x)")
    parser.add_argument("--ais-subset", type=int, default=100, help="AIS on the first N datapoints")
    parser.add_argument("--bdmc", action="store_true", help="BDMC bounds on --ais-subset simulated datapoints")
    parser.add_argument("--seed", type=int, default=0, help="seed of every estimator's random numbers")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


@contextmanager
def reopened(run_id: str) -> Iterator[None]:
    """Reopen a run for logging; afterwards put back its status (FINISHED, say), error or not."""
    import mlflow

    status = mlflow.get_run(run_id).info.status
    mlflow.start_run(run_id=run_id)
    try:
        yield
    except BaseException as err:
        mlflow.set_tag("pyrovae.evaluate.error", f"{type(err).__name__}: {err}"[:5000])
        raise
    finally:
        mlflow.end_run(status if status != "RUNNING" else "FINISHED")


def histogram_png(estimates: dict, path: Path, title: str) -> None:
    """Overlaid histograms of per-datapoint log p(x) estimates (one per estimator)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for label, values in estimates.items():
        ax.hist(values.cpu().numpy(), bins=60, alpha=0.5, density=True,
                label=f"{label} (mean {float(values.mean()):.2f})")
    ax.set_xlabel("log p(x) estimate per datapoint [nats]")
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _bar(total: int, desc: str, disable: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, disable=disable, mininterval=0.5)


def run(args: argparse.Namespace) -> int:
    import mlflow
    import numpy as np

    from pyrovae import tracking
    from pyrovae.data import load_data
    from pyrovae.errors import UserError
    from pyrovae.estimators.ais import AISSettings, ais, bdmc
    from pyrovae.estimators.iwae import iwae
    from pyrovae.evaluate import evaluate
    from pyrovae.devices import select_device
    from pyrovae.trainer import make_elbo

    for name in ("iwae_k", "subset", "ais_subset", "batch_size"):
        if getattr(args, name) < (1 if name == "batch_size" else 0):
            raise UserError(f"--{name.replace('_', '-')} must be non-negative (batch size positive), "
                            f"got {getattr(args, name)}")
    settings = AISSettings(steps=args.ais_steps, chains=args.ais_chains, leapfrog_steps=args.ais_leapfrog,
                           start=args.ais_start)
    mlflow.set_tracking_uri(tracking.tracking_uri())
    try:
        mlflow.get_run(args.run_id)
    except Exception:
        raise UserError(f"no run '{args.run_id}' in the MLflow store {mlflow.get_tracking_uri()}; "
                        f"check the id (MLflow UI or `mlflow runs list`) and MLFLOW_TRACKING_URI") from None
    device = select_device(args.device)
    vae, config = tracking.load_vae(args.run_id, device=device)
    x = load_data(config["data"], device).split(args.split)
    if args.subset:
        x = x[:args.subset]
    step, split, quiet = config["train"]["epochs"], args.split, args.no_progress
    metrics, tags, estimates = {}, {"eval.split": split, "eval.seed": str(args.seed)}, {}

    with reopened(args.run_id), tempfile.TemporaryDirectory() as tmp:
        if args.iwae_k:
            tags.update({"eval.iwae_k": str(args.iwae_k), "eval.iwae_n": str(x.shape[0])})
            started = time.perf_counter()
            with _bar(x.shape[0], f"IWAE K={args.iwae_k}", quiet) as bar:
                log_px = iwae(vae, x, args.iwae_k, args.batch_size, seed=args.seed, progress=bar.update)
            metrics[f"{split}/nll_iwae"] = -float(log_px.mean())
            metrics[f"{split}/iwae_seconds"] = time.perf_counter() - started
            estimates[f"IWAE K={args.iwae_k}"] = log_px
        if args.ais:
            xs = x[:args.ais_subset]
            tags.update({**settings.as_tags(), "ais.subset": str(xs.shape[0])})
            started = time.perf_counter()
            with _bar(math.ceil(xs.shape[0] / args.batch_size) * settings.steps, "AIS", quiet) as bar:
                log_px_ais = ais(vae, xs, settings, args.batch_size, seed=args.seed, progress=bar.update)
            metrics[f"{split}/nll_ais"] = -float(log_px_ais.mean())
            metrics[f"{split}/ais_seconds"] = time.perf_counter() - started
            metrics[f"{split}/ais_subset/nll_elbo"] = evaluate(vae, make_elbo(config["train"]), xs,
                                                               args.batch_size, seed=args.seed)["loss"]
            if args.iwae_k:
                metrics[f"{split}/ais_subset/nll_iwae"] = -float(log_px[:xs.shape[0]].mean())
            estimates[f"AIS ({xs.shape[0]} points)"] = log_px_ais
        if args.bdmc:
            n = args.ais_subset or 100
            tags.update({**settings.as_tags(), "bdmc.n": str(n)})
            started = time.perf_counter()
            with _bar(2 * math.ceil(n / args.batch_size) * settings.steps, "BDMC", quiet) as bar:
                result = bdmc(vae, n, settings, args.batch_size, seed=args.seed, progress=bar.update)
            metrics.update({"bdmc/gap": result.gap, "bdmc/log_px_lower": float(result.lower.mean()),
                            "bdmc/log_px_upper": float(result.upper.mean()),
                            "bdmc/seconds": time.perf_counter() - started})
        mlflow.set_tags(tags)
        mlflow.log_metrics(metrics, step=step)
        if estimates:
            png = Path(tmp) / f"loglik_hist_{split}.png"
            histogram_png(estimates, png, f"run {args.run_id[:8]}, {split} split, per-datapoint log p(x)")
            mlflow.log_artifact(str(png), "evaluation")
            for label, values in estimates.items():
                name = label.split(" ")[0].lower()
                npy = Path(tmp) / f"loglik_{split}_{name}.npy"
                np.save(npy, values.cpu().numpy())
                mlflow.log_artifact(str(npy), "evaluation")
    print(f"run {args.run_id}: {split} split, {x.shape[0]} datapoints")
    for key in sorted(metrics):
        print(f"  {key:<28} {metrics[key]:.4f}")
    return 0
