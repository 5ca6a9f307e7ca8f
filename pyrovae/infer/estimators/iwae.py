r"""The importance-weighted bound (IWAE) on log p(x), one number per datapoint.

For a datapoint x and K draws of all latent sites :math:`z_k \sim q(z|x)` from the guide,

.. math::
    \log \hat p_K(x) = \log \frac{1}{K} \sum_{k=1}^{K} w_k, \qquad
    \log w_k = \log p(x, z_k) - \log q(z_k|x),

is a stochastic lower bound, :math:`E[\log \hat p_K(x)] \le \log p(x)`, that increases with K
and reaches log p(x) as K -> infinity; K = 1 is the ELBO (Burda et al. 2016, theorem 1).
:math:`\log p(x, z)` sums every site of the model (any number of latent sites, e.g. both levels
of a hierarchical VAE) and :math:`\log q` every latent site of the guide, read from their traces
(:mod:`pyrovae.infer.traces`): the K draws are a ``pyrovae_particles`` plate around model and
guide. A discrete guide site marked ``infer={"enumerate": "parallel"}`` is summed out exactly:
for such a label y, :math:`w_k = \sum_y p(x, y, z_{k,y}) / q(z_{k,y}|x, y)`, an unbiased estimate
of p(x) (the :math:`q(y|x)` cancels), so the bound is on log p(x) with y summed out. A model
that needs labels (a conditional model) is scored with them: log p(x | y).

Memory stays bounded at the literature's K = 5000: datapoints go in batches of
``batch_size`` and the K draws in chunks of ``chunk_size``, combined with a running
log-sum-exp, so at most ``chunk_size x batch_size`` decoder outputs exist at once.

They are the same numbers Pyro's ``RenyiELBO(alpha=0, num_particles=K, vectorize_particles=True)``
computes on the same draws (its loss is minus their sum over the data; the tests check it).
``pyro.infer.importance.vectorized_importance_weights`` is *not*
this: it sums over the data plate.

References: Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from pyrovae.infer.terms import evaluation_mode
from pyrovae.infer.traces import (
    evaluation_labels,
    is_enumerated,
    narrow_particles,
    plate_nesting,
    replay_model,
    sample_sites,
    scores,
    trace_guide,
)


def default_chunk_rows(device: torch.device | str) -> int:
    """Decoder rows (draws x datapoints) per chunk when ``chunk_size`` is not given.

    On a CPU a chunk's (rows, D) tensors should stay in cache, so that the elementwise passes
    (sampling, log-densities, log-sum-exp) do not stream through main memory: with 1,024 rows
    (3 MB of MNIST logits) K = 5000 on 20 datapoints took 1.09 s, against 1.85 s at 4,096 rows
    and 1.78 s at 50,000 (2-core CPU, 32 MB L3; the bare matmuls alone 0.55, 0.73 and 0.92 s;
    ``python benchmarks/eval_speed.py --chunk-sweep cpu``). A GPU wants large launches.
    """
    return 1_024 if torch.device(device).type == "cpu" else 50_000


#: guide draws (datapoints x draws) traced at once: the guide then runs once per block, the model per chunk
GUIDE_ROWS = 2**17


def log_weights(model, x: torch.Tensor, k: int, nesting: int, y: torch.Tensor | None, guide_trace) -> torch.Tensor:
    r"""``(k, B)`` importance log-weights :math:`\log p(x, z_k) - \log q(z_k|x)` of one batch, the
    guide's enumerated sites summed out; ``nesting`` from :func:`~pyrovae.infer.traces.plate_nesting`;
    ``guide_trace`` holds the k draws of the guide (:func:`~pyrovae.infer.traces.trace_guide`)."""
    model_trace = replay_model(model, x, y, guide_trace, particles=k, nesting=nesting)
    scored = scores(model_trace, guide_trace, nesting, enumerated=True)
    log_w = scored.log_joint() - sum(v for n, v in scored.posterior.items() if n not in scored.enumerated)
    if log_w.dim() > 2:  # enumerated values, left of the particles: sum them out
        log_w = log_w.reshape(-1, *log_w.shape[-2:]).logsumexp(0)
    return log_w


def iwae_batch(
    model,
    x: torch.Tensor,
    k: int,
    chunk_size: int | None = None,
    nesting: int = 1,
    y: torch.Tensor | None = None,
    draw_numel: int = 0,
) -> torch.Tensor:
    """IWAE bound of each row of one batch ``x``, shape ``(B,)``; the model scores the draws in
    chunks of ``chunk_size``.

    A running log-sum-exp over chunks: the result equals the unchunked one up to float rounding,
    and with the same seed the draws are the same ones whenever each chunk holds a multiple of 16
    random numbers (torch's CPU normal sampler fills blocks of 16). Under that condition, given the
    random numbers each draw of the guide takes per datapoint (``draw_numel``), the guide draws
    blocks of about :data:`GUIDE_ROWS` draws x datapoints at once (a multiple of the chunk: the
    same numbers), so its networks run once per block, not once per chunk; the model, whose decoder
    outputs dominate the memory, replays each chunk of the block.
    """
    chunk_size = k if chunk_size is None else chunk_size
    same_draws = draw_numel and (chunk_size * x.shape[0] * draw_numel) % 16 == 0
    block = max(chunk_size, GUIDE_ROWS // max(1, x.shape[0] * chunk_size) * chunk_size) if same_draws else chunk_size
    total = torch.full((x.shape[0],), -math.inf, dtype=torch.float64, device=x.device)
    for block_start in range(0, k, block):
        drawn = min(block, k - block_start)
        guide_trace = trace_guide(model, x, y, particles=drawn, nesting=nesting, enumerate_guide=True)
        for start in range(0, drawn, chunk_size):
            length = min(chunk_size, drawn - start)
            chunk = guide_trace if length == drawn else narrow_particles(guide_trace, start, length, drawn, nesting)
            lw = log_weights(model, x, length, nesting, y, guide_trace=chunk)
            total = torch.logaddexp(total, lw.double().logsumexp(0))
    return total - math.log(k)


def random_numbers_per_draw(model, x: torch.Tensor, y: torch.Tensor | None, nesting: int) -> int:
    """How many numbers one draw of the guide's sampled (not enumerated) sites takes for one
    datapoint ``x`` (a trace under a forked RNG); 0 when that is not known (a site without rsample)."""
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        trace = trace_guide(model, x, y, particles=1, nesting=nesting, enumerate_guide=True)
    sites = [s for s in sample_sites(trace).values() if not s["is_observed"] and not is_enumerated(s)]
    if any(not s["fn"].has_rsample for s in sites):
        return 0
    return sum(s["value"].numel() for s in sites)


def iwae(
    model,
    x: torch.Tensor,
    k: int,
    batch_size: int = 100,
    chunk_size: int | None = None,
    seed: int | None = 0,
    progress: Callable[[int], None] | None = None,
    y: torch.Tensor | None = None,
    stop: Callable[[], bool] | None = None,
) -> torch.Tensor:
    r"""Per-datapoint IWAE bound :math:`\log \hat p_K(x_n)` for every row of ``x``, shape ``(N,)``, float64.

    ``y``: the labels of ``x``, handed to a model that needs them (log p(x|y)); a model for which
    they are optional is scored without them (log p(x)). ``chunk_size`` defaults to as many draws
    as keep ``chunk_size * batch_size`` near :func:`default_chunk_rows` (1,024 on a CPU, 50,000 on
    a GPU: 3 and 160 MB of decoder output for MNIST). No gradients, ``eval()`` mode, a forked RNG
    seeded with ``seed`` (see :func:`pyrovae.infer.terms.evaluation_mode`); ``progress(n)`` is
    called after each batch of ``n`` datapoints (a progress bar's ``update``); when ``stop()`` then
    says True, the bounds of the datapoints done so far are returned (the first rows of ``x``).
    """
    if chunk_size is None:
        chunk_size = max(1, min(k, default_chunk_rows(x.device) // max(1, min(batch_size, x.shape[0]))))
    y = evaluation_labels(model, y)
    out = []
    with evaluation_mode(model, seed, x.device):
        nesting = plate_nesting(model, x[:1], None if y is None else y[:1])
        draw_numel = random_numbers_per_draw(model, x[:1], None if y is None else y[:1], nesting)
        for start in range(0, x.shape[0], batch_size):
            batch = x[start : start + batch_size]
            labels = None if y is None else y[start : start + batch_size]
            out.append(iwae_batch(model, batch, k, chunk_size, nesting, labels, draw_numel))
            if progress is not None:
                progress(batch.shape[0])
            if stop is not None and stop():
                break
    return torch.cat(out)
