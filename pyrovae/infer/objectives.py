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
noise for the encoder falls as K grows: Rainforth et al. 2018). A discrete guide site marked for
enumeration is summed out exactly, as in :mod:`pyrovae.infer.estimators.iwae`.

**Doubly reparameterized** (``train.iwae_gradient = "dreg"`` with ``iwae``; Tucker et al. 2019): the
same bound, whose gradient drops the score-function term of the guide, which only adds noise:

.. math::
    \nabla_\theta = \sum_k \tilde w_k \nabla_\theta \log p_\theta(x, z_k), \qquad
    \nabla_\phi = \sum_k \tilde w_k^2\, \frac{\partial \log w_k}{\partial z_k}
    \frac{\partial z_k}{\partial \phi},

the second with every parameter held fixed inside :math:`\log w_k` (the derivative flows through
the draws :math:`z_k = g_\phi(\epsilon_k, x)` only; a guide site that depends on another draw, as in a
two-level guide, keeps that path). Computed as a surrogate: the model once more on the draws held
fixed (for :math:`\theta`), model and guide once more with every parameter detached (for
:math:`\phi`). Every latent site must be reparameterized (no enumeration); a parameter that both
model and guide use (a VampPrior's encoder) gets its model part only.

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
from torch import nn
from torch.distributions import kl_divergence

from pyrovae.errors import UserError
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
    """``-sum_b L_alpha(x_b)`` with ``num_particles`` draws per datapoint (see the module doc);
    ``dreg``: the doubly reparameterized gradient (alpha = 0 only)."""

    def __init__(self, num_particles: int = 5, alpha: float = 0.0, dreg: bool = False):
        if alpha == 1:
            raise ValueError("renyi_alpha = 1 is the ELBO: use train.elbo = 'trace'")
        if dreg and alpha != 0:
            raise ValueError("the doubly reparameterized gradient is the iwae bound's (alpha = 0)")
        self.num_particles, self.alpha, self.dreg = num_particles, alpha, dreg
        self._nesting: int | None = None
        self._module: nn.Module | None = None

    def bind(self, module: nn.Module) -> None:
        """The module whose parameters ``dreg`` holds fixed (:class:`~pyrovae.infer.elbo.ELBOLoss` calls it)."""
        self._module = module

    def _plate(self, model, guide, args):
        if self._nesting is None:
            self._nesting = _nesting(model, guide, args)
        return pyro.plate(PARTICLES, self.num_particles, dim=-(self._nesting + 1))

    def _scores(self, model, guide_trace, args, plate):
        model_trace = poutine.trace(poutine.replay(plate(model), trace=guide_trace)).get_trace(*args)
        model_trace.compute_log_prob()
        guide_trace.compute_log_prob()
        return scores(model_trace, guide_trace, self._nesting, enumerated=True)

    def log_weights(self, model, guide, *args) -> torch.Tensor:
        """``(K, B)`` importance log-weights, enumerated guide sites summed out."""
        plate = self._plate(model, guide, args)
        first = -(self._nesting + 2)
        guide_trace = poutine.trace(poutine.enum(plate(guide), first_available_dim=first)).get_trace(*args)
        scored = self._scores(model, guide_trace, args, plate)
        log_w = scored.log_joint() - sum(v for n, v in scored.posterior.items() if n not in scored.enumerated)
        return log_w.reshape(-1, *log_w.shape[-2:]).logsumexp(0) if log_w.dim() > 2 else log_w

    def differentiable_loss(self, model, guide, *args) -> torch.Tensor:
        if self.dreg:
            return self._dreg_loss(model, guide, *args)
        log_w = (1 - self.alpha) * self.log_weights(model, guide, *args)
        bound = (log_w.logsumexp(0) - math.log(self.num_particles)) / (1 - self.alpha)
        return -bound.sum()

    def _dreg_loss(self, model, guide, *args) -> torch.Tensor:
        """The bound's value, with the doubly reparameterized gradient as a surrogate (module doc)."""
        plate = self._plate(model, guide, args)
        guide_trace = poutine.trace(plate(guide)).get_trace(*args)
        scored = self._scores(model, guide_trace, args, plate)
        bad = [n for n in scored.latent if not guide_trace.nodes[n]["fn"].has_rsample]
        if bad:
            raise UserError(f"train.iwae_gradient = 'dreg' needs reparameterized latent sites; '{bad[0]}' is not")
        log_w = scored.log_joint() - sum(scored.posterior.values())
        weights = torch.softmax(log_w.detach(), 0)  # (K, B) normalized importance weights
        held = _with_values_detached(guide_trace)  # theta: the draws held fixed
        log_p_held = self._scores(model, held, args, plate).log_joint()

        def through_the_draws():  # phi: every parameter held fixed, the draws' paths kept
            path = poutine.trace(poutine.replay(plate(guide), trace=guide_trace)).get_trace(*args)
            return self._scores(model, path, args, plate)

        scored_path = _detached_call(self._module, through_the_draws)
        log_w_path = scored_path.log_joint() - sum(scored_path.posterior.values())
        surrogate = (weights * log_p_held + weights.square() * log_w_path).sum(0)
        bound = log_w.logsumexp(0) - math.log(self.num_particles)
        return -(bound.detach() + surrogate - surrogate.detach()).sum()


def _with_values_detached(trace):
    """A copy of ``trace`` whose sampled values are detached (a model replayed on it sees constants)."""
    out = poutine.Trace()
    for name, site in trace.nodes.items():
        site = dict(site)
        if site["type"] == "sample" and torch.is_tensor(site.get("value")):
            site["value"] = site["value"].detach()
            site.pop("log_prob", None)
        out.add_node(name, **site)
    return out


class _Call(nn.Module):
    """``_Call(module)(fn) == fn()``: lets ``torch.func.functional_call`` swap ``module``'s parameters
    around any function of it."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, fn):
        return fn()


def _detached_call(module: nn.Module | None, fn):
    """``fn()`` with every parameter of ``module`` replaced by a detached copy: what it computes
    depends on the graphs of its inputs only."""
    if module is None:
        raise ValueError("the objective was not bound to its module (ELBOLoss binds it)")
    params = {f"module.{name}": p.detach() for name, p in module.named_parameters()}
    return torch.func.functional_call(_Call(module), params, (fn,))


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
