r"""Any Pyro model/guide pair, read through its traces: what every score in pyrovae is computed from.

A *model* here is an ``nn.Module`` with two methods, ``model(x, y=None)`` and ``guide(x, y=None)``
(``y``, side information such as labels, only if it takes it), whose sample sites of one batch
``x`` of shape ``(B, *data_shape)`` all sit inside ``pyro.plate("data", B)``. Nothing here reads
a site name or a component: the guide is traced, the model replayed against it, and every site's
``log_prob`` (batch shape ``(..., B)`` after :func:`per_datapoint`) is classified as

- *observed*: a model site with ``is_observed`` (the data, an observed label, a ``pyro.factor``);
- *latent*: a model site the guide samples too; its guide ``log_prob`` is :math:`\log q`.

Then, per datapoint, :math:`\log p(x, z) = \sum_{\text{observed}} + \sum_{\text{latent}} \log p`
and :math:`\log q(z|x) = \sum_{\text{latent}} \log q`. A discrete guide site marked
``infer={"enumerate": "parallel"}`` can be *enumerated* (every value at once, in a dimension of its
own left of the plates): expectations over it are then exact sums weighted by its
:math:`q`, as ``TraceEnum_ELBO`` computes them.

Estimators that need several draws per datapoint (IWAE, AIS) wrap model and guide in one more plate,
``pyrovae_particles``, left of the model's own plates, so that a latent site's value has shape
``(K, B, *event_shape)``: the model's networks must accept such leading dimensions
(:func:`pyrovae.infer.interface.check_model` tries it before training).

Site log-probabilities are Pyro's ``site["log_prob"]``: masked, and scaled by any
``poutine.scale`` the model applies (the ELBO counts them so). pyrovae's own KL annealing is an
effect handler applied by the trainer only, never during evaluation.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites, site_is_subsample

#: the plate over the batch that every sample site must be inside
DATA_PLATE = "data"
#: the plate pyrovae adds for several draws per datapoint (IWAE, AIS)
PARTICLES = "pyrovae_particles"


# -- how a model is called ------------------------------------------------------------------


def parameters_of(fn: Callable) -> dict[str, inspect.Parameter]:
    try:
        return dict(inspect.signature(fn).parameters)
    except (TypeError, ValueError):  # a builtin or a C callable: no keywords to read
        return {}


def takes_labels(fn: Callable) -> bool:
    """Whether ``fn`` (a model or guide method) accepts side information ``y``."""
    params = parameters_of(fn)
    return "y" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def needs_labels(model) -> bool:
    """Whether ``model.model`` requires ``y`` (a parameter ``y`` without a default): a conditional
    model, scored as log p(x | y). A model whose ``y`` defaults to ``None`` is scored without it,
    as log p(x) with the label a latent variable (semi-supervised models)."""
    param = parameters_of(model.model).get("y")
    return param is not None and param.default is inspect.Parameter.empty


def arguments(fn: Callable, x: torch.Tensor, y: torch.Tensor | None) -> tuple:
    """The positional arguments to call ``fn`` with: ``(x, y)`` when there is ``y`` and ``fn``
    takes it, else ``(x,)``."""
    return (x, y) if y is not None and takes_labels(fn) else (x,)


def evaluation_labels(model, y: torch.Tensor | None) -> torch.Tensor | None:
    """The labels an estimator hands ``model``: only to a model that needs them (log p(x|y));
    a model for which they are optional is scored with them summed out (log p(x))."""
    return y if y is not None and needs_labels(model) else None


# -- traces ----------------------------------------------------------------------------------


def plate_nesting(model, x: torch.Tensor, y: torch.Tensor | None = None) -> int:
    """How many plate dimensions the model and guide use (at least 1): one trace of each on ``x``,
    under a forked RNG so that the caller's random stream does not move."""
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []), poutine.block(), torch.no_grad():
        guide_trace = poutine.trace(model.guide).get_trace(*arguments(model.guide, x, y))
        model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(
            *arguments(model.model, x, y)
        )
    return max([1, *(nesting_of(t) for t in (guide_trace, model_trace))])


def nesting_of(trace) -> int:
    dims = [
        -frame.dim
        for site in trace.nodes.values()
        if site["type"] == "sample"
        for frame in site["cond_indep_stack"]
        if frame.vectorized and frame.name != PARTICLES
    ]
    return max(dims, default=1)


def guide_trace(model, x: torch.Tensor, y: torch.Tensor | None, particles: int, nesting: int):
    """A trace of the guide alone, ``particles`` draws per datapoint (no model pass: no decoder)."""
    guide = pyro.plate(PARTICLES, particles, dim=-(nesting + 1))(model.guide)
    return prune_subsample_sites(poutine.trace(guide).get_trace(*arguments(model.guide, x, y)))


