"""Run under torchrun by ``tests/infer/test_distributed.py`` (2 ranks, gloo): writes ``rank<R>.json`` into
the folder given as the first argument.

With a guide whose noise is a function of the datapoint (a Delta at loc + scale * noise(x),
scored by the normal's density) (so any split of a batch draws the same
z), the gradient DDP gives each rank equals the single-process gradient of the ELBO over the
concatenated global batch, and after optimizer steps every rank holds the same parameters.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from torch.nn.parallel import DistributedDataParallel

from pyrovae import VAE, DiagonalNormal, ELBOLoss, make_elbo, make_optimizer
from pyrovae.infer.distributed import gather_objects, init_from_env

SHAPE = (1, 4, 4)


class DataNoiseGuide(DiagonalNormal):
    def forward(self, x):
        loc, raw = self.head(self.encoder(x)).chunk(2, dim=-1)
        noise = torch.sin(1000 * x.flatten(1).sum(1, keepdim=True) + torch.arange(loc.shape[-1]))
        scale = self.positive(raw)
        z = loc + scale * noise  # a reparametrized draw whose noise any split of the batch reproduces
        log_q = dist.Normal(loc, scale).log_prob(z).sum(-1)
        return dist.Delta(z, log_density=log_q, event_dim=1)


def make_vae() -> VAE:
    pyro.set_rng_seed(0)
    return VAE(
        prior="standard_normal",
        guide=DataNoiseGuide(SHAPE, 3, hidden=[8]),
        likelihood={"name": "bernoulli", "hidden": [8]},
        latent_dim=3,
        data_shape=SHAPE,
    )


def main(out: Path) -> None:
    world, _ = init_from_env("cpu")
    x = torch.bernoulli(torch.full((8, *SHAPE), 0.4), generator=torch.Generator().manual_seed(1))
    vae, single = make_vae(), make_vae()
    ddp = DistributedDataParallel(ELBOLoss(vae, make_elbo("trace")))
    mine = torch.tensor_split(x, world.size)[world.rank]
    (ddp(mine, torch.tensor(0.5)) * world.size).backward()
    ELBOLoss(single, make_elbo("trace"))(x, torch.tensor(0.5)).backward()
    relative = max(
        float((p.grad - q.grad).abs().max() / q.grad.abs().max()) for p, q in zip(vae.parameters(), single.parameters())
    )
    optimizer = make_optimizer(vae.parameters(), lr=1e-2)
    for step in range(3):
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        (ddp(torch.tensor_split(x.roll(step, 0), world.size)[world.rank], torch.tensor(1.0)) * world.size).backward()
    flat = torch.cat([p.detach().flatten() for p in vae.parameters()])
    same = all(torch.equal(flat, other) for other in gather_objects(flat))
    (out / f"rank{world.rank}.json").write_text(
        json.dumps(
            {
                "world_size": world.size,
                "backend": world.backend,
                "gradient_relative_difference": relative,
                "parameters_equal_across_ranks": same,
            }
        )
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
