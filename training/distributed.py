"""Process-group setup shared by every trainer: one process, N GPUs (deepspeed/torchrun) or N nodes.

The launchers (`deepspeed`, `torchrun`, Slurm's srun) export RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT. A process started on its own has none of them, and DeepSpeed then
falls back to MPI discovery (mpi4py): `init()` fills in the single-process values first.
The backend is NCCL on GPUs and gloo on CPU.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(timeout_minutes: int = 30) -> Dist:
    """Initialise torch.distributed through DeepSpeed (idempotent) and pick this rank's device."""
    import datetime

    import deepspeed

    if "RANK" not in os.environ:  # started alone: a world of one
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    for attempt in range(3):
        if torch.distributed.is_initialized():
            break
        try:
            deepspeed.init_distributed(dist_backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))
        except torch.distributed.DistNetworkError as error:
            # NOTE: in a world of one nobody else dials the store, so a taken port is replaced: one
            # inherited from a parent that holds it (a process that initialised torch.distributed
            # itself, e.g. a test that trained in-process, then launched this one), or one taken
            # between the pick and the bind. With more ranks the others expect that port: the error stands.
            if os.environ.get("WORLD_SIZE") != "1" or "EADDRINUSE" not in str(error) or attempt == 2:
                raise
            os.environ["MASTER_PORT"] = str(_free_port())
    return Dist(rank=torch.distributed.get_rank(), world_size=torch.distributed.get_world_size(),
                local_rank=local_rank, device=device)


def all_mean(value: float, device: torch.device) -> float:
    """The mean of a Python number over all ranks."""
    t = torch.tensor([float(value)], device=device, dtype=torch.float64)
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(t)
        t /= torch.distributed.get_world_size()
    return t.item()


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
