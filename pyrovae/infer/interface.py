"""The model interface checked up front: each broken rule is one line, before anything trains.

:func:`check_model` traces a model and its guide on a few datapoints and refuses, with one
:class:`~pyrovae.errors.UserError` line each, what pyrovae could not score exactly
(:mod:`pyrovae.model.base` states the interface): a site outside ``pyro.plate("data", B)`` (a
global latent has no per-datapoint ELBO), a model that observes nothing, a latent site the guide
does not sample (e.g. a component that calls ``pyro.sample`` itself; Pyro would only warn and
train a wrong objective), a guide site the model lacks, a discrete site enumerated in the model or
sequentially (validation enumerates guide sites in parallel only), networks that fail on the
leading sample dimension IWAE and AIS use, a conditional model without labels, and, for
``train.jit``, parameters not registered with ``pyro.module`` (the traced graph would freeze
them). :func:`check_data_support` checks every split against the support of the data site.
"""

from __future__ import annotations

import pyro
import torch
from pyro import poutine
from torch import nn
from torch.distributions import constraints

from pyrovae.errors import UserError, first_line
from pyrovae.infer.traces import (
    DATA_PLATE,
    arguments,
    data_frame,
    data_site,
    needs_labels,
    observed_sites,
    plate_nesting,
    run_traces,
    sample_sites,
    scores,
    takes_labels,
)

ROWS = 4  # datapoints the check traces


