r"""Posterior-collapse diagnostics per latent site: KL per latent dimension and active units.

Both read the model's and the guide's traces (:mod:`pyrovae.infer.traces`), so they apply to every
latent site of any model (``z1`` and ``z2`` of a two-level VAE alike), and return one entry per site.

**KL per dimension.** When a site's q(z_s|.) and p(z_s|.) both factorize over its dimensions
(``Independent`` over a univariate family such as ``Normal``), its KL term splits exactly,

.. math:: \mathrm{KL}(q(z_s|\cdot)\,\|\,p(z_s|\cdot)) = \sum_{u} \mathrm{KL}(q(z_{s,u}|\cdot)\,\|\,p(z_{s,u}|\cdot)),

and :func:`kl_per_dimension` returns the data average of each term, shape ``(D_s,)``. Where the
distributions depend on other latent sites (p(z1 | z2), q(z2 | z1)), it is averaged over one
draw of those (seeded); for a site without latent parents it is exact. A dimension whose KL stays
near 0 carries no information about x: it has collapsed. A site whose distributions do not
factorize (a flow, a mixture, a correlated Gaussian) has no such split and is left out;
:func:`kl_per_dimension` raises :class:`KLPerDimensionUnavailable` (a
:class:`~pyrovae.errors.UserError`) saying so when no site has it, and
:func:`has_kl_per_dimension` asks first.

**Active units** (Burda et al. 2016, section 5.2): dimension u of site s is active when

.. math:: A_{s,u} = \mathrm{Cov}_x\big(E_{q(z|x)}[z_{s,u}]\big) > 0.01,

i.e. when the posterior mean moves with the input. This needs only E_q[z_s], so it applies to
every guide: the mean of q(z_s|.) where it has one (else the draws themselves), averaged over
``samples`` draws of the guide, which integrates over the site's latent parents.

References: Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016;
Lucas et al., "Don't Blame the ELBO! A Linear VAE Perspective on Posterior Collapse", 2019.
"""

from __future__ import annotations

import torch
from torch.distributions import Distribution, Independent, kl_divergence

from pyrovae.errors import UserError
from pyrovae.infer.terms import evaluation_mode
from pyrovae.infer.traces import evaluation_labels, guide_trace, per_datapoint, plate_nesting, run_traces, scores

ACTIVE_THRESHOLD = 0.01


class KLPerDimensionUnavailable(UserError):
    """KL per dimension needs a factorized q(z|x) and p(z) with a closed-form univariate KL."""


def univariate_factors(d: Distribution) -> Distribution | None:
    """The univariate base of ``Independent(base, 1)`` (event shape ``(D,)``), else ``None``."""
    while isinstance(d, Independent) and d.reinterpreted_batch_ndims == 1:
        if d.base_dist.event_shape == ():
            return d.base_dist
        d = d.base_dist
    return None


def _factor_kl(q: Distribution, p: Distribution) -> torch.Tensor:
    """Elementwise KL of the factors, shape ``(B, D)``; raises when it does not exist."""
    q_factors, p_factors = univariate_factors(q), univariate_factors(p)
    if q_factors is None or p_factors is None:
        raise KLPerDimensionUnavailable(
            f"KL per latent dimension is not available for q = {type(q).__name__}, p = {type(p).__name__}: "
            f"it needs both to factorize over dimensions (Independent over a univariate distribution)"
        )
    try:
        return kl_divergence(q_factors, p_factors)
    except NotImplementedError:
        raise KLPerDimensionUnavailable(
            f"KL per latent dimension is not available: no closed-form KL between "
            f"{type(q_factors).__name__} and {type(p_factors).__name__}"
        ) from None


def _batches(x: torch.Tensor, y: torch.Tensor | None, batch_size: int):
    for start in range(0, x.shape[0], batch_size):
        yield x[start : start + batch_size], None if y is None else y[start : start + batch_size]


def _site_kl(model_trace, guide_trace, name: str, nesting: int) -> torch.Tensor:
    """``(B, D_s)`` KL of each dimension of one site; raises when it does not factorize."""
    q_site, p_site = guide_trace.nodes[name], model_trace.nodes[name]
    kl = _factor_kl(q_site["fn"], p_site["fn"])  # (*batch, D_s)
    return per_datapoint(kl.movedim(-1, 0), q_site, nesting).movedim(0, -1)


