r"""The two reference points pyrovae's training step is measured against.

``HandVAE``: the same VAE (784-400-50 MLP encoder with a diagonal Gaussian head, 50-400-784
decoder on Bernoulli logits) written in plain PyTorch, with the closed-form KL

.. math:: \mathrm{KL}(N(\mu, \sigma^2) \| N(0, 1)) = \tfrac12 \sum_j (\mu_j^2 + \sigma_j^2 - 1 - 2\log\sigma_j),

``binary_cross_entropy_with_logits`` and one plain ``torch.optim.Adam``. No framework does
less per step, so its throughput is the floor of framework overhead.

``ExamplePipeline``: the style of Pyro's own ``examples/vae/vae.py`` -- a ``DataLoader`` that
collates per-item uint8 -> float tensors (what ``torchvision.datasets.MNIST`` with
``ToTensor`` hands out, minus the PIL round trip), ``SVI.step`` with ``Trace_ELBO`` and
``pyro.optim.Adam`` (one torch optimizer per parameter tensor). Its modules are registered
under their own names ("example_encoder"/"example_decoder") so that it shares the param store
with pyrovae's "vae" without either shadowing the other.

``hand_validation`` and ``hand_iwae``: pyrovae's validation terms and IWAE bound of the default VAE
(Gaussian guide, standard normal prior, Bernoulli decoder) written as tensor code over that VAE's
own networks (:func:`hand_networks`), batch by batch, without traces: the floor of evaluation's
overhead. Given the same seed they draw the same numbers as :func:`pyrovae.infer.terms.validate`
and :func:`pyrovae.infer.estimators.iwae.iwae`, and compute the same values (tested).
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pyro.optim
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Trace_ELBO
from torch import nn
from torch.utils.data import DataLoader, Dataset


class GaussianEncoder(nn.Module):
    """x ``(B, 784)`` -> (loc, scale), each ``(B, latent)``; scale = softplus + 1e-5 as in pyrovae."""

    def __init__(self, data_dim: int, hidden: int, latent: int):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(data_dim, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, 2 * latent)

    def forward(self, x):
        loc, raw = self.head(self.body(x)).chunk(2, dim=-1)
        return loc, F.softplus(raw) + 1e-5


def decoder(latent: int, hidden: int, data_dim: int) -> nn.Module:
    """z ``(..., latent)`` -> Bernoulli logits ``(..., data_dim)``."""
    return nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, data_dim))


class HandVAE(nn.Module):
    """Plain PyTorch; ``loss(x)`` is the negative ELBO summed over the batch (as Trace_ELBO's)."""

    def __init__(self, data_dim: int = 784, hidden: int = 400, latent: int = 50, lr: float = 1e-3):
        super().__init__()
        self.encoder = GaussianEncoder(data_dim, hidden, latent)
        self.decoder = decoder(latent, hidden, data_dim)
        self.optim = torch.optim.Adam(self.parameters(), lr=lr)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        loc, scale = self.encoder(x)
        z = loc + scale * torch.randn_like(loc)
        recon = F.binary_cross_entropy_with_logits(self.decoder(z), x, reduction="sum")
        kl = 0.5 * (loc.pow(2) + scale.pow(2) - 1).sum() - scale.log().sum()
        return recon + kl

    def train_batches(self, batches) -> float:
        """One pass over ``batches``; the loss is summed on the device and read once at the end."""
        total = torch.zeros(())
        for x in batches:
            loss = self.loss(x)
            self.optim.zero_grad(set_to_none=True)
            loss.backward()
            self.optim.step()
            total = total + loss.detach()
        return float(total)


class UInt8Images(Dataset):
    """Per-item ``uint8 (1, 28, 28)`` -> ``float (784,)`` in [0, 1], as a torchvision data set does."""

    def __init__(self, images: torch.Tensor):
        self.images = (images * 255).round().to(torch.uint8).cpu()

    def __len__(self):
        return self.images.shape[0]

    def __getitem__(self, i):
        return self.images[i].float().div(255.0).flatten(), 0


class ExampleVAE(nn.Module):
    """Pyro's example VAE (``examples/vae/vae.py``) with pyrovae's layer sizes and activations."""

    def __init__(self, data_dim: int = 784, hidden: int = 400, latent: int = 50):
        super().__init__()
        self.encoder = GaussianEncoder(data_dim, hidden, latent)
        self.decoder = decoder(latent, hidden, data_dim)
        self.latent = latent

    def model(self, x):
        pyro.module("example_decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            prior = dist.Normal(x.new_zeros(self.latent), x.new_ones(self.latent)).to_event(1)
            z = pyro.sample("latent", prior)
            pyro.sample("obs", dist.Bernoulli(logits=self.decoder(z), validate_args=False).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("example_encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(x)
            pyro.sample("latent", dist.Normal(loc, scale).to_event(1))


class ExamplePipeline:
    """DataLoader + ``SVI.step`` + ``pyro.optim.Adam``, looping over ``max_batches`` batches."""

    def __init__(
        self, images: torch.Tensor, batch_size: int, device: torch.device, lr: float = 1e-3, hidden=400, latent=50
    ):
        self.vae = ExampleVAE(hidden=hidden, latent=latent).to(device)
        self.device = device
        self.loader = DataLoader(UInt8Images(images), batch_size=batch_size, shuffle=True)
        self.svi = SVI(self.vae.model, self.vae.guide, pyro.optim.Adam({"lr": lr}), Trace_ELBO())

    def train_epoch(self) -> float:
        total = 0.0
        for x, _ in self.loader:
            x = torch.bernoulli(x.to(self.device))  # dynamic binarization, as pyrovae trains
            total += self.svi.step(x)
        return total


LOG_2PI = math.log(2 * math.pi)


def hand_networks(vae):
    """pyrovae's default VAE as two plain functions: ``encode(x) -> (loc, scale)``, each ``(B, latent)``,
    and ``decode(z) -> logits`` of shape ``(*z.shape[:-1], data_dim)``."""
    posterior, decoder = vae.posterior, vae.likelihood.decoder

    def encode(x):
        loc, raw = posterior.head(posterior.encoder(x)).chunk(2, dim=-1)
        return loc, posterior.positive(raw)

    return encode, lambda z: decoder(z).flatten(z.dim() - 1)


def _log_weights(encode, decode, x: torch.Tensor, particles: tuple[int, ...] = ()):
    """``log p(x|z)``, ``log p(z) - log q(z|x)`` at ``z = loc + scale * eps`` with ``eps`` of shape
    ``(*particles, B, latent)`` (drawn as Pyro's guide draws it), and the decoder's logits."""
    loc, scale = encode(x)
    eps = torch.randn(*particles, *loc.shape)
    z = loc + scale * eps
    logits = decode(z)
    log_px = -F.binary_cross_entropy_with_logits(logits, x.flatten(1).expand_as(logits), reduction="none").sum(-1)
    log_pz = -0.5 * (z.pow(2) + LOG_2PI).sum(-1)
    log_qz = -(0.5 * (eps.pow(2) + LOG_2PI) + scale.log()).sum(-1)
    return log_px, log_pz - log_qz, logits


@torch.no_grad()
def hand_validation(encode, decode, x: torch.Tensor, batch_size: int, seed: int = 0) -> dict[str, float]:
    """Mean ``loss``, ``recon``, ``kl`` (one draw, as ``Trace_ELBO``) and ``mse`` over ``x``."""
    torch.manual_seed(seed)
    sums = dict.fromkeys(("loss", "recon", "kl", "mse"), 0.0)
    for start in range(0, x.shape[0], batch_size):
        batch = x[start : start + batch_size]
        log_px, minus_kl, logits = _log_weights(encode, decode, batch)
        mse = (torch.sigmoid(logits) - batch.flatten(1)).pow(2).mean(-1)
        for key, value in (("recon", -log_px), ("kl", -minus_kl), ("loss", -log_px - minus_kl), ("mse", mse)):
            sums[key] += float(value.double().sum())
    return {k: v / x.shape[0] for k, v in sums.items()}


@torch.no_grad()
def hand_iwae(encode, decode, x: torch.Tensor, k: int, batch_size: int, seed: int = 0) -> torch.Tensor:
    """``log (1/K) sum_k w_k`` per row of ``x``, all K draws of a batch at once (no chunks)."""
    torch.manual_seed(seed)
    out = []
    for start in range(0, x.shape[0], batch_size):
        batch = x[start : start + batch_size]
        log_px, log_ratio, _ = _log_weights(encode, decode, batch, (k,))
        out.append((log_px + log_ratio).double().logsumexp(0) - math.log(k))
    return torch.cat(out)
