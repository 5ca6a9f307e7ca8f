"""Tighter estimates of log p(x) for a trained run (IWAE, AIS, BDMC), logged into that run.

What ``pyrovae evaluate`` does, callable from Python as :func:`evaluate_run`. Loads the run's VAE
(``config.toml`` + ``weights/final.pt``) and data, then computes

- ``<split>/nll_iwae``: minus the mean IWAE bound with K importance samples (default 5000,
  the literature's standard: Burda et al. 2016), over the whole split;
- with ``ais``: ``<split>/nll_ais``, minus the mean AIS estimate on the first ``ais_subset``
  datapoints, beside ``<split>/ais_subset/nll_elbo`` and ``.../nll_iwae`` on the same points,
  so the three compare like with like (ELBO >= IWAE >= AIS in nats of NLL, up to noise);
- with ``bdmc``: forward and reverse AIS on data simulated from the model, ``bdmc/gap``
  (upper minus lower bound on log p(x), nats per datapoint).

Settings go in as tags (``eval.iwae_k``, ``ais.steps``, ...); a histogram of the per-datapoint
estimates and the values themselves (``.npy``) go in as artifacts under ``evaluation/``. The
run's status is restored afterwards, also when the evaluation fails (its error is left in the
tag ``pyrovae.evaluate.error``).
"""

from __future__ import annotations

import math
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from pyrovae.data import load_data
from pyrovae.devices import select_device
from pyrovae.errors import UserError
from pyrovae.infer.elbo import make_elbo
from pyrovae.infer.estimators.ais import AISSettings, ais, bdmc
from pyrovae.infer.estimators.iwae import iwae
from pyrovae.infer.terms import evaluate
from pyrovae.run.restore import rebuild, run_config
from pyrovae.run.tracking import MlflowRun


@contextmanager
def reopened(run: MlflowRun) -> Iterator[MlflowRun]:
    """Reopen a run for logging; afterwards put back its status (FINISHED, say), error or not."""
    status = run.info().status
    final = status if status != "RUNNING" else "FINISHED"
    with run.lifecycle(system_metrics=False, final_status=final, error_status=final,
                       error_tag="pyrovae.evaluate.error"):
        yield run


def histogram_png(estimates: dict, path: Path, title: str) -> None:
    """Overlaid histograms of per-datapoint log p(x) estimates (one per estimator)."""
    from pyrovae.run.figures import _figure

    fig = _figure(6, 4)
    ax = fig.add_subplot()
    for label, values in estimates.items():
        ax.hist(values.cpu().numpy(), bins=60, alpha=0.5, density=True,
                label=f"{label} (mean {float(values.mean()):.2f})")
    ax.set(xlabel="log p(x) estimate per datapoint [nats]", ylabel="density")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.savefig(path)


def _bar(total: int, desc: str, disable: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, disable=disable, mininterval=0.5)


def evaluate_run(run_id: str, split: str = "test", iwae_k: int = 5000, subset: int = 0, batch_size: int = 100,
                 ais_run: bool = False, ais_settings: AISSettings = AISSettings(), ais_subset: int = 100,
                 bdmc_run: bool = False, seed: int = 0, device: str = "auto", progress: bool = True,
                 uri: str = "") -> dict[str, float]:
    """Estimate log p(x) of run ``run_id`` on ``split`` and log it into that run; return the metrics."""
    for name, value in (("iwae_k", iwae_k), ("subset", subset), ("ais_subset", ais_subset), ("batch_size", batch_size)):
        if value < (1 if name == "batch_size" else 0):
            raise UserError(f"--{name.replace('_', '-')} must be non-negative (batch size positive), got {value}")
    run = MlflowRun.existing(run_id, uri)
    torch_device = select_device(device)
    config = run_config(run)
    vae = rebuild(run, config, "final", torch_device)
    x = load_data(config["data"], torch_device).evaluation_data(split)
    if subset:
        x = x[:subset]
    step, quiet, settings = config["train"]["epochs"], not progress, ais_settings
    metrics, tags, estimates = {}, {"eval.split": split, "eval.seed": str(seed)}, {}

    with reopened(run), tempfile.TemporaryDirectory() as tmp:
        if iwae_k:
            tags.update({"eval.iwae_k": str(iwae_k), "eval.iwae_n": str(x.shape[0])})
            started = time.perf_counter()
            with _bar(x.shape[0], f"IWAE K={iwae_k}", quiet) as bar:
                log_px = iwae(vae, x, iwae_k, batch_size, seed=seed, progress=bar.update)
            metrics[f"{split}/nll_iwae"] = -float(log_px.mean())
            metrics[f"{split}/iwae_seconds"] = time.perf_counter() - started
            estimates[f"IWAE K={iwae_k}"] = log_px
        if ais_run:
            xs = x[:ais_subset]
            tags.update({**settings.as_tags(), "ais.subset": str(xs.shape[0])})
            started = time.perf_counter()
            with _bar(math.ceil(xs.shape[0] / batch_size) * settings.steps, "AIS", quiet) as bar:
                log_px_ais = ais(vae, xs, settings, batch_size, seed=seed, progress=bar.update)
            metrics[f"{split}/nll_ais"] = -float(log_px_ais.mean())
            metrics[f"{split}/ais_seconds"] = time.perf_counter() - started
            elbo = make_elbo(config["train"]["elbo"], config["train"]["num_particles"])
            metrics[f"{split}/ais_subset/nll_elbo"] = evaluate(vae, elbo, xs, batch_size, seed=seed)["loss"]
            if iwae_k:
                metrics[f"{split}/ais_subset/nll_iwae"] = -float(log_px[:xs.shape[0]].mean())
            estimates[f"AIS ({xs.shape[0]} points)"] = log_px_ais
        if bdmc_run:
            n = ais_subset or 100
            tags.update({**settings.as_tags(), "bdmc.n": str(n)})
            started = time.perf_counter()
            with _bar(2 * math.ceil(n / batch_size) * settings.steps, "BDMC", quiet) as bar:
                result = bdmc(vae, n, settings, batch_size, seed=seed, progress=bar.update)
            metrics.update({"bdmc/gap": result.gap, "bdmc/log_px_lower": float(result.lower.mean()),
                            "bdmc/log_px_upper": float(result.upper.mean()),
                            "bdmc/seconds": time.perf_counter() - started})
        run.set_tags(tags)
        run.log_metrics(metrics, step=step)
        if estimates:
            png = Path(tmp) / f"loglik_hist_{split}.png"
            histogram_png(estimates, png, f"run {run_id[:8]}, {split} split, per-datapoint log p(x)")
            run.log_artifact(png, "evaluation")
            for label, values in estimates.items():
                npy = Path(tmp) / f"loglik_{split}_{label.split(' ')[0].lower()}.npy"
                np.save(npy, values.cpu().numpy())
                run.log_artifact(npy, "evaluation")
    metrics["n"] = x.shape[0]
    return metrics
