"""Tighter estimates of log p(x) for a trained run (IWAE, AIS, BDMC), each kept as its own record.

What ``pyrovae evaluate`` does, callable from Python as :func:`evaluate_run`. Every evaluation
is a *child run* of the trained run (tag ``pyrovae.kind = evaluation``, named after its split and
weights), holding its settings as params -- ``eval.of``, ``eval.split``, ``eval.n``,
``eval.iwae_k``, ``eval.seed``, ``eval.weights`` (final or best) and ``eval.weights_epoch``,
``ais.*`` -- and its numbers as metrics at the step of the weights' epoch:

- always, on every point: ``<split>/nll_elbo`` (-ELBO at beta = 1 with the run's own ELBO
  object, and ``_se``), ``<split>/kl`` and ``<split>/kl/<site>`` for each latent site, and
  ``<split>/active_units`` (Burda et al.'s Cov_x E_q[z_u] > 0.01; per site as
  ``<split>/active_units/<site>`` when the model has several);
- the cost of each estimator beside its number (:mod:`pyrovae.run.costs`): ``<split>/elbo_*``,
  ``<split>/iwae_*``, ``<split>/ais_*`` with suffixes ``seconds``, ``seconds_per_point`` and
  ``peak_mib`` (peak memory above the level at the start: CUDA allocator counters, or the
  sampled RSS on CPU);
- ``<split>/nll_iwae``: minus the mean IWAE bound with K importance samples (default 5000, the
  literature's standard: Burda et al. 2016), with its standard error ``<split>/nll_iwae_se``;
- with ``ais``: ``<split>/nll_ais`` on the first ``ais_subset`` datapoints, beside
  ``<split>/ais_subset/nll_elbo`` and ``.../nll_iwae`` on the same points (each with ``_se``),
  and ``<split>/ais_subset/ais_minus_iwae`` (paired mean difference of the NLLs, with ``_se``):
  AIS is only a better estimate once it converges, so when its NLL lies more than 2 standard
  errors *above* IWAE's on the same points, a warning says so (Wu et al. 2017);
- with ``bdmc``: forward and reverse AIS on data simulated from the model, ``bdmc/gap``.

Every estimator reads the model's traces, so this holds for any model a run logged; a model with
labels is scored as its interface says (log p(x|y) for a conditional model, log p(x) with the label
summed out for a semi-supervised one), and AIS/BDMC refuse a discrete latent site in one line
before anything runs. So evaluations with other settings never overwrite each other, and the
trained run itself is never reopened. The per-datapoint estimates (``.npy``) and their histogram are artifacts of the
evaluation run under ``evaluation/``.
"""

from __future__ import annotations

import math
import tempfile
import time
import warnings as python_warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pyrovae.data import load_data
from pyrovae.devices import select_device
from pyrovae.errors import UserError
from pyrovae.infer.elbo import validation_elbo
from pyrovae.infer.estimators.ais import AISSettings, ais, bdmc, check_ais
from pyrovae.infer.estimators.diagnostics import active_units_per_site
from pyrovae.infer.estimators.iwae import iwae
from pyrovae.infer.terms import datapoint_terms
from pyrovae.infer.traces import evaluation_labels
from pyrovae.run import lease
from pyrovae.run.budget import Budget
from pyrovae.run.costs import Cost, measure
from pyrovae.run.ranking import describe
from pyrovae.run.restore import rebuild, run_config
from pyrovae.run.tracking import MlflowRun


def histogram_png(estimates: dict, path: Path, title: str) -> None:
    """Overlaid histograms of per-datapoint log p(x) estimates (one per estimator)."""
    from pyrovae.run.figures import figure

    fig = figure(6, 4)
    ax = fig.add_subplot()
    for label, values in estimates.items():
        ax.hist(
            values.cpu().numpy(), bins=60, alpha=0.5, density=True, label=f"{label} (mean {float(values.mean()):.2f})"
        )
    ax.set(xlabel="log p(x) estimate per datapoint [nats]", ylabel="density")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.savefig(path)


def _bar(total: int, desc: str, disable: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=disable, mininterval=0.5)


@dataclass
class Evaluation:
    """One evaluation: its own run id, the run it scored, how many points, and its numbers."""

    run_id: str
    of: str
    n: int
    metrics: dict[str, float]
    warnings: list[str]


def mean_and_se(values: torch.Tensor | Sequence[float]) -> tuple[float, float]:
    """The mean of per-datapoint (or per-seed) numbers and its standard error, ``std / sqrt(n)``
    with the unbiased ``std``; ``nan`` for one number."""
    values = torch.as_tensor(values, dtype=torch.float64)
    se = float(values.std() / math.sqrt(values.numel())) if values.numel() > 1 else float("nan")
    return float(values.mean()), se


