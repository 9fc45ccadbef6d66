"""Long runs: time-based checkpoints agreed by every rank, milestone epochs kept as hard links, the SIGTERM
write skipped when the run measured it as too slow, and the process-group timeout (``--dist-timeout``)."""
from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

import pytest
import torch

from experiments.common import distributed as D
from experiments.common.ckpt_policy import SavePolicy, milestone_steps


def _events(out: Path, event: str) -> list[dict]:
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if r["event"] == event]


def test_milestone_steps_are_the_first_steps_reaching_each_epoch():
    # 10.5 steps per epoch: epoch 1 is reached at step 11 (10/10.5 < 1 <= 11/10.5), epoch 2 at step 21.
    assert milestone_steps([1, 2, 0.5], 10.5, 100) == {11: "epoch_1.pt", 21: "epoch_2.pt", 6: "epoch_0.5.pt"}
    assert milestone_steps([80, 550], 1251, 80 * 1251) == {80 * 1251: "epoch_80.pt"}  # 550 lies beyond the run
    assert milestone_steps([], 3.0, 10) == {}


def test_save_policy_due_by_steps_time_total_and_milestones():
    now = [0.0]
    p = SavePolicy(5, 1.0, {7: "epoch_1.pt"}, 12, clock=lambda: now[0])
    assert [s for s in range(1, 13) if p.due(s, False)] == [5, 7, 10, 12]
    assert p.poll(False, False) == (False, False, False)
    now[0] = 59.0
    assert p.poll(False, False)[2] is False
    now[0] = 60.0
    assert p.poll(False, False) == (False, False, True) and p.due(3, True)
    p.saved(10**9, 1.5)
    assert p.poll(False, False)[2] is False  # the clock restarts at every write
    assert p.poll(True, False)[:2] == (True, True) and p.poll(False, True)[:2] == (True, False)
    assert SavePolicy(5, 0.0, {}, 12, clock=lambda: 1e9).poll(False)[2] is False  # --ckpt-minutes 0: off


def test_stop_write_is_skipped_only_when_the_last_write_was_slower_than_the_budget():
    p = SavePolicy(5, 30.0, {}, 12)
    assert p.stop_write(20.0) == (True, "")          # nothing measured yet: try
    p.saved(int(10.8e9), 35.0)                        # an XL-sized write on a slow disk
    ok, note = p.stop_write(20.0)
    assert not ok and "35 s" in note and "--stop-budget 20" in note and "10.80 GB" in note
    assert p.stop_write(40.0)[0] and p.stop_write(0.0)[0]  # enough time, or 0 = always write


def _timed_worker(tmp: str, due_rank: int) -> None:
    info = D.setup("cpu")
    t0 = 1000.0
    clock = (lambda: t0 + 120.0) if info.rank == due_rank else (lambda: t0)
    p = SavePolicy(100, 1.0, {}, 10, is_main=info.is_main, clock=clock)
    p.last = t0
    got = p.poll(info.rank == 1, False)
    Path(tmp, f"r{info.rank}.json").write_text(json.dumps(got))
    D.cleanup()


@pytest.mark.parametrize("due_rank", [0, 1])
def test_every_rank_follows_rank_0s_clock_and_any_ranks_signal(tmp_path, due_rank):
    D.spawn_local(_timed_worker, 2, (str(tmp_path), due_rank), start_method="fork")
    got = [json.loads((tmp_path / f"r{r}.json").read_text()) for r in (0, 1)]
    # rank 1 got the signal: both stop by signal; the time decision is rank 0's, whatever rank 1's clock says
    assert got[0] == got[1] == [True, True, due_rank == 0]


