"""Gradient accumulation shared by the training scripts: ``--grad-accum K|auto`` and ``--grad-checkpointing``.

One optimizer step over a global batch ``B`` on ``W`` processes reads ``K`` micro-batches of ``B/(K·W)``
samples per process; each micro-batch's loss is divided by ``K`` and back-propagated; DDP all-reduces the
gradients only on the last one (:func:`maybe_no_sync`), so the step applies the mean gradient over all ``B``
samples, as one batch of ``B`` would, within float rounding.

For that equality the randomness of a sample must not depend on how the step is split. :func:`sample_positions`
gives every sample its position in the step's global batch (the :class:`ResumableBatchSampler` reads chunk
``m`` of size ``B/K``, rank ``r`` its ``r``-th slice), and :func:`experiments.common.flows.step_draws` draws a
sample's noise, time and label dropout as a function of ``(seed, step, position)``: the same sample gets the
same draws for any ``K`` and any ``W``.

``--grad-accum auto`` (:func:`auto_grad_accum`): the smallest ``K`` whose micro-batch fits the device's free
memory by the measured memory plan (:mod:`experiments.common.memory_plan`), with the plan's headroom; on a
device without CUDA it keeps ``K = 1`` and says so (plan a GPU run with ``benchmarks/memory_plan.py``).
"""
from __future__ import annotations

import argparse
import contextlib
from typing import Callable

import torch



def grad_accum_arg(text: str) -> int | str:
    """argparse type of ``--grad-accum``: a positive integer or ``auto``."""
    if text == "auto":
        return text
    try:
        k = int(text)
    except ValueError:
        k = 0
    if k < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}")
    return k


def maybe_no_sync(net: torch.nn.Module, sync: bool):
    """``net.no_sync()`` (DDP: no gradient all-reduce) unless ``sync``; a no-op for plain modules."""
    if sync or not hasattr(net, "no_sync"):
        return contextlib.nullcontext()
    return net.no_sync()


def sample_positions(micro: int, chunk: int, rank: int, world: int) -> range:
    """Positions in the step's global batch of rank ``rank``'s samples of micro-batch ``micro``.

    ``chunk`` is the global micro-batch (``B/K``); rank r reads the r-th contiguous slice of each chunk
    (:class:`experiments.common.data.ResumableBatchSampler`), so the positions are
    ``micro·chunk + r·chunk/W + i`` for ``i < chunk/W``.
    """
    local = chunk // world
    start = micro * chunk + rank * local
    return range(start, start + local)


def auto_grad_accum(per_rank_batch: int, device: torch.device, bytes_for: Callable[[int], float], *,
                    headroom: float = 0.9, log: Callable[[str], None] = print, what: str = "") -> int:
    """Smallest ``K`` dividing ``per_rank_batch`` with ``bytes_for(per_rank_batch // K) ≤ headroom·free``.

    ``bytes_for(m)``: planned peak bytes of one process at micro-batch ``m`` (fixed state + m × per-sample
    activations, :mod:`experiments.common.memory_plan`); ``free`` is ``torch.cuda.mem_get_info`` of
    ``device`` at call time (so other processes' memory counts). Off CUDA returns 1 with a note.

    Raises:
        ValueError: not even a micro-batch of 1 fits (the message states the planned and free bytes).
    """
    if device.type != "cuda":
        log(f"{what}--grad-accum auto reads the free memory of a CUDA device; on {device.type} it uses 1 "
            f"(plan a GPU run with: python benchmarks/memory_plan.py)")
        return 1
    free, total = torch.cuda.mem_get_info(device)
    budget = headroom * free
    for k in range(1, per_rank_batch + 1):
        if per_rank_batch % k == 0 and bytes_for(per_rank_batch // k) <= budget:
            m = per_rank_batch // k
            log(f"{what}--grad-accum auto: micro-batch {m} x {k} per process (plan {bytes_for(m) / 2**30:.1f} "
                f"GiB of {free / 2**30:.1f} GiB free, {total / 2**30:.1f} GiB total, headroom {headroom:.0%})")
            return k
    raise ValueError(f"--grad-accum auto: even a micro-batch of 1 needs {bytes_for(1) / 2**30:.1f} GiB by the "
                     f"memory plan but only {free / 2**30:.1f} GiB are free on {device}; add "
                     f"--grad-checkpointing or use a larger GPU")
