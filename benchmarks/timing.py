"""Interleaved timing: A B C A B C ..., so that a slow minute of a shared machine hits every contender.

Each round calls every contender once; a ratio is taken *within* a round (same minute, same
noise) and summarized over rounds by its median and range. One warm-up round is run first and
not counted (lazy initialisation, allocator growth, first-step validation).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def synchronize() -> None:
    """Wait for queued CUDA work, so that a host clock measures it (CUDA launches are asynchronous)."""
    if torch.cuda.is_initialized():  # never true without a GPU
        torch.cuda.synchronize()


def interleave(contenders: dict[str, Callable[[], object]], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of every contender, ``rounds`` values each, measured in turns."""
    for _ in range(warmup):
        for fn in contenders.values():
            fn()
    synchronize()
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            started = time.perf_counter()
            fn()
            synchronize()
            seconds[name].append(time.perf_counter() - started)
    return seconds


def spread(values: list[float]) -> tuple[float, float, float]:
    """(median, min, max)."""
    return statistics.median(values), min(values), max(values)


def fmt(values: list[float], digits: int = 0) -> str:
    med, lo, hi = spread(values)
    return f"{med:,.{digits}f} [{lo:,.{digits}f}, {hi:,.{digits}f}]"


def per_round_ratios(numerator: list[float], denominator: list[float]) -> list[float]:
    """``numerator[i] / denominator[i]`` for each round ``i``."""
    return [a / b for a, b in zip(numerator, denominator)]


def table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-markdown table, columns padded so it reads in a terminal too."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])
