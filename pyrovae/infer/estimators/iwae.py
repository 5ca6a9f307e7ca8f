r"""The importance-weighted bound (IWAE) on log p(x), one number per datapoint.

For a datapoint x and K draws :math:`z_k \sim q(z|x)`,

.. math::
    \log \hat p_K(x) = \log \frac{1}{K} \sum_{k=1}^{K} w_k, \qquad
    \log w_k = \log p(z_k) + \log p(x|z_k) - \log q(z_k|x),

is a stochastic lower bound, :math:`E[\log \hat p_K(x)] \le \log p(x)`, that increases with K
and reaches log p(x) as K -> infinity; K = 1 is the ELBO (Burda et al. 2016, theorem 1).

Memory stays bounded at the literature's K = 5000: datapoints go in batches of
``batch_size`` and the K draws in chunks of ``chunk_size``, combined with a running
log-sum-exp, so at most ``chunk_size x batch_size`` decoder outputs exist at once.

The model is fixed (:class:`pyrovae.model.vae.VAE`), so the weights are computed straight from its
three modules. They are the same numbers Pyro's ``RenyiELBO(alpha=0, num_particles=K,
vectorize_particles=True)`` computes on the same draws (its loss is minus their sum over the
data; the tests check it). ``pyro.infer.importance.vectorized_importance_weights`` is *not*
this: it sums over the data plate.

References: Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch.distributions import Distribution

from pyrovae.infer.terms import evaluation_mode


def default_chunk_rows(device: torch.device | str) -> int:
    """Decoder rows (draws x datapoints) per chunk when ``chunk_size`` is not given.

    On a CPU a chunk's (rows, D) tensors should stay in cache, so that the elementwise passes
    (sampling, log-densities, log-sum-exp) do not stream through main memory: with 1,024 rows
    (3 MB of MNIST logits) K = 5000 on 20 datapoints took 1.09 s, against 1.85 s at 4,096 rows
    and 1.78 s at 50,000 (2-core CPU, 32 MB L3; the bare matmuls alone 0.55, 0.73 and 0.92 s;
    ``python benchmarks/eval_speed.py --chunk-sweep cpu``). A GPU wants large launches.
    """
    return 1_024 if torch.device(device).type == "cpu" else 50_000


def draw(q: Distribution, k: int) -> torch.Tensor:
    """``k`` draws of shape ``(k, *q.batch_shape, *q.event_shape)``, as Pyro's sample site draws them
    (``rsample`` where it exists), so that seeded draws match Pyro's."""
    shape = torch.Size((k,))
    return q.rsample(shape) if q.has_rsample else q.sample(shape)


def log_weights(vae, x: torch.Tensor, k: int, q: Distribution) -> torch.Tensor:
    r"""``(k, B)`` importance log-weights :math:`\log p(z_k) + \log p(x|z_k) - \log q(z_k|x)`
    for ``q = vae.posterior(x)`` (encoded once per batch, for all its chunks)."""
    z = draw(q, k)                                         # (k, B, D)
    return vae.prior().log_prob(z) + vae.likelihood(z).log_prob(x) - q.log_prob(z)


def iwae_batch(vae, x: torch.Tensor, k: int, chunk_size: int | None = None) -> torch.Tensor:
    """IWAE bound of each row of one batch ``x``, shape ``(B,)``; draws in chunks of ``chunk_size``.

    A running log-sum-exp over chunks: the result equals the unchunked one up to float
    rounding, and with the same seed the draws are the same ones whenever each chunk holds a
    multiple of 16 random numbers (torch's CPU normal sampler fills blocks of 16).
    """
    chunk_size = k if chunk_size is None else chunk_size
    q = vae.posterior(x)
    total = torch.full((x.shape[0],), -math.inf, dtype=torch.float64, device=x.device)
    for start in range(0, k, chunk_size):
        lw = log_weights(vae, x, min(chunk_size, k - start), q)
        total = torch.logaddexp(total, lw.double().logsumexp(0))
    return total - math.log(k)


def iwae(vae, x: torch.Tensor, k: int, batch_size: int = 100, chunk_size: int | None = None,
         seed: int | None = 0, progress: Callable[[int], None] | None = None) -> torch.Tensor:
    r"""Per-datapoint IWAE bound :math:`\log \hat p_K(x_n)` for every row of ``x``, shape ``(N,)``, float64.

    ``chunk_size`` defaults to as many draws as keep ``chunk_size * batch_size`` near
    :func:`default_chunk_rows` (1,024 on a CPU, 50,000 on a GPU: 3 and 160 MB of decoder
    output for MNIST). No gradients, ``eval()`` mode, a forked RNG
    seeded with ``seed`` (see :func:`pyrovae.infer.terms.evaluation_mode`); ``progress(n)`` is
    called after each batch of ``n`` datapoints (a progress bar's ``update``).
    """
    if chunk_size is None:
        chunk_size = max(1, min(k, default_chunk_rows(x.device) // max(1, min(batch_size, x.shape[0]))))
    out = []
    with evaluation_mode(vae, seed, x.device):
        for start in range(0, x.shape[0], batch_size):
            batch = x[start:start + batch_size]
            out.append(iwae_batch(vae, batch, k, chunk_size))
            if progress is not None:
                progress(batch.shape[0])
    return torch.cat(out)