def test_dit_time_checkpoints_milestones_and_kept_steps_are_links(tmp_path, ae_ckpt):
    from experiments import in1k_dit

    out = tmp_path / "run"
    # 4096 embedded crops / batch 8 = 512 steps per epoch: epoch 1/256 is step 2.
    argv = ["--ae-ckpt", str(ae_ckpt), "--out", str(out), "--steps", "3", "--batch-size", "8", "--log-every", "1",
            "--ckpt-every", "100", "--sample-steps", "1", "--no-progress", "--ckpt-minutes", "1e-9",
            "--milestone-epochs", "0.00390625", "--keep-every", "3"]
    assert in1k_dit.main(argv) == 0
    ck = _events(out, "checkpoint")
    assert [(r["step"], r["reason"]) for r in ck] == [(1, "time"), (2, "milestone"), (3, "step")]  # one write each
    ms, kept, last = out / "checkpoints" / "epoch_0.00390625.pt", out / "checkpoints" / "step_0000003.pt", \
        out / "checkpoints" / "last.pt"
    assert torch.load(ms, weights_only=False)["step"] == 2 and os.stat(ms).st_nlink == 1  # last.pt moved on
    assert os.stat(kept).st_ino == os.stat(last).st_ino and os.stat(last).st_nlink == 2   # a link, not a copy
    assert not list((out / "checkpoints").glob(".*.tmp"))


def test_dist_timeout_reaches_the_process_group(monkeypatch):
    """``--dist-timeout`` (default 30 min) is the timeout ``init_process_group`` gets; bad values: one line."""
    import argparse

    from experiments.common.dit_cli import build_parser, resolve
    from experiments.common.trainer import UserError, training_session

    seen = {}
    monkeypatch.setattr(D.dist, "init_process_group", lambda **kw: seen.update(kw))
    monkeypatch.setattr(D.dist, "is_initialized", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    for argv, minutes in (([], 30.0), (["--dist-timeout", "2.5"], 2.5)):
        args = resolve(build_parser().parse_args(["--device", "cpu", *argv]))
        with training_session(args) as info:
            assert info.world_size == 2 and info.rank == 1
        assert seen["timeout"] == datetime.timedelta(minutes=minutes) and seen["backend"] == "gloo"
    with pytest.raises(UserError, match="--dist-timeout must be a finite number > 0, got 0"):
        resolve(build_parser().parse_args(["--dist-timeout", "0"]))
    assert isinstance(build_parser(), argparse.ArgumentParser)


def test_sigterm_skips_a_write_slower_than_the_stop_budget(tmp_path, ae_ckpt, monkeypatch, capsys):
    """Every write of this run takes longer than --stop-budget 1e-9 s: a SIGTERM stop keeps the last
    checkpoint (step 1) instead of starting a write that a scheduler would cut short, and says so."""
    import signal

    from experiments import in1k_dit

    real_step = in1k_dit.train_step

    def step_then_sigterm(ctx, net, model, opt, batch, step, meter):
        res = real_step(ctx, net, model, opt, batch, step, meter)
        if step == 1:  # during the 2nd step, as a scheduler would
            os.kill(os.getpid(), signal.SIGTERM)
        return res

    monkeypatch.setattr(in1k_dit, "train_step", step_then_sigterm)
    out = tmp_path / "run"
    argv = ["--ae-ckpt", str(ae_ckpt), "--out", str(out), "--steps", "5", "--batch-size", "8", "--log-every", "1",
            "--ckpt-every", "1", "--sample-steps", "1", "--no-progress"]
    assert in1k_dit.main(argv + ["--stop-budget", "1e-9"]) == 128 + signal.SIGTERM
    assert [r["step"] for r in _events(out, "checkpoint")] == [1]
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=False)["step"] == 1
    stopped = _events(out, "stopped")[0]
    assert stopped["step"] == 2 and "more than --stop-budget 1e-09 s" in stopped["note"]
    printed = capsys.readouterr()
    assert "stopped (SIGTERM) at step 2; not writing a checkpoint: the last one" in printed.out + printed.err
    # With the default budget the same stop writes its checkpoint.
    out2 = tmp_path / "run2"
    assert in1k_dit.main(argv[:3] + [str(out2)] + argv[4:]) == 128 + signal.SIGTERM
    assert [(r["step"], r["reason"]) for r in _events(out2, "checkpoint")] == [(1, "step"), (2, "stop")]
