r"""The VAE: three modules that return distributions, composed into a Pyro model and guide.

Generative story (Kingma & Welling 2014) and amortized posterior::

    z ~ p(z)            (prior)
    x ~ p(x | z)        (likelihood)
    q(z | x)            (guide / posterior)

``model`` and ``guide`` never branch on what is plugged in: every prior, guide and
likelihood of the zoo (or a user's own) goes through the same two functions. KL annealing
scales the latent site by ``beta`` in *both* of them, so that ``Trace_ELBO`` optimizes
``E_q[log p(x|z)] - beta * KL`` and ``TraceMeanField_ELBO`` scales its analytic KL too (it
takes the guide site's scale; a scale on the model's site alone would optimize another
objective). Evaluation always passes ``beta = 1``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence, Union

import pyro
import torch
from pyro import poutine
from torch import nn

from pyrovae.errors import UserError
from pyrovae.model.guides import GUIDES
from pyrovae.model.likelihoods import LIKELIHOODS
from pyrovae.model.priors import PRIORS
from pyrovae.model.components import build, check_arguments


#: a component given by name (table entry or ``"package.module:Class"``), by class, or as a
#: config table ``{"name": ..., **constructor keyword arguments}``
ComponentSpec = Union[str, type, Mapping[str, Any]]
TABLES = {"prior": PRIORS, "guide": GUIDES, "likelihood": LIKELIHOODS}


class VAE(nn.Module):
    """A prior, a guide and a likelihood; :meth:`model` and :meth:`guide` for Pyro.

    Each component is a module instance, or a spec that this constructor builds with the
    context arguments its class asks for (``latent_dim``, ``data_shape``, and ``guide`` for a
    prior such as the VampPrior)::

        VAE(prior=MyPrior, guide="diagonal_normal", likelihood={"name": "bernoulli", "hidden": [64]},
            latent_dim=8, data_shape=(1, 28, 28))

    When all three are specs, :attr:`config` is the resolved ``[model]`` section (every default
    filled in), which a tracked run logs so that it can be rebuilt; with module instances it is
    ``None``. The modules are the attributes ``prior``, ``posterior`` (q(z|x); ``guide`` is the
    Pyro guide *function*) and ``likelihood``.
    """

    def __init__(self, prior: "nn.Module | ComponentSpec" = "standard_normal",
                 guide: "nn.Module | ComponentSpec" = "diagonal_normal",
                 likelihood: "nn.Module | ComponentSpec" = "bernoulli", *,
                 latent_dim: int, data_shape: Sequence[int]):
        super().__init__()
        self.latent_dim = int(latent_dim)
        self.data_shape = tuple(int(d) for d in data_shape)
        context = {"latent_dim": self.latent_dim, "data_shape": self.data_shape}
        specs: dict[str, Any] = {"latent_dim": self.latent_dim}
        posterior = self._component("guide", guide, specs, context)  # a VampPrior is built on it
        self.prior = self._component("prior", prior, specs, {**context, "guide": posterior})
        self.posterior = posterior
        self.likelihood = self._component("likelihood", likelihood, specs, context)
        #: the resolved [model] section in config order, or None when modules were given
        self.config: dict[str, Any] | None = (
            {k: specs[k] for k in ("latent_dim", "prior", "guide", "likelihood")} if len(specs) == 4 else None)

    @staticmethod
    def _component(kind: str, given, specs: dict, context: dict) -> nn.Module:
        if isinstance(given, nn.Module):
            return given
        spec = dict(given) if isinstance(given, Mapping) else {"name": given}
        cls, kwargs = check_arguments(kind, spec, TABLES[kind], context)
        specs[kind] = {"name": spec["name"], **kwargs}
        return build(kind, spec, TABLES[kind], **context)

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
            batch = (x.shape[0],)
            _check_shapes("prior", self.prior, self.prior(), (), (self.latent_dim,))
            q = self.posterior(x)
            _check_shapes("guide", self.posterior, q, batch, (self.latent_dim,))
            _check_shapes("likelihood", self.likelihood, self.likelihood(q.sample()), batch, self.data_shape)


def _check_shapes(label: str, module: nn.Module, d, batch_shape: tuple, event_shape: tuple) -> None:
    found = (tuple(d.batch_shape), tuple(d.event_shape))
    if found != (batch_shape, event_shape):
        raise UserError(f"{label} {type(module).__name__} returned batch_shape {found[0]}, event_shape {found[1]}; "
                        f"expected {batch_shape} and {event_shape}")


def build_vae(model_config: Mapping, data_shape: Sequence[int]) -> VAE:
    """A :class:`VAE` from a ``[model]`` config section (``latent_dim`` and the three component tables)."""
    return VAE(model_config["prior"], model_config["guide"], model_config["likelihood"],
               latent_dim=model_config["latent_dim"], data_shape=data_shape)
