"""The model table, and the one way a model is built from (and named in) a ``[model]`` table.

``[model]`` holds ``name`` -- an entry of :data:`MODELS` or ``"package.module:Class"`` (any class
with the interface of :mod:`pyrovae.model.base`) -- and that class's keyword arguments, checked
against its signature as component tables are. Arguments the class lists in its ``components``
attribute are component specs (a name, a class, or ``{"name": ..., **arguments}``), resolved
against their own table. The data supplies ``data_shape`` and ``num_classes``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pyrovae.errors import UserError
from pyrovae.model.base import CONTEXT
from pyrovae.model.components import Checked, build, check_arguments, is_checked, resolve_class, signature, spec_name
from pyrovae.model.cvae import ConditionalVAE
from pyrovae.model.hierarchical import HierarchicalVAE
from pyrovae.model.semi_supervised import SemiSupervisedVAE
from pyrovae.model.vae import TABLES, VAE

#: model name -> class; ``"package.module:Class"`` names any other
MODELS: dict[str, type] = {"vae": VAE, "cvae": ConditionalVAE, "m2": SemiSupervisedVAE, "hvae": HierarchicalVAE}

#: what components may receive from the model that builds them (never set in a config)
COMPONENT_CONTEXT = ("latent_dim", "data_shape", "guide", "num_classes")


def resolve_model(spec: Mapping[str, Any]) -> Checked:
    """``spec`` checked against its class, every default filled in, components resolved: a
    :class:`~pyrovae.model.components.Checked` table, which building and resolving take as it is."""
    if is_checked(spec):
        return spec
    spec = dict(spec)
    spec.setdefault("name", "vae")
    cls, kwargs = check_arguments("model", spec, MODELS, dict.fromkeys(CONTEXT))
    for argument, kind in getattr(cls, "components", {}).items():
        if argument not in kwargs:
            continue
        given = kwargs[argument]
        if is_checked(given):
            continue
        component = dict(given) if isinstance(given, Mapping) else {"name": given}
        if "name" not in component:  # arguments only: for the component the model's class defaults to
            default = signature(cls)[argument].default
            if not isinstance(default, (str, type)):
                raise UserError(f"[model.{argument}] needs a name")
            component["name"] = default
        _, component_kwargs = check_arguments(kind, component, TABLES[kind], dict.fromkeys(COMPONENT_CONTEXT))
        kwargs[argument] = Checked({"name": component["name"], **component_kwargs})
    return Checked({"name": spec["name"], **kwargs})


def build_model(spec: Mapping[str, Any], data_shape: Sequence[int], num_classes: int | None = None):
    """The model a ``[model]`` table names, built with the context arguments its class asks for."""
    resolved = resolve_model(spec)
    context = {"data_shape": tuple(int(d) for d in data_shape)}
    if num_classes is not None:
        context["num_classes"] = int(num_classes)
    else:
        cls = resolve_class("model", resolved["name"], MODELS)
        param = signature(cls).get("num_classes")
        if param is not None and param.default is param.empty:
            raise UserError(
                f"model '{resolved['name'] if isinstance(resolved['name'], str) else cls.__name__}' "
                f"needs labels, but the data have none: use a data set with labels (mnist, "
                f"fashion_mnist, synthetic, or arrays with label files)"
            )
    return build("model", resolved, MODELS, **context)


def loggable(spec: Mapping[str, Any]) -> Checked:
    """A resolved ``[model]`` table with every class replaced by the name a later process imports.

    A class defined in ``__main__`` or in a function cannot be imported again: one
    :class:`UserError` line.
    """
    cls = resolve_class("model", spec["name"], MODELS)
    out = {**spec, "name": spec_name("model", spec["name"], MODELS)}
    for argument, kind in getattr(cls, "components", {}).items():
        if isinstance(out.get(argument), Mapping):
            named = {**out[argument], "name": spec_name(kind, out[argument]["name"], TABLES[kind])}
            out[argument] = Checked(named) if is_checked(out[argument]) else named
    return Checked(out) if is_checked(spec) else out
