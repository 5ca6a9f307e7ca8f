"""Pictures of a VAE as ``uint8`` arrays of shape ``(H, W, 3)``, ready for ``mlflow.log_image``.

Each function is deterministic given its inputs and a seed, so the per-epoch images of a
run (MLflow's step slider) show the *same* inputs and the same prior draws changing as the
model trains.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.utils import make_grid

from pyrovae.evaluate import evaluation_mode


def to_uint8_grid(images: torch.Tensor, nrow: int = 8) -> np.ndarray:
    """``(N, C, H, W)`` values in [0, 1] -> one ``(H', W', 3)`` uint8 grid with 2-px padding."""
    grid = make_grid(images.detach().float().clamp(0, 1).cpu(), nrow=nrow, padding=2, pad_value=0.5)
    return (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def reconstruction_grid(vae, x: torch.Tensor, seed: int = 0) -> np.ndarray:
    """Rows alternate: inputs, then the decoder mean at z ~ q(z|x) of each input above it."""
    with evaluation_mode(vae, seed, x.device):
        recon = vae.reconstruct(x)
    n = min(8, x.shape[0])
    rows = []
    for start in range(0, x.shape[0], n):
        rows += [x[start:start + n], recon[start:start + n]]
    return to_uint8_grid(torch.cat(rows), nrow=n)


def prior_sample_grid(vae, n: int = 64, seed: int = 0) -> np.ndarray:
    """Decoder means of ``n`` draws z ~ p(z), the same draws for the same seed."""
    device = next(vae.parameters()).device
    with evaluation_mode(vae, seed, device):
        images = vae.generate(n)
    return to_uint8_grid(images, nrow=int(np.ceil(np.sqrt(n))))