def kl_per_dimension(
    model, x: torch.Tensor, batch_size: int = 1000, y: torch.Tensor | None = None, seed: int = 0
) -> dict[str, torch.Tensor]:
    r"""Per latent site that factorizes, the mean over ``x`` of :math:`\mathrm{KL}(q(z_{s,u}|\cdot)\|p(z_{s,u}|\cdot))`
    per dimension u: ``{site: (D_s,)}``, in nats.

    Summing a site's entry gives the data mean of its closed-form KL, the one ``TraceMeanField_ELBO``
    uses. No gradients, no parameter change. Raises :class:`KLPerDimensionUnavailable` when no
    latent site factorizes.
    """
    y = evaluation_labels(model, y)
    totals: dict[str, torch.Tensor] = {}
    refused: dict[str, str] = {}
    with evaluation_mode(model, seed, x.device):
        nesting = plate_nesting(model, x[:1], None if y is None else y[:1])
        for xb, yb in _batches(x, y, batch_size):
            model_trace, guide_trace = run_traces(model, xb, yb)
            for name in scores(model_trace, guide_trace, nesting).latent:
                if name in refused:
                    continue
                try:
                    kl = _site_kl(model_trace, guide_trace, name, nesting).double().sum(0)
                except KLPerDimensionUnavailable as err:
                    refused[name] = str(err)
                    continue
                totals[name] = kl if name not in totals else totals[name] + kl
    if not totals:
        raise KLPerDimensionUnavailable(
            "; ".join(f"site '{n}': {m}" for n, m in refused.items())
            or "KL per latent dimension is not available: the model has no latent site"
        )
    return {name: (total / x.shape[0]).float() for name, total in totals.items() if name not in refused}


def has_kl_per_dimension(model, x: torch.Tensor, y: torch.Tensor | None = None) -> bool:
    """Whether :func:`kl_per_dimension` has an entry for some latent site (checked on ``x[:2]``)."""
    try:
        kl_per_dimension(model, x[:2], y=None if y is None else y[:2])
    except KLPerDimensionUnavailable:
        return False
    return True


def posterior_means(
    model, x: torch.Tensor, batch_size: int = 1000, samples: int = 100, seed: int = 0, y: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    r""":math:`E_q[z_s|x]` of every latent site for every row of ``x``: ``{site: (N, D_s)}`` (the event
    flattened). The mean of each site's q where it has one, else its draws, averaged over ``samples``
    draws of the guide (seeded), which integrates over the site's latent parents. A site whose q has
    no mean in its own space (a categorical over class indices, as M2's label: torch gives NaN) is
    left out rather than reported as an inactive unit."""
    y = evaluation_labels(model, y)
    out: dict[str, list[torch.Tensor]] = {}
    with evaluation_mode(model, seed, x.device):
        nesting = plate_nesting(model, x[:1], None if y is None else y[:1])
        for xb, yb in _batches(x, y, batch_size):
            for name, site in guide_trace(model, xb, yb, samples, nesting).nodes.items():
                if site["type"] != "sample" or site["is_observed"]:
                    continue
                try:
                    mean = site["fn"].mean
                except NotImplementedError:
                    mean = site["value"]
                if not bool(torch.isfinite(mean).all()):  # a class index has no mean
                    continue
                mean = mean.expand(site["value"].shape).double().mean(0)  # over the draws: (B, *event)
                out.setdefault(name, []).append(mean.reshape(xb.shape[0], -1).float())
    return {name: torch.cat(parts) for name, parts in out.items()}


def activity(model, x: torch.Tensor, batch_size: int = 1000, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    r"""Per latent site, the activity :math:`A_{s,u} = \mathrm{Var}_x(E_q[z_{s,u}|x])` of each dimension,
    ``{site: (D_s,)}``."""
    means = posterior_means(model, x, batch_size, y=y)
    return {
        name: m.double().var(0, correction=1).float() if x.shape[0] > 1 else torch.zeros(m.shape[1])
        for name, m in means.items()
    }


def active_units_per_site(
    model, x: torch.Tensor, threshold: float = ACTIVE_THRESHOLD, batch_size: int = 1000, y: torch.Tensor | None = None
) -> dict[str, int]:
    """Per latent site, the number of its dimensions with activity above ``threshold``."""
    return {name: int((a > threshold).sum()) for name, a in activity(model, x, batch_size, y).items()}


def active_units(
    model, x: torch.Tensor, threshold: float = ACTIVE_THRESHOLD, batch_size: int = 1000, y: torch.Tensor | None = None
) -> int:
    """Number of active latent dimensions over all latent sites (Burda et al.'s threshold: 0.01)."""
    return sum(active_units_per_site(model, x, threshold, batch_size, y).values())
