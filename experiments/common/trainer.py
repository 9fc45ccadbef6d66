"""Generic training-loop pieces shared by the training scripts.

* :class:`UserError`, :class:`OneLineParser`, :func:`run_cli`: bad arguments / missing files / missing
  weights end the program with ONE line on stderr and a non-zero exit code, never a traceback.
* :class:`NonFiniteGuard`: skip steps whose loss or gradient is not finite; stop after ``k`` in a row.
* :class:`StepBookkeeper`: after each optimizer step: guard check, EMA update, loss sums, scheduler step.
* :func:`training_session`, :func:`cpu_threads`, :func:`check_resume_args`, :func:`abort_nonfinite`:
  set-up / resume / abort handling of the training scripts.
* :func:`lr_lambda`, :func:`build_adamw`, :func:`autocast`, :func:`seed_everything`.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import math
import os
import random
import sys
import warnings
from typing import Callable, Iterable, NoReturn, Sequence

import numpy as np
import torch


class UserError(Exception):
    """Something the user must fix (path, argument, weights); printed as one line."""


class NonFiniteError(RuntimeError):
    """Too many consecutive non-finite steps."""


class OneLineParser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line (``prog: error: ...``) and whose help shows defaults."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # noqa: D401
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def error_line(e: BaseException) -> str:
    """The one line that states ``e``: its first line, or, for an error re-raised from a DataLoader worker
    ("Caught X in DataLoader worker process k." + the worker's traceback), the worker's own message."""
    text = str(e).strip()
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = [ln for ln in text.splitlines() if ln.strip()][-1].strip()
        head, sep, msg = last.partition(": ")
        text = msg if sep and " " not in head else last
    return text.splitlines()[0] if text else type(e).__name__


#: errno -> (words, exit code) of the I/O failures that get one line instead of a traceback.
_IO_ERRORS = {errno.ENOSPC: ("no space left on device", 1), errno.EDQUOT: ("disk quota exceeded", 1),
              errno.EROFS: ("read-only file system", 2), errno.EACCES: ("permission denied", 2),
              errno.EPERM: ("operation not permitted", 2)}


def run_cli(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None,
            prog: str = "", one_line: tuple[type[BaseException], ...] = ()) -> int:
    """Call ``main(argv)`` and turn failures into exit codes with one line on stderr.

    :class:`UserError` and the ``one_line`` types → exit 2; :class:`NonFiniteError` → 3; a full disk
    (ENOSPC / EDQUOT) → 1, a read-only or forbidden path → 2, both naming the file; any other exception
    keeps its traceback, then one ``prog: error:`` line, exit 1. Data-loader workers still alive are shut
    down before returning, so an error never leaves the process waiting for them.
    """
    try:
        return int(main(argv) or 0)
    except (UserError, *one_line) as e:
        _say(prog, error_line(e))
        return 2
    except NonFiniteError as e:
        _say(prog, error_line(e))
        return 3
    except OSError as e:
        if e.errno not in _IO_ERRORS:
            return _unexpected(prog, e)
        words, code = _IO_ERRORS[e.errno]
        where = f" writing {e.filename}" if e.filename else ""
        _say(prog, f"{words}{where}" + ("; free space (the last complete checkpoint is kept) and re-run the "
                                        "same command" if code == 1 else "; pass a writable --out"))
        return code
    except Exception as e:  # noqa: BLE001 - a bug or an unforeseen failure: traceback, then one line
        return _unexpected(prog, e)
    finally:
        reap_loader_workers()


def _unexpected(prog: str, e: BaseException) -> int:
    import traceback

    traceback.print_exc()
    _say(prog, f"{type(e).__name__}: {error_line(e)} (traceback above)")
    return 1


def _say(prog: str, msg: str) -> None:
    print(f"{prog}: error: {msg}", file=sys.stderr, flush=True)


def reap_loader_workers(timeout: float = 3.0) -> int:
    """Shut down DataLoader workers of this process that are still alive; returns how many there were.

    Cheap when there are none. Otherwise every live ``_MultiProcessingDataLoaderIter`` is closed through
    :func:`experiments.common.data.close_loader` (which unregisters its workers from torch's SIGCHLD check
    first), and any worker left is terminated, then killed after ``timeout`` seconds. Only torch's worker
    processes (target ``_worker_loop``) are touched, never other children.
    """
    import gc
    import multiprocessing as mp
    import time

    from torch.utils.data._utils.worker import _worker_loop
    from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

    def live():
        return [p for p in mp.active_children() if getattr(p, "_target", None) is _worker_loop]

    found = live()
    if not found:
        return 0
    from experiments.common.data import close_loader

    for obj in gc.get_objects():
        if isinstance(obj, _MultiProcessingDataLoaderIter):
            close_loader(obj)
    rest = live()
    for p in rest:
        p.terminate()
    deadline = time.monotonic() + timeout
    for p in rest:
        p.join(timeout=max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(timeout=1.0)
    return len(found)


def script_exit(code: int, grace_s: float = 20.0) -> NoReturn:
    """End a script (``if __name__ == "__main__": script_exit(main())``): flush, reap loader workers, then
    ``sys.exit(code)``; a daemon timer calls ``os._exit(code)`` if interpreter shutdown is still running
    ``grace_s`` seconds later (an exit handler waiting for a process that will not end)."""
    import os
    import threading

    reap_loader_workers()
    sys.stdout.flush()
    sys.stderr.flush()
    t = threading.Timer(grace_s, os._exit, args=(int(code),))
    t.daemon = True
    t.start()
    sys.exit(code)


@contextlib.contextmanager
def cpu_threads(n: int | None):
    """Run the block with ``torch.set_num_threads(n)`` (``None``: unchanged); the old count is restored."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def training_session(args: argparse.Namespace):
    """``distributed.setup(args.device)``, then CPU threads ``--threads`` (default on CPU: 1 for the tiny
    presets, whose small kernels only lose to OpenMP sync; 2 for the cpu preset, measured 1.76× faster than
    1 on an idle 2-core box); yields the ``DistInfo``. Undone on exit."""
    from experiments.common import distributed as D

    info = D.setup(args.device, getattr(args, "dist_timeout", None) or D.DEFAULT_TIMEOUT_MIN)
    default = None
    if info.device.type == "cpu" and args.preset in ("tiny", "cpu"):
        default = 1 if args.preset == "tiny" else min(2, os.cpu_count() or 1)
    try:
        with cpu_threads(args.threads or default):
            yield info
    finally:
        D.cleanup()


#: Options added after checkpoints already existed, with the value every older checkpoint was written with
#: (the loaders read them the same way: ``args.get("stem", "conv")``, ``latent.get("flow", "riemannian")``).
RESUME_LEGACY_DEFAULTS = {"stem": "conv", "flow": "riemannian", "structure": "table8", "data_noise": 0.0}


def check_resume_args(old: dict, args: argparse.Namespace, keys: Sequence[str], ckpt) -> None:
    """Raise :class:`UserError` when checkpoint ``ckpt`` was written with other values of ``keys`` (a key the
    checkpoint predates counts as its :data:`RESUME_LEGACY_DEFAULTS` value)."""
    diff = ", ".join("--" + k.replace("_", "-") for k in keys
                     if old.get(k, RESUME_LEGACY_DEFAULTS.get(k)) != getattr(args, k))
    if diff:
        raise UserError(f"{ckpt} was written with different {diff}; "
                        f"use the same arguments, another --out, or --no-resume")


def abort_nonfinite(prog: str, err: Exception, step: int, logger, progress, ckpts) -> int:
    """Too many non-finite steps: log ``abort``, close the progress bar, say where the last good
    checkpoint is (one line on stderr) and return exit code 3."""
    logger.log("abort", step, reason=str(err))
    progress.close()
    print(f"{prog}: stopping: {err}; " + (f"the last good checkpoint is {ckpts.last}" if ckpts.exists()
                                         else "no checkpoint written yet"), file=sys.stderr, flush=True)
    return 3


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_lambda(schedule: str, warmup: int, total: int, min_ratio: float = 0.0) -> Callable[[int], float]:
    """Multiplier of the base learning rate at optimizer step ``s`` (for ``LambdaLR``).

    ``constant``: linear warm-up over ``warmup`` steps then 1. ``cosine``: warm-up then
    ``min_ratio + (1 − min_ratio)·½(1 + cos(π·p))``, ``p`` the fraction of post-warm-up steps done.
    """
    if schedule not in ("constant", "cosine"):
        raise UserError(f"unknown lr schedule {schedule!r}")

    def f(s: int) -> float:
        if warmup > 0 and s < warmup:
            return (s + 1) / warmup
        if schedule == "constant":
            return 1.0
        p = min(1.0, (s - warmup) / max(1, total - warmup))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))

    return f


