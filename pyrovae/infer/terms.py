r"""Validation with the training ELBO object: the full negative ELBO, split into its two terms.

For a datapoint x and the ELBO's own traces (z ~ q(z|x), replayed through the model):

.. math::
    \text{loss}(x) = \underbrace{-\log p(x|z)}_{\text{recon}}
                   + \underbrace{\mathrm{KL}(q(z|x)\,\|\,p(z))}_{\text{kl}}
                   = -\mathrm{ELBO}(x)

where ``kl`` is the closed form :math:`\mathrm{KL}(q\|p)` under ``TraceMeanField_ELBO`` when
it is registered, and the single-sample estimate :math:`\log q(z|x) - \log p(z)` otherwise
(``Trace_ELBO``, or flows and mixtures that have no closed form) -- exactly what the ELBO
object computes, so ``loss == recon + kl`` holds to float precision and ``loss`` summed over a
batch equals ``elbo.loss(model, guide, x)`` with the same random numbers. Evaluation is always
at beta = 1: annealing is a training device, and ``poutine.scale`` would otherwise leak into the
number (``svi.evaluate_loss`` returns whatever the scaled model computes). ``mse`` is the squared error of the decoder mean at the same z,
averaged over data elements: an extra metric beside the bound, never instead of it.

All numbers are per datapoint, in nats. References: Kingma & Welling 2014, eq. (3);
Hoffman & Johnson 2016, "ELBO surgery".
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from pyro.infer import ELBO, TraceMeanField_ELBO
from torch.distributions import kl_divergence

TERMS = ("loss", "recon", "kl", "mse")


@contextmanager
def evaluation_mode(module: torch.nn.Module, seed: int | None, device: torch.device) -> Iterator[None]:
    """No gradients, ``eval()`` mode and, if ``seed`` is given, a forked RNG seeded with it.

    Forking the RNG keeps evaluation from moving the training random stream, so a run's
    training is the same whether or not (and how often) it is evaluated.
    """
    was_training = module.training
    devices = [device] if device.type == "cuda" else []
    with torch.no_grad(), torch.random.fork_rng(devices=devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        module.eval()
        try:
            yield
        finally:
            module.train(was_training)


def elbo_terms(vae, elbo: ELBO, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-datapoint ``loss``, ``recon``, ``kl``, ``mse``, each of shape ``(B,)``, at beta = 1.

    Averages over the ELBO's ``num_particles``; uses the ELBO object's own trace generator.
    """
    analytic = isinstance(elbo, TraceMeanField_ELBO)
    sums = {t: torch.zeros(x.shape[0], device=x.device) for t in ("recon", "kl", "mse")}
    n = 0
    for model_trace, guide_trace in elbo._get_traces(vae.model, vae.guide, (x,), {"beta": 1.0}):
        obs, p_site, q_site = model_trace.nodes["x"], model_trace.nodes["z"], guide_trace.nodes["z"]
        recon = -obs["fn"].log_prob(obs["value"])
        kl = None
        if analytic:
            try:
                kl = kl_divergence(q_site["fn"], p_site["fn"])
            except NotImplementedError:
                kl = None  # no closed form (flows, mixtures): TraceMeanField_ELBO falls back the same way
        if kl is None:
            z = q_site["value"]
            kl = q_site["fn"].log_prob(z) - p_site["fn"].log_prob(z)
        sq_err = (obs["fn"].mean - x) ** 2
        sums["recon"] += recon
        sums["kl"] += kl
        sums["mse"] += sq_err.reshape(x.shape[0], -1).mean(1)
        n += 1
    out = {t: v / n for t, v in sums.items()}
    out["loss"] = out["recon"] + out["kl"]
    return out


def datapoint_terms(vae, elbo: ELBO, x: torch.Tensor, batch_size: int, seed: int | None = 0) -> dict[str, torch.Tensor]:
    """:func:`elbo_terms` of every datapoint of ``x`` (shape ``(N, *data_shape)``): each ``(N,)``.

    Computed in batches of ``batch_size``; never changes a parameter: no optimizer is involved,
    gradients are off, and the RNG state of the caller is restored afterwards.
    """
    parts: dict[str, list[torch.Tensor]] = {t: [] for t in TERMS}
    with evaluation_mode(vae, seed, x.device):
        for start in range(0, x.shape[0], batch_size):
            terms = elbo_terms(vae, elbo, x[start:start + batch_size])
            for t in TERMS:
                parts[t].append(terms[t])
    return {t: torch.cat(v) for t, v in parts.items()}


def evaluate(vae, elbo: ELBO, x: torch.Tensor, batch_size: int, seed: int | None = 0) -> dict[str, float]:
    """Means of :func:`datapoint_terms` over ``x``: ``loss`` (-ELBO), ``recon``, ``kl``, ``mse``."""
    return {t: float(v.double().mean()) for t, v in datapoint_terms(vae, elbo, x, batch_size, seed).items()}
