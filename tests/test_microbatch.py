"""Micro-batching and activation checkpointing: the same update as one full batch, the same losses and
gradients with and without checkpointing, and ``--grad-accum auto``'s choice."""
from __future__ import annotations

import argparse
import copy
import os
import tempfile

import pytest
import torch

from experiments.common import distributed as D
from experiments.common.microbatch import auto_grad_accum, grad_accum_arg, sample_positions
from spherical import Hypersphere

N_TOK, CH, B = 16, 32, 8


def _tiny_dit(seed: int = 0):
    from experiments.common.dit_cli import dit_registry

    torch.manual_seed(seed)
    model = dit_registry()["LightningDiT-T/1"](in_channels=CH, num_tokens=N_TOK, num_classes=5, depth=2,
                                              hidden_size=32, num_heads=2)
    for p in model.parameters():  # adaLN-Zero starts at exactly 0: give every weight a gradient path
        torch.nn.init.normal_(p, std=0.05)
    return model


def _ctx(accum: int, info: D.DistInfo) -> dict:
    args = argparse.Namespace(seed=3, grad_accum=accum, batch_size=B, flow="riemannian", time_loc=0.0, time_scale=1.0,
                              cfg_dropout=0.3, lambda_rad=0.1, inject_nan_steps=[], grad_clip=0.0)
    return dict(args=args, info=info, sphere=Hypersphere(5.0), alpha=1.5, precision="fp32", bad_files=set())


def _data():
    g = torch.Generator().manual_seed(7)
    return Hypersphere(5.0).projx(torch.randn(B, N_TOK, CH, generator=g)), torch.randint(0, 5, (B,), generator=g)


def _batches(accum: int, rank: int, world: int):
    """The micro-batches ResumableBatchSampler gives rank ``rank``: its slice of each global chunk."""
    x, y = _data()
    chunk = B // accum
    for m in range(accum):
        idx = list(sample_positions(m, chunk, rank, world))
        yield {"latent": x[idx], "label": y[idx], "bad": []}


def _grads_after_step(model, net, accum: int, info: D.DistInfo):
    from experiments.in1k_dit import train_step
    from experiments.common.logging_utils import Throughput

    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    parts, finite, _ = train_step(_ctx(accum, info), net, model, opt, iter(_batches(accum, info.rank,
                                                                                     info.world_size)), 0, Throughput())
    assert finite
    return parts["loss"], [p.grad.clone() for p in model.parameters()]


def test_grad_accum_arg():
    assert grad_accum_arg("4") == 4 and grad_accum_arg("auto") == "auto"
    for bad in ("0", "-2", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            grad_accum_arg(bad)


@pytest.mark.parametrize("accum", [2, 4])
def test_dit_micro_batches_give_the_full_batch_update(accum):
    loss1, g1 = _grads_after_step(m := _tiny_dit(), m, 1, D.DistInfo())
    lossk, gk = _grads_after_step(m := _tiny_dit(), m, accum, D.DistInfo())
    assert lossk == pytest.approx(loss1, rel=1e-5)
    assert max(float(a.abs().max()) for a in g1) > 0
    for a, b in zip(g1, gk):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def _ddp_worker(path: str, accum: int) -> None:
    info = D.setup("cpu")
    try:
        model = _tiny_dit()
        net = D.wrap_ddp(model, info)
        loss, grads = _grads_after_step(model, net, accum, info)
        if info.is_main:
            torch.save({"loss": loss, "grads": grads}, path)
    finally:
        D.cleanup()


def test_dit_grad_accum_under_ddp_gloo_matches_one_process():
    """2 gloo processes x 2 micro-batches (no_sync on the first) = 1 process, 1 batch of 8."""
    loss1, g1 = _grads_after_step(m := _tiny_dit(), m, 1, D.DistInfo())
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "rank0.pt")
        D.spawn_local(_ddp_worker, 2, (path, 2), start_method="fork")
        got = torch.load(path)
    assert got["loss"] == pytest.approx(loss1, rel=1e-5)
    for a, b in zip(g1, got["grads"]):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_dit_checkpointing_leaves_loss_and_gradients_unchanged():
    a, b = _tiny_dit(), _tiny_dit()
    b.set_grad_checkpointing(True)
    la, ga = _grads_after_step(a, a, 1, D.DistInfo())
    lb, gb = _grads_after_step(b, b, 1, D.DistInfo())
    assert la == lb
    for x, y in zip(ga, gb):
        torch.testing.assert_close(y, x, rtol=1e-6, atol=1e-7)
    saved = {}
    for name, model in (("plain", a), ("ckpt", b)):  # and it does save memory: block inputs only
        from experiments.common.memory_plan import SavedBytes

        with SavedBytes([model]) as rec:
            model(torch.randn(4, N_TOK, CH), torch.rand(4), torch.zeros(4, dtype=torch.long))
        saved[name] = rec.total
    assert saved["ckpt"] < 0.5 * saved["plain"]


