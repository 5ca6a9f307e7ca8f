"""What a finished run gives back: its resolved config, and its model rebuilt from weights.

Rebuilding runs no code from the run's files (weights load with ``weights_only=True``); it
imports the component classes its config names, so open only runs whose code you trust.
"""

from __future__ import annotations

import tomllib
import warnings

import torch

from pyrovae.errors import UserError
from pyrovae.model.models import build_model
from pyrovae.run.config import over_defaults
from pyrovae.run.tracking import MlflowRun

#: what a run rebuilt from ``weights`` is read from
WEIGHTS = {"final": "weights/final.pt", "best": "checkpoints/best.pt"}


def run_config(run: MlflowRun) -> dict:
    """The resolved config a run logged (``config.toml``), resolved again against this pyrovae."""
    try:
        text = run.load_text("config.toml")
    except Exception as err:
        raise UserError(
            f"run '{run.run_id}' has no config.toml ({type(err).__name__}), so it was not made by "
            f"pyrovae train (or pyrovae.train); only such runs can be evaluated, sampled or resumed"
        ) from None
    return over_defaults(tomllib.loads(text))  # keys added since the run get their defaults


def rebuild(run: MlflowRun, config: dict, weights: str = "final", device: str | torch.device = "cpu"):
    """The run's model (its own class, from ``config``) with its ``final`` weights or its ``best``
    checkpoint."""
    from pyrovae.run import checkpoint

    path = WEIGHTS[weights]
    if weights == "best":  # the newest whole one of its two slots
        state, data_shape, num_classes = checkpoint.download(run, "best")["module"], None, None
    else:
        try:
            local = run.download(path)
        except Exception as err:
            raise UserError(
                f"run '{run.run_id}' has no {path} ({type(err).__name__}); did the run finish (or reach a best epoch)?"
            ) from None
        saved = torch.load(local, map_location="cpu", weights_only=True)
        state, data_shape, num_classes = saved["state_dict"], tuple(saved["data_shape"]), saved.get("num_classes")
    if data_shape is None:
        from pyrovae.data import load_data

        data = load_data(config["data"], "cpu")
        data_shape, num_classes = data.data_shape, data.num_classes
    model = build_model(config["model"], data_shape, num_classes)
    model.load_state_dict(state)
    for name, value in (("data_shape", tuple(data_shape)), ("num_classes", num_classes)):
        if getattr(model, name, None) is None:  # what sampling needs, for a class that does not keep it
            object.__setattr__(model, name, value)
    return model.to(device).eval()


def load_vae(
    run_id: str, weights: str = "final", device: str | torch.device = "cpu", tracking_uri: str = "", uri: str = ""
):
    """A finished run's model (a :class:`~pyrovae.model.vae.VAE`, or the class the run logged),
    rebuilt from its config and weights, in ``eval()`` mode.

    ``weights``: ``"final"`` (the end of training) or ``"best"`` (the epoch with the lowest
    val/loss). ``tracking_uri``: the tracking store, as ``mlflow.tracking_uri`` names it everywhere
    (default: ``$MLFLOW_TRACKING_URI``, else ``./mlruns/mlflow.db``; ``uri`` is its old name).
    Then ``vae.encode(x)``, ``vae.decode(z)``, ``vae.generate(n)``.
    """
    if uri:
        warnings.warn("load_vae(uri=...) is now load_vae(tracking_uri=...)", DeprecationWarning, stacklevel=2)
    run = MlflowRun.existing(run_id, tracking_uri or uri)
    return rebuild(run, run_config(run), weights, device)
