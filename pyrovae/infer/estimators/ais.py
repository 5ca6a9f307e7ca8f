r"""Annealed importance sampling (AIS) of log p(x) with HMC, and bidirectional Monte Carlo (BDMC).

AIS moves each chain through the distributions

.. math:: f_t(z) = b(z)\, e^{\beta_t h(z)}, \qquad 0 = \beta_0 < \beta_1 < \dots < \beta_T = 1,

from a normalized start :math:`f_0 = b` to :math:`f_T \propto p(z|x)`, where

- ``start = "prior"``: :math:`b = p(z)`, :math:`h = \log p(x|z)` (Wu et al. 2017);
- ``start = "posterior"``: :math:`b = q(z|x)`, :math:`h = \log p(x,z) - \log q(z|x)`,

so :math:`f_T = p(x, z)` in both cases and :math:`Z_T = p(x)`. A chain starts at
:math:`z_0 \sim b`, adds :math:`(\beta_t - \beta_{t-1})\,h(z_{t-1})` to its log-weight and moves
:math:`z_t \sim T_t(z_{t-1})` by an HMC transition that leaves :math:`f_t` invariant
(:mod:`pyrovae.infer.estimators.hmc`). :math:`E[w] = p(x)`, so the estimate

.. math:: \log \hat p(x) = \log \frac{1}{C} \sum_{c=1}^{C} w_c

over C chains is a stochastic *lower* bound on log p(x) (Jensen).

**BDMC** (Grosse et al. 2015): for data simulated from the model, :math:`z^* \sim p(z)`,
:math:`x \sim p(x|z^*)`, the z* that generated x is an exact sample of p(z|x). Running the
schedule backwards from z* gives weights with :math:`E[w^{rev}] = 1/p(x)`, so
:math:`-\log \frac1C\sum_c w^{rev}_c` is a stochastic *upper* bound. The gap between the two
bounds bounds the error of either on such data.

**Step sizes** adapt after every transition toward 65% acceptance. By default
(``adapt_over = "datapoint"``) the C chains of a datapoint share one step size, driven by their
mean acceptance probability; ``"chain"`` gives every chain its own. A step size driven by a chain's *own*
last acceptance depends on that chain's state, the transition then no longer leaves
:math:`f_t` invariant, and the estimate is biased. On the PPCA tests' model (200 points, 16
chains, 300 steps from the prior) ``"chain"`` overestimated log p(x) by 0.123 +- 0.014 nats,
``"datapoint"`` was off by 0.005 +- 0.013.

The schedule is sigmoidal (Grosse et al. 2015; Wu et al. 2017):
:math:`\tilde\beta_t = \sigma(\delta (2t/T - 1))`, rescaled to run from 0 to 1, with
:math:`\delta = 4`; ``"linear"`` is also available.

References: Neal, "Annealed Importance Sampling", 2001; Grosse, Ghahramani & Adams, "Sandwiching
the marginal likelihood using bidirectional Monte Carlo", 2015; Wu, Burda, Salakhutdinov &
Grosse, "On the Quantitative Analysis of Decoder-Based Generative Models", ICLR 2017.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Literal

import torch

from pyrovae.errors import UserError
from pyrovae.infer.estimators.hmc import adapt_step_size, evaluate_state, hmc_step
from pyrovae.infer.terms import evaluation_mode


@dataclass
class AISSettings:
    """AIS knobs; the defaults follow Wu et al. (2017) except for fewer distributions."""

    steps: int = 500                 # T, the number of intermediate distributions
    chains: int = 16                 # C, independent chains per datapoint
    leapfrog_steps: int = 10         # L, leapfrog steps per HMC transition
    step_size: float = 0.05          # initial HMC step size of every chain
    target_accept: float = 0.65      # step sizes adapt toward this acceptance probability
    adapt_rate: float = 0.02         # multiplicative step-size change per transition
    adapt_over: Literal["datapoint", "chain"] = "datapoint"  # whose acceptance moves a step size
    schedule: Literal["sigmoid", "linear"] = "sigmoid"
    start: Literal["prior", "posterior"] = "prior"

    def __post_init__(self):
        if self.steps < 1 or self.chains < 1 or self.leapfrog_steps < 1 or self.step_size <= 0:
            raise UserError(f"AIS needs steps, chains and leapfrog steps >= 1 and a positive step size, "
                            f"got {asdict(self)}")
        if (self.schedule not in ("sigmoid", "linear") or self.start not in ("prior", "posterior")
                or self.adapt_over not in ("datapoint", "chain")):
            raise UserError(f"AIS schedule must be sigmoid or linear, start prior or posterior and "
                            f"adapt_over datapoint or chain, got {self.schedule!r}, {self.start!r}, "
                            f"{self.adapt_over!r}")

    def as_tags(self) -> dict[str, str]:
        return {f"ais.{k}": str(v) for k, v in asdict(self).items()}


def schedule(steps: int, kind: str = "sigmoid", delta: float = 4.0) -> torch.Tensor:
    """``steps + 1`` inverse temperatures from exactly 0 to exactly 1, float64."""
    t = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    if kind == "linear":
        return t
    s = torch.sigmoid(delta * (2 * t - 1))
    return (s - s[0]) / (s[-1] - s[0])


def _parts(vae, x: torch.Tensor, start: str):
    """``z -> (log b(z), h(z))`` for a batch ``x``; ``z`` is ``(C, B, D)``."""
    prior, q = vae.prior(), vae.posterior(x)

    def parts(z):
        log_joint_terms = vae.likelihood(z).log_prob(x)
        if start == "prior":
            return prior.log_prob(z), log_joint_terms
        log_q = q.log_prob(z)
        return log_q, prior.log_prob(z) + log_joint_terms - log_q
    return parts, (prior if start == "prior" else q)


def anneal(parts, z0: torch.Tensor, betas: torch.Tensor, settings: AISSettings,
           on_step: Callable[[], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Run chains from ``z0`` (exact draws from :math:`f_{\beta_0}`) through ``betas``.

    Returns the log-weights, shape ``z0.shape[:-1]``, float64, and the mean acceptance
    probability. Works in either direction: reversed ``betas`` give the BDMC reverse chain.
    """
    state = evaluate_state(parts, z0)
    log_w = torch.zeros(z0.shape[:-1], dtype=torch.float64, device=z0.device)
    per_chain = settings.adapt_over == "chain"
    step_size = torch.full((z0.shape[0] if per_chain else 1, *z0.shape[1:-1], 1), settings.step_size,
                           device=z0.device)
    accept_sum, n = 0.0, 0
    for t in range(1, len(betas)):
        log_w += (betas[t] - betas[t - 1]).item() * state.h.double()
        if t < len(betas) - 1:  # the last distribution needs no move
            state, accept = hmc_step(parts, state, betas[t].item(), step_size, settings.leapfrog_steps)
            step_size = adapt_step_size(step_size, accept if per_chain else accept.mean(0, keepdim=True),
                                        settings.target_accept, settings.adapt_rate)
            accept_sum, n = accept_sum + accept.mean().item(), n + 1
        if on_step is not None:
            on_step()
    return log_w, accept_sum / max(n, 1)


