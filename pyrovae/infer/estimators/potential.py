r"""The latent sites of any model as one flat vector per chain and datapoint: what AIS and HMC move.

For a batch ``x`` of B datapoints and C chains each, every continuous latent site :math:`z_s`
(event shape :math:`E_s`) is mapped to the real line by :math:`u_s = T_s^{-1}(z_s)`,
``T_s = biject_to(support)`` (the identity for real-valued sites), and the pieces are
concatenated into ``u`` of shape ``(C, B, D)``, :math:`D = \sum_s |T_s^{-1}(E_s)|`. With the
Jacobian term :math:`J(u) = \sum_s \log|\det \partial T_s(u_s)/\partial u_s|`, the densities of u
are

.. math::
    \log p_u(u) = \sum_s \log p(z_s \mid \cdot) + J(u), \qquad
    \log q_u(u \mid x) = \sum_s \log q(z_s \mid \cdot) + J(u),

each read from a trace of the model (or the guide) conditioned on the values, inside the
``pyrovae_particles`` plate of size C. :meth:`Potential.parts` returns the two parts AIS anneals
between (:mod:`pyrovae.infer.estimators.ais`): from the prior, :math:`b = \log p_u`,
:math:`h = \sum_o \log p(x_o \mid \cdot)` (the observed sites); from the posterior,
:math:`b = \log q_u`, :math:`h = \log p(x, z) - \log q(z|x)`. Either way :math:`b + h` at
:math:`\beta = 1` is :math:`\log p(x, z) + J`, whose normalizer is p(x).

A discrete latent site has no such map: :class:`Potential` refuses it in one line (IWAE sums a
label out exactly; AIS over a discrete latent would need one annealing run per value).
"""

from __future__ import annotations

import math

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import sum_rightmost
from torch.distributions import biject_to

from pyrovae.errors import UserError
from pyrovae.infer.traces import PARTICLES, arguments, latent_sites, per_datapoint, run_traces, sample_sites


class Potential:
    """``model``'s continuous latent sites on the batch ``x`` (and ``y``), ``chains`` chains each."""

    def __init__(self, model, x: torch.Tensor, y: torch.Tensor | None, chains: int, nesting: int):
        self.model, self.x, self.y, self.chains, self.nesting = model, x, y, chains, nesting
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):  # shapes, not draws
            model_trace, guide_trace = run_traces(model, x, y, particles=chains, nesting=nesting)
        self.sites = latent_sites(model_trace, guide_trace)
        self.transforms, self.shapes = {}, {}
        for name in self.sites:
            site = guide_trace.nodes[name]
            if site["fn"].support.is_discrete:
                raise UserError(
                    f"AIS needs continuous latent sites, but site '{name}' of {type(model).__name__} is "
                    f"discrete ({type(site['fn']).__name__}): score it by IWAE, which sums it out"
                )
            self.transforms[name] = biject_to(site["fn"].support)
            # per chain and datapoint: the unconstrained value without its (C, B) leading dimensions
            self.shapes[name] = self.transforms[name].inv(site["value"]).shape[2:]
        self.sizes = [math.prod(self.shapes[n]) for n in self.sites]

    def _plated(self, fn):
        return pyro.plate(PARTICLES, self.chains, dim=-(self.nesting + 1))(fn)

    def draw(self, start: str) -> torch.Tensor:
        """``u`` of shape ``(C, B, D)`` for values drawn from the model's prior (``"prior"``) or from
        the guide (``"posterior"``)."""
        fn = self.model.model if start == "prior" else self.model.guide
        trace = poutine.trace(self._plated(fn)).get_trace(*arguments(fn, self.x, self.y))
        return self.pack({n: trace.nodes[n]["value"] for n in self.sites})

    def pack(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        pieces = [self.transforms[n].inv(values[n]) for n in self.sites]
        return torch.cat([u.reshape(*u.shape[:2], -1) for u in pieces], -1)

    def unpack(self, u: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The constrained site values of ``u`` and the Jacobian term, shape ``(C, B)``."""
        values, jacobian = {}, torch.zeros(u.shape[:-1], dtype=u.dtype, device=u.device)
        for name, piece in zip(self.sites, u.split(self.sizes, -1)):
            piece = piece.reshape(*u.shape[:-1], *self.shapes[name])
            transform = self.transforms[name]
            value = transform(piece)
            ladj = transform.log_abs_det_jacobian(piece, value)
            jacobian = jacobian + sum_rightmost(ladj, ladj.dim() - 2)
            values[name] = value
        return values, jacobian

    def _log_densities(self, fn, values: dict[str, torch.Tensor]):
        trace = poutine.trace(poutine.condition(self._plated(fn), data=values)).get_trace(
            *arguments(fn, self.x, self.y)
        )
        trace.compute_log_prob()
        return {name: per_datapoint(site["log_prob"], site, self.nesting) for name, site in sample_sites(trace).items()}

    def parts(self, start: str):
        """``u -> (log b(u), h(u))``, each ``(C, B)``, for AIS from ``start`` (see the module doc)."""

        def parts(u: torch.Tensor):
            values, jacobian = self.unpack(u)
            joint = self._log_densities(self.model.model, values)
            log_prior = sum(joint[n] for n in self.sites) + jacobian
            log_lik = sum(v for n, v in joint.items() if n not in self.sites)
            if start == "prior":
                return log_prior, log_lik
            posterior = self._log_densities(self.model.guide, values)
            log_q = sum(posterior[n] for n in self.sites) + jacobian
            return log_q, log_prior + log_lik - log_q

        return parts
