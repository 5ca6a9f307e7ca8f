r"""One torch Adam for every parameter SVI hands over, behind Pyro's ``PyroOptim`` interface.

``pyro.optim.Adam`` keeps one ``torch.optim.Adam`` *per parameter tensor* (10 for the
784-400-50 VAE), so each step is 10 Python-level optimizer steps and the multi-tensor
(``foreach``) or ``fused`` kernels never see more than one tensor. :class:`FusedAdam` keeps a
single ``torch.optim.Adam`` with every parameter in it, updated by one fused/foreach call:

.. math:: m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t,\quad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2,\quad
          \theta_t = \theta_{t-1} - \eta\,\frac{m_t/(1-\beta_1^t)}{\sqrt{v_t/(1-\beta_2^t)} + \epsilon},

the same update as ``pyro.optim.Adam``, parameter by parameter (tests check it to float
tolerance). What Pyro's wrapper promises is kept:

- parameters are taken lazily, the first time SVI passes them (``__call__(params)``);
- only the parameters of this step's trace move: gradients are set to ``None`` after each
  step, so a parameter absent from a trace has no gradient and Adam skips it;
- ``optim_args`` may be a dict or Pyro's per-parameter callable (one param group per distinct
  set of arguments);
- :meth:`get_state` returns Pyro's format, ``{param name: torch optimizer state_dict}``, so a
  checkpoint written by ``pyro.optim.Adam`` resumes here and the other way round;
  :meth:`set_state` applies now to the parameters already seen and later to the others.

Hyperparameters (lr, betas, ...) come from ``optim_args``, not from a loaded state.
"""

from __future__ import annotations

from typing import Iterable

import pyro
import pyro.optim
import torch
from pyro.infer.util import is_validation_enabled
from pyro.optim import PyroOptim


class FusedAdam(PyroOptim):
    """``pyro.optim.Adam`` with one torch optimizer: ``FusedAdam({"lr": 1e-3}, impl="foreach")``.

    ``impl`` is ``"fused"`` (one kernel per step; CPU and CUDA float tensors), ``"foreach"``
    (multi-tensor ops) or ``"auto"`` (``"fused"`` where torch supports it, else ``"foreach"``).
    """

    def __init__(self, optim_args, impl: str = "auto"):
        if impl not in ("auto", "fused", "foreach"):
            raise ValueError(f"impl must be auto, fused or foreach, got {impl!r}")
        super().__init__(torch.optim.Adam, optim_args)
        self.impl = impl
        self.optimizer: torch.optim.Adam | None = None
        self._seen: set[torch.Tensor] = set()
        self._group_of_args: dict[tuple, dict] = {}

    # -- stepping ---------------------------------------------------------------------------
    def __call__(self, params, *args, **kwargs) -> None:
        new = [p for p in params if p not in self._seen]
        if new:
            self._add(new)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _kernel(self, params: list[torch.Tensor]) -> dict:
        impl = self.impl
        if impl == "auto":
            ok = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
            impl = "fused" if ok else "foreach"
        return {impl: True}

    def _add(self, params: list[torch.Tensor]) -> None:
        # A set has no order; the param store's names give a reproducible one.
        store = pyro.get_param_store()
        params = sorted(params, key=lambda p: store.param_name(p) or "")
        for p in params:
            args = dict(self._get_optim_args(p))
            key = tuple(sorted((k, repr(v)) for k, v in args.items()))
            group = self._group_of_args.get(key)
            if group is None:
                group = {"params": [p], **args, **self._kernel([p])}
                if self.optimizer is None:
                    self.optimizer = torch.optim.Adam([group])
                else:
                    self.optimizer.add_param_group(group)
                self._group_of_args[key] = self.optimizer.param_groups[-1]
            else:
                group["params"].append(p)
            self._seen.add(p)
            pending = self._state_waiting_to_be_consumed.pop(store.param_name(p), None)
            if pending is not None:
                self._load_param_state(p, pending)

    # -- state, in pyro.optim's per-parameter format ---------------------------------------
    def get_state(self) -> dict:
        """``{param name: {"state": {0: {...}}, "param_groups": [{..., "params": [0]}]}}``."""
        out = {}
        if self.optimizer is None:
            return out
        store = pyro.get_param_store()
        for group in self.optimizer.param_groups:
            hyper = {k: v for k, v in group.items() if k != "params"}
            for p in group["params"]:
                name = store.param_name(p)
                if name is None:
                    continue
                state = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in self.optimizer.state.get(p, {}).items()}
                out[name] = {"state": {0: state} if state else {}, "param_groups": [{**hyper, "params": [0]}]}
        return out

    def set_state(self, state_dict: dict) -> None:
        """Load per-parameter state now for parameters already seen, on first sight for the rest."""
        store = pyro.get_param_store()
        by_name = {store.param_name(p): p for p in self._seen}
        for name, state in state_dict.items():
            p = by_name.get(name)
            if p is None:
                self._state_waiting_to_be_consumed[name] = state
            else:
                self._load_param_state(p, state)

    def _load_param_state(self, p: torch.Tensor, saved: dict) -> None:
        state = saved.get("state", {}).get(0)
        if not state:
            self.optimizer.state.pop(p, None)
            return
        group = next(g for g in self.optimizer.param_groups if any(q is p for q in g["params"]))
        step_device = p.device if (group.get("fused") or group.get("capturable")) else torch.device("cpu")
        self.optimizer.state[p] = {
            k: (torch.as_tensor(v, dtype=torch.float32, device=step_device).clone() if k == "step"
                else v.to(device=p.device, dtype=p.dtype).clone())
            for k, v in state.items()
        }



ADAM_IMPLS = ("auto", "fused", "foreach", "pyro")


def make_optim(train_cfg: dict) -> PyroOptim:
    """The optimizer SVI steps: :class:`FusedAdam`, or ``pyro.optim.Adam`` for ``train.adam = "pyro"``."""
    impl = train_cfg.get("adam", "auto")
    if impl == "pyro":
        return pyro.optim.Adam({"lr": train_cfg["lr"]})
    return FusedAdam({"lr": train_cfg["lr"]}, impl=impl)


def validate_first_step_only(batches: Iterable):
    """Yield ``batches`` with Pyro's distribution checks on for the first one only.

    The first step of an epoch runs every check (bad data or a broken module fails loudly
    there); later steps of the same epoch skip them: with ``Trace_ELBO`` they cost 16 host
    synchronisations a step (DESIGN.md). The caller's setting is restored when the loop ends,
    breaks or raises.
    """
    was_enabled = is_validation_enabled()
    try:
        for i, batch in enumerate(batches):
            if i == 1:
                pyro.enable_validation(False)
            yield batch
    finally:
        pyro.enable_validation(was_enabled)