def build_adamw(params: Iterable[torch.nn.Parameter], lr: float, betas: tuple[float, float],
                weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices/kernels only (not on biases and norm gains)."""
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=betas)


def autocast(device: torch.device | str, precision: str, *, cuda_only: bool = False):
    """bf16 autocast context (no-op for fp32). Keep sphere arithmetic outside or in explicit fp32.

    ``cuda_only=True`` turns bf16 into a no-op off CUDA (the DiT, sampling and latent caching, where CPU
    bf16 is slower than fp32 and only a test path).
    """
    if precision not in ("fp32", "bf16"):
        raise UserError(f"unknown precision {precision!r} (expected fp32 or bf16)")
    device_type = torch.device(device).type
    if precision == "fp32" or (cuda_only and device_type != "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)


class NonFiniteGuard:
    """Counts consecutive non-finite steps.

    ``ok = guard.check(finite)`` returns whether the step may be applied; after ``max_consecutive``
    non-finite steps in a row it raises :class:`NonFiniteError`. A finite step resets the count.
    """

    def __init__(self, max_consecutive: int = 5):
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.total = 0

    def check(self, finite: bool, step: int | None = None) -> bool:
        if finite:
            self.consecutive = 0
            return True
        self.consecutive += 1
        self.total += 1
        if self.max_consecutive > 0 and self.consecutive >= self.max_consecutive:
            raise NonFiniteError(f"{self.consecutive} non-finite losses in a row (last at step {step})")
        return False

    def state_dict(self) -> dict:
        return {"consecutive": self.consecutive, "total": self.total}

    def load_state_dict(self, s: dict) -> None:
        self.consecutive, self.total = s["consecutive"], s["total"]


class StepBookkeeper:
    """The per-step bookkeeping shared by the training loops (``in1k_ae.py``, ``in1k_dit.py``).

    ``record(step, parts, finite)`` after each optimizer step (``step`` 0-based, before incrementing):
    a finite step resets ``guard``, updates ``ema`` from ``model`` and adds ``parts`` to the running sums;
    a non-finite one is logged as a ``nonfinite`` event and counted by ``guard`` (which raises
    :class:`NonFiniteError` after ``--max-nonfinite`` in a row). Then the lr scheduler steps (its
    "``optimizer.step()`` was skipped" warning silenced). ``pop_means()`` returns the mean of each loss
    part since the last call and starts a new interval.
    """

    def __init__(self, guard: NonFiniteGuard, ema, model: torch.nn.Module, logger, sched=None):
        self.guard, self.ema, self.model, self.logger, self.sched = guard, ema, model, logger, sched
        self.sums: dict[str, float] = {}
        self.n = 0

    def record(self, step: int, parts: dict[str, float], finite: bool) -> None:
        if finite:
            self.guard.check(True, step)
            self.ema.update(self.model)
            for k, v in parts.items():
                self.sums[k] = self.sums.get(k, 0.0) + v
            self.n += 1
        else:
            self.logger.log("nonfinite", step + 1, consecutive=self.guard.consecutive + 1, **parts)
            self.guard.check(False, step + 1)  # raises NonFiniteError after --max-nonfinite in a row
        if self.sched is not None:
            with warnings.catch_warnings():  # skipped steps / D-only warm-up: no opt.step()
                warnings.simplefilter("ignore", UserWarning)
                self.sched.step()

    def pop_means(self) -> dict[str, float]:
        means = {k: v / max(self.n, 1) for k, v in self.sums.items()}
        self.sums, self.n = {}, 0
        return means


def grads_finite_norm(params: Sequence[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """Clip gradients to ``max_norm`` (``inf`` = no clipping) and return the pre-clip total norm."""
    params = [p for p in params if p.grad is not None]
    if not params:
        return torch.tensor(0.0)
    return torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
