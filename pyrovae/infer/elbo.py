r"""Pyro's ELBO as a torch loss module, so any torch optimizer (and DDP) can step it.

Training maximizes the (annealed) evidence lower bound of Kingma & Welling (2014),

.. math:: \mathcal{L}_\beta(x) = E_{q(z|x)}[\log p(x|z)] - \beta\,\mathrm{KL}(q(z|x) \| p(z)),

computed by one of Pyro's ELBO objects on :meth:`VAE.model` / :meth:`VAE.guide` (``beta``
scales the latent site in both). :class:`ELBOLoss` returns :math:`-\sum_b \mathcal{L}_\beta(x_b)`
over a batch as a differentiable scalar: ``loss.backward()`` and ``optimizer.step()`` is SVI with
that ELBO, and one step equals ``SVI.step`` with the same torch optimizer bit for bit on the CPU
(tested). The VAE is a registered submodule, so ``ELBOLoss(vae, elbo).parameters()`` are the
VAE's: ``Trace_ELBO()(model, guide)`` alone has none, because bound methods are not submodules.

Two properties of the JIT ELBOs (pyro-ppl 1.9) that this module handles:

- ``JitTrace_ELBO.differentiable_loss`` doubles the gradient (its loss term is not detached);
  the loss here is ``loss.detach() + (surrogate - surrogate.detach())`` from
  ``loss_and_surrogate_loss``: the value of the loss, the gradient of the surrogate.
- JIT ELBOs key their compiled graph on ``id(model)``; ``vae.model`` is a new bound-method
  object at every access, so the module keeps one of each.

References: Ranganath et al. 2014, "Black Box Variational Inference"; Bingham et al. 2019,
"Pyro: Deep Universal Probabilistic Programming".
"""

from __future__ import annotations

import torch
from pyro.infer import ELBO, JitTrace_ELBO, JitTraceMeanField_ELBO, Trace_ELBO, TraceMeanField_ELBO
from torch import nn

ELBOS = {"trace": Trace_ELBO, "meanfield": TraceMeanField_ELBO}
JIT_ELBOS = {"trace": JitTrace_ELBO, "meanfield": JitTraceMeanField_ELBO}


def make_elbo(kind: str = "trace", num_particles: int = 1, jit: bool = False) -> ELBO:
    """``Trace_ELBO`` (Monte Carlo KL) or ``TraceMeanField_ELBO`` (closed-form KL where it exists),
    optionally their ``torch.jit``-traced versions."""
    table = JIT_ELBOS if jit else ELBOS
    if kind not in table:
        raise ValueError(f"elbo must be one of {', '.join(table)}, got {kind!r}")
    if jit:  # beta goes in as a positional tensor: a traced input, not a constant
        return table[kind](num_particles=num_particles, ignore_jit_warnings=True)
    return table[kind](num_particles=num_particles)


class ELBOLoss(nn.Module):
    """``forward(x, beta) -> -ELBO_beta`` summed over the batch ``x`` of shape ``(B, *data_shape)``."""

    def __init__(self, vae: nn.Module, elbo: ELBO):
        super().__init__()
        self.vae = vae
        self.elbo = elbo
        self._model, self._guide = vae.model, vae.guide  # one object each: JIT caches by id
        self._surrogate_form = isinstance(elbo, JitTrace_ELBO)
        self._traced = isinstance(elbo, (JitTrace_ELBO, JitTraceMeanField_ELBO))

    def forward(self, x: torch.Tensor, beta: torch.Tensor | float = 1.0) -> torch.Tensor:
        if self._traced and not isinstance(beta, torch.Tensor):  # torch.jit traces tensors only
            beta = torch.tensor(float(beta), device=x.device)
        if self._surrogate_form:
            loss, surrogate = self.elbo.loss_and_surrogate_loss(self._model, self._guide, x, beta)
            return loss.detach() + (surrogate - surrogate.detach())
        return self.elbo.differentiable_loss(self._model, self._guide, x, beta)