def ais_check(log_px_ais: torch.Tensor, log_px_iwae: torch.Tensor, settings: AISSettings) -> tuple[dict, list[str]]:
    """Paired comparison of AIS and IWAE on the same points; a warning when AIS lost to IWAE."""
    gap, se = mean_and_se(log_px_iwae - log_px_ais)  # NLL(AIS) - NLL(IWAE): negative once AIS converged
    metrics = {"ais_minus_iwae": gap, "ais_minus_iwae_se": se}
    if gap > 2 * se:
        return metrics, [
            f"AIS's NLL is {gap:.3f} +- {se:.3f} nats above IWAE's on the same points: AIS has not "
            f"converged; raise --ais-steps (now {settings.steps}) or --ais-chains (now {settings.chains}), "
            f"or start from the posterior (--ais-start posterior)"
        ]
    return metrics, []


def evaluate_run(
    run_id: str,
    split: str = "test",
    iwae_k: int = 5000,
    subset: int = 0,
    batch_size: int = 100,
    ais_run: bool = False,
    ais_settings: AISSettings = AISSettings(),
    ais_subset: int = 100,
    bdmc_run: bool = False,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
    uri: str = "",
    weights: str = "final",
    time_limit: float | None = None,
    tracking_uri: str = "",
) -> Evaluation:
    """Estimate log p(x) of run ``run_id`` (any unique prefix of 8+ characters) on ``split`` with its
    ``final`` or ``best`` weights, and keep it as a new evaluation run under that run, named after its
    settings. Each long pass says its expected duration first; ``time_limit`` (seconds) stops the
    passes and keeps the estimates over the datapoints done (:mod:`pyrovae.run.budget`).
    ``tracking_uri``: the store, as everywhere (``uri`` is its old name)."""
    if uri:
        renamed = "evaluate_run(uri=...) is now evaluate_run(tracking_uri=...)"
        python_warnings.warn(renamed, DeprecationWarning, stacklevel=2)
    for name, value in (("iwae_k", iwae_k), ("subset", subset), ("ais_subset", ais_subset), ("batch_size", batch_size)):
        if value < (1 if name == "batch_size" else 0):
            raise UserError(f"--{name.replace('_', '-')} must be non-negative (batch size positive), got {value}")
    if time_limit is not None and not time_limit > 0:
        raise UserError(f"--time-limit must be a positive number of seconds, got {time_limit}")
    run = MlflowRun.existing(run_id, tracking_uri or uri)
    lease.end_stale(run.client, run.client.get_run(run.run_id))
    torch_device = select_device(device)
    config = run_config(run)
    vae = rebuild(run, config, weights, torch_device)
    epoch = weights_epoch(run, weights)
    data = load_data(config["data"], torch_device)
    x, y = data.evaluation_data(split), evaluation_labels(vae, data.labels(split))
    if subset:
        x, y = x[:subset], None if y is None else y[:subset]
    if ais_run or bdmc_run:
        check_ais(vae, x, y)  # a discrete latent: one line now, not after the IWAE pass
    quiet, settings = not progress, ais_settings
    params = {
        "eval.of": run.run_id,
        "eval.split": split,
        "eval.n": x.shape[0],
        "eval.seed": seed,
        "eval.weights": weights,
        "eval.weights_epoch": epoch,
        "eval.iwae_k": iwae_k,
    }
    metrics, estimates, warnings, truncated = {}, {}, [], []
    deadline = None if time_limit is None else time.monotonic() + time_limit
    if ais_run:
        params.update({**settings.as_tags(), "ais.subset": min(ais_subset, x.shape[0])})
    name = f"evaluation {describe(params)}"
    child = MlflowRun.create_in(run, name, tags={"pyrovae.kind": "evaluation"})
    with child.lifecycle(system_metrics=False), tempfile.TemporaryDirectory() as tmp:
        elbo = validation_elbo(config["train"]["elbo"], config["train"]["num_particles"])  # whatever trained
        with measure(torch_device) as cost:
            terms = datapoint_terms(vae, elbo, x, batch_size, seed=seed, y=y)
        metrics[f"{split}/nll_elbo"], metrics[f"{split}/nll_elbo_se"] = mean_and_se(terms["loss"])
        estimates["ELBO"] = -terms["loss"]
        metrics.update({f"{split}/{k}": mean_and_se(v)[0] for k, v in terms.items() if k.startswith("kl")})
        metrics.update(cost_metrics(f"{split}/elbo", cost, x.shape[0]))
        units = active_units_per_site(vae, x, y=y)
        metrics[f"{split}/active_units"] = sum(units.values())
        if len(units) > 1:
            metrics.update({f"{split}/active_units/{site}": n for site, n in units.items()})
        if iwae_k:
            with _bar(x.shape[0], f"IWAE K={iwae_k}", quiet) as bar, measure(torch_device) as cost:
                budget = Budget(f"IWAE K={iwae_k}", x.shape[0], x.shape[0], bar, deadline)
                log_px = iwae(vae, x, iwae_k, batch_size, seed=seed, progress=budget.progress, y=y, stop=budget.stop)
            if log_px.shape[0] < x.shape[0]:
                params["eval.iwae_n"] = log_px.shape[0]
                truncated.append(f"IWAE on {log_px.shape[0]} of {x.shape[0]} datapoints")
            metrics[f"{split}/nll_iwae"], metrics[f"{split}/nll_iwae_se"] = mean_and_se(-log_px)
            metrics.update(cost_metrics(f"{split}/iwae", cost, x.shape[0]))
            estimates[f"IWAE K={iwae_k}"] = log_px
        if ais_run:
            xs = x[:ais_subset]
            steps = math.ceil(xs.shape[0] / batch_size) * settings.steps
            with _bar(steps, "AIS", quiet) as bar, measure(torch_device) as cost:
                budget = Budget(f"AIS T={settings.steps}", steps, xs.shape[0], bar, deadline)
                labels = None if y is None else y[:ais_subset]
                log_px_ais = ais(vae, xs, settings, batch_size, seed, budget.progress, labels, budget.stop)
            if log_px_ais.shape[0] < xs.shape[0]:
                truncated.append(f"AIS on {log_px_ais.shape[0]} of {xs.shape[0]} datapoints")
                xs = xs[: log_px_ais.shape[0]]
                params["ais.subset"] = xs.shape[0]
            metrics[f"{split}/nll_ais"], metrics[f"{split}/nll_ais_se"] = mean_and_se(-log_px_ais)
            metrics.update(cost_metrics(f"{split}/ais", cost, xs.shape[0]))
            loss = terms["loss"][: xs.shape[0]]
            metrics[f"{split}/ais_subset/nll_elbo"], metrics[f"{split}/ais_subset/nll_elbo_se"] = mean_and_se(loss)
            if iwae_k:
                common = min(log_px.shape[0], log_px_ais.shape[0])  # a time limit may have stopped IWAE sooner
                same = log_px[:common]
                metrics[f"{split}/ais_subset/nll_iwae"], metrics[f"{split}/ais_subset/nll_iwae_se"] = mean_and_se(-same)
                check, warnings = ais_check(log_px_ais[:common], same, settings)
                metrics.update({f"{split}/ais_subset/{k}": v for k, v in check.items()})
            estimates[f"AIS ({xs.shape[0]} points)"] = log_px_ais
        if bdmc_run:
            n = ais_subset or 100
            params.update({**settings.as_tags(), "bdmc.n": n})
            with (
                _bar(2 * math.ceil(n / batch_size) * settings.steps, "BDMC", quiet) as bar,
                measure(torch_device) as cost,
            ):
                result = bdmc(
                    vae, x[:n], settings, batch_size, seed=seed, progress=bar.update, y=None if y is None else y[:n]
                )
            metrics.update(
                {
                    "bdmc/gap": result.gap,
                    "bdmc/log_px_lower": float(result.lower.mean()),
                    "bdmc/log_px_upper": float(result.upper.mean()),
                    "bdmc/seconds": cost.seconds,
                }
            )
        child.log_params(params)
        child.log_metrics(metrics, step=epoch)
        if warnings:
            child.set_tags({"pyrovae.evaluate.warning": " | ".join(warnings)})
        if truncated:
            child.set_tags({"pyrovae.evaluate.truncated": f"time limit {time_limit} s: {', '.join(truncated)}"})
            warnings.append(f"the time limit ({time_limit} s) stopped {' and '.join(truncated)}")
        if estimates:
            png = Path(tmp) / f"loglik_hist_{split}.png"
            histogram_png(
                estimates, png, f"run {run.run_id[:8]}, {split} split, {weights} weights, per-datapoint log p(x)"
            )
            child.log_artifact(png, "evaluation")
            for label, values in estimates.items():
                npy = Path(tmp) / f"loglik_{split}_{label.split(' ')[0].lower()}.npy"
                np.save(npy, values.cpu().numpy())
                child.log_artifact(npy, "evaluation")
    return Evaluation(child.run_id, run.run_id, x.shape[0], metrics, warnings)


def cost_metrics(prefix: str, cost: Cost, n: int) -> dict[str, float]:
    """``<prefix>_seconds``, ``<prefix>_seconds_per_point`` over ``n`` points, ``<prefix>_peak_mib``."""
    return {
        f"{prefix}_seconds": cost.seconds,
        f"{prefix}_seconds_per_point": cost.seconds / max(n, 1),
        f"{prefix}_peak_mib": cost.peak_mib,
    }


def weights_epoch(run: MlflowRun, weights: str) -> int:
    """The epoch of a run's ``final`` weights (its last logged ``val/loss``: early stopping
    included) or of its ``best`` checkpoint."""
    if weights == "best":
        from pyrovae.run import checkpoint

        return int(checkpoint.download(run, "best")["epoch"])
    history = run.client.get_metric_history(run.run_id, "val/loss")
    return max((m.step for m in history), default=0)
