r"""Training objectives besides Pyro's ELBOs, built from the model's and the guide's traces.

Each has the ``differentiable_loss(model, guide, *args)`` of Pyro's ELBO objects, so the
:class:`~pyrovae.infer.elbo.ELBOLoss` module steps it the same way; ``model`` and ``guide`` are the
annealed functions of that module (KL annealing reaches their latent sites as for every objective).
Whatever trains, validation means the same: ``val/loss`` is the negative ELBO at beta = 1.

**Importance weighted** (``train.elbo = "iwae"``; Burda et al. 2016) and **Rényi** (``"renyi"``;
Li & Turner 2016): with K draws :math:`z_k \sim q(z|x)` (``train.num_particles``) and
:math:`\log w_k = \log p(x, z_k) - \log q(z_k|x)`,

.. math::
    \mathcal{L}_\alpha(x) = \frac{1}{1-\alpha} \log \frac1K \sum_{k=1}^K w_k^{1-\alpha},

the IWAE bound at :math:`\alpha = 0` (``train.renyi_alpha``; :math:`\alpha \to 1` is the ELBO). The
gradient is the reparameterized one of this Monte Carlo objective: each draw weighs by its
normalized importance weight :math:`\tilde w_k^{(\alpha)}` (Burda et al.'s estimator, whose signal to
noise for the encoder falls as K grows: Rainforth et al. 2018; the doubly reparameterized estimator
of Tucker et al. 2019 is not offered). A discrete guide site marked for enumeration is summed out
exactly, as in :mod:`pyrovae.infer.estimators.iwae`.

**TraceGraph** (``train.elbo = "tracegraph"``; Schulman et al. 2015): the ELBO with the score-function
(REINFORCE) gradient for latent sites that cannot be reparameterized (a Bernoulli or categorical z
the guide samples), Rao-Blackwellized by the dependency structure of the traces, as Pyro's
``TraceGraph_ELBO`` computes it (its surrogate loss; baselines declared in the guide's ``infer``
are honoured). Its value is the ELBO's; its gradient that surrogate's.

**Free bits** (``train.free_bits = λ``; Kingma et al. 2016): the KL term of the ELBO is replaced by

.. math:: \sum_{j} \max\big(\lambda,\ \tfrac1B \textstyle\sum_b \mathrm{KL}_j(x_b)\big)

over the latent dimensions j of every site whose q and p factorize over dimensions (closed-form KL
per dimension), and over whole sites otherwise (a floor of λ times the site's dimensions on its
Monte Carlo KL): the floor applies to the batch mean, as Kingma et al. do, so a dimension pays no
KL until it carries more than λ nats on average; the reconstruction term is unchanged.
"""

from __future__ import annotations

import math

import pyro
import torch
from pyro import poutine
from torch.distributions import kl_divergence

from pyrovae.infer.estimators.diagnostics import univariate_factors
from pyrovae.infer.traces import PARTICLES, nesting_of, per_datapoint, scores


def _nesting(model, guide, args) -> int:
    """The model's plate dimensions, from one trace of each under a forked RNG."""
    with torch.random.fork_rng(devices=[]), poutine.block(), torch.no_grad():
        guide_trace = poutine.trace(guide).get_trace(*args)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args)
    return max(nesting_of(guide_trace), nesting_of(model_trace))


class TraceGraph:
    """``-ELBO`` whose gradient is ``TraceGraph_ELBO``'s surrogate (score-function terms for sites that
    have no ``rsample``): the value is detached, the surrogate carries the gradient."""

    def __init__(self, num_particles: int = 1):
        from pyro.infer import TraceGraph_ELBO

        self.num_particles = num_particles
        self._elbo = TraceGraph_ELBO(num_particles=num_particles)

    def differentiable_loss(self, model, guide, *args) -> torch.Tensor:
        # Pyro 1.9 keeps the surrogate behind loss_and_grads, which calls backward itself; this is
        # the same computation without the backward, so the trainer's step (DDP included) takes it
        elbo, surrogate = self._elbo._loss_and_surrogate_loss(model, guide, args, {})
        value = torch.as_tensor(-elbo, dtype=surrogate.dtype, device=surrogate.device)
        return value.detach() + (surrogate - surrogate.detach())


class ImportanceWeighted:
    """``-sum_b L_alpha(x_b)`` with ``num_particles`` draws per datapoint (see the module doc)."""

    def __init__(self, num_particles: int = 5, alpha: float = 0.0):
        if alpha == 1:
            raise ValueError("renyi_alpha = 1 is the ELBO: use train.elbo = 'trace'")
        self.num_particles, self.alpha = num_particles, alpha
        self._nesting: int | None = None

    def log_weights(self, model, guide, *args) -> torch.Tensor:
        """``(K, B)`` importance log-weights, enumerated guide sites summed out."""
        if self._nesting is None:
            self._nesting = _nesting(model, guide, args)
        nesting, k = self._nesting, self.num_particles
        plate = pyro.plate(PARTICLES, k, dim=-(nesting + 1))
        guide_trace = poutine.trace(poutine.enum(plate(guide), first_available_dim=-(nesting + 2))).get_trace(*args)
        model_trace = poutine.trace(poutine.replay(plate(model), trace=guide_trace)).get_trace(*args)
        model_trace.compute_log_prob()
        guide_trace.compute_log_prob()
        scored = scores(model_trace, guide_trace, nesting, enumerated=True)
        log_w = scored.log_joint() - sum(v for n, v in scored.posterior.items() if n not in scored.enumerated)
        return log_w.reshape(-1, *log_w.shape[-2:]).logsumexp(0) if log_w.dim() > 2 else log_w

    def differentiable_loss(self, model, guide, *args) -> torch.Tensor:
        log_w = (1 - self.alpha) * self.log_weights(model, guide, *args)
        bound = (log_w.logsumexp(0) - math.log(self.num_particles)) / (1 - self.alpha)
        return -bound.sum()


class FreeBits:
    """The ELBO with a KL floor of ``lam`` nats per latent dimension on the batch mean (module doc)."""

    num_particles = 1

    def __init__(self, lam: float):
        self.lam = lam

    def differentiable_loss(self, model, guide, *args) -> torch.Tensor:
        guide_trace = poutine.trace(guide).get_trace(*args)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args)
        model_trace.compute_log_prob()
        guide_trace.compute_log_prob()
        scored = scores(model_trace, guide_trace)
        batch = next(iter(scored.observed.values())).shape[-1]
        recon = -sum(v.sum() for v in scored.observed.values())
        return recon + batch * sum(self._floored_kl(name, scored) for name in scored.latent)

    def _floored_kl(self, name: str, scored) -> torch.Tensor:
        """This site's floored KL per datapoint, the annealing weight (its scale) applied after the floor."""
        q_site, p_site = scored.guide_trace.nodes[name], scored.model_trace.nodes[name]
        weight = q_site["scale"]
        q, p = q_site["fn"], p_site["fn"]
        q_factors, p_factors = univariate_factors(q), univariate_factors(p)
        if q_factors is not None and p_factors is not None:
            try:  # closed form per dimension where both factorize
                kl = kl_divergence(q_factors, p_factors)  # (*batch, D)
            except NotImplementedError:
                pass
            else:
                per_dim = per_datapoint(kl.movedim(-1, 0), q_site, scored.nesting).mean(-1)  # (D,)
                return weight * per_dim.clamp(min=self.lam).sum()
        value = q_site["value"]
        mean = per_datapoint(q.log_prob(value) - p.log_prob(value), q_site, scored.nesting).mean()
        return weight * mean.clamp(min=self.lam * math.prod(q.event_shape))