def unmoved_rng(device: torch.device):
    """Checks draw random numbers under a forked RNG: a checked run trains as an unchecked one."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def name_of(model) -> str:
    return type(model).__name__


def check_model(
    model, x: torch.Tensor, y: torch.Tensor | None = None, *, jit: bool = False, enumerate_guide: bool = False
) -> None:
    """Raise one :class:`UserError` line for the first rule ``model`` breaks on ``x[:4]`` (and ``y``)."""
    if (
        not isinstance(model, nn.Module)
        or not callable(getattr(model, "model", None))
        or not callable(getattr(model, "guide", None))
    ):
        raise UserError(f"pyrovae trains an nn.Module with model(x) and guide(x) methods, got {type(model).__name__}")
    if needs_labels(model) and y is None:
        raise UserError(
            f"model {name_of(model)} needs labels (its model takes y), but the data have none: "
            f"use a data set with labels (mnist, fashion_mnist, or arrays with label files)"
        )
    x = x[:ROWS]
    y = None if y is None else y[:ROWS]
    was_training = model.training
    try:
        with torch.no_grad(), unmoved_rng(x.device):
            model_trace, guide_trace = _traced(model, x, y, enumerate_guide)
            _check_sites(model, model_trace, guide_trace, x.shape[0])
            _check_particles(model, x, y, enumerate_guide)
            if jit:
                _check_registered(model, x, y)
    finally:
        model.train(was_training)


def _traced(model, x, y, enumerate_guide: bool):
    try:
        nesting = plate_nesting(model, x, y) if enumerate_guide else None
        return run_traces(model, x, y, enumerate_guide=enumerate_guide, nesting=nesting)
    except UserError:
        raise
    except Exception as err:
        raise UserError(
            f"model {name_of(model)} failed on a batch of {x.shape[0]} datapoints: "
            f"{type(err).__name__}: {first_line(err, 300)}"
        ) from err


def _check_sites(model, model_trace, guide_trace, batch: int) -> None:
    label = name_of(model)
    for role, trace in (("model", model_trace), ("guide", guide_trace)):
        for name, site in sample_sites(trace).items():
            frame = data_frame(site)
            if frame is None or frame.size != batch:
                raise UserError(
                    f"site '{name}' of the {role} of {label} is outside pyro.plate('{DATA_PLATE}', B) over "
                    f"the batch: pyrovae scores every datapoint, so every sample site must be inside "
                    f"it (a global latent variable has no per-datapoint ELBO)"
                )
            if site["infer"].get("enumerate") == "sequential":
                raise UserError(
                    f"site '{name}' of {label} is enumerated sequentially: pyrovae enumerates guide sites "
                    f"in parallel only (infer={{'enumerate': 'parallel'}})"
                )
    if not observed_sites(model_trace):
        raise UserError(f"the model of {label} observes nothing: it needs a site pyro.sample(name, p(x|z), obs=x)")
    guide_sites, model_sites = sample_sites(guide_trace), sample_sites(model_trace)
    for name, site in model_sites.items():
        if site["is_observed"] or name in guide_sites:
            continue
        if site["infer"].get("enumerate"):
            raise UserError(
                f"site '{name}' of {label} is enumerated in the model: pyrovae scores discrete latent "
                f"sites enumerated in the guide (infer={{'enumerate': 'parallel'}} on the guide's site)"
            )
        raise UserError(
            f"site '{name}' is sampled by the model of {label} but not by its guide, so no ELBO covers it "
            f"(a component that calls pyro.sample itself does this): sample it in the guide too"
        )
    for name, site in guide_sites.items():
        if name not in model_sites and not site["infer"].get("is_auxiliary"):
            raise UserError(f"site '{name}' is sampled by the guide of {label} but not by its model")


def _check_particles(model, x, y, enumerate_guide: bool) -> None:
    try:
        nesting = plate_nesting(model, x, y)
        model_trace, guide_trace = run_traces(
            model, x, y, particles=2, nesting=nesting, enumerate_guide=enumerate_guide
        )
        scored = scores(model_trace, guide_trace, nesting, enumerated=enumerate_guide)
        for name, value in {**scored.observed, **scored.prior, **scored.posterior}.items():
            if name not in scored.enumerated and tuple(value.shape[-2:]) != (2, x.shape[0]):
                raise ValueError(f"site '{name}' has log_prob of shape {tuple(value.shape)}")
    except Exception as err:
        raise UserError(
            f"model {name_of(model)} fails with 2 latent draws per datapoint ({type(err).__name__}: "
            f"{first_line(err, 200)}); IWAE and AIS draw latent values of shape (K, B, ...): its networks "
            f"must accept leading dimensions (reshape with z.shape[:-1], not z.shape[0])"
        ) from err


def unregistered(model, x, y=None) -> list[str]:
    """The names of ``model``'s parameters that model and guide do not register with ``pyro.module``
    on the batch ``x`` (``train.jit`` needs them registered: the traced graph takes them as inputs)."""
    with poutine.block(), poutine.trace(param_only=True) as params:
        guide_trace = poutine.trace(model.guide).get_trace(*arguments(model.guide, x, y))
        poutine.replay(model.model, trace=guide_trace)(*arguments(model.model, x, y))
    values = [site["value"] for site in params.trace.nodes.values()]
    # a constrained parameter points at its unconstrained tensor (the module's Parameter)
    registered = {id(v) for v in values} | {id(v.unconstrained()) for v in values if hasattr(v, "unconstrained")}
    return [name for name, p in model.named_parameters() if id(p) not in registered]


def _check_registered(model, x, y) -> None:
    missing = unregistered(model, x, y)
    if missing:
        raise UserError(
            f"train.jit needs every parameter of {name_of(model)} registered with pyro.module(name, self) "
            f"in model and guide ({len(missing)} are not, e.g. '{missing[0]}', or another module holds "
            f"that name in Pyro's param store: pyro.clear_param_store()); register them, or "
            f"set train.jit = false"
        )


def check_labels(model, data) -> tuple[bool, bool]:
    """Whether training batches carry labels (the data have them and the model takes them), and
    whether some training rows are unlabelled (``data.labelled``): one line for a model that needs a
    label on every row."""
    labelled = data.train_labels is not None and takes_labels(model.model)
    semi_supervised = labelled and data.semi_supervised
    if semi_supervised and needs_labels(model):
        raise UserError(
            f"model {name_of(model)} needs a label for every row, but data.labelled leaves training "
            f"rows unlabelled: set data.labelled = 0, or use a model whose y is optional"
        )
    return labelled, semi_supervised


def check_data_support(model, splits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor | None]) -> None:
    """Every split lies in the support of the model's data site (a Bernoulli on grey levels is
    not a density: its number is no log-likelihood), checked element by element."""
    first = next(iter(splits))
    x, y = splits[first][:ROWS], labels.get(first)
    # validation off: only the data site's support is wanted, which the check below reports in one line
    with torch.no_grad(), poutine.block(), unmoved_rng(x.device), pyro.validation_enabled(False):
        model_trace, _ = _traced(model, x, None if y is None else y[:ROWS], enumerate_guide=False)
    site = data_site(model_trace, x)
    support = site["fn"].support
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    who = (
        f"likelihood {type(model.likelihood).__name__}"
        if isinstance(getattr(model, "likelihood", None), nn.Module)
        else f"the data site '{site['name']}' ({type(site['fn']).__name__}) of {name_of(model)}"
    )
    hint = getattr(model, "data_hint", "")
    for split, data in splits.items():
        ok = support.check(data)
        if not bool(ok.all()):
            bad = data[~ok].flatten()[:3].tolist()
            raise UserError(
                f"{who} needs data in {support}, but the {split} split has values such as {bad}"
                f"{'; ' + hint if hint else ''}"
            )
