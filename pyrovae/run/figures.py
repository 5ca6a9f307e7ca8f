"""Pictures of a VAE as ``uint8`` arrays of shape ``(H, W, 3)``, ready for ``mlflow.log_image``.

Each function is deterministic given its inputs and a seed, so the per-epoch images of a
run (MLflow's step slider) show the *same* inputs and the same prior draws changing as the
model trains.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.utils import make_grid

from pyrovae.infer.terms import evaluation_mode
from pyrovae.infer.traces import generate, reconstruct


def to_uint8_grid(images: torch.Tensor, nrow: int = 8) -> np.ndarray:
    """``(N, C, H, W)`` values in [0, 1] -> one ``(H', W', 3)`` uint8 grid with 2-px padding."""
    grid = make_grid(images.detach().float().clamp(0, 1).cpu(), nrow=nrow, padding=2, pad_value=0.5)
    return (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def reconstruction_grid(model, x: torch.Tensor, seed: int = 0, y: torch.Tensor | None = None) -> np.ndarray:
    """Rows alternate: inputs, then the data site's mean at z ~ q(z|x) of each input above it."""
    with evaluation_mode(model, seed, x.device):
        recon = reconstruct(model, x, y)
    n = min(8, x.shape[0])
    rows = []
    for start in range(0, x.shape[0], n):
        rows += [x[start : start + n], recon[start : start + n]]
    return to_uint8_grid(torch.cat(rows), nrow=n)


def prior_sample_grid(model, n: int = 64, seed: int = 0, data_shape=None, y: torch.Tensor | None = None) -> np.ndarray:
    """The data site's means at ``n`` draws of the latent sites from the model (given labels ``y``,
    one per draw, for a conditional model), the same draws for the same seed."""
    device = next(model.parameters()).device
    template = torch.zeros(n, *(data_shape or model.data_shape), device=device)
    with evaluation_mode(model, seed, device):
        images = generate(model, template, y)
    return to_uint8_grid(images, nrow=int(np.ceil(np.sqrt(n))))


# -- matplotlib charts (Agg canvas, no pyplot state: safe in threads and without a display) --


def figure(width: float = 5.0, height: float = 3.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=80, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _to_array(fig) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def latent_manifold_grid(vae, n: int = 15, quantile: float = 0.95) -> np.ndarray:
    r"""2-D latent only: decoder means on an ``n x n`` grid of z (Kingma & Welling 2014, fig. 4).

    The grid is :math:`z = \Phi^{-1}(u)` for ``u`` evenly spaced in ``[1 - quantile, quantile]``,
    i.e. equal steps of probability under a standard normal prior; rows go down in z_2.
    """
    device = next(vae.parameters()).device
    u = torch.linspace(1 - quantile, quantile, n, device=device)
    ticks = torch.distributions.Normal(0.0, 1.0).icdf(u)
    z2, z1 = torch.meshgrid(ticks.flip(0), ticks, indexing="ij")
    with evaluation_mode(vae, None, device):
        images = vae.decode(torch.stack([z1, z2], -1).reshape(-1, 2))
    return to_uint8_grid(images, nrow=n)


def latent_scatter(
    means: torch.Tensor, labels: torch.Tensor | None = None, seed: int = 0, site: str = "z"
) -> np.ndarray:
    r"""Posterior means :math:`E_q[z_s|x]` of one latent site, shape ``(N, D)``
    (:func:`~pyrovae.infer.estimators.diagnostics.posterior_means`), projected on their first two
    principal components (``torch.pca_lowrank``, seeded) when ``D > 2``, coloured by label."""
    means = means.float().cpu()
    if means.shape[1] > 2:
        with torch.random.fork_rng(devices=[]):  # pca_lowrank draws random projections
            torch.manual_seed(seed)
            _, _, v = torch.pca_lowrank(means, q=2, center=True)
        points, axes = (means - means.mean(0)) @ v[:, :2], ("PC 1", "PC 2")
    elif means.shape[1] == 2:
        points, axes = means, ("z_1", "z_2")
    else:
        points, axes = torch.cat([means, torch.zeros_like(means)], 1), ("z_1", "")
    fig = figure(4.2, 3.6)
    ax = fig.add_subplot()
    colours = None if labels is None else labels[: len(points)].cpu().numpy()
    if colours is None:
        ax.scatter(points[:, 0], points[:, 1], s=4, alpha=0.7, linewidths=0)
    else:
        dots = ax.scatter(points[:, 0], points[:, 1], c=colours, s=4, cmap="tab10", alpha=0.7, linewidths=0)
        fig.colorbar(dots, ax=ax, label="label")
    ax.set(xlabel=axes[0], ylabel=axes[1], title=f"posterior means of {site}, D = {means.shape[1]}")
    return _to_array(fig)


def kl_per_dimension_chart(kl: torch.Tensor | dict[str, torch.Tensor]) -> np.ndarray:
    """Bars of the mean KL(q(z_u|.) || p(z_u|.)) per latent dimension u, in nats, one panel per latent
    site (``{site: (D_s,)}``, or one tensor); near 0 = collapsed."""
    sites = kl if isinstance(kl, dict) else {"z": kl}
    width = sum(max(3.5, 0.12 * len(v) + 1.5) for v in sites.values())
    fig = figure(width, 2.8)
    for ax, (name, values) in zip(np.atleast_1d(fig.subplots(1, len(sites))), sites.items()):
        values = values.detach().cpu().numpy()
        ax.bar(np.arange(len(values)), values, color="tab:blue")
        title = f"KL per dimension, total {values.sum():.2f}"
        ax.set(
            xlabel=f"dimension of {name}" if len(sites) > 1 else "latent dimension",
            ylabel="KL (nats)",
            title=title if len(sites) == 1 else f"{name}: {title}",
        )
    return _to_array(fig)


def loss_curves(history: list[dict[str, float]]) -> np.ndarray:
    """``train/loss`` and ``val/loss`` per epoch, and the validation ELBO's two terms beside them."""
    epochs = np.arange(1, len(history) + 1)

    def series(key):
        return [m.get(key, np.nan) for m in history]

    fig = figure(7.0, 2.8)
    left, right = fig.subplots(1, 2)
    for key in ("train/loss", "val/loss"):
        left.plot(epochs, series(key), marker=".", label=key)
    left.set(xlabel="epoch", ylabel="nats per datapoint", title="negative ELBO")
    for key in ("val/recon", "val/kl"):
        right.plot(epochs, series(key), marker=".", label=key)
    right.set(xlabel="epoch", title="validation terms")
    for ax in (left, right):
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    return _to_array(fig)
