r"""Where a pyrovae training step spends its time: the host (Python, Pyro) or the device's kernels.

    .venv/bin/python benchmarks/step_profile.py                    # CPU
    python benchmarks/step_profile.py --device cuda --batch-size 128 --batch-size 1024
    .venv/bin/python benchmarks/step_profile.py --phases --hidden 16 --latent 2 --batch-size 16 --steps 600

``--phases`` splits the step by what the host does, each phase's functions timed (see :func:`phases`).

For each batch size: the wall time of a step of the default config (784-400-50 MLP,
``Trace_ELBO``, fused Adam) timed without the profiler, then one epoch of ``--steps`` steps under
``torch.profiler``: the time the device spent in kernels per step and the number of kernel
launches (CUDA only), the time spent inside PyTorch operators on the host, and the operators
that took the most host time. On a GPU a small MLP's kernels take microseconds; the step is
then the host issuing them (Pyro's poutine stack building a trace, distribution objects, the
ELBO's bookkeeping), so the step time barely moves with the batch size.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import make_splits, pyrovae_trainer, size_overrides  # noqa: E402
from timing import interleave, spread, synchronize  # noqa: E402

from pyrovae.devices import describe, select_device  # noqa: E402


def profile_steps(device: torch.device, batch_size: int, steps: int, rounds: int) -> None:
    splits = make_splits("", device, steps * batch_size)
    epoch = pyrovae_trainer(splits, steps * batch_size, [f"train.batch_size={batch_size}"]).train_epoch
    wall = spread(interleave({"epoch": epoch}, rounds)["epoch"])[0] / steps
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        epoch()
        synchronize()
    events = prof.key_averages()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    host_ops = sorted(
        (e for e in events if e.device_type == torch.autograd.DeviceType.CPU and e.key.startswith("aten::")),
        key=lambda e: e.self_cpu_time_total,
        reverse=True,
    )
    in_ops = sum(e.self_cpu_time_total for e in host_ops) / 1e6 / steps
    print(
        f"\n## batch {batch_size}: {wall * 1e3:.2f} ms/step wall ({batch_size / wall:,.0f} images/s), "
        f"median of {rounds} epochs of {steps} steps"
    )
    if kernels:
        busy = sum(e.self_device_time_total for e in kernels) / 1e6 / steps
        launches = sum(e.count for e in kernels) / steps
        print(
            f"device kernels: {busy * 1e3:.3f} ms/step ({100 * busy / wall:.0f}% of the step), "
            f"{launches:.0f} kernel launches/step"
        )
    print(
        f"host time inside aten operators: {in_ops * 1e3:.2f} ms/step (under the profiler, which inflates it); "
        f"the rest of the step is Python: Pyro's tracing, distributions, the ELBO, the optimizer wrapper"
    )
    print("top host operators (self time per step, calls per step):")
    for e in host_ops[:8]:
        print(f"  {e.key:<32} {e.self_cpu_time_total / 1e3 / steps:7.3f} ms  {e.count / steps:5.1f}")


def _classes(base: type) -> list[type]:
    out, todo = [], [base]
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo.extend(cls.__subclasses__())
    return out


def _targets(trainer) -> dict[str, list[tuple[object, str]]]:
    """phase -> the (owner, attribute) callables whose time is that phase."""
    import pyro
    import pyro.poutine.trace_struct as trace_struct
    from torch import distributions, nn

    from pyrovae.infer.elbo import ELBOLoss

    layers = [c for c in _classes(nn.Module) if c.__module__.startswith("torch.nn.modules.")
              and c.__module__.split(".")[-1] in ("linear", "conv", "activation", "container", "flatten")]  # fmt: skip
    dists = [c for c in _classes(distributions.Distribution) if c.__module__.split(".")[0] in ("torch", "pyro")]
    return {
        "loss forward (all of it)": [(ELBOLoss, "forward")],
        "model and guide runs (all of them)": [(trainer.loss, "_model"), (trainer.loss, "_guide")],
        "networks (torch.nn layers)": [(c, "forward") for c in layers if "forward" in vars(c)],
        "distribution objects (construction)": [(c, "__init__") for c in dists if "__init__" in vars(c)],
        "sampling (rsample, sample)": [(c, m) for c in dists for m in ("rsample", "sample") if m in vars(c)],
        "parameter registration (pyro.module)": [(pyro, "module")],
        "log-densities (Trace.compute_log_prob)": [(trace_struct.Trace, "compute_log_prob")],
        "backward (autograd)": [(torch.Tensor, "backward")],
        "optimizer step": [(trainer.optimizer, "step")],
        "zero_grad": [(trainer.optimizer, "zero_grad")],
        "schedule step": [(trainer.scheduler, "step")],
    }


def phases(trainer, steps: int) -> None:
    r"""One epoch with the functions of each phase timed, split per step.

    Each phase's functions (:func:`_targets`) are wrapped by a timer that counts a call only when no
    other call of the same phase is under way (a layer inside a ``Sequential``, a distribution
    built by another), so nested calls count once. What remains of the model and guide runs is the
    model's and the components' own Python and Pyro's effect handlers (the poutine stack: tracing,
    replay, plates, the annealing handler); what remains of the loss is the ELBO's bookkeeping
    (collecting sites, sums, scale and mask); what remains of the epoch is the trainer's (batches,
    the all-reduce of the loss, ``.item()``). The epoch runs on one thread, timed by that thread's
    CPU clock after a warm-up epoch, so other processes on the machine do not change the split.
    """
    clock = time.thread_time
    spent: dict[str, float] = {}
    depth: dict[str, int] = {}
    saved = []

    def timed(phase, fn):
        def wrapper(*args, **kwargs):
            depth[phase] = depth.get(phase, 0) + 1
            started = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                depth[phase] -= 1
                if depth[phase] == 0:
                    spent[phase] = spent.get(phase, 0.0) + clock() - started

        return wrapper

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    trainer.train_epoch()  # warm-up: first calls build caches
    for phase, targets in _targets(trainer).items():
        for owner, name in targets:
            original = (vars(owner) if isinstance(owner, type) else owner.__dict__).get(name, getattr(owner, name))
            saved.append((owner, name, original))
            setattr(owner, name, timed(phase, getattr(owner, name)))
    try:
        started = clock()
        trainer.train_epoch()
        total = clock() - started
    finally:
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)
        torch.set_num_threads(threads)
    runs, loss = spent.pop("model and guide runs (all of them)", 0.0), spent.pop("loss forward (all of it)", 0.0)
    inside = ("networks (torch.nn layers)", "distribution objects (construction)", "sampling (rsample, sample)",
              "parameter registration (pyro.module)")  # fmt: skip
    spent["model/guide code and Pyro's effect handlers"] = runs - sum(spent.get(k, 0.0) for k in inside)
    spent["ELBO bookkeeping (the rest of the loss)"] = (
        loss - runs - spent.get("log-densities (Trace.compute_log_prob)", 0)
    )
    step = ("backward (autograd)", "optimizer step", "zero_grad", "schedule step")
    spent["trainer (batches, all-reduce, .item(), the rest)"] = total - loss - sum(spent.get(k, 0.0) for k in step)
    print(f"\nper-step host time by phase, one thread ({total / steps * 1e3:.2f} ms/step timed):")
    for name, seconds in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<52} {seconds / steps * 1e3:7.3f} ms  {100 * seconds / total:5.1f}%")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, action="append", help="repeatable (default 128)")
    parser.add_argument("--steps", type=int, default=50, help="steps per timed and profiled epoch")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--phases", action="store_true", help="the step split by phase instead")
    parser.add_argument("--hidden", type=int, default=400, help="units of the MLPs (--phases)")
    parser.add_argument("--latent", type=int, default=50, help="latent dimensions (--phases)")
    args = parser.parse_args(argv)
    device = select_device(args.device)
    print(f"device {describe(device)}, torch {torch.__version__}, {torch.get_num_threads()} host threads")
    for batch_size in args.batch_size or [128]:
        if args.phases:
            # the eager step's phases: the traced one runs Pyro's Python only when it compiles
            sets = [f"train.batch_size={batch_size}", "train.jit=false", *size_overrides(args.hidden, args.latent)]
            splits = make_splits("", device, args.steps * batch_size)
            print(f"\n## batch {batch_size}, {args.hidden}-unit MLPs, {args.latent} latent dimensions")
            phases(pyrovae_trainer(splits, args.steps * batch_size, sets), args.steps)
        else:
            profile_steps(device, batch_size, args.steps, args.rounds)


if __name__ == "__main__":
    main()