def test_ae_checkpointing_leaves_loss_and_gradients_unchanged():
    from experiments.common import ae_steps
    from models import build_autoencoder
    from models.losses import STAGE_LOSS_WEIGHTS

    torch.manual_seed(0)
    ae = build_autoencoder("tiny", image_size=32)
    params = ae.set_stage(1)
    ae_ck = copy.deepcopy(ae)
    ae_ck.set_grad_checkpointing(True)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    out = []
    for model in (ae, ae_ck):
        recon, z, zt = ae_steps.Stage1Net(model)(x)
        loss, _ = ae_steps.stage1_losses(x, recon, z, zt, None, STAGE_LOSS_WEIGHTS[1])
        ps = [p for p in model.parameters() if p.requires_grad]
        out.append((loss.detach(), torch.autograd.grad(loss, ps)))
    assert len(params) > 0 and torch.equal(out[0][0], out[1][0])
    for g0, g1 in zip(out[0][1], out[1][1]):
        torch.testing.assert_close(g1, g0, rtol=1e-6, atol=1e-7)


def test_auto_grad_accum_picks_the_fewest_micro_batches_that_fit(monkeypatch):
    logs = []
    assert auto_grad_accum(64, torch.device("cpu"), lambda m: 1.0, log=logs.append) == 1
    assert "CUDA" in logs[-1]
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda dev: (100 * 2**30, 141 * 2**30))
    # 10 GiB fixed + 3 GiB per sample against 90 % of 100 GiB free: 26 samples fit -> 16 of 64, K = 4
    k = auto_grad_accum(64, torch.device("cuda", 0), lambda m: (10 + 3 * m) * 2**30, log=logs.append)
    assert k == 4 and "micro-batch 16 x 4" in logs[-1]
    with pytest.raises(ValueError, match="even a micro-batch of 1"):
        auto_grad_accum(64, torch.device("cuda", 0), lambda m: 95 * 2**30 + m, log=logs.append)


def test_ae_auto_grad_accum_measures_the_step_and_fits_it(monkeypatch):
    """--grad-accum auto on a (pretend) GPU: the tiny AE's step accounted on fake tensors; with free memory
    for 6 samples beyond the fixed parts, a per-GPU batch of 24 runs as 4 micro-batches of 6."""
    from experiments.common import memory_plan as MP
    from models import build_autoencoder

    torch.manual_seed(0)
    ae = build_autoencoder("tiny", image_size=32)
    args = argparse.Namespace(batch_size=24, stage=1, lpips_weight=0.0, gan_weight=0.0, preset="tiny",
                              precision="fp32", grad_checkpointing=False)
    info = D.DistInfo(device=torch.device("cuda", 0))
    trained = ae.set_stage(1)
    per, fixed_act = MP.linear_fit(lambda b: MP.ae_step_saved(ae, 1, None, None, b, "fp32")[0])
    assert per > 0
    n_all, n_t = sum(p.numel() for p in ae.parameters()), sum(p.numel() for p in trained)
    need6 = MP.peak_bytes(MP.training_state_bytes(n_all, n_t, n_t, 1), per, fixed_act, 0.0, 6)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda dev: (int((need6 + 0.5 * per) / MP.HEADROOM), 2**40))
    assert MP.ae_auto_grad_accum(args, info, ae) == 4
    # real (not fake) accounting of the same step agrees
    assert MP.ae_step_saved(ae, 1, None, None, 2, "fp32", fake=False) == MP.ae_step_saved(ae, 1, None, None, 2, "fp32")


def test_dit_auto_grad_accum_on_a_pretend_gpu(monkeypatch):
    from experiments.common import memory_plan as MP

    args = argparse.Namespace(model="LightningDiT-T/1", ddt_head=False, qk_norm=False, grad_checkpointing=False,
                              precision="fp32", batch_size=64)
    info = D.DistInfo(device=torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda dev: (int(2.6 * 2**30 / MP.HEADROOM), 2**40))
    k = MP.dit_auto_grad_accum(args, info)  # ~0.1 GiB beyond the runtime allowance: some, not all, of 64 fit
    assert 1 < k < 64 and 64 % k == 0
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda dev: (2**40, 2**40))
    assert MP.dit_auto_grad_accum(args, info) == 1
    from experiments.common.trainer import UserError

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda dev: (2**30, 2**40))  # below the runtime allowance
    with pytest.raises(UserError, match="even a micro-batch of 1"):
        MP.dit_auto_grad_accum(args, info)
