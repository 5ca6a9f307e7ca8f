r"""The VAE: three modules that return distributions, composed into a Pyro model and guide.

Generative story (Kingma & Welling 2014) and amortized posterior::

    z ~ p(z)            (prior)
    x ~ p(x | z)        (likelihood)
    q(z | x)            (guide / posterior)

``model`` and ``guide`` never branch on what is plugged in: every prior, guide and
likelihood of the zoo (or a user's own) goes through the same two functions. It is one model of
the interface in :mod:`pyrovae.model.base` (one latent site ``z``, one observed site ``x``); KL
annealing reaches ``z`` through the trainer's effect handler, so neither method takes ``beta``.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import pyro
import torch
from torch import nn

from pyrovae.errors import UserError
from pyrovae.model.base import Count, Model
from pyrovae.model.components import Checked, build
from pyrovae.model.guides import GUIDES
from pyrovae.model.likelihoods import LIKELIHOODS
from pyrovae.model.priors import PRIORS

#: a component given by name (table entry or ``"package.module:Class"``), by class, or as a
#: config table ``{"name": ..., **constructor keyword arguments}``
ComponentSpec = str | type | Mapping[str, Any]
TABLES = {"prior": PRIORS, "guide": GUIDES, "likelihood": LIKELIHOODS}
_STORE_NAMES: dict[str, itertools.count] = {}


class ComponentModel(Model):
    """What the models built of components share: building a component from its spec with the
    context it asks for, registering the parameters with Pyro in training, and what the
    likelihood says about its data (:attr:`data_hint`, :attr:`reports_bits_per_dim`)."""

    components = {"prior": "prior", "guide": "guide", "likelihood": "likelihood"}

    @staticmethod
    def _component(kind: str, given, context: dict) -> nn.Module:
        if isinstance(given, nn.Module):
            return given
        spec = given if isinstance(given, Checked) else dict(given) if isinstance(given, Mapping) else {"name": given}
        return build(kind, spec, TABLES[kind], **context)

    #: the name its parameters have in Pyro's parameter store; a second instance in a process gets
    #: ``vae1``, a third ``vae2``..., so that two models never share (or shadow) stored parameters
    pyro_name = "vae"

    #: whether :meth:`register` registers: the trainer's eager step turns it off while it runs
    #: (:class:`~pyrovae.infer.elbo.ELBOLoss`): its torch optimizer holds the module's parameters and
    #: nothing reads Pyro's store, and registering in both model and guide cost 15% of a small model's step
    registers = True

    def register(self) -> None:
        """``pyro.module(name, self)`` in training mode: Pyro's SVI and the JIT ELBOs find the
        parameters through it. Evaluation (``eval()``: validation, IWAE, AIS) needs no parameter
        store, and registering every parameter at each call was a third of an IWAE chunk's Pyro time."""
        if self.training and self.registers:
            pyro.module(self.store_name, self)

    @property
    def store_name(self) -> str:
        """This instance's name in Pyro's parameter store (see :attr:`pyro_name`)."""
        if "_store_name" not in self.__dict__:
            taken = _STORE_NAMES.setdefault(self.pyro_name, itertools.count())
            number = next(taken)
            self.__dict__["_store_name"] = self.pyro_name + (str(number) if number else "")
        return self.__dict__["_store_name"]

    @property
    def reports_bits_per_dim(self) -> bool:
        """Whether the likelihood is a mass over discrete data (runs then log ``<split>/bpd``)."""
        return bool(getattr(self.likelihood, "reports_bits_per_dim", False))

    @property
    def data_hint(self) -> str:
        """What to tell a user whose data the likelihood does not model."""
        return getattr(self.likelihood, "data_hint", "")


class VAE(ComponentModel):
    """A prior, a guide and a likelihood; :meth:`model` and :meth:`guide` for Pyro.

    Each component is a module instance, or a spec that this constructor builds with the
    context arguments its class asks for (``latent_dim``, ``data_shape``, and ``guide`` for a
    prior such as the VampPrior)::

        VAE(prior=MyPrior, guide="diagonal_normal", likelihood={"name": "bernoulli", "hidden": [64]},
            latent_dim=8, data_shape=(1, 28, 28))

    When all three are specs, :attr:`config` is the resolved ``[model]`` section (every default
    filled in), which a tracked run logs so that it can be rebuilt; with module instances it is
    ``None``. The modules are the attributes ``prior``, ``posterior`` (q(z|x); ``guide`` is the
    Pyro guide *function*) and ``likelihood``. A subclass may override ``model``/``guide`` (e.g.
    a second latent site) and add constructor arguments: it is recorded and rebuilt as itself.
    """

    def __init__(
        self,
        prior: nn.Module | ComponentSpec = "standard_normal",
        guide: nn.Module | ComponentSpec = "diagonal_normal",
        likelihood: nn.Module | ComponentSpec = "bernoulli",
        *,
        latent_dim: Count,
        data_shape: Sequence[int],
    ):
        super().__init__()
        self.latent_dim = int(latent_dim)
        self.data_shape = tuple(int(d) for d in data_shape)
        context = {"latent_dim": self.latent_dim, "data_shape": self.data_shape}
        posterior = self._component("guide", guide, context)  # a VampPrior is built on it
        self.prior = self._component("prior", prior, {**context, "guide": posterior})
        self.posterior = posterior
        self.likelihood = self._component("likelihood", likelihood, context)

    def model(self, x: torch.Tensor) -> None:
        self.register()
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior())
            pyro.sample("x", self.likelihood(z), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        self.register()
        with pyro.plate("data", x.shape[0]):
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
        """Fail with one clear line when a plugged-in module breaks the shape contract, including
        for ``z`` with a leading sample dimension, shape ``(K, B, latent_dim)``, as IWAE and AIS
        pass it."""
        with torch.no_grad():
            batch = (x.shape[0],)
            _check_shapes("prior", self.prior, self.prior(), (), (self.latent_dim,))
            q = self.posterior(x)
            _check_shapes("guide", self.posterior, q, batch, (self.latent_dim,))
            _check_shapes("likelihood", self.likelihood, self.likelihood(q.sample()), batch, self.data_shape)
            with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
                z = q.sample((2,))  # under a fork: runs keep the random stream of pyrovae 0.2
            try:
                p = self.likelihood(z)
            except Exception as err:
                raise UserError(
                    f"likelihood {type(self.likelihood).__name__} fails on z of shape {tuple(z.shape)} "
                    f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); IWAE and "
                    f"AIS pass z with leading sample dimensions (K, B, latent_dim): reshape with "
                    f"z.shape[:-1], not z.shape[0]"
                ) from None
            _check_shapes("likelihood", self.likelihood, p, (2, *batch), self.data_shape)


def _check_shapes(label: str, module: nn.Module, d, batch_shape: tuple, event_shape: tuple) -> None:
    found = (tuple(d.batch_shape), tuple(d.event_shape))
    if found != (batch_shape, event_shape):
        raise UserError(
            f"{label} {type(module).__name__} returned batch_shape {found[0]}, event_shape {found[1]}; "
            f"expected {batch_shape} and {event_shape}"
        )


def build_vae(model_config: Mapping, data_shape: Sequence[int]) -> VAE:
    """A :class:`VAE` from a ``[model]`` config section (``latent_dim`` and the three component tables)."""
    return VAE(
        model_config["prior"],
        model_config["guide"],
        model_config["likelihood"],
        latent_dim=model_config["latent_dim"],
        data_shape=data_shape,
    )
