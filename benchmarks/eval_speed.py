r"""IWAE throughput against its matmul limit, and its peak memory at K = 5000.

The limit: the IWAE of the 784-400-50 VAE is dominated by decoding N x K latent draws, two
matmuls per row, :math:`(NK, 50) \to (NK, 400) \to (NK, 784)`. ``matmul_chain`` runs exactly
those (``addmm`` + ReLU, same chunk of rows as :func:`pyrovae.infer.estimators.iwae.iwae`) and
nothing else: no sampling, no log-densities, no log-sum-exp. Its time is what the estimate
would cost if everything but the matmuls were free.

Peak memory is the peak RSS (``VmHWM``) of a fresh process (``python eval_speed.py --peak-rss K
N``), so that the training benchmark's allocations do not count (``getrusage``'s ``ru_maxrss``
would: Linux carries it over from the parent across fork + exec).
"""

from __future__ import annotations

import math
import resource
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import fmt, interleave, per_round_ratios, spread, table  # noqa: E402

from pyrovae.infer.estimators.iwae import default_chunk_rows  # noqa: E402
from pyrovae.model.vae import build_vae  # noqa: E402
from pyrovae.run import config  # noqa: E402


def sized_vae(hidden: int, latent: int):
    """The default VAE with ``hidden`` units in every MLP and ``latent`` dimensions."""
    from speed import size_overrides  # speed.py imports this module in its main(), not at import

    cfg = config.load(overrides=["data.name=synthetic", *size_overrides(hidden, latent)])
    return build_vae(cfg["model"], (1, 28, 28))


def default_vae(latent: int = 50):
    return sized_vae(400, latent)


def matmul_chain(vae, n: int, k: int, device, rows: int | None = None) -> None:
    """The decoder's matmuls for ``n * k`` rows, in chunks of ``rows`` (default: what :func:`iwae` uses on
    ``device``)."""
    first, last = vae.likelihood.decoder.net[0], vae.likelihood.decoder.net[-1]
    w1, b1, w2, b2 = first.weight.t(), first.bias, last.weight.t(), last.bias
    total = n * k
    rows = min(total, rows or default_chunk_rows(device))
    z = torch.randn(rows, w1.shape[0], device=device)
    with torch.no_grad():
        for start in range(0, total, rows):
            m = min(rows, total - start)
            torch.addmm(b2, torch.addmm(b1, z[:m], w1).relu_(), w2)


def iwae_runner(vae, x, k):
    from pyrovae.infer.estimators.iwae import iwae

    return lambda: iwae(vae, x, k, batch_size=x.shape[0])


