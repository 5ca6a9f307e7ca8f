"""``train.jit = "auto"`` (the default): the traced step wherever a model allows it, else the eager one.

Pyro's JIT ELBOs (``JitTrace_ELBO``, ``JitTraceMeanField_ELBO``) trace model, guide and ELBO into
one ``torch.jit`` graph and replay it at every step, which removes Pyro's per-step Python (effect
handlers, distribution objects, the ELBO's bookkeeping: about half of a small model's step,
docs/performance.md). Tracing records the tensor operations one call made, so it is exact only
for code whose Python control flow does not depend on tensor values; ``auto`` therefore takes the
traced step only when every condition below holds, and otherwise steps eagerly and says why in one
line (logged at INFO on the ``pyrovae`` logger, which ``pyrovae train`` prints):

- the objective is Pyro's ``Trace_ELBO`` or ``TraceMeanField_ELBO`` without free bits
  (``train.elbo = "trace"``, the default, or ``"meanfield"``; pyrovae's own objectives are built
  from traces, and ``TraceEnum_ELBO``'s JIT form fails on models such as M2: it takes
  ``train.jit = true`` explicitly);
- no module of the model sets ``traceable = False`` (a component whose Python keeps state across
  steps, e.g. a step counter, says so this way: tracing runs its Python once);
- the model's code does not take ``beta`` (pyrovae 0.2 models: a keyword tensor recompiles);
- every parameter is registered with ``pyro.module`` in model and guide (the graph takes the
  registered parameters as its inputs; an unregistered one would be frozen into it);
- a trial: the traced loss compiles on 4 datapoints without a ``TracerWarning``, and on 3 other
  datapoints (another batch size) equals the eager loss given the same random draws, to a relative
  1e-5. A branch on data values frozen into the graph, or a batch size recorded as a constant,
  would differ there.

``true`` and ``false`` are taken as they are (``true`` refuses a model that cannot be traced in
one line, as before). The trainer records the path it took as ``train.jit`` in the run's config,
so a resumed run steps on the path it was trained on.
"""

from __future__ import annotations

import logging
import warnings

import torch

from pyrovae.errors import UserError, first_line
from pyrovae.infer.interface import unmoved_rng, unregistered
from pyrovae.infer.traces import parameters_of

log = logging.getLogger("pyrovae")

#: the objectives ``auto`` traces (``enum``'s JIT form fails on models with enumerated labels, M2)
TRACEABLE = ("trace", "meanfield")
RELATIVE_TOLERANCE = 1e-5
TRIAL_ROWS = 4


def traced_loss(vae, settings, x: torch.Tensor, y: torch.Tensor | None = None):
    """``(loss, why)``: the traced :class:`~pyrovae.infer.elbo.ELBOLoss` that ``settings.jit`` asks for
    on ``vae``, already compiled, or ``None`` for the eager step, with ``why`` when ``auto`` fell back.

    ``x`` (and labels ``y``) are validation rows: the compiling call and the trial run on them under a
    forked random stream, so the first training step draws what the eager step would (the compiling
    call of a JIT ELBO draws its latents twice)."""
    if settings.jit is False:
        return None, ""
    if settings.jit is True:
        loss = elbo_loss(vae, settings, True)
        try:
            _compile(loss, x[:TRIAL_ROWS], None if y is None else y[:TRIAL_ROWS])
        except Exception as err:
            raise UserError(
                f"train.jit = true: tracing {type(vae).__name__} failed ({failure(err)}); set train.jit = auto or false"
            ) from err
        return loss, ""
    why = _unsupported(vae, settings)
    loss = None if why else elbo_loss(vae, settings, True)
    why = why or _trial(loss, settings, x, y)
    return (None, f"train.jit = auto: the eager step, because {why}") if why else (loss, "")


def elbo_loss(vae, settings, jit: bool):
    """The :class:`~pyrovae.infer.elbo.ELBOLoss` of the ``[train]`` ``settings``' objective on ``vae``,
    traced (``jit``) or eager: every option goes in, so one the traced ELBOs lack is refused (free bits)."""
    from pyrovae.infer.elbo import ELBOLoss, make_elbo

    s = settings
    return ELBOLoss(vae, make_elbo(s.elbo, s.num_particles, jit, s.renyi_alpha, s.free_bits, s.iwae_gradient))


