r"""Pyro's ELBO as a torch loss module, so any torch optimizer (and DDP) can step it.

Training maximizes the (annealed) evidence lower bound of Kingma & Welling (2014),

.. math:: \mathcal{L}_\beta(x) = E_{q(z|x)}[\log p(x|z)] - \beta\,\mathrm{KL}(q(z|x) \| p(z)),

computed by one of Pyro's ELBO objects on any model's ``model`` / ``guide`` methods
(:mod:`pyrovae.infer.traces`), for one latent site or many. :class:`ELBOLoss` returns
:math:`-\sum_b \mathcal{L}_\beta(x_b)` over a batch as a differentiable scalar: ``loss.backward()``
and ``optimizer.step()`` is SVI with that ELBO, and one step equals ``SVI.step`` with the same torch
optimizer bit for bit on the CPU (tested). The model is a registered submodule, so
``ELBOLoss(model, elbo).parameters()`` are the model's: ``Trace_ELBO()(model, guide)`` alone has
none, because bound methods are not submodules.

**Annealing** is an effect handler, :class:`ScaleLatents`: it multiplies the scale of every latent
(unobserved) sample site by :math:`\beta`, in the model *and* the guide, so that ``Trace_ELBO``
optimizes :math:`E_q[\log p(x|z)] - \beta\,\mathrm{KL}` and ``TraceMeanField_ELBO`` scales its
closed-form KL too (it takes the guide site's scale; a scale on the model's site alone would
optimize another objective). Model code never takes ``beta``. ``beta`` (and the labels ``y``)
reach the traced function as positional tensors, so a JIT ELBO compiles once, not once per beta
value (a Python number would be frozen into the first graph) or per batch (a keyword tensor is
part of Pyro's JIT cache key); a batch with labels and one without are two graphs.

Three properties of the JIT ELBOs (pyro-ppl 1.9) that this module handles:

- ``JitTrace_ELBO.differentiable_loss`` doubles the gradient (its loss term is not detached);
  the loss here is ``loss.detach() + (surrogate - surrogate.detach())`` from
  ``loss_and_surrogate_loss``: the value of the loss, the gradient of the surrogate.
- JIT ELBOs key their compiled graph on ``id(model)``; ``model.model`` is a new bound-method
  object at every access, so the module keeps one of each.
- ``JitTraceMeanField_ELBO`` traces its graph again at every call (it looks for its cache under
  the wrong name): :class:`CompiledOnceMeanField_ELBO` replays the first one.

References: Ranganath et al. 2014, "Black Box Variational Inference"; Bingham et al. 2019,
"Pyro: Deep Universal Probabilistic Programming".
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from pyro.infer import (
    ELBO,
    JitTrace_ELBO,
    JitTraceEnum_ELBO,
    JitTraceMeanField_ELBO,
    Trace_ELBO,
    TraceEnum_ELBO,
    TraceMeanField_ELBO,
)
from pyro.poutine.messenger import Messenger
from torch import nn

from pyrovae.errors import UserError
from pyrovae.infer.traces import parameters_of, takes_labels


class CompiledOnceMeanField_ELBO(JitTraceMeanField_ELBO):
    """``JitTraceMeanField_ELBO`` that compiles once. In pyro-ppl 1.9 it tests for a cached
    ``_loss_and_surrogate_loss`` but caches ``_differentiable_loss``, so every call built a new
    compiled function and traced the graph again (784-16-2, batch 16: 23 ms a step, against 1.8 ms
    eager). Here a call after the first replays the cached graph."""

    def differentiable_loss(self, model, guide, *args, **kwargs):
        compiled = getattr(self, "_differentiable_loss", None)
        if compiled is None:
            return super().differentiable_loss(model, guide, *args, **kwargs)
        return compiled(*args, **kwargs, _pyro_model_id=id(model), _pyro_guide_id=id(guide))


ELBOS = {"trace": Trace_ELBO, "meanfield": TraceMeanField_ELBO, "enum": TraceEnum_ELBO}
JIT_ELBOS = {"trace": JitTrace_ELBO, "meanfield": CompiledOnceMeanField_ELBO, "enum": JitTraceEnum_ELBO}


#: objectives of pyrovae's own, built from traces (:mod:`pyrovae.infer.objectives`)
OBJECTIVES = ("iwae", "renyi", "tracegraph")


def make_elbo(kind: str = "trace", num_particles: int = 1, jit: bool = False, alpha: float = 0.5,
              free_bits: float = 0.0, iwae_gradient: str = "standard"):  # fmt: skip
    """``Trace_ELBO`` (Monte Carlo KL), ``TraceMeanField_ELBO`` (closed-form KL where it exists) or
    ``TraceEnum_ELBO`` (discrete guide sites marked ``infer={"enumerate": "parallel"}`` summed out
    exactly), optionally their ``torch.jit``-traced versions; or the importance-weighted (``iwae``,
    K = ``num_particles``) and Rényi (``renyi``, ``alpha``) bounds, the ELBO with score-function
    gradients for sites without ``rsample`` (``tracegraph``), or the ELBO with ``free_bits``
    (:mod:`pyrovae.infer.objectives`); ``iwae_gradient = "dreg"``: the iwae bound's doubly
    reparameterized gradient."""
    from pyrovae.infer.objectives import FreeBits, ImportanceWeighted, TraceGraph

    if (kind in OBJECTIVES or free_bits) and jit:
        other = kind if kind in OBJECTIVES else "free bits"
        raise UserError(f"train.jit compiles Pyro's ELBOs (trace, meanfield, enum), not {other}: set train.jit = false")
    if free_bits:
        if kind not in ("trace", "meanfield"):
            raise UserError(f"train.free_bits floors the KL of the ELBO (train.elbo trace or meanfield), not of {kind}")
        return FreeBits(free_bits)
    if iwae_gradient != "standard" and kind != "iwae":
        raise UserError(
            f"train.iwae_gradient = '{iwae_gradient}' is a gradient of the iwae bound: set train.elbo = iwae"
        )
    if kind == "tracegraph":
        return TraceGraph(num_particles)
    if kind in OBJECTIVES:
        return ImportanceWeighted(num_particles, 0.0 if kind == "iwae" else alpha, iwae_gradient == "dreg")
    table = JIT_ELBOS if jit else ELBOS
    if kind not in table:
        raise ValueError(f"elbo must be one of {', '.join([*table, *OBJECTIVES])}, got {kind!r}")
    options = {"num_particles": num_particles}
    if kind == "enum":  # every model pyrovae trains has its own plates; enumeration goes left of them
        options["strict_enumeration_warning"] = False
    if jit:  # beta goes in as a positional tensor: a traced input, not a constant
        options["ignore_jit_warnings"] = True
    return table[kind](**options)


def annealing_beta(step: int, settings, steps_per_epoch: int) -> float:
    r"""The KL weight :math:`\beta` at a (0-based) step under the ``[train]`` ``settings``:

    - ``linear`` (the default): from ``beta_start`` to ``beta`` over ``warmup_epochs`` (Bowman et al.
      2016; Sønderby et al. 2016), ``beta_start`` throughout without a warm-up;
    - ``constant``: ``beta`` at every step (a beta-VAE when ``beta > 1``, Higgins et al. 2017);
    - ``cyclical``: the run's steps cut into ``beta_cycles`` cycles, each rising linearly from
      ``beta_start`` to ``beta`` over its first ``beta_ratio``, then holding ``beta`` (Fu et al. 2019).
    """
    start, target = settings.beta_start, settings.beta
    if settings.beta_schedule == "constant":
        return target
    if settings.beta_schedule == "cyclical":
        length = settings.epochs * steps_per_epoch / settings.beta_cycles
        position = (step % length) / length
        return start + (target - start) * min(1.0, position / settings.beta_ratio)
    if settings.warmup_epochs <= 0:
        return start
    return start + (target - start) * min(1.0, step / (settings.warmup_epochs * steps_per_epoch))


def validation_elbo(kind: str = "trace", num_particles: int = 1) -> ELBO:
    """The ELBO that validates a run trained with objective ``kind``: that ELBO itself for Pyro's
    (trace, meanfield, enum), ``Trace_ELBO`` for the importance-weighted, Rényi and TraceGraph objectives, never
    the free-bits floor: ``val/loss`` is the negative ELBO at beta = 1 whatever trained."""
    return Trace_ELBO() if kind in OBJECTIVES else make_elbo(kind, num_particles)


class ScaleLatents(Messenger):
    """Multiply the scale of every latent (unobserved) sample site by ``beta`` (KL annealing)."""

    def __init__(self, beta: torch.Tensor | float):
        super().__init__()
        self.beta = beta

    def _process_message(self, msg) -> None:
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["scale"] = self.beta * msg["scale"]


class ELBOLoss(nn.Module):
    """``forward(x, beta, y=None) -> -ELBO_beta`` summed over the batch ``x`` of shape ``(B, *data_shape)``.

    ``y`` (labels or other side information, one row per datapoint) goes to ``model``/``guide``
    when they take it. A model written for pyrovae 0.2 whose methods take ``beta`` themselves
    still trains (they receive it; no handler is added), with a deprecation warning.
    """

    def __init__(self, vae: nn.Module, elbo: ELBO):
        super().__init__()
        self.vae = vae
        self.elbo = elbo
        self._model, self._guide = self.annealed_model, self.annealed_guide  # one object each: JIT caches by id
        if hasattr(elbo, "bind"):  # an objective that re-runs the model with its parameters held fixed
            elbo.bind(vae)
        self._surrogate_form = isinstance(elbo, JitTrace_ELBO)
        self._traced = isinstance(elbo, (JitTrace_ELBO, JitTraceMeanField_ELBO))
        self._legacy_beta = "beta" in parameters_of(vae.model)
        self._labelled = takes_labels(vae.model), takes_labels(vae.guide)
        if self._legacy_beta:
            warnings.warn(
                f"{type(vae).__name__}.model takes 'beta': pyrovae now anneals every latent site by an "
                f"effect handler, so model code need not take it (support for it will go)",
                DeprecationWarning,
                stacklevel=2,
            )

    def _call(self, fn, labelled: bool, beta, x, labels) -> None:
        args = (x, *labels) if labelled else (x,)
        if self._legacy_beta:
            fn(*args, beta=beta)
            return
        with ScaleLatents(beta):
            fn(*args)

    def annealed_model(self, beta, x, *labels) -> None:
        self._call(self.vae.model, self._labelled[0], beta, x, labels)

    def annealed_guide(self, beta, x, *labels) -> None:
        self._call(self.vae.guide, self._labelled[1], beta, x, labels)

    def forward(self, x: torch.Tensor, beta: torch.Tensor | float = 1.0, y: torch.Tensor | None = None) -> torch.Tensor:
        if self._traced and not isinstance(beta, torch.Tensor):  # torch.jit traces tensors only
            beta = torch.tensor(float(beta), device=x.device)
        args = (beta, x) if y is None else (beta, x, y)
        if self._traced:
            # unoptimized, the graph runs the eager step's kernels: the same numbers bit for bit
            # (the profiling executor's fusions would round differently, and only from its third call)
            with torch.jit.optimized_execution(False):
                return self._traced_loss(args)
        with _unregistered(self.vae):
            return self.elbo.differentiable_loss(self._model, self._guide, *args)

    def _traced_loss(self, args) -> torch.Tensor:
        if self._surrogate_form:
            loss, surrogate = self.elbo.loss_and_surrogate_loss(self._model, self._guide, *args)
            return loss.detach() + (surrogate - surrogate.detach())
        # the compiled loss takes the parameters it found registered as its inputs
        return self.elbo.differentiable_loss(self._model, self._guide, *args)


@contextmanager
def _unregistered(vae: nn.Module) -> Iterator[None]:
    """The eager loss differentiates the module's parameters directly: no Pyro store to fill."""
    if getattr(vae, "registers", None) is not True:  # a user's model registers as it likes
        yield
        return
    vae.registers = False
    try:
        yield
    finally:
        vae.registers = True