def run(splits, args) -> None:
    device = splits.train.device
    vae = default_vae().to(device)
    rows = []
    for k, n in ((5000, 20), (50, 2000)):
        x = splits.evaluation_data("val")[:n]
        s = interleave(
            {"iwae": iwae_runner(vae, x, k), "matmul": lambda n=n, k=k: matmul_chain(vae, n, k, device)},
            max(2, args.rounds // 2),
        )
        rows.append(
            [
                k,
                n,
                fmt([n * k / t for t in s["iwae"]]),
                fmt([n * k / t for t in s["matmul"]]),
                fmt(per_round_ratios(s["iwae"], s["matmul"]), 2),
            ]
        )
    print("\n## IWAE: datapoints x samples / s, against the bare decoder matmuls of the same shapes\n")
    print(table(["K", "datapoints", "IWAE", "matmul limit", "IWAE time / limit"], rows))
    script = Path(__file__).resolve()
    out = subprocess.run(
        [sys.executable, str(script), "--peak-rss", "5000", "20", str(device)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    print(f"\nPeak RSS of a fresh process running IWAE at K = 5000 (20 datapoints): {out}")


def against_hand_written(splits, args) -> None:
    """Validation and IWAE at small K of the ``--hidden``/``--latent`` VAE against the same numbers
    computed by tensor code over the same networks (:func:`baselines.hand_validation`,
    :func:`baselines.hand_iwae`): what Pyro's traces cost where the arithmetic is small."""
    from baselines import hand_iwae, hand_networks, hand_validation
    from pyro.infer import Trace_ELBO

    from pyrovae.infer.estimators.iwae import iwae
    from pyrovae.infer.terms import validate

    device = splits.train.device
    vae = sized_vae(args.hidden, args.latent).to(device)
    encode, decode = hand_networks(vae)
    x = splits.evaluation_data("val")
    cases = {  # name: (datapoints, pyrovae, hand-written)
        "validation, batch 1000": (
            x.shape[0],
            lambda: validate(vae, Trace_ELBO(), x, 1000),
            lambda: hand_validation(encode, decode, x, 1000),
        ),
        **{
            f"IWAE K = {k}, batch {b}": (
                n,
                lambda k=k, n=n, b=b: iwae(vae, x[:n], k, batch_size=b),
                lambda k=k, n=n, b=b: hand_iwae(encode, decode, x[:n], k, b),
            )
            for k, n, b in ((5, x.shape[0], 100), (5, x.shape[0], 1000), (50, min(2000, x.shape[0]), 100))
        },
    }
    contenders = {f"{name} {who}": fns[i] for name, fns in cases.items() for i, who in ((1, "pyrovae"), (2, "hand"))}
    s = interleave(contenders, max(3, args.rounds // 2))
    rows = []
    for name, (n, _, _) in cases.items():
        ours, hand = s[f"{name} pyrovae"], s[f"{name} hand"]
        rows.append([name, n, fmt(ours, 3), fmt(hand, 3), fmt(per_round_ratios(hand, ours), 2)])
    print(
        f"\n## Evaluation of the {args.hidden}-unit, {args.latent}-latent VAE against the same evaluation "
        f"hand-written: seconds, median [min, max]\n"
    )
    print(table(["evaluation", "datapoints", "pyrovae s", "hand-written s", "x hand-written"], rows))


def scaling(splits, args) -> None:
    """IWAE throughput against K at a fixed budget of about 200k decoded rows."""
    device = splits.train.device
    vae = default_vae().to(device)
    rows = []
    for k in (1, 50, 500, 5000):
        n = max(1, min(splits.val.shape[0], 200_000 // k))
        s = interleave({"iwae": iwae_runner(vae, splits.evaluation_data("val")[:n], k)}, 2)["iwae"]
        rows.append([k, n, fmt([n * k / t for t in s])])
    print("\n## Scaling: IWAE datapoints x samples / s against K\n")
    print(table(["K", "datapoints", "datapoints x samples / s"], rows))


def chunk_sweep(device: str, n: int = 20, rows_list=(1_024, 4_096, 16_384, 50_000), rounds: int = 5) -> None:
    """IWAE (K = 5000, ``n`` datapoints) and its matmuls at several chunk sizes, interleaved:
    how :func:`pyrovae.infer.estimators.iwae.default_chunk_rows` was chosen per device.

    ``python benchmarks/eval_speed.py --chunk-sweep cpu [N [ROWS ...]]``
    """
    from pyrovae.infer.estimators.iwae import iwae

    k = 5000
    vae = default_vae().to(device)
    x = torch.bernoulli(torch.rand(n, 1, 28, 28, device=device))
    s = interleave(
        {
            name: fn
            for rows in rows_list
            for name, fn in (
                (f"iwae {rows}", lambda r=rows: iwae(vae, x, k, batch_size=n, chunk_size=max(1, r // n))),
                (f"matmul {rows}", lambda r=rows: matmul_chain(vae, n, k, device, r)),
            )
        },
        rounds,
    )
    best = min(min(v) for name, v in s.items() if name.startswith("matmul"))
    rows = [
        [r, fmt(s[f"iwae {r}"], 3), fmt(s[f"matmul {r}"], 3), f"{spread(s[f'iwae {r}'])[0] / best:.2f}"]
        for r in rows_list
    ]
    print(f"\n## IWAE chunk size on {device}: seconds for K = {k} x {n} datapoints, median [min, max]\n")
    print(table(["rows per chunk", "IWAE s", "matmul s", "IWAE / fastest matmul"], rows))


def high_water_mb() -> float:
    """Peak resident memory of this process so far (Linux ``/proc/self/status`` VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024  # not Linux


def peak_rss(k: int, n: int, device: str) -> str:
    from pyrovae.infer.estimators.iwae import iwae

    vae = default_vae().to(device)
    x = torch.bernoulli(torch.rand(n, 1, 28, 28, device=device))
    before = high_water_mb()
    log_px = iwae(vae, x, k, batch_size=n)
    after = high_water_mb()
    assert torch.isfinite(log_px).all() and math.isfinite(after)
    gpu = f", CUDA peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MB" if device.startswith("cuda") else ""
    return f"{after:.0f} MB (before the IWAE call: {before:.0f} MB{gpu})"


if __name__ == "__main__" and sys.argv[1:2] == ["--peak-rss"]:
    print(peak_rss(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]))
elif __name__ == "__main__" and sys.argv[1:2] == ["--chunk-sweep"]:
    device, *numbers = sys.argv[2:]
    n, *rows = [int(a) for a in numbers] or [20]
    chunk_sweep(device, n, **({"rows_list": tuple(rows)} if rows else {}))
