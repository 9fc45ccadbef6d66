"""When a training loop writes its checkpoint: by steps, by wall-clock time, at milestone epochs, on a stop.

* ``--ckpt-every N``: ``last.pt`` every N optimizer steps and at the last step (as before).
* ``--ckpt-minutes M``: also when M minutes have passed since the last write (default 30). Only rank 0's
  clock is read; its decision travels in the same all-reduce as the stop flag (one collective per step, as
  before), so every rank saves at the same step.
* a stop by signal writes ``last.pt`` unless the run's previous write took longer than ``--stop-budget``
  seconds (default 20: torchrun SIGKILLs its workers 30 s after forwarding a SIGTERM; see
  :meth:`SavePolicy.stop_write`); the time-based checkpoints bound what is lost to ``--ckpt-minutes``.
* ``--milestone-epochs E1,E2``: at the first step whose data position reaches epoch E (step
  ``⌈E · steps_per_epoch⌉``) ``last.pt`` is written and kept as ``checkpoints/epoch_E.pt``, a hard link
  (no second write; the file costs disk space once ``last.pt`` moves on).

Usage in a loop (every rank)::

    policy = SavePolicy(args.ckpt_every, args.ckpt_minutes, milestone_steps(epochs, steps_per_epoch, total),
                        total, is_main=info.is_main)
    ...
    stopping, by_signal, timed = policy.poll(stop.requested, step == args.stop_after, dev)
    write = not stopping or not by_signal or policy.stop_write(args.stop_budget)[0]   # collective
    if (policy.due(step, timed) and guard.consecutive == 0 and not stopping) or (stopping and write):
        save(step); policy.saved(nbytes, seconds)
    name = policy.milestone(step)    # "epoch_80.pt" or None; rank 0 links last.pt to it
"""
from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import torch


def milestone_steps(epochs: Sequence[float], steps_per_epoch: float, total: int) -> dict[int, str]:
    """Step → file name (``epoch_80.pt``, ``epoch_0.5.pt``) of each milestone epoch reached within ``total``
    steps: the first step ``s`` with ``s / steps_per_epoch >= E``."""
    out: dict[int, str] = {}
    for e in epochs:
        s = max(1, math.ceil(e * steps_per_epoch - 1e-9))
        if s <= total:
            out[s] = f"epoch_{e:g}.pt"
    return out


class SavePolicy:
    """The checkpoint schedule of one run (see the module docstring).

    Args:
        every: steps between step-based checkpoints.
        minutes: minutes between time-based ones (0 = off).
        milestones: step → milestone file name (:func:`milestone_steps`).
        total: the run's last step (always saved).
        is_main: whether this process's clock decides.
        clock: seconds, monotonic (tests pass a fake one).
    """

    def __init__(self, every: int, minutes: float, milestones: dict[int, str], total: int, *,
                 is_main: bool = True, clock: Callable[[], float] = time.monotonic):
        self.every, self.seconds, self.milestones, self.total = every, minutes * 60.0, milestones, total
        self.is_main, self.clock = is_main, clock
        self.last = clock()

    def poll(self, signalled: bool, stop_after: bool = False, device: torch.device | str = "cpu"
             ) -> tuple[bool, bool, bool]:
        """``(stopping, by_signal, time_due)`` agreed by every process: stopping if any process got a stop
        signal or reached ``--stop-after``, ``by_signal`` if any got a signal, time due if rank 0's clock
        says so. One all-reduce (MAX) of two numbers."""
        from experiments.common import distributed as D

        timed = self.is_main and self.seconds > 0 and self.clock() - self.last >= self.seconds
        flags = torch.tensor([2.0 if signalled else 1.0 if stop_after else 0.0, float(timed)], device=device)
        if D.dist.is_available() and D.dist.is_initialized():
            D.dist.all_reduce(flags, op=D.dist.ReduceOp.MAX)
        level, timed_ = flags.tolist()
        return level > 0, level > 1, timed_ > 0

    def due(self, step: int, time_due: bool) -> bool:
        """A regular checkpoint at ``step`` (steps done): by step count, the last step, time or milestone."""
        return step % self.every == 0 or step == self.total or time_due or step in self.milestones

    def reason(self, step: int, time_due: bool) -> str:
        """Why :meth:`due` holds (for the ``checkpoint`` log event): ``step`` (every N, or the last step),
        ``milestone`` or ``time``."""
        if step % self.every == 0 or step == self.total:
            return "step"
        return "milestone" if step in self.milestones else "time" if time_due else "none"

    def milestone(self, step: int) -> str | None:
        return self.milestones.get(step)

    def saved(self, nbytes: int = 0, seconds: float = 0.0) -> None:
        """After every write: restart the clock and remember the write's size and duration (rank 0)."""
        self.last = self.clock()
        if nbytes > 0 and seconds > 0:
            self.write = (nbytes, seconds)

    write: tuple[int, float] | None = None  # (bytes, seconds) of the newest write on rank 0

    def stop_write(self, budget_s: float) -> tuple[bool, str]:
        """Whether the checkpoint of a signal stop (SIGTERM from a scheduler or torchrun) should be written:
        yes unless a previous write of this run says it would take longer than ``budget_s`` seconds (then the
        process would be killed mid-write: the atomic write keeps the older ``last.pt`` intact, but the grace
        period is wasted). Rank 0 decides for all (one broadcast). Returns ``(write, note)``; ``note`` says
        why not, for the log."""
        from experiments.common import distributed as D

        verdict = (True, "")
        if self.is_main and self.write is not None and budget_s > 0:
            nbytes, secs = self.write
            if secs > budget_s:
                verdict = (False, f"not writing a checkpoint: the last one ({nbytes / 1e9:.2f} GB) took "
                                  f"{secs:.0f} s, more than --stop-budget {budget_s:g} s")
        return D.broadcast_object(verdict)
