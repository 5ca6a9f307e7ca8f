r"""Several processes, one model: ``torch.distributed`` + ``DistributedDataParallel``, launched by torchrun.

``torchrun --nproc-per-node N -m pyrovae train ...`` starts N processes with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` set; :func:`init_from_env` joins them into a process group
(NCCL on GPUs, one GPU per process by ``LOCAL_RANK``; gloo on CPUs). The trainer then wraps its
ELBO module in ``DistributedDataParallel``. Each rank's loss is the negative ELBO *summed* over
its share of the global batch; DDP *averages* gradients, so each rank's loss is multiplied by
the world size W, and every rank steps with

.. math:: \frac{1}{W}\sum_{r=1}^{W} \nabla (W\,L_r) = \nabla \sum_{r} L_r,

the gradient of the whole global batch: the learning rate keeps its single-process meaning.

A user script run under torchrun calls :func:`init_from_env` itself (or ``init_process_group``)
and builds a :class:`~pyrovae.infer.trainer.Trainer` as usual: the trainer reads the world
from ``torch.distributed``.
"""

from __future__ import annotations

import atexit
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from pyrovae.devices import select_device

#: how long a collective waits for a rank that stopped answering before it fails
DEFAULT_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class World:
    """Where this process stands: its rank among ``size`` processes and the backend joining them."""

    rank: int = 0
    size: int = 1
    backend: str = ""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @classmethod
    def current(cls) -> World:
        """The process group this process is in (one process of one when there is none)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return cls(dist.get_rank(), dist.get_world_size(), str(dist.get_backend()))
        return cls()


def init_from_env(device_name: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[World, torch.device]:
    """Join the process group torchrun describes in the environment (if ``WORLD_SIZE > 1``).

    Returns the world and this process's device: ``cuda:LOCAL_RANK`` when the device is CUDA.
    ``timeout_s`` bounds how long the others wait for a rank that died.
    """
    device = select_device(device_name)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return World(), device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo",
            store=_attempt_store(rank, size, timeout_s),
            rank=rank,
            world_size=size,
            timeout=timedelta(seconds=timeout_s),
        )
        # PyTorch asks for destroy_process_group before exit: left to the interpreter's teardown,
        # a gloo group can abort a rank that has finished its work ("terminate called without an
        # active exception") and torchrun then reports the job failed
        atexit.register(_leave_process_group)
    return World.current(), device


def _leave_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _attempt_store(rank: int, size: int, timeout_s: float) -> dist.Store:
    """torchrun's key-value store, with keys kept apart per restart attempt.

    A restarted job reuses the store of its first attempt; without a prefix of its own, a new
    worker can read the network address a dead worker published and fail to connect to it.
    """
    agent_hosts_it = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        size,
        is_master=not agent_hosts_it and rank == 0,
        timeout=timedelta(seconds=timeout_s),
    )
    return dist.PrefixStore(f"pyrovae/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """The sums over all ranks of a few numbers (one collective)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def gather_objects(obj) -> list:
    """``obj`` of every rank, in rank order, on every rank."""
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank."""
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


#: what the backends say when a peer is gone: gloo's closed or reset connections, NCCL, a timed-out collective
LOST_PEER = re.compile(r"gloo|nccl|connection (closed|reset|refused)|broken pipe|timed out|timeout", re.IGNORECASE)


@contextmanager
def lost_contact(world: World) -> Iterator[None]:
    """Turn a collective's failure under ``world`` into one :class:`~pyrovae.infer.faults.WorkerLost`."""
    from pyrovae.errors import first_line
    from pyrovae.infer.faults import WorkerLost

    try:
        yield
    except RuntimeError as err:  # DistBackendError and gloo's plain RuntimeError alike
        if not world.distributed or not (isinstance(err, dist.DistError) or LOST_PEER.search(str(err))):
            raise
        why = re.sub(r"^\[[^\]]+\]\s*", "", first_line(err, 1000)).split(". ")[0]  # gloo's "[file.cc:561] " off
        raise WorkerLost(world.rank, world.size, why[:160]) from err
