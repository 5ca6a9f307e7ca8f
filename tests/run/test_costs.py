"""``pyrovae.run.costs.measure``: the seconds and the peak extra memory of a block of work."""

from __future__ import annotations

import time

import pytest
import torch

from pyrovae.run.costs import measure, reset_peak_rss


def test_a_block_that_holds_256_mib_for_a_moment_peaks_there_and_one_that_holds_nothing_does_not():
    with measure("cpu") as cost:
        block = torch.ones(256 * 2**20 // 4)  # 256 MiB of float32, written so it is resident
        time.sleep(0.05)  # several samples see it
        del block
    assert cost.peak_mib > 200 and cost.seconds >= 0.05
    with measure("cpu") as idle:
        time.sleep(0.05)
    assert idle.peak_mib < 50 and 0.05 <= idle.seconds < 1.0


def test_memory_freed_by_earlier_work_does_not_hide_the_blocks_own_allocations():
    """Freed heap memory the C allocator keeps (pinned below live objects) would be reused
    without raising the RSS: 256 MiB of 64 KiB blocks, each followed by a small tensor kept alive."""
    pins = []

    def work():
        blocks = []
        for _ in range(4096):
            blocks.append(torch.ones(2**14))  # 64 KiB, under glibc's mmap threshold: from the heap
            pins.append(torch.ones(4))
        time.sleep(0.05)
        return len(blocks)

    work()  # the earlier work: its blocks are freed, the pins keep the heap from shrinking
    with measure("cpu") as cost:
        work()
    assert cost.peak_mib > 200


@pytest.mark.skipif(not reset_peak_rss(), reason="the kernel's peak RSS cannot be reset here (Linux >= 4.0 only)")
def test_a_spike_shorter_than_the_sampling_interval_is_caught_by_the_kernels_peak():
    with measure("cpu", interval=60.0) as cost:  # a sampler would not look once in this block
        block = torch.ones(256 * 2**20 // 4)
        del block
    assert cost.peak_mib > 200 and cost.seconds < 60
