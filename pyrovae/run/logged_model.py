"""The VAE as an MLflow logged model: ``mlflow.pytorch.load_model("runs:/<run>/model")`` gives it back.

The loaded object is the run's model -- a :class:`pyrovae.model.vae.VAE` (with ``encode(x) -> z``,
``decode(z) -> E[x|z]``, ``reconstruct(x)`` and ``generate(n)``) or the class the run logged -- on
the CPU, in ``eval()`` mode; loading it
needs ``pyrovae`` (and the versions of torch/pyro-ppl/zuko it names) importable. Three traps,
each checked with MLflow 3.17.2:

- MLflow's default ``pt2`` serialization (since 3.14) wants an input example and loads back
  as an exported graph with none of those methods: we log with ``serialization_format="pickle"``.
- A module that went through ``svi.step`` holds weak references (Pyro's param store) that
  pickle refuses: we log a *clean copy*, rebuilt from the ``[model]`` config and the weights.
- Requirement inference imports and inspects the model for seconds: the requirements are named.

A pickled model runs code when loaded, so pyrovae itself never loads one: its commands and
:func:`pyrovae.load_vae` rebuild a run's VAE from ``config.toml`` and ``weights/*.pt`` or the
checkpoints (:mod:`pyrovae.run.checkpoint`), which load with ``weights_only=True``.
"""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version

import torch

from pyrovae.model.models import build_model

#: the packages a pickled VAE needs to load
REQUIREMENTS = ("torch", "pyro-ppl", "zuko", "pyrovae")


def pip_requirements() -> list[str]:
    out = []
    for name in REQUIREMENTS:
        try:
            out.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            out.append(name)
    return out


def clean_copy(vae, model_config: dict, data_shape, state_dict: dict | None = None, num_classes: int | None = None):
    """A fresh CPU model built from ``model_config`` holding ``state_dict`` (default: ``vae``'s weights)."""
    with torch.random.fork_rng(devices=[]):  # the fresh modules' initialization must not move training's RNG
        copy = build_model(model_config, data_shape, num_classes)
    copy.load_state_dict({k: v.detach().cpu() for k, v in (state_dict or vae.state_dict()).items()})
    return copy.eval()


def log_vae(
    run,
    vae,
    model_config: dict,
    data_shape,
    name: str = "model",
    state_dict: dict | None = None,
    step: int = 0,
    num_classes: int | None = None,
) -> None:
    """Log a clean copy of ``vae`` (or of ``state_dict``) as the logged model ``name`` of ``run``
    (a :class:`~pyrovae.run.tracking.MlflowRun`)."""
    copy = clean_copy(vae, model_config, data_shape, state_dict, num_classes)
    quiet = logging.getLogger("mlflow.pytorch")  # it warns that pickle runs code on load: said above
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        run.log_model(
            copy,
            name=name,
            serialization_format="pickle",
            step=step,
            pip_requirements=pip_requirements(),
            metadata={
                "model": model_config["name"],
                "data_shape": list(data_shape),
                **({"latent_dim": copy.latent_dim} if hasattr(copy, "latent_dim") else {}),
            },
        )
    finally:
        quiet.setLevel(level)
