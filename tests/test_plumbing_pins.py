"""Run-folder locks, set-asides and checkpoints pinned at the unit level (each fails on a plausible bug:
a shared lock, a skipped stale-pid check, two set-asides with one name, a rename before the fsync, a
non-dict file accepted, every rank restoring rank 0's generators)."""
from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments.common import checkpoint, rundir

ROOT = Path(__file__).resolve().parents[1]

_RUNLOCK_HOLDER = r"""
import sys, types
stub = types.ModuleType("experiments.common.trainer")  # rundir needs only UserError: skip importing torch
stub.UserError = type("UserError", (Exception,), {})
sys.modules["experiments.common.trainer"] = stub
from experiments.common.rundir import RunLock
lock = RunLock(sys.argv[1], prog="holder").acquire()
print("locked", flush=True)
sys.stdin.read()  # hold until the test closes our stdin
lock.release()
"""


def test_a_runlock_in_another_process_refuses_a_second_runlock(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", _RUNLOCK_HOLDER, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(rundir.RunFolderError, match=f"in use by another run \\(pid {holder.pid} on host "
                                                        f"{socket.gethostname()}"):
            rundir.RunLock(out, prog="second").acquire()
        rec = json.loads((out / rundir.LOCK_NAME).read_text())
        assert rec["pid"] == holder.pid  # the refused attempt did not overwrite the holder's record
    finally:
        holder.stdin.close()
        assert holder.wait(timeout=30) == 0
    with rundir.RunLock(out, prog="third") as lock:  # released cleanly: free, no stale record
        assert lock.took_over is None


@pytest.mark.parametrize("case", ["dead pid", "live pid", "other host"])
def test_stale_records_are_described_correctly(tmp_path, case):
    """A record in an unlocked lock file is taken over; the note says why it is stale."""
    if case == "dead pid":
        p = subprocess.Popen([sys.executable, "-c", "pass"])
        p.wait()
        pid, host, why = p.pid, socket.gethostname(), "its process is gone"
    elif case == "live pid":
        pid, host, why = os.getppid(), socket.gethostname(), "its lock was released"
    else:
        pid, host, why = os.getpid(), "elsewhere.example", "its lock on this file system was released"
    out = tmp_path / "run"
    out.mkdir()
    (out / rundir.LOCK_NAME).write_text(json.dumps({"pid": pid, "host": host, "started": "t0", "argv": ["old"]}))
    notes: list[str] = []
    with rundir.RunLock(out, prog="p", log=notes.append) as lock:
        assert lock.took_over["pid"] == pid
    assert len(notes) == 1 and f"(pid {pid} on host {host}, started t0; {why})" in notes[0], notes


def test_set_asides_within_one_second_get_distinct_names(tmp_path, monkeypatch):
    monkeypatch.setattr(rundir.time, "strftime", lambda fmt, t=None: "20260101-000000")
    out = tmp_path / "run"
    out.mkdir()
    dests = []
    for k in range(3):
        (out / "metrics.jsonl").write_text(f"run {k}\n")
        dests.append(rundir.set_aside(out))
    assert len(set(dests)) == 3 and [d.name for d in dests] == [
        "previous-20260101-000000", "previous-20260101-000000-2", "previous-20260101-000000-3"]
    assert [(d / "metrics.jsonl").read_text() for d in dests] == ["run 0\n", "run 1\n", "run 2\n"]
    assert rundir.set_aside(out) is None  # nothing left to move


def test_save_atomic_fsyncs_the_temporary_file_before_the_rename(tmp_path, monkeypatch):
    events: list[tuple] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else fd,
                       os.fstat(fd).st_size))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "fsync", fsync)
    monkeypatch.setattr(checkpoint.os, "replace", replace)
    path = tmp_path / "last.pt"
    checkpoint.save_atomic({"step": 3, "w": torch.arange(1000.0)}, path)
    kinds = [e[0] for e in events]
    assert kinds == ["fsync", "replace"], events
    tmp = events[1][1]
    assert events[1][2] == str(path) and Path(tmp).parent == path.parent and tmp != str(path)
    if isinstance(events[0][1], str):
        assert events[0][1] == tmp  # the synced descriptor is the temporary file, fully written
    assert events[0][2] == path.stat().st_size > 4000
    assert torch.load(path, weights_only=False)["step"] == 3


@pytest.mark.parametrize("obj", [[1, 2, 3], torch.zeros(3), "step", None])
def test_load_refuses_a_torch_file_that_is_not_a_checkpoint_dict(tmp_path, obj):
    path = tmp_path / "x.pt"
    torch.save(obj, path)
    with pytest.raises(checkpoint.CheckpointError, match=f"holds a {type(obj).__name__}, not a checkpoint dict") \
            as info:
        checkpoint.load(path, hint="pass another file")
    assert str(path) in str(info.value) and "\n" not in str(info.value) and str(info.value).endswith("another file")


def _rank_states(n: int) -> list[dict]:
    states = []
    for r in range(n):
        random.seed(100 + r)
        np.random.seed(100 + r)
        torch.manual_seed(100 + r)
        states.append(checkpoint.capture_rng())
    return states


class _Obj:
    def __init__(self):
        self.loaded = None

    def load_state_dict(self, sd):
        self.loaded = sd


@pytest.mark.parametrize("rank", [0, 1, 2])
def test_each_rank_restores_its_own_generators(rank):
    states = _rank_states(3)
    draws = []
    for r in range(3):
        checkpoint.restore_rng(states[r])
        draws.append((random.random(), float(np.random.rand()), torch.rand(2)))
    obj = _Obj()
    torch.manual_seed(0)
    step = checkpoint.restore_training({"rng": states, "step": 7, "model": {"w": 1}}, rank, 3, model=obj)
    assert step == 7 and obj.loaded == {"w": 1}
    got = (random.random(), float(np.random.rand()), torch.rand(2))
    assert got[0] == draws[rank][0] and got[1] == draws[rank][1] and torch.equal(got[2], draws[rank][2])


@pytest.mark.parametrize("rank,world", [(0, 2), (1, 2), (3, 4)])
def test_a_changed_world_size_restores_rank_0s_generators_as_documented(rank, world):
    states = _rank_states(3)
    checkpoint.restore_rng(states[0])
    want = torch.rand(4)
    torch.manual_seed(0)
    checkpoint.restore_training({"rng": states, "step": 1}, rank, world)
    assert torch.equal(torch.rand(4), want)
