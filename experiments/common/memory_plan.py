"""Saved-activation accounting of a training forward (used by ``--grad-accum auto`` and
``benchmarks/memory_plan.py``).

:class:`SavedBytes` records every tensor autograd keeps for backward through
``torch.autograd.graph.saved_tensors_hooks``: each storage is counted once (views deduplicated),
parameters and buffers excluded. :func:`maybe_fake` runs the forward on fake tensors (``FakeTensorMode``:
shapes and dtypes through the same ops and autograd graph, no arithmetic, no memory), so a full-size model
is accounted in about a second on a CPU; ``benchmarks/memory_plan.py --check-real`` asserts that the fake
and the real byte counts agree. :func:`peak_bytes` turns the per-sample figure into a planned peak.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable

import torch
from torch.multiprocessing.reductions import StorageWeakRef

GIB = 2**30
HEADROOM = 0.90        # a plan must fit this fraction of the GPU
RUNTIME_GIB = 2.5      # CUDA context (~0.5), cuBLAS/cuDNN workspaces, NCCL buffers, allocator slack


class SavedBytes:
    """Context: bytes of the storages autograd saves for backward (``modules``' parameters and buffers are
    not counted). ``attn_total``: the part in attention matrices ``[..., N, N]`` with N in ``tokens``."""

    def __init__(self, modules: Iterable[torch.nn.Module], tokens: Iterable[int] = ()):
        state = [t for m in modules for t in list(m.parameters()) + list(m.buffers())]
        self.exclude = {StorageWeakRef(t.untyped_storage()) for t in state}
        self.tokens = set(tokens)
        self.seen: dict = {}
        self.attn: dict = {}
        self.keep: list = []  # hold the tensors: a freed storage's address could be reused

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        ref = StorageWeakRef(t.untyped_storage())
        if ref not in self.exclude and ref not in self.seen:
            self.seen[ref] = t.untyped_storage().nbytes()
            self.keep.append(t)
            if t.dim() >= 3 and t.shape[-1] == t.shape[-2] and t.shape[-1] in self.tokens:
                self.attn[ref] = self.seen[ref]
        return t

    def __enter__(self) -> "SavedBytes":
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._ctx.__exit__(*exc)

    @property
    def total(self) -> int:
        return sum(self.seen.values())

    @property
    def attn_total(self) -> int:
        return sum(self.attn.values())


@contextlib.contextmanager
def maybe_fake(modules: list[torch.nn.Module], fake: bool = True):
    """Inside: ``modules`` run on fake copies of their parameters and buffers under a ``FakeTensorMode``
    (``fake``), or as they are; the modules are unchanged afterwards."""
    if not fake:
        yield
        return
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.nn.utils.stateless import _reparametrize_module

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    bundle = torch.nn.ModuleList(modules)
    state = {n: mode.from_tensor(t) for n, t in list(bundle.named_parameters()) + list(bundle.named_buffers())}
    with mode, _reparametrize_module(bundle, state):
        yield


def autocast_cpu(precision: str):
    """bf16 CPU autocast for the accounting (``fp32``/``tf32``: none)."""
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def training_state_bytes(n_params: int, n_trained: int, n_ema: int, world: int) -> int:
    """fp32 weights (all), gradients + AdamW's two moments (trained), fp32 EMA, DDP buckets (world > 1)."""
    return 4 * n_params + 12 * n_trained + 4 * n_ema + (4 * n_trained if world > 1 else 0)


def linear_fit(measure: Callable[[int], int], batches=(1, 2)) -> tuple[float, float]:
    """``(per_sample, batch_independent)`` bytes from ``measure(b)`` at two batch sizes."""
    b1, b2 = batches[0], batches[-1]
    m1, m2 = measure(b1), measure(b2)
    slope = (m2 - m1) / (b2 - b1)
    return slope, m1 - slope * b1


def peak_bytes(state: float, per_sample: float, fixed_act: float, block: float, micro: int) -> float:
    """Planned peak of one process: training state + runtime allowance + activations of ``micro`` samples +
    one block's activations per sample (the block being back-propagated, or recomputed under checkpointing)."""
    return state + RUNTIME_GIB * GIB + fixed_act + micro * (per_sample + block)
