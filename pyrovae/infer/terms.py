r"""Validation with the training ELBO object: the full negative ELBO, split into its terms, per site.

For a datapoint x, any model with observed sites :math:`x_o` and latent sites :math:`z_s`, and the
ELBO's own traces (:math:`z \sim q(z|x)`, replayed through the model, :mod:`pyrovae.infer.traces`):

.. math::
    \text{loss}(x) = \underbrace{-\textstyle\sum_o \log p(x_o \mid \cdot)}_{\text{recon}}
                   + \underbrace{\textstyle\sum_s \big(\log q(z_s \mid \cdot)
                     - \log p(z_s \mid \cdot)\big)}_{\text{kl} = \sum_s \text{kl}/s}
                   = -\mathrm{ELBO}(x)

where each ``kl/<site>`` is the closed form :math:`\mathrm{KL}(q(z_s|\cdot)\,\|\,p(z_s|\cdot))` under
``TraceMeanField_ELBO`` when it is registered, and the single-sample estimate
:math:`\log q - \log p` otherwise (``Trace_ELBO``, flows and mixtures) -- exactly what the ELBO
object computes, so ``loss == recon + kl`` holds to float precision and ``loss`` summed over a
batch equals ``elbo.loss(model, guide, x)`` with the same random numbers. Under
``TraceEnum_ELBO`` the guide's sites marked ``infer={"enumerate": "parallel"}`` are summed over
exactly, every term weighted by their :math:`q` (as ``TraceEnum_ELBO`` computes the ELBO): e.g.
for the label y of a semi-supervised model, ``kl/y`` is :math:`\mathrm{KL}(q(y|x)\|p(y))` and the
other terms are expectations over y. Evaluation is always at beta = 1: annealing is a training
device, and ``svi.evaluate_loss`` would otherwise return whatever the scaled model computes.
``mse`` is the squared error of the data site's mean at the same z, averaged over data elements: an
extra metric beside the bound, never instead of it.

All numbers are per datapoint, in nats. References: Kingma & Welling 2014, eq. (3);
Hoffman & Johnson 2016, "ELBO surgery".
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO, TraceEnum_ELBO, TraceMeanField_ELBO
from torch.distributions import kl_divergence

from pyrovae.infer.traces import (
    data_site,
    enumeration_weights,
    expectation,
    per_datapoint,
    plate_nesting,
    run_traces,
    scores,
)

#: the terms every validation reports (``kl/<site>`` besides, one per latent site)
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


def site_kl(name: str, scored, analytic: bool) -> torch.Tensor:
    """``log q - log p`` of one latent site at the drawn value, or its closed-form KL if
    ``analytic`` and registered (as ``TraceMeanField_ELBO`` decides, site by site)."""
    if analytic:
        q_site, p_site = scored.guide_trace.nodes[name], scored.model_trace.nodes[name]
        try:
            kl = kl_divergence(q_site["fn"], p_site["fn"])
        except NotImplementedError:
            pass  # no closed form (flows, mixtures): TraceMeanField_ELBO falls back the same way
        else:
            kl = scale_and_mask(kl, scale=q_site["scale"], mask=q_site["mask"])
            return per_datapoint(kl.expand(q_site["fn"].batch_shape), q_site, scored.nesting)
    return scored.posterior[name] - scored.prior[name]


def elbo_terms(model, elbo: ELBO, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-datapoint ``loss``, ``recon``, ``kl``, ``mse`` and ``kl/<site>``, each ``(B,)``, at beta = 1.

    ``model`` is any model with ``model``/``guide`` methods (:mod:`pyrovae.infer.traces`); ``y``
    goes to them when they take it. Averages over the ELBO's ``num_particles`` draws.
    """
    analytic = isinstance(elbo, TraceMeanField_ELBO)
    enumerate_guide = isinstance(elbo, TraceEnum_ELBO)
    batch = x.shape[0]
    sums: dict[str, torch.Tensor] = {}
    n = max(1, int(elbo.num_particles))
    nesting = plate_nesting(model, x[:1], None if y is None else y[:1]) if enumerate_guide else None
    for _ in range(n):
        model_trace, guide_trace = run_traces(model, x, y, enumerate_guide=enumerate_guide, nesting=nesting)
        scored = scores(model_trace, guide_trace, nesting, enumerated=enumerate_guide)
        weights = enumeration_weights(scored)
        mean = data_site(model_trace, x)["fn"].mean
        sq_err = ((mean - x) ** 2).reshape(*mean.shape[: mean.dim() - x.dim() + 1], -1).mean(-1)
        terms = {
            "recon": -sum(scored.observed.values()),
            "mse": sq_err,
            **{f"kl/{name}": site_kl(name, scored, analytic) for name in scored.latent},
        }
        for key, value in terms.items():
            value = expectation(value, weights, batch)
            sums[key] = value if key not in sums else sums[key] + value
    out = {k: v / n for k, v in sums.items()}
    out["kl"] = sum((v for k, v in out.items() if k.startswith("kl/")), torch.zeros(batch, device=x.device))
    out["loss"] = out["recon"] + out["kl"]
    return out


def datapoint_terms(
    model, elbo: ELBO, x: torch.Tensor, batch_size: int, seed: int | None = 0, y: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """:func:`elbo_terms` of every datapoint of ``x`` (shape ``(N, *data_shape)``): each ``(N,)``.

    Computed in batches of ``batch_size``; never changes a parameter: no optimizer is involved,
    gradients are off, and the RNG state of the caller is restored afterwards.
    """
    parts: dict[str, list[torch.Tensor]] = {}
    with evaluation_mode(model, seed, x.device):
        for start in range(0, x.shape[0], batch_size):
            labels = None if y is None else y[start : start + batch_size]
            for key, value in elbo_terms(model, elbo, x[start : start + batch_size], labels).items():
                parts.setdefault(key, []).append(value)
    return {k: torch.cat(v) for k, v in parts.items()}


def validate(
    model, elbo: ELBO, x: torch.Tensor, batch_size: int, seed: int | None = 0, y: torch.Tensor | None = None
) -> dict[str, float]:
    """Means of :func:`datapoint_terms` over ``x``: ``loss`` (-ELBO), ``recon``, ``kl``, ``mse``,
    and ``kl/<site>`` for every latent site."""
    return {t: float(v.double().mean()) for t, v in datapoint_terms(model, elbo, x, batch_size, seed, y).items()}


#: the name of :func:`validate` in pyrovae 0.2 (``pyrovae evaluate`` is the command that estimates log p(x))
evaluate = validate
