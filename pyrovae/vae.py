r"""The VAE: three modules that return distributions, composed into a Pyro model and guide.

Generative story (Kingma & Welling 2014) and amortized posterior::

    z ~ p(z)            (prior)
    x ~ p(x | z)        (likelihood)
    q(z | x)            (guide / posterior)

``model`` and ``guide`` never branch on what is plugged in: every prior, guide and
likelihood of the zoo (or a user's own) goes through the same two functions. KL annealing
scales the latent site by ``beta`` in *both* of them, so that ``Trace_ELBO`` optimizes
``E_q[log p(x|z)] - beta * KL`` and ``TraceMeanField_ELBO`` scales its analytic KL too
(DESIGN.md, fact 3). Evaluation always passes ``beta = 1``.
"""

from __future__ import annotations

from typing import Mapping

import pyro
import torch
from pyro import poutine
from torch import nn

from pyrovae.errors import UserError
from pyrovae.guides import GUIDES
from pyrovae.likelihoods import LIKELIHOODS
from pyrovae.priors import PRIORS
from pyrovae.registry import build


class VAE(nn.Module):
    """A prior, a guide and a likelihood module; ``model``/``guide`` for Pyro's SVI.

    Attributes are named ``prior``, ``posterior`` (the q(z|x) module; ``guide`` is the Pyro
    guide *function*) and ``likelihood``.
    """

    def __init__(self, prior: nn.Module, posterior: nn.Module, likelihood: nn.Module,
                 latent_dim: int, data_shape: tuple[int, ...]):
        super().__init__()
        self.prior = prior
        self.posterior = posterior
        self.likelihood = likelihood
        self.latent_dim = latent_dim
        self.data_shape = tuple(data_shape)

    def model(self, x: torch.Tensor, beta: float | torch.Tensor = 1.0) -> None:
        pyro.module("vae", self)
        with pyro.plate("data", x.shape[0]):
            with poutine.scale(scale=beta):
                z = pyro.sample("z", self.prior())
            pyro.sample("x", self.likelihood(z), obs=x)

    def guide(self, x: torch.Tensor, beta: float | torch.Tensor = 1.0) -> None:
        pyro.module("vae", self)
        with pyro.plate("data", x.shape[0]), poutine.scale(scale=beta):
            pyro.sample("z", self.posterior(x))

    # Conveniences for users of a trained model (and for the image logger).
    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """A sample z ~ q(z|x), shape ``(B, latent_dim)``."""
        return self.posterior(x).sample()

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The mean of p(x|z), shape ``(*z.shape[:-1], *data_shape)``."""
        return self.likelihood(z).mean

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder mean at a posterior sample: E[x | z], z ~ q(z|x)."""
        return self.decode(self.encode(x))

    @torch.no_grad()
    def generate(self, n: int) -> torch.Tensor:
        """Decoder means of ``n`` prior samples, shape ``(n, *data_shape)``."""
        return self.decode(self.prior().sample((n,)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct ``x`` (so the module does something sensible when called)."""
        return self.reconstruct(x)

    def check_contract(self, x: torch.Tensor) -> None:
        """Fail with one clear line when a plugged-in module breaks the shape contract."""
        with torch.no_grad():
            p, q = self.prior(), self.posterior(x)
            expect = (self.latent_dim,)
            for label, d, batch in (("prior", p, ()), ("guide", q, (x.shape[0],))):
                if tuple(d.event_shape) != expect or tuple(d.batch_shape) != batch:
                    raise UserError(
                        f"{label} {type(getattr(self, 'prior' if label == 'prior' else 'posterior')).__name__} "
                        f"returned batch_shape {tuple(d.batch_shape)}, event_shape {tuple(d.event_shape)}; "
                        f"expected {batch} and {expect}")
            lik = self.likelihood(q.sample())
            if tuple(lik.event_shape) != self.data_shape or tuple(lik.batch_shape) != (x.shape[0],):
                raise UserError(
                    f"likelihood {type(self.likelihood).__name__} returned batch_shape "
                    f"{tuple(lik.batch_shape)}, event_shape {tuple(lik.event_shape)}; expected "
                    f"({x.shape[0]},) and the data shape {self.data_shape}")


def build_vae(model_config: Mapping, data_shape: tuple[int, ...]) -> VAE:
    """Build a :class:`VAE` from the ``[model]`` config section (already validated)."""
    latent_dim = int(model_config["latent_dim"])
    data_shape = tuple(data_shape)
    posterior = build("guide", model_config["guide"], GUIDES, data_shape=data_shape, latent_dim=latent_dim)
    prior = build("prior", model_config["prior"], PRIORS, latent_dim=latent_dim,
                  data_shape=data_shape, guide=posterior)
    likelihood = build("likelihood", model_config["likelihood"], LIKELIHOODS,
                       latent_dim=latent_dim, data_shape=data_shape)
    return VAE(prior, posterior, likelihood, latent_dim, data_shape)
