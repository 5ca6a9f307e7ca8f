r"""Posterior-collapse diagnostics: KL per latent dimension and the number of active units.

**KL per dimension.** When q(z|x) and p(z) both factorize over the latent dimensions
(``Independent`` over a univariate family such as ``Normal``), the KL term splits exactly,

.. math:: \mathrm{KL}(q(z|x)\,\|\,p(z)) = \sum_{u=1}^{D} \mathrm{KL}(q(z_u|x)\,\|\,p(z_u)),

and :func:`kl_per_dimension` returns the data average of each term, shape ``(D,)``. A
dimension whose KL stays near 0 carries no information about x: it has collapsed onto the
prior. For a flow, a mixture or any joint distribution the split does not exist, and the
function raises :class:`KLPerDimensionUnavailable` (a :class:`~pyrovae.errors.UserError`)
saying so; :func:`has_kl_per_dimension` asks first.

**Active units** (Burda et al. 2016, section 5.2): latent dimension u is active when

.. math:: A_u = \mathrm{Cov}_x\big(E_{q(z|x)}[z_u]\big) > 0.01,

i.e. when the posterior mean moves with the input. This needs only E_q[z], so it applies to
every guide (the mean is estimated from samples when the distribution has no closed form).

References: Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016;
Lucas et al., "Don't Blame the ELBO! A Linear VAE Perspective on Posterior Collapse", 2019.
"""

from __future__ import annotations

import torch
from torch.distributions import Distribution, Independent, kl_divergence

from pyrovae.errors import UserError
from pyrovae.infer.terms import evaluation_mode

ACTIVE_THRESHOLD = 0.01


class KLPerDimensionUnavailable(UserError):
    """KL per dimension needs a factorized q(z|x) and p(z) with a closed-form univariate KL."""


def _univariate_factors(d: Distribution) -> Distribution | None:
    """The univariate base of ``Independent(base, 1)`` (event shape ``(D,)``), else ``None``."""
    while isinstance(d, Independent) and d.reinterpreted_batch_ndims == 1:
        if d.base_dist.event_shape == ():
            return d.base_dist
        d = d.base_dist
    return None


def _factor_kl(q: Distribution, p: Distribution) -> torch.Tensor:
    """Elementwise KL of the factors, shape ``(B, D)``; raises when it does not exist."""
    q_factors, p_factors = _univariate_factors(q), _univariate_factors(p)
    if q_factors is None or p_factors is None:
        raise KLPerDimensionUnavailable(
            f"KL per latent dimension is not available for q = {type(q).__name__}, p = {type(p).__name__}: "
            f"it needs both to factorize over dimensions (Independent over a univariate distribution)")
    try:
        return kl_divergence(q_factors, p_factors)
    except NotImplementedError:
        raise KLPerDimensionUnavailable(
            f"KL per latent dimension is not available: no closed-form KL between "
            f"{type(q_factors).__name__} and {type(p_factors).__name__}") from None


def has_kl_per_dimension(vae, x: torch.Tensor) -> bool:
    """Whether :func:`kl_per_dimension` works for this VAE (checked on ``x[:1]``)."""
    try:
        with evaluation_mode(vae, None, x.device):
            _factor_kl(vae.posterior(x[:1]), vae.prior())
    except KLPerDimensionUnavailable:
        return False
    return True


def kl_per_dimension(vae, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    r"""Mean over ``x`` of :math:`\mathrm{KL}(q(z_u|x)\|p(z_u))` per dimension u, shape ``(D,)``, in nats.

    Exact (closed form), so no seed is involved; summing the result gives the data mean of
    the closed-form KL that ``TraceMeanField_ELBO`` uses. No gradients, no parameter change.
    Raises :class:`KLPerDimensionUnavailable` for guides or priors that do not factorize.
    """
    total = torch.zeros(vae.latent_dim, dtype=torch.float64, device=x.device)
    with evaluation_mode(vae, None, x.device):
        prior = vae.prior()
        for start in range(0, x.shape[0], batch_size):
            kl = _factor_kl(vae.posterior(x[start:start + batch_size]), prior)
            total += kl.double().sum(0)
    return (total / x.shape[0]).float()


def posterior_means(vae, x: torch.Tensor, batch_size: int = 1000, samples: int = 100,
                    seed: int = 0) -> torch.Tensor:
    """E_q[z|x] for every row of ``x``, shape ``(N, D)``; a mean of ``samples`` draws
    (seeded) where the distribution has no closed-form mean."""
    out = []
    with evaluation_mode(vae, seed, x.device):
        for start in range(0, x.shape[0], batch_size):
            q = vae.posterior(x[start:start + batch_size])
            try:
                mean = q.mean
            except NotImplementedError:
                mean = q.sample((samples,)).mean(0)
            out.append(mean)
    return torch.cat(out)


def activity(vae, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    r"""Per-dimension activity :math:`A_u = \mathrm{Var}_x(E_q[z_u|x])`, shape ``(D,)``."""
    means = posterior_means(vae, x, batch_size).double()
    return means.var(0, correction=1).float() if x.shape[0] > 1 else torch.zeros(means.shape[1])


def active_units(vae, x: torch.Tensor, threshold: float = ACTIVE_THRESHOLD,
                 batch_size: int = 1000) -> int:
    """Number of latent dimensions with activity above ``threshold`` (Burda et al.: 0.01)."""
    return int((activity(vae, x, batch_size) > threshold).sum())
