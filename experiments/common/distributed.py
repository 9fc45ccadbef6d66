"""torchrun / DistributedDataParallel setup shared by the training scripts.

Launch::

    torchrun --nproc_per_node=K experiments/in1k_ae.py ...

:func:`setup` reads ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (set by torchrun), initialises the process
group (NCCL on CUDA, gloo on CPU) with a timeout (``--dist-timeout``, :data:`DEFAULT_TIMEOUT_MIN` minutes) and
picks the device. Without those variables it returns a single-process :class:`DistInfo` and initialises
nothing, so the same code runs with and without torchrun.
:func:`spawn_local` starts K local gloo processes without torchrun (tests, debugging).
:func:`check_shared_folder` stops a run whose processes do not all see the same run folder.
"""
from __future__ import annotations

import datetime
import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

#: Default ``--dist-timeout`` in minutes: how long a collective (and the process-group set-up) may wait for
#: the slowest process before the run fails instead of hanging. Generous, because rank 0 alone writes
#: checkpoints (~11 GB for the DiT-XL) and evaluates while the others wait at a barrier.
DEFAULT_TIMEOUT_MIN = 30.0


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(spec: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` → ``cuda:<local_rank>`` when CUDA is available, else CPU."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(spec)




def setup(device: str = "auto", timeout_min: float = DEFAULT_TIMEOUT_MIN) -> DistInfo:
    """Initialise ``torch.distributed`` from torchrun's environment (no-op for a single process).

    ``timeout_min`` is the process group's timeout: a collective (NCCL/gloo) or the group's own set-up that
    waits longer for another process raises instead of hanging for ever (NCCL's default would be 10 min).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world <= 1:
        return DistInfo(device=dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world,
                                timeout=datetime.timedelta(minutes=timeout_min),
                                **({"device_id": dev} if dev.type == "cuda" else {}))
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev, backend=backend)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over processes (identity without a process group); returns ``t``."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """In-place mean over processes; returns ``t``."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= dist.get_world_size()
    return t


def any_true(flag: bool, device: torch.device) -> bool:
    """True if ``flag`` is true on any process."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_gather_object(obj: Any) -> list:
    """List of ``obj`` from every process (``[obj]`` without a process group)."""
    if dist.is_available() and dist.is_initialized():
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if dist.is_available() and dist.is_initialized():
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]
    return obj


SHARED_CHECK = ".shared-check-"


def check_shared_folder(folder: str | os.PathLike, info: DistInfo) -> str | None:
    """Whether every process sees the same ``folder`` (a shared file system): rank 0 writes a file holding a
    random nonce, the others read it after a barrier. Returns ``None`` when all do, else the one line that
    says which ranks (on which hosts) do not; every process returns the same value. One process, or no
    process group: ``None``.

    A run needs this because rank 0 alone writes ``checkpoints/last.pt`` and every rank reads it on resume
    (and each rank writes its own latent-cache shards, which rank 0 then checks).
    """
    if not info.enabled or not (dist.is_available() and dist.is_initialized()):
        return None  # one process, or a rank driven without a process group (tests): nothing to compare
    name, nonce = f"{SHARED_CHECK}{secrets.token_hex(8)}", secrets.token_hex(16)
    if info.is_main:
        (Path(folder) / name).write_text(nonce)
    name, nonce = broadcast_object((name, nonce))  # each rank then reads ITS folder (its own --out path)
    barrier()
    try:
        ok = (Path(folder) / name).read_text() == nonce
    except OSError:
        ok = False
    seen = all_gather_object((ok, socket.gethostname()))
    barrier()
    if info.is_main:
        (Path(folder) / name).unlink(missing_ok=True)
    bad = [(r, h) for r, (ok_, h) in enumerate(seen) if not ok_]
    if not bad:
        return None
    hosts = sorted({h for _, h in bad})
    return (f"the run folder {folder} is not shared by every process: rank(s) {', '.join(str(r) for r, _ in bad)}"
            f" on host(s) {', '.join(hosts)} cannot read the file rank 0 (host {seen[0][1]}) wrote there; put "
            f"--out on a file system every node mounts at the same path")


def wrap_ddp(module: torch.nn.Module, info: DistInfo, **kwargs) -> torch.nn.Module:
    """DistributedDataParallel around ``module`` when running distributed, else ``module`` itself."""
    if not info.enabled or not any(p.requires_grad for p in module.parameters()):
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [info.device.index] if info.device.type == "cuda" else None
    return DDP(module, device_ids=ids, **kwargs)


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside DDP / ``torch.compile`` wrappers."""
    while True:
        if hasattr(module, "module"):
            module = module.module
        elif hasattr(module, "_orig_mod"):
            module = module._orig_mod
        else:
            return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn_entry(rank: int, world: int, port: int, fn: Callable, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    fn(*args)


def spawn_local(fn: Callable, nprocs: int, args: tuple = (), *, start_method: str = "spawn") -> None:
    """Run ``fn(*args)`` in ``nprocs`` processes with a torchrun-like environment (gloo on CPU).

    ``fn`` must be importable (module-level); it should call :func:`setup` itself. ``start_method="fork"``
    skips re-importing torch in the children (fast CPU tests; not with CUDA initialised).
    """
    import torch.multiprocessing as mp

    mp.start_processes(_spawn_entry, args=(nprocs, free_port(), fn, args), nprocs=nprocs, join=True,
                       start_method=start_method)
