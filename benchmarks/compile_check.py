"""``torch.compile`` of pyrovae's eager step on this machine, beside the eager and the traced step.

Issue 29 asked to try TorchDynamo (inductor backend) on the CPU and keep it only where it measures
faster. It compiles, with graph breaks at Pyro's effect handlers and traces, and its steps were
slower than the eager ones (docs/performance.md), so pyrovae does not use it; this script reruns
the comparison::

    python benchmarks/compile_check.py 16 2 16 300    # hidden units, latent dimensions, batch, steps per round

One process, synthetic binary 28x28 data, ``torch.optim.Adam``, three rounds after 20 warm-up steps
of each; prints ms per step of each contender per round and the number of graph breaks.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from pyrovae.infer.elbo import ELBOLoss, make_elbo
from pyrovae.model.models import build_model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("hidden", "latent", "batch", "steps"):
        parser.add_argument(name, type=int)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    x = (torch.rand(args.batch, 1, 28, 28) < 0.5).float()
    nets = {"name": "diagonal_normal", "hidden": [args.hidden]}
    spec = {"name": "vae", "latent_dim": args.latent, "guide": nets, "likelihood": {**nets, "name": "bernoulli"}}
    model = build_model(spec, (1, 28, 28))
    optimizer, beta = torch.optim.Adam(model.parameters(), lr=1e-3), torch.tensor(1.0)
    start = time.perf_counter()
    compiled = torch.compile(ELBOLoss(model, make_elbo("trace")))
    compiled(x, beta).backward()
    print(f"torch.compile: first call {time.perf_counter() - start:.1f} s")
    contenders = {
        "eager": ELBOLoss(model, make_elbo("trace")),
        "traced": ELBOLoss(model, make_elbo("trace", jit=True)),
        "compiled": compiled,
    }

    def ms_per_step(loss, steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            optimizer.zero_grad()
            loss(x, beta).backward()
            optimizer.step()
        return (time.perf_counter() - start) / steps * 1e3

    for loss in contenders.values():
        ms_per_step(loss, 20)
    for _ in range(3):
        print({name: round(ms_per_step(loss, args.steps), 3) for name, loss in contenders.items()}, "ms/step")
    explained = torch._dynamo.explain(ELBOLoss(model, make_elbo("trace")))(x, beta)
    print(f"{explained.graph_break_count} graph breaks")


if __name__ == "__main__":
    main()
