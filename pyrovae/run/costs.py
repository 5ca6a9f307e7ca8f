"""What a piece of work costs: wall-clock seconds and peak extra memory.

Used by :func:`~pyrovae.run.evaluation.evaluate_run` to put the price of each estimator of
log p(x) (ELBO, IWAE, AIS) next to its number, so a user can choose one knowing both.

Peak memory is the high-water mark *above the level when the work started*, in MiB:

- on CUDA, ``torch.cuda.max_memory_allocated`` minus ``memory_allocated`` at the start (exact,
  the caching allocator's own counters; cached-but-free blocks do not count);
- on CPU, the peak of the process's resident set size minus the RSS at the start. On Linux the
  kernel keeps that peak (``VmHWM`` in ``/proc/self/status``) and resets it to the current RSS
  when ``5`` is written to ``/proc/self/clear_refs`` (Linux >= 4.0): exact, however short the
  spike. Elsewhere (or where that file is not writable) a background thread samples the RSS every
  ``interval`` seconds, which can miss a spike shorter than the interval: the same IWAE pass
  measured 134 and 37 MiB in two runs. Freed memory that the C allocator keeps would be reused
  without raising the RSS, hiding the work's own allocations (an IWAE pass run after an ELBO
  pass measured 2 MiB), so on glibc ``malloc_trim(0)`` first hands it back to the system.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch

MIB = 2**20


def release_freed_memory() -> None:
    """``malloc_trim(0)``: return the C heap's free pages to the system (glibc; elsewhere a no-op)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak_rss() -> bool:
    """Set the kernel's peak RSS of this process to its current RSS; ``False`` where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    """The kernel's peak RSS of this process in bytes (``VmHWM``, reported in kB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise OSError("/proc/self/status has no VmHWM line")


@dataclass
class Cost:
    """Filled in when the ``with measure(...)`` block ends."""

    seconds: float = float("nan")
    peak_mib: float = float("nan")


@contextmanager
def measure(device: torch.device | str = "cpu", interval: float = 0.005) -> Iterator[Cost]:
    """``with measure(device) as cost: work()`` -> ``cost.seconds``, ``cost.peak_mib``."""
    device = torch.device(device)
    cost = Cost()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start_bytes = torch.cuda.memory_allocated(device)
        started = time.perf_counter()
        yield cost
        torch.cuda.synchronize(device)
        cost.seconds = time.perf_counter() - started
        cost.peak_mib = (torch.cuda.max_memory_allocated(device) - start_bytes) / MIB
        return
    process = psutil.Process()
    release_freed_memory()
    start_bytes = process.memory_info().rss
    if reset_peak_rss():
        started = time.perf_counter()
        try:
            yield cost
        finally:
            cost.seconds = time.perf_counter() - started
            cost.peak_mib = (max(peak_rss(), start_bytes) - start_bytes) / MIB
        return
    peak = [start_bytes]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(interval):
            peak[0] = max(peak[0], process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    try:
        yield cost
    finally:
        cost.seconds = time.perf_counter() - started
        done.set()
        sampler.join()
        peak[0] = max(peak[0], process.memory_info().rss)
        cost.peak_mib = (peak[0] - start_bytes) / MIB
