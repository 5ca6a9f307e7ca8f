r"""What pyrovae needs from a model, and :class:`Model`, a base class that records how it was built.

**The model interface.** pyrovae trains, validates, scores and tracks any ``nn.Module`` with two
methods, written as for Pyro's SVI:

- ``model(x)`` or ``model(x, y=None)``: the generative story of one batch ``x`` of shape
  ``(B, *data_shape)`` (and ``y``, side information such as labels, one row per datapoint);
- ``guide(x)`` or ``guide(x, y=None)``: the amortized posterior, with the same arguments;

with every sample site inside one ``pyro.plate("data", B)`` over the batch (nested plates inside it
are fine), at least one observed site (``obs=x``), and every latent site of the model sampled by the
guide too. Site names are free. A parameter ``y`` without a default makes a *conditional* model
(trained and scored with labels: log p(x | y)); ``y=None`` makes the labels optional (scored
without them: log p(x), the label a latent variable). KL annealing reaches every latent site
through an effect handler (:class:`pyrovae.infer.elbo.ScaleLatents`): model code does not take
``beta``. The model's networks must accept leading sample dimensions (IWAE and AIS draw latent
values of shape ``(K, B, *event_shape)``). Call ``pyro.module(name, self)`` in ``model`` and
``guide`` (needed by ``train.jit``). :func:`pyrovae.infer.interface.check_model` checks all of this
on a few datapoints before training, each broken rule one line.

Optional hooks, used for the image artifacts when present: ``decode(z)`` (the mean of p(x|z) for a
single latent site of dimension 2: the latent manifold figure). Reconstructions and samples are
read from the traces (the data site's mean), so they need no hook.

**Rebuilding.** A run rebuilds its model from the ``[model]`` table it logged: ``name`` (an entry
of :data:`pyrovae.model.models.MODELS` or ``"package.module:Class"``) and the constructor's keyword
arguments. A :class:`Model` subclass records the arguments it was constructed with, so
``train(MyModel(latent_dim=8, ...), data)`` logs ``{"name": "my_module:MyModel", "latent_dim": 8,
...}`` and ``load_vae`` / ``evaluate`` / ``resume`` / ``sample`` build the same class again, extra
parameters of a subclass included. The data supplies the *context* arguments ``data_shape`` and
``num_classes``, which a constructor receives when it names them and which are never logged.
"""

from __future__ import annotations

import inspect
from typing import Annotated, Any, ClassVar

from pydantic import Field
from torch import nn

#: an annotation for a count argument (``latent_dim``): a config value below 1 is one line
Count = Annotated[int, Field(ge=1)]

#: constructor arguments pyrovae supplies from the data, never part of a logged config
CONTEXT = ("data_shape", "num_classes")


class Model(nn.Module):
    """An ``nn.Module`` with ``model``/``guide`` methods that remembers its constructor arguments.

    Subclass it, write ``__init__`` (keyword arguments with JSON/TOML-able values or component
    specs), ``model`` and ``guide``: :attr:`config` is then what a run logs to rebuild it.
    """

    #: constructor arguments that name a component (prior, guide, likelihood), by their table
    components: ClassVar[dict[str, str]] = {}

    def __new__(cls, *args: Any, **kwargs: Any):
        obj = super().__new__(cls)
        try:
            bound = inspect.signature(cls).bind(*args, **kwargs)
            bound.apply_defaults()
            arguments = dict(bound.arguments)
        except TypeError:  # unpickling and copying call __new__ without arguments; __init__ reports bad calls
            arguments = {}
        object.__setattr__(obj, "_arguments", arguments)  # before nn.Module.__init__, so not via __setattr__
        return obj

    @property
    def config(self) -> dict[str, Any] | None:
        """The resolved ``[model]`` table that rebuilds this model: the class as ``name`` and the
        constructor's arguments, each component's defaults filled in and the context arguments left
        out; ``None`` when an argument is a module instance (which no config can name)."""
        from pyrovae.model.models import resolve_model

        arguments = getattr(self, "_arguments", None)
        if arguments is None:  # an object unpickled from a pyrovae 0.2 model
            legacy = self.__dict__.get("_legacy_config")
            return None if legacy is None else {"name": type(self), **legacy}
        if any(isinstance(v, nn.Module) for v in arguments.values()):
            return None
        params = inspect.signature(type(self)).parameters
        config: dict[str, Any] = {"name": type(self)}
        for key, value in arguments.items():
            if key in CONTEXT or params[key].kind == params[key].VAR_POSITIONAL:
                continue
            if params[key].kind == params[key].VAR_KEYWORD:
                config.update((k, v) for k, v in value.items() if k not in CONTEXT)
            else:
                config[key] = value
        return resolve_model(config)

    def __setstate__(self, state: dict) -> None:
        # pyrovae 0.2 pickled its VAE with a plain ``config`` attribute, which the property shadows
        if "config" in state and "_arguments" not in state:
            state = {**state, "_legacy_config": state.pop("config"), "_arguments": None}
        super().__setstate__(state)
