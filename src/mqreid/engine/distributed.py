"""The one place that knows about ranks: process-group setup, gathers and broadcasts.

Every step that touches "all features" (extraction, clustering, memory updates) goes through these
helpers, which are no-ops in a single process. Launch with ``torchrun``: it sets RANK, WORLD_SIZE and
LOCAL_RANK; the backend is NCCL on CUDA and gloo on CPU.
"""

from __future__ import annotations

import datetime
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist

log = logging.getLogger("mqreid")


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def local_world_size(self) -> int:
        """Processes on this node (torchrun's LOCAL_WORLD_SIZE; SLURM's tasks per node), at least 1."""
        for key in ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"):
            value = os.environ.get(key, "")
            if value.isdigit() and int(value) >= 1:
                return min(int(value), self.world_size)
        return 1 if self.world_size == 1 else self.world_size


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks cuda:<local_rank> when CUDA is available, else cpu; other names are used as given."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} but CUDA is not available; use device=cpu or device=auto")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


_HOST_GROUP = None  # a gloo group of every rank when the default group is NCCL: the host's waits go through it


def one_thread_per_process(local_world_size: int) -> bool:
    """What torchrun does when it starts several processes on a node and OMP_NUM_THREADS is unset: one
    intra-op thread each, so the node's processes do not oversubscribe its cores (rank 0 takes the node's
    cores while it works alone: :func:`main_works_alone`). Whether the limit was set here."""
    if local_world_size <= 1 or "OMP_NUM_THREADS" in os.environ:
        return False
    os.environ["OMP_NUM_THREADS"] = "1"  # loader workers and subprocesses inherit it
    torch.set_num_threads(1)
    return True


