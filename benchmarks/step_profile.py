r"""Where a pyrovae training step spends its time: the host (Python, Pyro) or the device's kernels.

    .venv/bin/python benchmarks/step_profile.py                    # CPU
    python benchmarks/step_profile.py --device cuda --batch-size 128 --batch-size 1024

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
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import make_splits, pyrovae_trainer  # noqa: E402
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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, action="append", help="repeatable (default 128)")
    parser.add_argument("--steps", type=int, default=50, help="steps per timed and profiled epoch")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    device = select_device(args.device)
    print(f"device {describe(device)}, torch {torch.__version__}, {torch.get_num_threads()} host threads")
    for batch_size in args.batch_size or [128]:
        profile_steps(device, batch_size, args.steps, args.rounds)


if __name__ == "__main__":
    main()