def run_traces(
    model,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    particles: int = 0,
    nesting: int | None = None,
    enumerate_guide: bool = False,
):
    """``(model_trace, guide_trace)`` of one batch, ``log_prob`` computed at every sample site.

    The guide draws (``particles`` draws per datapoint under the ``pyrovae_particles`` plate, if
    given) and the model is replayed against it, in the order Pyro's ELBOs use, so that with the
    same seed the draws are theirs. ``enumerate_guide`` enumerates the guide's sites marked
    ``infer={"enumerate": "parallel"}``; ``particles`` and ``enumerate_guide`` need ``nesting``
    (:func:`plate_nesting`) to put their dimensions left of the model's plates.
    """
    guide_trace = trace_guide(model, x, y, particles=particles, nesting=nesting, enumerate_guide=enumerate_guide)
    return replay_model(model, x, y, guide_trace, particles=particles, nesting=nesting), guide_trace


def trace_guide(
    model,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    particles: int = 0,
    nesting: int | None = None,
    enumerate_guide: bool = False,
):
    """The guide's trace of one batch (see :func:`run_traces`), ``log_prob`` computed."""
    guide = model.guide
    if particles or enumerate_guide:
        if nesting is None:
            raise ValueError("particles and enumeration need the plate nesting")
        if enumerate_guide:
            guide = poutine.enum(guide, first_available_dim=-(nesting + 1 + (1 if particles else 0)))
        if particles:
            guide = pyro.plate(PARTICLES, particles, dim=-(nesting + 1))(guide)
    guide_trace = poutine.trace(guide).get_trace(*arguments(model.guide, x, y))
    guide_trace.compute_log_prob(_not_subsample)  # plates' subsample sites stay in the traces, unscored:
    return guide_trace  # sample_sites() leaves them out


def replay_model(
    model, x: torch.Tensor, y: torch.Tensor | None, guide_trace, *, particles: int = 0, nesting: int | None = None
):
    """The model's trace of one batch replayed against ``guide_trace``, ``log_prob`` computed."""
    model_fn = model.model
    if particles:
        model_fn = pyro.plate(PARTICLES, particles, dim=-(nesting + 1))(model_fn)
    model_trace = poutine.trace(poutine.replay(model_fn, trace=guide_trace)).get_trace(*arguments(model.model, x, y))
    model_trace.compute_log_prob(_not_subsample)
    return model_trace


def narrow_particles(trace, start: int, length: int, particles: int, nesting: int):
    """A copy of a trace drawn with ``particles`` draws per datapoint that holds draws
    ``start .. start + length`` only (values and log-probabilities; enumerated values, which have
    no particle dimension, unchanged): a model replayed against it sees ``length`` draws."""
    out = poutine.Trace()
    for name, site in trace.nodes.items():
        site = dict(site)
        if site["type"] == "sample" and not site_is_subsample(site):
            for key in ("value", "log_prob"):
                value = site.get(key)
                event = site["fn"].event_dim if key == "value" else 0
                dim = value.dim() - event - (nesting + 1) if torch.is_tensor(value) else -1
                if dim >= 0 and value.shape[dim] == particles:
                    site[key] = value.narrow(dim, start, length)
        out.add_node(name, **site)
    return out


def _not_subsample(name: str, site: dict) -> bool:
    return not site_is_subsample(site)


def sample_sites(trace) -> dict[str, dict]:
    """The sample sites of a trace, plates' subsample sites left out."""
    return {
        name: site for name, site in trace.nodes.items() if site["type"] == "sample" and not site_is_subsample(site)
    }


def observed_sites(model_trace) -> dict[str, dict]:
    return {n: s for n, s in sample_sites(model_trace).items() if s["is_observed"]}


def latent_sites(model_trace, guide_trace) -> list[str]:
    """The model's latent sites that the guide samples, in the guide's order."""
    model_sites = sample_sites(model_trace)
    return [
        n
        for n, s in sample_sites(guide_trace).items()
        if not s["is_observed"] and n in model_sites and not model_sites[n]["is_observed"]
    ]


def data_frame(site: dict):
    """The ``data`` plate's frame in a site's plate stack, or None."""
    return next((f for f in site["cond_indep_stack"] if f.name == DATA_PLATE), None)