def logmeanexp(log_w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    return log_w.logsumexp(dim) - math.log(log_w.shape[dim])


def ais(vae, x: torch.Tensor, settings: AISSettings = AISSettings(), batch_size: int = 100,
        seed: int | None = 0, progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """AIS estimate (a stochastic lower bound) of log p(x) for each row of ``x``, shape ``(N,)``, float64.

    Batches of ``batch_size`` datapoints, each with ``settings.chains`` chains, run together
    as ``(C, B, D)`` tensors. ``progress(n)`` is called with ``n = 1`` after each annealing step
    of each batch (``ceil(N / batch_size) * steps`` calls in all).
    """
    betas = schedule(settings.steps, settings.schedule)
    out = []
    with evaluation_mode(vae, seed, x.device):
        for start in range(0, x.shape[0], batch_size):
            batch = x[start:start + batch_size]
            parts, base = _parts(vae, batch, settings.start)
            z0 = base.sample((settings.chains,) if settings.start == "posterior"
                             else (settings.chains, batch.shape[0]))
            log_w, _ = anneal(parts, z0, betas, settings, on_step=progress and (lambda: progress(1)))
            out.append(logmeanexp(log_w))
    return torch.cat(out)


def simulate(vae, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` pairs from the model: ``z ~ p(z)``, shape ``(n, D)``, and ``x ~ p(x|z)``, ``(n, *data_shape)``."""
    with evaluation_mode(vae, seed, next(vae.parameters()).device):
        z = vae.prior().sample((n,))
        return z, vae.likelihood(z).sample()


@dataclass
class BDMCResult:
    """Per-datapoint bounds on simulated data, shape ``(n,)`` each, and the data itself."""

    lower: torch.Tensor   # forward AIS: E[lower] <= log p(x)
    upper: torch.Tensor   # reverse AIS from the exact posterior sample: E[upper] >= log p(x)
    x: torch.Tensor
    z: torch.Tensor

    @property
    def gap(self) -> float:
        """Mean of upper - lower, nats per datapoint."""
        return float((self.upper - self.lower).mean())


def bdmc(vae, n: int, settings: AISSettings = AISSettings(), batch_size: int = 100, seed: int = 0,
         progress: Callable[[int], None] | None = None) -> BDMCResult:
    """Sandwich log p(x) on ``n`` datapoints simulated from the model itself (Grosse et al. 2015).

    The forward chains give :func:`ais`; the reverse chains start at the ``z`` that generated
    each ``x`` (all C chains of a datapoint from the same exact sample) and run the schedule
    from 1 back to 0. ``progress`` counts 2 * steps per batch.
    """
    z_true, x = simulate(vae, n, seed)
    lower = ais(vae, x, settings, batch_size, seed=seed + 1, progress=progress)
    betas = schedule(settings.steps, settings.schedule).flip(0)
    upper = []
    with evaluation_mode(vae, seed + 2, x.device):
        for start in range(0, n, batch_size):
            batch = x[start:start + batch_size]
            parts, _ = _parts(vae, batch, settings.start)
            z0 = z_true[start:start + batch_size].expand(settings.chains, -1, -1).contiguous()
            log_w, _ = anneal(parts, z0, betas, settings, on_step=progress and (lambda: progress(1)))
            upper.append(-logmeanexp(log_w))
    return BDMCResult(lower=lower, upper=torch.cat(upper), x=x, z=z_true)
