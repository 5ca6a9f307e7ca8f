r"""Data sets made from a seed, so the whole pipeline runs with no files at all.

``synthetic``: 12x12 grey images of bars and blocks (four classes), a stand-in for MNIST that a
small VAE learns in seconds.

``ppca``: probabilistic PCA (Tipping & Bishop 1999), the linear-Gaussian model

.. math::  z \sim N(0, I_d), \quad x = W z + b + \sigma \epsilon, \quad
           \log p(x) = \log N(x; b, W W^T + \sigma^2 I_D),

whose exact log-likelihood lets the tests check ELBO, IWAE and AIS against the truth. The
``gaussian`` likelihood with ``hidden = []`` (a linear decoder) represents it exactly.
"""

from __future__ import annotations

import torch
from torch.distributions import MultivariateNormal

from pyrovae.data.splits import Splits

SIZES = (3000, 500, 500)


def _bars(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    size = 12
    labels = torch.randint(0, 4, (n,), generator=gen)
    pos = torch.randint(1, size - 4, (n, 2), generator=gen)
    width = torch.randint(2, 4, (n,), generator=gen)
    rows = torch.arange(size).view(1, size, 1)
    cols = torch.arange(size).view(1, 1, size)
    r0, c0, w = pos[:, 0].view(-1, 1, 1), pos[:, 1].view(-1, 1, 1), width.view(-1, 1, 1)
    horizontal = ((rows >= r0) & (rows < r0 + w)).expand(n, size, size)
    vertical = ((cols >= c0) & (cols < c0 + w)).expand(n, size, size)
    block = (rows >= r0) & (rows < r0 + 2 * w) & (cols >= c0) & (cols < c0 + 2 * w)
    shapes = torch.stack([horizontal, vertical, horizontal | vertical, block], 1)
    img = shapes[torch.arange(n), labels].float()
    intensity = 0.75 + 0.2 * torch.rand(n, 1, 1, generator=gen)
    return (img * intensity + 0.02).clamp(0, 1).unsqueeze(1), labels


def load_synthetic(cfg: dict) -> Splits:
    gen = torch.Generator().manual_seed(cfg["seed"])
    parts = [_bars(n, gen) for n in SIZES]
    return Splits(
        name="synthetic",
        train=parts[0][0],
        train_labels=parts[0][1],
        val=parts[1][0],
        val_labels=parts[1][1],
        test=parts[2][0],
        test_labels=parts[2][1],
        binarize=cfg["binarize"],
        seed=cfg["seed"],
        classes=4,
        info={"source": f"synthetic bars, seed {cfg['seed']}", "split": "3000 / 500 / 500"},
    )


class PPCA:
    """A linear-Gaussian model with its exact marginal; ``sample(n)`` draws data from it."""

    def __init__(self, data_dim: int = 10, latent_dim: int = 2, noise: float = 0.5, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(data_dim, latent_dim, generator=gen)
        self.bias = torch.randn(data_dim, generator=gen)
        self.noise = noise
        self.latent_dim = latent_dim
        self.gen = gen

    def marginal(self) -> MultivariateNormal:
        cov = self.weight @ self.weight.T + self.noise**2 * torch.eye(len(self.bias))
        return MultivariateNormal(self.bias, covariance_matrix=cov)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(x), shape ``(N,)`` for ``x`` of shape ``(N, data_dim)``."""
        return self.marginal().log_prob(x.cpu()).to(x.device)

    def sample(self, n: int) -> torch.Tensor:
        z = torch.randn(n, self.latent_dim, generator=self.gen)
        return z @ self.weight.T + self.bias + self.noise * torch.randn(n, len(self.bias), generator=self.gen)


def load_ppca(cfg: dict) -> Splits:
    truth = PPCA(seed=cfg["seed"])
    train, val, test = (truth.sample(n) for n in SIZES)
    return Splits(
        name="ppca",
        train=train,
        val=val,
        test=test,
        binarize=False,
        seed=cfg["seed"],
        info={
            "source": f"probabilistic PCA 10-d data, 2-d latent, noise 0.5, seed {cfg['seed']}",
            "split": "3000 / 500 / 500",
        },
        truth=truth,
    )