def per_datapoint(value: torch.Tensor, site: dict, nesting: int) -> torch.Tensor:
    """A site-shaped tensor (a ``log_prob`` or a KL) summed over every plate but ``data``:
    shape ``(*leading, B)``, where the leading dimensions are the particle and enumeration
    dimensions, left of the model's ``nesting`` plate dimensions."""
    if value.dim() < nesting:
        value = value.reshape((1,) * (nesting - value.dim()) + value.shape)
    data = data_frame(site)
    for frame in site["cond_indep_stack"]:
        if (
            frame.vectorized
            and frame.name not in (DATA_PLATE, PARTICLES)
            and frame.dim is not None
            and value.shape[frame.dim] != 1
        ):
            value = value.sum(frame.dim, keepdim=True)
    lead = value.shape[: value.dim() - nesting]
    return value.reshape(*lead, value.shape[data.dim])


# -- scores of one pair of traces ---------------------------------------------------------------


@dataclass
class Scores:
    """Per-datapoint log-densities of one pair of traces, each of shape ``(*leading, B)``."""

    observed: dict[str, torch.Tensor]  # log p(x_s | ...) of each observed site
    prior: dict[str, torch.Tensor]  # log p(z_s | parents) of each latent site
    posterior: dict[str, torch.Tensor]  # log q(z_s | ...) of each latent site
    enumerated: tuple[str, ...]  # latent sites the guide enumerated
    model_trace: Any = field(repr=False)
    guide_trace: Any = field(repr=False)
    nesting: int = 1

    @property
    def latent(self) -> list[str]:
        return list(self.posterior)

    def log_joint(self) -> torch.Tensor:
        return _total(self.observed) + _total(self.prior)


def scores(model_trace, guide_trace, nesting: int | None = None, enumerated: bool = False) -> Scores:
    """Classify and reduce the sites of a pair of traces from :func:`run_traces`."""
    nesting = nesting or max(nesting_of(model_trace), nesting_of(guide_trace))
    latent = latent_sites(model_trace, guide_trace)
    observed = observed_sites(model_trace)
    guide_sites = sample_sites(guide_trace)
    reduce = lambda site: per_datapoint(site["log_prob"], site, nesting)  # noqa: E731
    return Scores(
        observed={n: reduce(s) for n, s in observed.items()},
        prior={n: reduce(model_trace.nodes[n]) for n in latent},
        posterior={n: reduce(guide_sites[n]) for n in latent},
        enumerated=tuple(n for n in latent if enumerated and is_enumerated(guide_sites[n])),
        model_trace=model_trace,
        guide_trace=guide_trace,
        nesting=nesting,
    )


def is_enumerated(site: dict) -> bool:
    return site["infer"].get("enumerate") == "parallel"


def _total(terms: dict[str, torch.Tensor]) -> torch.Tensor | float:
    total: torch.Tensor | float = 0.0
    for value in terms.values():
        total = total + value
    return total


def enumeration_weights(s: Scores) -> torch.Tensor | None:
    r""":math:`q(e)` of the enumerated values ``e`` (the product over enumerated sites), shaped to
    broadcast against the scores; ``None`` when nothing was enumerated."""
    if not s.enumerated:
        return None
    return sum(s.posterior[n] for n in s.enumerated).exp()


def expectation(
    value: torch.Tensor | float, weights: torch.Tensor | None, batch: int, particles: bool = False
) -> torch.Tensor:
    r""":math:`E_q[\text{value}]` over the enumerated dimensions: shape ``(B,)``, or ``(K, B)``
    with ``particles``. Without enumeration, ``value`` itself."""
    keep = 2 if particles else 1
    if weights is not None:
        value, weights = torch.broadcast_tensors(torch.as_tensor(value), weights)
        value = value * weights
    value = torch.as_tensor(value)
    if value.dim() > keep:
        value = value.reshape(-1, *value.shape[value.dim() - keep :]).sum(0)
    return value.expand(value.shape[:-1] + (batch,)) if value.shape[-1] == 1 else value


def data_site(model_trace, x: torch.Tensor) -> dict:
    """The observed site of the data ``x``: the one observing ``x`` itself, else the first whose
    distribution has the data's shape as its event shape."""
    observed = list(observed_sites(model_trace).values())
    for site in observed:
        if site["value"] is x:
            return site
    for site in observed:
        if tuple(site["fn"].event_shape) == tuple(x.shape[1:]):
            return site
    raise ValueError("no observed site of the model observes the data")


# -- pictures from the traces ----------------------------------------------------------------------


def reconstruct(model, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """The mean of the data site at one draw z ~ q(z|x): shape of ``x``."""
    model_trace, _ = run_traces(model, x, y)
    return data_site(model_trace, x)["fn"].mean


def generate(model, template: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """The mean of the data site at one draw of the latent sites from the model itself (p(z), or
    p(z | y) given labels), one per row of ``template``, whose values are not used."""
    trace = poutine.trace(model.model).get_trace(*arguments(model.model, template, y))
    return data_site(trace, template)["fn"].mean
