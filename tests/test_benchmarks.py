"""The benchmarks print what they claim to measure: a row per contender, with the JIT variant's
trainer beside the default one in one process (each VAE under a parameter-store name of its own).
Speed itself is never asserted here (docs/performance.md holds the figures)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
def test_speed_prints_a_row_per_contender_with_the_jit_variant_in_the_same_process():
    tiny = ["--hidden", "8", "--latent", "2", "--batch-size", "16", "--batches", "8", "--rounds", "1"]
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "speed.py"), *tiny, "--skip-eval", "--variant", "jit:train.jit=true"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {m.group(1).strip(): m.group(2) for m in re.finditer(r"^\| ([^|]+?)\s+\| ([\d,]+) \[", done.stdout, re.M)}
    assert set(rows) == {"pyrovae", "pyrovae[jit]", "hand-written PyTorch", "Pyro example style"}
    assert all(int(images.replace(",", "")) > 0 for images in rows.values())
