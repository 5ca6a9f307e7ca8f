"""The benchmarks print what they claim to measure: a row per contender, with the JIT variant's
trainer beside the default one in one process (each VAE under a parameter-store name of its own).
Speed itself is never asserted here (docs/performance.md holds the figures)."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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


@pytest.mark.slow
def test_the_phases_of_a_step_are_each_counted_once_and_add_up_to_the_step():
    """The per-phase split (benchmarks/step_profile.py --phases) times nested calls once: no phase is
    negative, and the phases sum to the timed step (a double count would pass 100%)."""
    sys.path.insert(0, str(BENCHMARKS))
    import step_profile
    from speed import make_splits, pyrovae_trainer, size_overrides

    sets = ["train.batch_size=16", *size_overrides(8, 2)]
    trainer = pyrovae_trainer(make_splits("", torch.device("cpu"), 160), 160, [*sets, "train.jit=false"])  # eager
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        step_profile.phases(trainer, 10)
    shares = {
        m.group(1).strip(): float(m.group(2))
        for m in re.finditer(r"^  (.+?)\s+[-\d.]+ ms\s+([-\d.]+)%$", out.getvalue(), re.M)
    }
    expected = {"networks (torch.nn layers)", "backward (autograd)", "optimizer step",
                "log-densities (Trace.compute_log_prob)", "model/guide code and Pyro's effect handlers",
                "ELBO bookkeeping (the rest of the loss)"}  # fmt: skip
    assert expected <= set(shares)
    assert all(share >= 0 for share in shares.values()) and sum(shares.values()) == pytest.approx(100, abs=0.5)
    assert torch.nn.Linear.forward.__qualname__ == "Linear.forward"  # the timers are taken off again


def test_the_hand_written_evaluation_computes_pyrovaes_numbers_from_the_same_draws():
    """The evaluation benchmark's floor is the same computation: given the seed, hand_validation and
    hand_iwae draw what pyrovae's validation and IWAE draw and give their values."""
    sys.path.insert(0, str(BENCHMARKS))
    from baselines import hand_iwae, hand_networks, hand_validation
    from eval_speed import sized_vae
    from pyro.infer import Trace_ELBO

    from pyrovae.infer.estimators.iwae import iwae
    from pyrovae.infer.terms import validate

    torch.manual_seed(0)
    vae = sized_vae(8, 2)
    x = torch.bernoulli(torch.rand(300, 1, 28, 28))
    encode, decode = hand_networks(vae)
    ours, hand = validate(vae, Trace_ELBO(), x, 100, seed=3), hand_validation(encode, decode, x, 100, seed=3)
    assert {k: ours[k] for k in hand} == pytest.approx(hand, rel=1e-6)
    for k in (5, 50):
        torch.testing.assert_close(
            hand_iwae(encode, decode, x, k, 100, seed=3), iwae(vae, x, k, 100, seed=3), rtol=1e-6, atol=0
        )
    assert not torch.allclose(hand_iwae(encode, decode, x, 5, 100, seed=4), iwae(vae, x, 5, 100, seed=3))
