"""Checkpoints that lose nothing, and stop signals that write one before exiting.

* :func:`save_atomic` writes ``torch.save`` output to a temporary file in the target folder, fsyncs it and
  ``os.replace``-s it over the destination, so a checkpoint on disk is always complete (a kill during the
  write leaves the previous one intact).
* :func:`capture_rng` / :func:`restore_rng` cover Python, NumPy, torch CPU and CUDA generators;
  :func:`restore_training` loads a resumed run's objects and this rank's generators.
* :func:`in_run`: a run folder → its ``checkpoints/last.pt``.
* :class:`StopSignals` turns SIGTERM / SIGINT into a flag the training loop polls at step boundaries;
  a second SIGINT raises ``KeyboardInterrupt`` at once.

Usage::

    ckpt = CheckpointDir(out / "checkpoints")
    state = ckpt.load_latest()            # None on a fresh run
    ...
    ckpt.save({"model": ..., "optimizer": ..., "step": step, "rng": capture_rng(), ...})
"""
from __future__ import annotations

import contextlib
import os
import random
import signal
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from experiments.common.trainer import UserError

LAST = "last.pt"


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` atomically (temp file in the same folder + fsync + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with _removed_on_error(tmp):
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return path


@contextlib.contextmanager
def _removed_on_error(tmp: str):
    """Deletes the temporary file ``tmp`` when the block fails (a write or link killed mid-way), then re-raises."""
    try:
        yield
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def in_run(path: str | os.PathLike) -> Path:
    """A run folder → its ``checkpoints/last.pt``; anything else (a checkpoint file) → itself."""
    p = Path(path)
    return p / "checkpoints" / LAST if p.is_dir() else p


class CheckpointError(UserError):
    """A checkpoint file that cannot be read back (empty, truncated, not ours); the message names it."""


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu", *, hint: str = "") -> dict:
    """Load a checkpoint written by :func:`save_atomic` (full pickle: our own files only).

    Raises:
        CheckpointError: one line naming ``path`` when the file is empty, truncated, not a torch file or
            not a dict (``hint`` is appended: what to do about it).
    """
    p = Path(path)
    try:
        if p.is_file() and p.stat().st_size == 0:
            raise EOFError("empty file")
        state = torch.load(p, map_location=map_location, weights_only=False)
    except OSError as e:
        if e.errno is not None:  # a real I/O error (permission, missing file): not a bad checkpoint
            raise
        state = e
    except Exception as e:  # noqa: BLE001 - pickle / zip / EOF errors of a damaged file
        state = e
    if isinstance(state, BaseException) or not isinstance(state, dict):
        what = (f"{type(state).__name__}: {str(state).splitlines()[0] if str(state) else ''}"
                if isinstance(state, BaseException) else f"holds a {type(state).__name__}, not a checkpoint dict")
        raise CheckpointError(f"{p} is not a readable checkpoint (empty, truncated or not written by this "
                              f"project: {what})" + (f"; {hint}" if hint else "")) from None
    return state


def capture_rng() -> dict:
    """State of every global random generator this process uses."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    """Inverse of :func:`capture_rng`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def restore_training(state: dict, rank: int, world_size: int, **objects: Any) -> int:
    """Resume: ``obj.load_state_dict(state[key])`` for each ``key=obj``, then this rank's RNG state (rank 0's
    when the world size changed). Returns ``state["step"]``."""
    for key, obj in objects.items():
        obj.load_state_dict(state[key])
    rng = state["rng"]
    restore_rng(rng[rank] if len(rng) == world_size else rng[0])
    return int(state["step"])


class CheckpointDir:
    """A folder of checkpoints: ``last.pt`` (always the newest) plus optional ``step_XXXXXXX.pt`` and
    ``epoch_E.pt`` files kept by :meth:`keep` (hard links of an earlier ``last.pt``)."""

    def __init__(self, folder: str | os.PathLike, *, keep_every: int = 0):
        self.folder = Path(folder)
        self.keep_every = keep_every

    @property
    def last(self) -> Path:
        return self.folder / LAST

    def exists(self) -> bool:
        return self.last.is_file()

    def save(self, state: dict, step: int | None = None) -> Path:
        path = save_atomic(state, self.last)
        if step is not None and self.keep_every and step % self.keep_every == 0:
            self.keep(f"step_{step:07d}.pt")
        return path

    def keep(self, name: str) -> Path:
        """Keep the current ``last.pt`` as ``name`` in this folder: a hard link (no second write, the same
        bytes; :func:`save_atomic` later replaces ``last.pt`` by a new file, the link keeps the old one),
        or a copy where the file system has no hard links. Atomic like :func:`save_atomic`."""
        import shutil

        dest = self.folder / name
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.folder)
        os.close(fd)
        os.unlink(tmp)
        with _removed_on_error(tmp):
            try:
                os.link(self.last, tmp)
            except OSError:
                shutil.copyfile(self.last, tmp)
            os.replace(tmp, dest)
        return dest

    def load_latest(self, map_location: str | torch.device = "cpu", required: tuple[str, ...] = ("step",)
                    ) -> dict | None:
        """The newest checkpoint, or ``None``; :class:`CheckpointError` (one line saying that
        ``--no-resume`` starts over) when ``last.pt`` is damaged or lacks one of the ``required`` keys."""
        if not self.exists():
            return None
        hint = "re-run with --no-resume to start over (the old run is moved aside)"
        state = load(self.last, map_location, hint=hint)
        missing = [k for k in required if k not in state]
        if missing:
            raise CheckpointError(f"{self.last} is not a resumable training checkpoint (no "
                                  f"{', '.join(map(repr, missing))}); {hint}")
        return state


class StopSignals:
    """Context manager: SIGTERM / SIGINT set ``requested`` instead of killing the process.

    The loop checks ``requested`` (or ``signum``) after each step, writes a checkpoint and returns. A second
    SIGINT while a stop is pending raises ``KeyboardInterrupt`` (the user insists). Handlers are only
    installed in the main thread; the previous handlers are restored on exit.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)):
        self.signals = signals
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def request(self, signum: int = signal.SIGTERM) -> None:
        """Ask for a stop programmatically (same path as a signal)."""
        self.signum = signum

    def _handler(self, signum, frame):  # noqa: ARG002
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> "StopSignals":
        import threading

        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old.clear()