def _compile(loss, x: torch.Tensor, y: torch.Tensor | None) -> None:
    """One traced call on ``x``: Pyro compiles the graph there (no gradient is taken)."""
    was_training = loss.vae.training
    try:
        with unmoved_rng(x.device), warnings.catch_warnings():
            # pyrovae calls torch.jit.trace, not the user; were it gone, auto would step eagerly
            warnings.filterwarnings("ignore", r"`torch\.jit\.trace` is deprecated", FutureWarning)
            loss(x, 1.0, y)
    finally:
        loss.vae.train(was_training)


def _unsupported(vae, settings) -> str:
    if settings.elbo not in TRACEABLE:
        return f"train.elbo = {settings.elbo} is not traced automatically (set train.jit = true to try)"
    if settings.free_bits:
        return "free bits are not a Pyro ELBO (train.free_bits > 0)"
    stateful = [type(m).__name__ for m in vae.modules() if getattr(m, "traceable", True) is False]
    if stateful:
        return f"{stateful[0]} sets traceable = False (its Python must run at every step)"
    if "beta" in parameters_of(vae.model):
        return f"{type(vae).__name__}.model takes beta (tracing would recompile at every new beta)"
    return ""


def _trial(traced, settings, x: torch.Tensor, y: torch.Tensor | None) -> str:
    """Why ``traced`` cannot stand in for the eager loss ("" when it can); compiles it on the way."""
    vae, n = traced.vae, x.shape[0]
    if n < 2:
        return "the validation split has fewer than 2 rows to try tracing on"
    first = torch.arange(min(n, TRIAL_ROWS), device=x.device)
    # other rows, and another batch size; with too few rows, the same ones reversed, one fewer
    other = torch.arange(TRIAL_ROWS, min(n, TRIAL_ROWS + 3), device=x.device) if n > TRIAL_ROWS else first.flip(0)[1:]
    labels = (None, None) if y is None else (y[first], y[other])
    with torch.no_grad(), unmoved_rng(x.device):
        missing = unregistered(vae, x[first], labels[0])
    if missing:
        name = type(vae).__name__
        return f"{len(missing)} parameters of {name} are not registered with pyro.module, e.g. '{missing[0]}'"
    eager = elbo_loss(vae, settings, False)
    traced.elbo.ignore_jit_warnings = False  # read when it compiles: a TracerWarning is a reason
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", torch.jit.TracerWarning)
            # a Python number made a tensor (Normal(loc, 1.0)) is a constant, rightly: the comparison
            # below catches one that should have changed (a draw from Python's random module)
            warnings.filterwarnings("ignore", "torch.tensor results are registered", torch.jit.TracerWarning)
            _compile(traced, x[first], labels[0])
            with unmoved_rng(x.device):
                losses = []
                for loss in (traced, eager):
                    torch.manual_seed(0)
                    losses.append(float(loss(x[other], 1.0, labels[1])))
    except Exception as err:  # whatever tracing cannot do is a reason to step eagerly, not to stop
        return f"tracing failed ({failure(err)})"
    tracer = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    if tracer:
        return f"tracing warned: {first_line(tracer[0].message, 160)}"
    if abs(losses[0] - losses[1]) > RELATIVE_TOLERANCE * max(abs(losses[1]), 1.0):
        return f"the traced loss {losses[0]:.6g} differs from the eager {losses[1]:.6g} on other rows"
    return ""


def failure(err: BaseException) -> str:
    """``Type: first line`` of an exception, or for one raised inside a TorchScript graph the graph's
    own last line (the first says only that the interpreter failed); cut to 180 characters."""
    lines = str(err).strip().splitlines()
    torchscript = lines and lines[0].startswith("The following operation failed in the TorchScript interpreter")
    return (lines[-1].strip() if torchscript else f"{type(err).__name__}: {first_line(err)}")[:180]


def resolved(settings, jit: bool):
    """``settings`` with ``jit`` the path taken (what the run records, and resumes on)."""
    return type(settings)(**{**settings.as_dict(), "jit": jit})


def say(why: str, is_main: bool) -> None:
    """Log ``why`` (one line at INFO) on the main process, if there is something to say."""
    if why and is_main:
        log.info(why)
