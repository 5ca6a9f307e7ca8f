r"""A pyrovae VAE whose generative model *is* a given probabilistic-PCA model (no training).

The ``gaussian`` likelihood with ``hidden = []`` is the linear map :math:`z \mapsto Wz + b` with
noise :math:`\sigma`; the ``diagonal_normal`` guide with ``hidden = []`` is affine in x. Its
mean is set to the exact posterior mean :math:`\Sigma W^T (x - b)/\sigma^2` with
:math:`\Sigma^{-1} = \Lambda = I + W^T W / \sigma^2`, and its scale to the best mean-field scale
:math:`1/\sqrt{\Lambda_{uu}}` times ``scale_factor``. The exact posterior is correlated, so
even the best diagonal q leaves a gap: ELBO < IWAE_K < log p(x) strictly, with the ELBO
known in closed form (:func:`exact_elbo`).
"""

from __future__ import annotations

import torch
from torch.distributions import MultivariateNormal, kl_divergence

from pyrovae.data import PPCA
from pyrovae.model.vae import build_vae
from pyrovae.run import config


def inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    return y.expm1().log()


def linear_vae(truth: PPCA, scale_factor: float = 1.0):
    data_dim, latent_dim = truth.weight.shape
    cfg = config.load(
        None,
        [
            f"model.latent_dim={latent_dim}",
            "model.guide.hidden=[]",
            "model.likelihood.name=gaussian",
            "model.likelihood.hidden=[]",
        ],
    )
    vae = build_vae(cfg["model"], (data_dim,))
    W, b, s2 = truth.weight, truth.bias, truth.noise**2
    precision = torch.eye(latent_dim) + W.T @ W / s2
    gain = torch.linalg.inv(precision) @ W.T / s2  # (D, data_dim)
    scale = scale_factor / precision.diagonal().sqrt()
    with torch.no_grad():
        decoder = vae.likelihood.decoder.net[0]
        decoder.weight.copy_(W)
        decoder.bias.copy_(b)
        vae.likelihood.raw_scale.copy_(inverse_softplus(torch.tensor(truth.noise - 1e-4)))
        head = vae.posterior.head
        head.weight.zero_()
        head.weight[:latent_dim] = gain
        head.bias[:latent_dim] = -gain @ b
        head.bias[latent_dim:] = inverse_softplus(scale - 1e-5)
    return vae


def exact_posterior(truth: PPCA, x: torch.Tensor) -> MultivariateNormal:
    W, b, s2 = truth.weight, truth.bias, truth.noise**2
    cov = torch.linalg.inv(torch.eye(W.shape[1]) + W.T @ W / s2)
    return MultivariateNormal((x - b) @ (cov @ W.T / s2).T, covariance_matrix=cov)


def exact_elbo(vae, truth: PPCA, x: torch.Tensor) -> torch.Tensor:
    r"""ELBO(x) = log p(x) - KL(q(z|x) || p(z|x)), closed form, shape ``(N,)``."""
    with torch.no_grad():
        q = vae.posterior(x).base_dist
        q_full = MultivariateNormal(q.loc, scale_tril=torch.diag_embed(q.scale))
        return truth.log_prob(x) - kl_divergence(q_full, exact_posterior(truth, x))
