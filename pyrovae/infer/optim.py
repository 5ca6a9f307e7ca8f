r"""The torch optimizer and learning-rate schedule that step the ELBO module.

One ``torch.optim.Adam`` (or ``AdamW``) holds every parameter of the VAE, so each step is one
fused (or multi-tensor ``foreach``) kernel call instead of one optimizer per parameter tensor
as with ``pyro.optim``. Adam (Kingma & Ba 2015):

.. math:: m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t,\quad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2,\quad
          \theta_t = \theta_{t-1} - \eta_t\,\frac{m_t/(1-\beta_1^t)}{\sqrt{v_t/(1-\beta_2^t)} + \epsilon};

AdamW (Loshchilov & Hutter 2019) decays the weights apart from the gradient.

The learning rate :math:`\eta_t = \eta\,f(t)` is a function of the step ``t`` and of the run's
length ``T`` (epochs x steps per epoch), applied by ``torch.optim.lr_scheduler.LambdaLR``:

- ``constant``: :math:`f = 1`;
- ``cosine``: :math:`f = r + (1 - r)\,\tfrac12\,(1 + \cos(\pi\,t/T))`, with :math:`r = \eta_{min}/\eta`
  (Loshchilov & Hutter 2017, without restarts);
- ``step``: :math:`f = \gamma^{\lfloor t / (k\,S) \rfloor}`, times ``lr_decay`` every
  ``lr_decay_epochs`` = k epochs of S steps.

Because ``f`` is computed from ``t`` and ``T``, training a finished run longer
(``pyrovae resume --set train.epochs=N``) continues the *new* schedule at step ``t``: a cosine
schedule is stretched to the longer run (its rate rises from ``lr_min`` to the value the longer
schedule has at ``t``); a step schedule is unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR

from pyrovae.errors import UserError

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
SCHEDULES = ("constant", "cosine", "step")


def make_optimizer(params: Iterable[torch.Tensor], name: str = "adam", lr: float = 1e-3, weight_decay: float = 0.0,
                   kernel: str = "auto", args: dict | None = None) -> torch.optim.Optimizer:  # fmt: skip
    """``torch.optim.Adam``/``AdamW`` over ``params`` with the ``fused`` or ``foreach`` kernel, or any
    torch optimizer named by import path (``"torch.optim.SGD"``, ``"package.module:Class"``) built
    with ``lr`` and ``args``.

    ``kernel = "auto"`` takes ``fused`` when every parameter is a float tensor on a CPU or CUDA
    device (where torch has the fused kernel), else ``foreach``.
    """
    params = list(params)
    if name not in OPTIMIZERS:
        cls = import_by_path(name, "train.optimizer", "adam, adamw or an import path such as torch.optim.SGD")
        try:
            return cls(params, lr=lr, **(args or {}))
        except (TypeError, ValueError) as err:
            raise UserError(f"train.optimizer {name} could not be built with lr = {lr} and train.optimizer_args "
                            f"{args or {}}: {err}") from None  # fmt: skip
    if kernel == "auto":
        fusable = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
        kernel = "fused" if fusable else "foreach"
    try:
        return OPTIMIZERS[name](params, lr=lr, weight_decay=weight_decay, **{kernel: True}, **(args or {}))
    except (TypeError, ValueError) as err:
        raise UserError(f"train.optimizer {name} could not be built with train.optimizer_args {args}: {err}") from None


def import_by_path(name: str, key: str, choices: str) -> type:
    """The class ``"package.module:Class"`` or ``"package.module.Class"`` names (one line when it cannot,
    saying what ``key`` takes: ``choices``)."""
    import importlib

    module_name, _, attr = name.rpartition(":") if ":" in name else name.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError):
        raise UserError(f"{key} = '{name}' is not a class pyrovae can import: give {choices}") from None


def lr_factor(
    schedule: str,
    step: int,
    total_steps: int,
    steps_per_epoch: int,
    *,
    lr: float,
    lr_min: float,
    lr_decay: float,
    lr_decay_epochs: int,
) -> float:
    """``f(t)``: the multiple of the base learning rate at (0-based) ``step`` (see the module doc)."""
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        floor = lr_min / lr
        progress = min(step, total_steps) / max(total_steps, 1)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "step":
        return lr_decay ** (step // (lr_decay_epochs * steps_per_epoch))
    raise ValueError(f"lr_schedule must be constant, cosine or step, got {schedule!r}")


def make_scheduler(optimizer: torch.optim.Optimizer, settings, steps_per_epoch: int):
    """``LambdaLR`` stepping once per optimizer step over ``settings.epochs`` epochs, or the torch
    scheduler ``settings.lr_schedule`` names by import path, built with ``lr_schedule_args``.

    The factor is a closure, which ``LambdaLR.state_dict`` leaves out: a checkpoint keeps the
    position (``last_epoch``), and the schedule's shape always comes from the settings in force.
    """
    if settings.lr_schedule not in SCHEDULES:
        cls = import_by_path(
            settings.lr_schedule,
            "train.lr_schedule",
            "constant, cosine, step or an import path such as torch.optim.lr_scheduler.ExponentialLR",
        )
        try:
            return cls(optimizer, **settings.lr_schedule_args)
        except (TypeError, ValueError) as err:
            raise UserError(f"train.lr_schedule {settings.lr_schedule} could not be built with "
                            f"train.lr_schedule_args {settings.lr_schedule_args}: {err}") from None  # fmt: skip
    total = settings.epochs * steps_per_epoch
    options = dict(
        lr=settings.lr, lr_min=settings.lr_min, lr_decay=settings.lr_decay, lr_decay_epochs=settings.lr_decay_epochs
    )

    def factor(step: int) -> float:
        return lr_factor(settings.lr_schedule, step, total, steps_per_epoch, **options)

    return LambdaLR(optimizer, factor)


def apply_schedule(scheduler) -> None:
    """Set each group's rate to the schedule's value at the scheduler's position (after loading a
    state, whose saved rates belong to the schedule it was saved under); a scheduler of the user's
    keeps the rates it saved."""
    if not isinstance(scheduler, LambdaLR):
        return
    rates = [base * fn(scheduler.last_epoch) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, rate in zip(scheduler.optimizer.param_groups, rates):
        group["lr"] = rate
    scheduler._last_lr = rates
