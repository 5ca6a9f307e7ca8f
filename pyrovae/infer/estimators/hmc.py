r"""Batched Hamiltonian Monte Carlo transitions, and the step-size rule AIS adapts them with.

The target is a tempered density :math:`\log f_\beta(z) = \log b(z) + \beta\,h(z)` whose two
parts (and their gradients) are cached per state, so that a change of :math:`\beta` (the next
AIS distribution) costs no new network evaluation. Every chain (any leading shape, e.g.
``(chains, batch)``) moves independently: leapfrog integration with unit mass,

.. math::
    p \leftarrow p + \tfrac{\epsilon}{2}\nabla \log f,\quad z \leftarrow z + \epsilon p,\quad
    p \leftarrow p + \tfrac{\epsilon}{2}\nabla \log f \quad (L \text{ times}),

then a Metropolis-Hastings test on :math:`H = -\log f(z) + \tfrac12 |p|^2`. Each transition
leaves :math:`f_\beta` invariant for the step size it was given. :func:`adapt_step_size`
multiplies a step size by ``1 + rate`` when an acceptance probability exceeds the target
(0.65, Neal 2011) and divides it otherwise, as in Wu et al. (2017)'s BDMC code.

References: Neal, "MCMC using Hamiltonian dynamics", 2011; Wu et al., "On the Quantitative
Analysis of Decoder-Based Generative Models", ICLR 2017.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

#: ``z -> (log b(z), h(z))``, each of shape ``z.shape[:-1]``
Parts = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class State:
    """A batch of chain states with the cached parts of the target and their gradients."""

    z: torch.Tensor  # (*chains, D)
    base: torch.Tensor  # log b(z), (*chains)
    h: torch.Tensor  # h(z), (*chains)
    grad_base: torch.Tensor  # (*chains, D)
    grad_h: torch.Tensor  # (*chains, D)

    def log_target(self, beta: float) -> torch.Tensor:
        return self.base + beta * self.h

    def grad(self, beta: float) -> torch.Tensor:
        return self.grad_base + beta * self.grad_h


def evaluate_state(parts: Parts, z: torch.Tensor) -> State:
    """The parts at ``z`` and their gradients in z, by autograd (chains are independent,
    so the gradient of the sum is each chain's own gradient)."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        base, h = parts(z)
        (grad_base,) = torch.autograd.grad(base.sum(), z, retain_graph=True)
        (grad_h,) = torch.autograd.grad(h.sum(), z)
    return State(z.detach(), base.detach(), h.detach(), grad_base, grad_h)


def hmc_step(
    parts: Parts, state: State, beta: float, step_size: torch.Tensor, leapfrog_steps: int
) -> tuple[State, torch.Tensor]:
    """One HMC transition of every chain targeting :math:`f_\\beta`.

    ``step_size`` broadcasts against ``(*chains, 1)``. Returns the new state and the
    acceptance probability of each chain, shape ``(*chains)``.
    """
    momentum0 = torch.randn_like(state.z)
    momentum = momentum0 + 0.5 * step_size * state.grad(beta)
    proposal = state
    for i in range(leapfrog_steps):
        proposal = evaluate_state(parts, proposal.z + step_size * momentum)
        scale = step_size if i < leapfrog_steps - 1 else 0.5 * step_size
        momentum = momentum + scale * proposal.grad(beta)
    log_ratio = (
        proposal.log_target(beta)
        - 0.5 * momentum.pow(2).sum(-1)
        - state.log_target(beta)
        + 0.5 * momentum0.pow(2).sum(-1)
    )
    log_ratio = torch.nan_to_num(log_ratio, nan=-torch.inf)  # a diverging trajectory is rejected
    accept_prob = log_ratio.clamp(max=0).exp()
    accept = torch.rand_like(accept_prob) < accept_prob
    new = State(
        *(
            torch.where(_expand(accept, getattr(proposal, f)), getattr(proposal, f), getattr(state, f))
            for f in ("z", "base", "h", "grad_base", "grad_h")
        )
    )
    return new, accept_prob


def adapt_step_size(
    step_size: torch.Tensor, accept_prob: torch.Tensor, target: float = 0.65, rate: float = 0.02
) -> torch.Tensor:
    """Multiply by ``1 + rate`` where ``accept_prob`` (broadcast to ``step_size[..., 0]``)
    exceeds ``target``, divide by it elsewhere."""
    grow = (accept_prob > target).unsqueeze(-1)
    return torch.where(grow, step_size * (1 + rate), step_size / (1 + rate))


def _expand(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.reshape(mask.shape + (1,) * (like.dim() - mask.dim()))
