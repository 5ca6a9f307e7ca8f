r"""How fast pyrovae trains and evaluates, next to the hand-written floor and Pyro's example style.

One command, one process, interleaved rounds (A B C A B C ...)::

    .venv/bin/python benchmarks/speed.py                          # synthetic 784-dim data
    .venv/bin/python benchmarks/speed.py --data-root ../shared/data  # real MNIST
    .venv/bin/python benchmarks/speed.py --scaling                # + cost vs batch, latent, K
    .venv/bin/python benchmarks/speed.py --hidden 16 --latent 2 --batch-size 16 --batches 600 --skip-eval \
        --variant eager:train.jit=false                           # the host-bound regime (issue 29)

Training: images/s of ``Trainer.train_epoch`` (default config: 784-400-50 MLP, batch 128,
``Trace_ELBO``, traced by ``train.jit = "auto"``) over ``--batches`` batches, of
:class:`baselines.HandVAE` (the floor) and of :class:`baselines.ExamplePipeline`; ratios are taken
within a round. ``--variant 'name:key=value,...'`` adds pyrovae contenders with other config
values (to measure an option A/B in the same rounds). Evaluation: validation time against an
epoch, and log p(x) estimation throughput (datapoints x samples / s) against a bare matmul chain
of the same shapes, plus the peak RSS of a fresh process at K = 5000 (:mod:`eval_speed`), and
validation and IWAE at K = 5 and 50 of the ``--hidden``/``--latent`` VAE against the same
evaluation hand-written (:func:`eval_speed.against_hand_written`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import ExamplePipeline, HandVAE  # noqa: E402
from timing import fmt, interleave, per_round_ratios, spread, table  # noqa: E402

from pyrovae.data import Splits, load_data  # noqa: E402
from pyrovae.devices import select_device  # noqa: E402
from pyrovae.infer.trainer import Trainer  # noqa: E402
from pyrovae.model.vae import build_vae  # noqa: E402
from pyrovae.run import config  # noqa: E402


def make_splits(data_root: str, device: torch.device, n_train: int) -> Splits:
    """Real MNIST (grey levels, 50k/10k/10k) or synthetic grey images of the same shape."""
    if data_root:
        cfg = config.load(overrides=[f"data.root={data_root}"])
        splits = load_data(cfg["data"], device)
    else:
        gen = torch.Generator().manual_seed(0)
        shape = (1, 28, 28)
        splits = Splits(
            "synthetic-784",
            train=torch.rand(n_train, *shape, generator=gen),
            val=torch.rand(10_000, *shape, generator=gen),
            test=torch.rand(1000, *shape, generator=gen),
            binarize=True,
        ).to(device)
    splits.full_train_size = 50_000  # what an epoch of MNIST holds, for the validation fraction
    return splits


def pyrovae_trainer(splits: Splits, n_train: int, overrides: list[str]) -> Trainer:
    cfg = config.load(overrides=["data.name=synthetic", *overrides])
    sub = dataclasses.replace(splits, train=splits.train[:n_train], _fixed=splits._fixed)
    vae = build_vae(cfg["model"], sub.data_shape).to(sub.train.device)
    return Trainer(vae, sub, settings=cfg["train"], validation=cfg["validation"], progress=False)


def size_overrides(hidden: int, latent: int) -> list[str]:
    """Config overrides for ``hidden`` units in every MLP and ``latent`` dimensions (784-16-2: the
    host-bound regime of issue 29)."""
    return [f"model.latent_dim={latent}", f"model.guide.hidden=[{hidden}]", f"model.likelihood.hidden=[{hidden}]"]


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, sets = text.partition(":")
    return name.strip(), [s.strip() for s in sets.split(",") if s.strip()]


def bench_training(splits: Splits, args, device: torch.device) -> dict[str, list[float]]:
    n = args.batches * args.batch_size
    base = [f"train.batch_size={args.batch_size}", *size_overrides(args.hidden, args.latent), *args.set]
    trainers = {"pyrovae": pyrovae_trainer(splits, n, base)}
    for text in args.variant:
        name, sets = parse_variant(text)
        trainers[f"pyrovae[{name}]"] = pyrovae_trainer(splits, n, [*base, *sets])
    hand = HandVAE(hidden=args.hidden, latent=args.latent).to(device)
    example = ExamplePipeline(splits.train[:n], args.batch_size, device, hidden=args.hidden, latent=args.latent)
    sub = trainers["pyrovae"].data
    # each VAE registers under a store name of its own (vae, vae1, ...): the trainers share one store safely
    contenders = {name: t.train_epoch for name, t in trainers.items()}
    contenders["hand-written PyTorch"] = lambda: hand.train_batches(sub.train_batches(args.batch_size))
    contenders["Pyro example style"] = example.train_epoch
    seconds = interleave(contenders, args.rounds)
    rows = []
    for name, s in seconds.items():
        ips = [n / t for t in s]
        rows.append(
            [
                name,
                fmt(ips),
                f"{spread(s)[0] / args.batches * 1e3:.2f}",
                fmt(per_round_ratios(seconds["hand-written PyTorch"], s), 2),
                fmt(per_round_ratios(seconds["Pyro example style"], s), 2),
            ]
        )
    print(
        f"\n## Training: {n} images/round ({args.batches} batches of {args.batch_size}), "
        f"{args.rounds} rounds after 1 warm-up, median [min, max]\n"
    )
    print(table(["contender", "images/s", "ms/step", "x hand-written", "x Pyro example"], rows))
    return seconds


def bench_validation(splits: Splits, args, train_seconds: list[float]) -> None:
    """Validation (10k images, validation.batch_size) against an epoch of 50k at the measured speed."""
    trainer = pyrovae_trainer(splits, args.batch_size, [*args.set])
    pyro.clear_param_store()
    trainer.validate("val")  # warm-up, and the fixed binarization is made here
    times = interleave({"val": lambda: trainer.validate("val")}, args.rounds, warmup=0)["val"]
    n_batch = args.batches * args.batch_size
    epoch = spread(train_seconds)[0] / n_batch * splits.full_train_size
    val = spread(times)[0]
    print(
        f"\n## Validation: {splits.val.shape[0]} images in {val:.3f} s (median of {args.rounds}) "
        f"= {100 * val / epoch:.1f}% of a {splits.full_train_size}-image epoch ({epoch:.1f} s)"
    )


def bench_scaling(splits: Splits, args) -> None:
    """pyrovae training throughput against batch size and latent size (one config at a time)."""
    rows = []
    for batch in (32, 128, 512):
        for latent in (10, 50, 200):
            n = max(args.batches * 128, 4 * batch)
            t = pyrovae_trainer(splits, n, [f"train.batch_size={batch}", f"model.latent_dim={latent}", *args.set])
            s = interleave({"t": t.train_epoch}, max(2, args.rounds // 2))["t"]
            rows.append([batch, latent, fmt([n / x for x in s])])
    print("\n## Scaling: pyrovae training images/s, median [min, max]\n")
    print(table(["batch", "latent", "images/s"], rows))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default="", help="folder holding MNIST/raw (else synthetic data)")
    parser.add_argument("--batches", type=int, default=40, help="training batches per round")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--hidden", type=int, default=400, help="hidden units of every MLP (16: the host-bound regime)")
    parser.add_argument("--latent", type=int, default=50, help="latent dimensions")
    parser.add_argument(
        "--set", action="append", default=[], help="pyrovae config override for every pyrovae contender"
    )
    parser.add_argument(
        "--variant", action="append", default=[], help="'name:key=value,...': another pyrovae contender"
    )
    parser.add_argument("--scaling", action="store_true", help="also tabulate throughput vs batch, latent and K")
    parser.add_argument("--skip-eval", action="store_true")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    device = select_device(args.device)
    torch.manual_seed(0)
    print(
        f"device {device}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"pyro {pyro.__version__}, data {'MNIST at ' + args.data_root if args.data_root else 'synthetic 784-dim'}, "
        f"cpus {os.cpu_count()}"
    )
    splits = make_splits(args.data_root, device, args.batches * args.batch_size)
    seconds = bench_training(splits, args, device)
    bench_validation(splits, args, seconds["pyrovae"])
    if not args.skip_eval:
        import eval_speed

        eval_speed.run(splits, args)
        eval_speed.against_hand_written(splits, args)
    if args.scaling:
        bench_scaling(splits, args)
        if not args.skip_eval:
            eval_speed.scaling(splits, args)


if __name__ == "__main__":
    main()
