"""Shared experiment plumbing: resumable world-size-independent sampler, atomic checkpoints, stop signals,
EMA, non-finite guard, metrics log."""
from __future__ import annotations

import dataclasses
import os
import signal

import pytest
import torch
from hypothesis import given, strategies as st

from experiments.common.checkpoint import CheckpointDir, StopSignals, capture_rng, restore_rng, save_atomic
from experiments.common.data import ResumableBatchSampler
from experiments.common.ema import EMA
from experiments.common.logging_utils import MetricsLogger, read_jsonl, truncate_after
from experiments.common.trainer import NonFiniteError, NonFiniteGuard, lr_lambda


def _take(sampler, k):
    it = iter(sampler)
    return [next(it) for _ in range(k)]


@given(n=st.integers(8, 40), world=st.sampled_from([1, 2, 4]), accum=st.sampled_from([1, 2]),
       steps=st.integers(1, 12))
def test_sampler_union_over_ranks_is_world_independent(n, world, accum, steps):
    chunk = 4
    if n < chunk * accum:
        return
    ref = _take(ResumableBatchSampler(n, chunk, seed=3, chunks_per_step=accum), steps * accum)
    per_rank = [_take(ResumableBatchSampler(n, chunk, rank=r, world=world, seed=3, chunks_per_step=accum),
                      steps * accum) for r in range(world)]
    for c in range(steps * accum):
        assert sum((per_rank[r][c] for r in range(world)), []) == ref[c]  # rank r = r-th slice of chunk


@given(start=st.integers(0, 30))
def test_sampler_resume_position(start):
    full = _take(ResumableBatchSampler(10, 3, seed=1), start + 5)
    resumed = _take(ResumableBatchSampler(10, 3, seed=1, start_chunk=start), 5)
    assert resumed == full[start:]


def test_sampler_epochs_are_permutations():
    s = ResumableBatchSampler(12, 4, seed=0)
    batches = _take(s, 6)  # 2 epochs of 3 chunks
    for e in range(2):
        keys = sum(batches[3 * e:3 * e + 3], [])
        assert {k[0] for k in keys} == {e} and sorted(k[1] for k in keys) == list(range(12))
    assert batches[:3] != batches[3:]


def test_atomic_save_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "ck" / "last.pt"
    save_atomic({"step": 1}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_atomic({"step": 2, "bad": Boom()}, path)
    assert torch.load(path, weights_only=False)["step"] == 1
    assert os.listdir(path.parent) == ["last.pt"]  # no temp file left behind
    d = CheckpointDir(tmp_path / "ck", keep_every=2)
    d.save({"step": 4}, 4)
    assert d.load_latest()["step"] == 4 and (tmp_path / "ck" / "step_0000004.pt").is_file()


def test_rng_capture_restore_roundtrip():
    import random

    import numpy as np

    st_ = capture_rng()
    a = (random.random(), np.random.rand(), torch.rand(3))
    restore_rng(st_)
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def test_stop_signals_turn_sigterm_into_a_flag():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == before


def test_ema_tracks_trainable_parameters_only():
    m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    m[1].requires_grad_(False)
    ema = EMA(m, decay=0.5)
    assert set(ema.names) == {"0.weight", "0.bias"}
    w0 = m[0].weight.detach().clone()
    with torch.no_grad():
        m[0].weight.add_(1.0)
    ema.update(m)
    assert torch.allclose(ema.shadow["0.weight"], w0 + 0.5)
    with ema.applied(m):
        assert torch.allclose(m[0].weight, w0 + 0.5)
    assert torch.allclose(m[0].weight, w0 + 1.0)
    ema2 = EMA(m, decay=0.5)
    ema2.load_state_dict(ema.state_dict())
    assert ema2.num_updates == 1 and torch.equal(ema2.shadow["0.weight"], ema.shadow["0.weight"])
    assert EMA(m, 0.999, warmup=10).current_decay() == pytest.approx(0.1)


def test_nonfinite_guard_stops_after_k_in_a_row():
    g = NonFiniteGuard(3)
    assert g.check(True) and not g.check(False) and not g.check(False)
    assert g.check(True) and g.consecutive == 0  # a good step resets the streak
    g.check(False)
    g.check(False)
    with pytest.raises(NonFiniteError, match="3 non-finite"):
        g.check(False, step=7)


def test_lr_schedules():
    f = lr_lambda("cosine", warmup=10, total=110)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5) and f(110) == pytest.approx(0.0, abs=1e-12)
    assert lr_lambda("constant", 0, 100)(57) == 1.0


def test_metrics_logger_and_truncate(tmp_path):
    log = MetricsLogger(tmp_path)
    for s in range(1, 6):
        log.log("train", s, loss=torch.tensor(1.0 / s), bad=float("nan"))
    recs = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5] and recs[1]["loss"] == pytest.approx(0.5)
    assert recs[0]["bad"] == "nan" and recs[0]["event"] == "train" and "time" in recs[0]
    truncate_after(tmp_path / "metrics.jsonl", 3)
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    assert MetricsLogger(tmp_path / "x", enabled=False).log("eval", 1, psnr=3.0)["psnr"] == 3.0
    assert not (tmp_path / "x").exists()


def test_ae_stage_losses_are_the_weighted_sums_of_their_parts():
    from experiments.common import ae_steps

    g = torch.Generator().manual_seed(0)
    x, recon = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1, torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    z, zt = torch.randn(2, 4, 6, generator=g), torch.randn(2, 4, 6, generator=g)
    from models.losses import LossWeights

    w = LossWeights(cosine=0.5, l1=2.0, lpips=3.0, gan=0.5)
    lp = lambda a, b: (a - b).pow(2).mean((1, 2, 3))  # noqa: E731  (stand-in for LPIPS, per image)
    total, parts = ae_steps.stage1_losses(x, recon, z, zt, lp, w)
    assert list(parts) == ["cos", "l1", "lpips"]
    torch.testing.assert_close(parts["l1"], (recon - x).abs().mean())
    torch.testing.assert_close(parts["lpips"], (recon - x).pow(2).mean())
    torch.testing.assert_close(total, 0.5 * parts["cos"] + 2.0 * parts["l1"] + 3.0 * parts["lpips"])
    total, parts = ae_steps.stage1_losses(x, recon, z, zt, None, w)  # no LPIPS module: no term
    assert list(parts) == ["cos", "l1"]
    torch.testing.assert_close(total, 0.5 * parts["cos"] + 2.0 * parts["l1"])
    total, parts = ae_steps.stage2_g_losses(x, recon, lp, None, dataclasses.replace(w, lpips=0.0), adversarial=False)
    assert list(parts) == ["l1"]  # LPIPS weight 0: not computed
    torch.testing.assert_close(total, 2.0 * parts["l1"])
