"""One run per folder: the exclusive lock, fresh starts and clean-up shared by every script writing a run.

Rules (README "Run folders"):

* **One run per folder.** :class:`RunLock` holds an exclusive POSIX record lock (``fcntl.lockf``) on
  ``OUT/.run.lock`` for the life of the run and writes ``{"pid", "host", "started", "argv"}`` into it. A
  second run on the same folder (another process, or the same process twice) refuses with one line naming
  the holder. The kernel drops the lock when its process dies (also ``kill -9``; POSIX record locks are not
  inherited by forked data-loader workers, so an orphaned worker cannot keep a dead run's folder locked).
  A lock file that still names a process is therefore a *stale* record: it is taken over with a note saying
  whether that pid is gone on this host. The file is emptied, never deleted, at the end of a run (deleting
  it would let two runs lock two different inodes).
* **Leftovers of a killed write are removed under the lock**: ``checkpoints/.*.pt.*.tmp`` (from
  :func:`experiments.common.checkpoint.save_atomic`), ``metrics.jsonl.tmp``, and whatever ``tmp_globs`` a
  script adds. Only our own patterns, only while we hold the lock, so no live writer is disturbed.
* **A fresh start never mixes with an old run.** :func:`set_aside` moves the previous run's files
  (``checkpoints/``, ``metrics.jsonl`` and the script's own ``artefacts``) into ``OUT/previous-<UTC time>/``:
  with ``--no-resume`` (so a later plain run cannot resume the discarded run) and on a fresh start that
  finds a log but no checkpoint (a run killed before its first checkpoint), instead of appending to it.

Usage (rank 0 only; the others wait at a barrier)::

    with RunLock(out, prog="in1k_ae.py"):
        clean_tmp(out)
        ...
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterable, Sequence

from experiments.common.trainer import UserError

LOCK_NAME = ".run.lock"
#: Patterns of temporary files our writers leave behind when killed mid-write (relative to the run folder).
TMP_GLOBS = ("checkpoints/.*.pt.*.tmp", "metrics.jsonl.tmp")
#: What a run folder's "run" consists of (moved aside by :func:`set_aside`), besides a script's extras.
RUN_FILES = ("checkpoints", "metrics.jsonl")

_HELD: dict[str, "RunLock"] = {}  # realpath -> lock held by this process (POSIX locks do not see those)


class RunFolderError(UserError):
    """The run folder is in use, unwritable, or its files are in the way (printed as one line)."""


def _unwritable(path: Path, e: OSError) -> RunFolderError:
    why = {errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
           errno.EPERM: "permission denied", errno.ENOSPC: "no space left on device",
           errno.EDQUOT: "disk quota exceeded"}.get(e.errno, e.strerror or type(e).__name__)
    return RunFolderError(f"cannot write the run folder {path} ({why}); pass a writable --out")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (``kill(pid, 0)``; EPERM means it exists)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(rec: dict) -> str:
    return (f"pid {rec.get('pid', '?')} on host {rec.get('host', '?')}, started {rec.get('started', '?')}"
            + (f": {' '.join(rec['argv'])}" if rec.get("argv") else ""))


class RunLock:
    """Exclusive lock of a run folder (context manager). See the module docstring for the rules.

    Args:
        out: the run folder (created if missing).
        prog: the script name used in messages.
        log: where notes go (one line each; default: stderr).

    Raises:
        RunFolderError: the folder is locked by a live run, or cannot be written.
    """

    def __init__(self, out: str | os.PathLike, *, prog: str = "", log=None):
        self.out, self.prog = Path(out), prog
        self.path = self.out / LOCK_NAME
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.fd: int | None = None
        self.took_over: dict | None = None

    def _read(self, fd: int) -> dict | None:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = b""
        while chunk := os.read(fd, 65536):
            raw += chunk
        if not raw.strip():
            return None
        try:
            rec = json.loads(raw)
            return rec if isinstance(rec, dict) else {"raw": raw[:80].decode(errors="replace")}
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {"raw": raw[:80].decode(errors="replace")}

    def acquire(self) -> "RunLock":
        key = os.path.realpath(self.out)
        held = _HELD.get(key)
        if held is not None:
            raise RunFolderError(f"{self.out} is in use by another run in this process "
                                 f"({_describe(held.record)}); use another --out")
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise _unwritable(self.out, e) from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EAGAIN):
                os.close(fd)
                raise _unwritable(self.out, e) from None
            rec = self._read(fd) or {}
            os.close(fd)
            raise RunFolderError(f"{self.out} is in use by another run ({_describe(rec)}); wait for it to end "
                                 f"or pass another --out") from None
        old = self._read(fd)
        self.record = {"pid": os.getpid(), "host": socket.gethostname(),
                       "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "argv": sys.argv[:]}
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, (json.dumps(self.record) + "\n").encode())
            os.fsync(fd)
        except OSError as e:
            os.close(fd)
            raise _unwritable(self.out, e) from None
        self.fd = fd
        _HELD[key] = self
        if old is not None:  # the lock was free, so its writer is gone (or on another host, unlocked)
            self.took_over = old
            same_host = old.get("host") == socket.gethostname()
            gone = "its process is gone" if same_host and not pid_alive(int(old.get("pid", -1) or -1)) else (
                "its lock was released" if same_host else "its lock on this file system was released")
            self.log(f"{self.prog}: note: taking over the lock of a run that ended without releasing it "
                     f"({_describe({k: v for k, v in old.items() if k != 'argv'})}; {gone})")
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        _HELD.pop(os.path.realpath(self.out), None)
        try:
            os.ftruncate(self.fd, 0)  # empty = no run; the file stays (see the module docstring)
        except OSError:
            pass
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def clean_tmp(out: str | os.PathLike, globs: Iterable[str] = TMP_GLOBS, *, log=None) -> list[Path]:
    """Remove temporary files a killed write left in ``out`` (call only while holding its :class:`RunLock`).

    Returns the removed paths; one note names how many and their size.
    """
    out = Path(out)
    gone: list[Path] = []
    size = 0
    for g in globs:
        for p in sorted(out.glob(g)):
            if p.is_file():
                size += p.stat().st_size
                p.unlink()
                gone.append(p)
    if gone and log is not None:
        log(f"note: removed {len(gone)} temporary file(s) left by a killed write "
            f"({size / 2**20:.1f} MiB), e.g. {gone[0]}")
    return gone


def set_aside(out: str | os.PathLike, artefacts: Sequence[str] = (), *, log=None) -> Path | None:
    """Move the previous run's files (:data:`RUN_FILES` + ``artefacts``, glob patterns relative to ``out``)
    into ``out/previous-<UTC time>/``. Returns that folder, or ``None`` when there was nothing to move."""
    out = Path(out)
    found: list[Path] = []
    for pat in (*RUN_FILES, *artefacts):
        found += [p for p in sorted(out.glob(pat)) if p not in found]
    if not found:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    dest, k = out / f"previous-{stamp}", 1
    while dest.exists():
        k += 1
        dest = out / f"previous-{stamp}-{k}"
    try:
        dest.mkdir()
        for p in found:
            os.replace(p, dest / p.relative_to(out))
    except OSError as e:
        raise _unwritable(out, e) from None
    if log is not None:
        log(f"note: moved the previous run's {', '.join(p.name for p in found)} to {dest}; starting fresh")
    return dest


def prepare(out: str | os.PathLike, *, resume_possible: bool, no_resume: bool,
            artefacts: Sequence[str] = (), log=None) -> Path | None:
    """The fresh-start rule: with ``no_resume``, or when no checkpoint can be resumed but a previous run's
    log is there, :func:`set_aside` the old run. Returns the folder it went to (or ``None``)."""
    if no_resume or (not resume_possible and (Path(out) / "metrics.jsonl").exists()):
        return set_aside(out, artefacts, log=log)
    return None


@contextlib.contextmanager
def run_folder(out: str | os.PathLike, info=None, *, prog: str, no_resume: bool = False,
               artefacts: Sequence[str] = (), tmp_globs: Iterable[str] = TMP_GLOBS, fresh_rule: bool = True):
    """The run-folder protocol of a training script, on the main process; the others wait at a barrier and
    raise the same one-line error when it fails.

    Lock ``out`` (:class:`RunLock`), remove temporary leftovers (:func:`clean_tmp`), and, with
    ``fresh_rule``, apply :func:`prepare` (``--no-resume``, or a log without a checkpoint, moves the old
    run aside). Then every process checks that it sees the folder rank 0 locked
    (:func:`experiments.common.distributed.check_shared_folder`: a run whose nodes do not share ``out``
    stops with one line). Yields the lock (``None`` off the main process); released on exit.
    """
    from experiments.common import distributed as D

    is_main = info is None or info.is_main
    note = lambda m: print(f"{prog}: {m}", file=sys.stderr, flush=True)  # noqa: E731
    lock, err = None, None
    if is_main:
        try:
            lock = RunLock(out, prog=prog).acquire()
            clean_tmp(out, (*tmp_globs, D.SHARED_CHECK + "*"), log=note)
            if fresh_rule:
                prepare(out, resume_possible=(Path(out) / "checkpoints" / "last.pt").exists(),
                        no_resume=no_resume, artefacts=artefacts, log=note)
        except RunFolderError as e:
            err = str(e)
    err = D.broadcast_object(err)
    if err is None and info is not None:
        err = D.check_shared_folder(out, info)  # every rank must see rank 0's folder (one line if not)
    if err is not None:
        if lock is not None:
            lock.release()
        raise RunFolderError(err)
    D.barrier()
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()
