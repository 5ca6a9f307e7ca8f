"""``pyrovae.run.costs.measure``: the seconds and the peak extra memory of a block of work."""

from __future__ import annotations

import time

import torch

from pyrovae.run.costs import measure


def test_a_block_that_holds_256_mib_for_a_moment_peaks_there_and_one_that_holds_nothing_does_not():
    with measure("cpu") as cost:
        block = torch.ones(256 * 2 ** 20 // 4)  # 256 MiB of float32, written so it is resident
        time.sleep(0.05)  # several samples see it
        del block
    assert cost.peak_mib > 200 and cost.seconds >= 0.05
    with measure("cpu") as idle:
        time.sleep(0.05)
    assert idle.peak_mib < 50 and 0.05 <= idle.seconds < 1.0