def init_distributed(device_name: str = "auto", timeout_min: int = 60) -> tuple[DistEnv, torch.device]:
    """Join the process group when launched by torchrun or as a multi-task SLURM job (submitit); return the
    env and this rank's device. A single process needs nothing.

    On CUDA the default group is NCCL, bound to this rank's device (``device_id``), and a second group over
    gloo carries what the host waits for: barriers and object broadcasts (:func:`barrier`,
    :func:`broadcast_object`). While rank 0 clusters or ranks the query set, the other ranks wait in a gloo
    receive, which sleeps, instead of in an NCCL collective, which keeps a CPU core busy polling the GPU."""
    global _HOST_GROUP
    if "WORLD_SIZE" not in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        from submitit.helpers import TorchDistributedEnvironment  # sets RANK, WORLD_SIZE, MASTER_ADDR, ...

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        if one_thread_per_process(DistEnv(world_size=int(os.environ["WORLD_SIZE"])).local_world_size):
            log.info("SLURM: OMP_NUM_THREADS=1 and one torch thread per process, as torchrun sets them")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    env = DistEnv(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(device_name, env.local_rank)
    if world > 1 and not dist.is_initialized():
        timeout = datetime.timedelta(minutes=timeout_min)
        if device.type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", timeout=timeout, device_id=device)
            _HOST_GROUP = dist.new_group(backend="gloo", timeout=timeout)
        else:
            dist.init_process_group("gloo", timeout=timeout)
        log.info("process group: %d processes (%s), collective timeout %d min (dist_timeout_min)", world,
                 dist.get_backend(), timeout_min)
    return env, device


def host_group():
    """The group of every rank for waits and broadcasts on the host: a gloo group beside an NCCL default group,
    else None (the default group, gloo on CPU runs)."""
    return _HOST_GROUP if dist.is_available() and dist.is_initialized() else None


def current_env() -> DistEnv:
    """This process's rank and the world size (a single process when no process group is running)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistEnv()
    return DistEnv(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def group_of_consecutive_ranks(span: int):
    """The process group of this rank's block of ``span`` consecutive ranks (``None``, the default group, when
    it is every rank). Every rank must call this with the same ``span``: each block's group is created on
    all ranks."""
    env = current_env()
    if span <= 1 or not env.enabled:
        return None
    if env.world_size % span:
        raise ValueError(f"cannot split {env.world_size} processes into blocks of {span}")
    if span == env.world_size:
        return None
    groups = [dist.new_group(list(range(start, start + span))) for start in range(0, env.world_size, span)]
    return groups[env.rank // span]


@contextmanager
def main_works_alone(env: DistEnv, threads: int) -> Iterator[None]:
    """While rank 0 works alone (clustering, the warm start) and the other ranks wait, let it use
    ``threads`` threads (the node's cores): torchrun starts each process with OMP_NUM_THREADS=1. Restores the
    previous limits afterwards; a no-op in a single process."""
    if not env.enabled or not env.is_main:
        yield
        return
    from threadpoolctl import threadpool_limits  # numpy's BLAS and OpenMP pools (scikit-learn's dependency)

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            yield
    finally:
        torch.set_num_threads(before)


def barrier() -> None:
    """Wait for every rank (on the host: through :func:`host_group`)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier(group=host_group())


def _padded_to_largest(tensor: torch.Tensor, world: int) -> tuple[torch.Tensor, list[int]]:
    """``tensor`` zero-padded along dim 0 to the largest row count of any rank, and every rank's count."""
    n = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    counts = [int(s) for s in sizes]
    padded = tensor.new_zeros((max(counts), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    return padded.contiguous(), counts


def all_gather_cat(tensor: torch.Tensor, same_size: bool = False) -> torch.Tensor:
    """Concatenate ``tensor`` [n_r, ...] from every rank along dim 0, in rank order (sizes may differ).

    ``same_size=True`` (every rank holds as many rows, e.g. a training step's slice of the global batch)
    skips the exchange of sizes, which waits on the host."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    world = dist.get_world_size()
    if same_size:
        out = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(out, tensor.contiguous())
        return torch.cat(out)
    padded, sizes = _padded_to_largest(tensor, world)
    out = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(out, padded)
    return torch.cat([o[:s] for o, s in zip(out, sizes)])


def gather_cat(tensor: torch.Tensor, dst: int = 0) -> torch.Tensor | None:
    """Like :func:`all_gather_cat`, but only rank ``dst`` receives the result (the others get None), so the
    whole matrix exists in one process only."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    world = dist.get_world_size()
    padded, sizes = _padded_to_largest(tensor, world)
    out = [torch.empty_like(padded) for _ in range(world)] if dist.get_rank() == dst else None
    dist.gather(padded, out, dst=dst)
    return torch.cat([o[:s] for o, s in zip(out, sizes)]) if out is not None else None


def broadcast_object(obj, src: int = 0):
    """Send a picklable object from ``src`` to every rank and return it."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src, group=host_group())  # pickled through CPU tensors over gloo
    return box[0]


def all_reduce_mean_(tensors) -> None:
    """Average tensors (e.g. the gradient of a parameter outside DDP) across ranks, in place."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for t in tensors:
        dist.all_reduce(t)
        t.div_(dist.get_world_size())


def cleanup() -> None:
    global _HOST_GROUP
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()  # every group, the host group too
    _HOST_GROUP = None


def shared_run_dir(local_dir: str) -> str:
    """Rank 0's run directory, on every rank.

    Under torchrun each process composes its own Hydra config, and a timestamped output directory can
    differ by a second between ranks; rank 0's choice wins and the other ranks' own directories are removed.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local_dir
    shared = broadcast_object(local_dir)
    if shared != local_dir:
        import shutil

        shutil.rmtree(local_dir, ignore_errors=True)
    return shared


def sync_buffers_(module: torch.nn.Module) -> None:
    """Average floating-point buffers (BatchNorm running statistics) across ranks, in place.

    DDP re-broadcasts rank 0's buffers only at the start of each forward, so after the last training step
    the ranks' running statistics differ; sharded feature extraction needs them identical.
    """
    all_reduce_mean_([b for b in module.buffers() if b.is_floating_point()])
