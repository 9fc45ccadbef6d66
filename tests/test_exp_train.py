"""in1k_ae.py end to end, in-process on CPU: metrics.jsonl, resume exactness, SIGTERM, NaN steps, bad files."""
from __future__ import annotations

import os
import signal

import torch

from experiments import in1k_ae
from experiments.common.data import ImageFolderDataset
from test_exp_support import final_state, make_image_folder, records, tiny_argv, train_losses


def test_metrics_jsonl_eval_grid_and_plot(tmp_path):
    out = tmp_path / "run"
    assert in1k_ae.main(tiny_argv(out, "--eval-every", "2", steps=4)) == 0
    train = records(out, "train")
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    for r in train:
        for k in ("loss", "l1", "cos", "lr", "grad_norm", "img_per_s", "skipped_files"):
            assert k in r, k
        assert abs(r["loss"] - (0.5 * r["cos"] + r["l1"])) < 1e-5  # stage 1, LPIPS off by default
    evals = records(out, "eval")
    assert [r["step"] for r in evals] == [0, 2, 4]
    assert all(5.0 < r["psnr"] < 60.0 and -1.0 <= r["ssim"] <= 1.0 and r["n_images"] == 8 for r in evals)
    assert records(out, "start")[0]["preset"] == "tiny"
    from PIL import Image

    with Image.open(out / "recon.png") as im:  # originals over reconstructions, 8 per row
        assert im.size == (8 * 32, 2 * 32)
    state = final_state(out)
    assert state["step"] == 4 and set(state) >= {"model", "ema", "optimizer", "scheduler", "rng",
                                                 "data_chunk"}
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    from experiments.plot_run import plot

    png = plot(out)
    assert png.is_file() and png.stat().st_size > 1000


def _sigterm_at(monkeypatch, n_calls: int):
    real = in1k_ae._train_step
    calls = {"n": 0}

    def step(*a, **k):
        calls["n"] += 1
        if calls["n"] == n_calls:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-step; handled at the step boundary
        return real(*a, **k)

    monkeypatch.setattr(in1k_ae, "_train_step", step)


def test_resume_after_sigterm_is_exact(tmp_path, monkeypatch):
    n = 6
    full, part = tmp_path / "full", tmp_path / "part"
    argv = lambda out: tiny_argv(out, "--grad-accum", "2", steps=n)  # noqa: E731
    assert in1k_ae.main(argv(full)) == 0
    _sigterm_at(monkeypatch, n // 2)
    assert in1k_ae.main(argv(part)) == 128 + signal.SIGTERM
    assert final_state(part)["step"] == n // 2
    assert records(part, "stopped")[0]["signal"] == "SIGTERM"
    monkeypatch.undo()
    assert in1k_ae.main(argv(part)) == 0  # the same command continues
    la, lb = train_losses(full), train_losses(part)
    assert sorted(lb) == list(range(1, n + 1))  # no duplicated / missing steps in metrics.jsonl
    for s in la:
        assert abs(la[s] - lb[s]) <= 1e-6, (s, la[s], lb[s])
    a, b = final_state(full), final_state(part)
    for k, v in a["model"].items():
        assert torch.allclose(v.float(), b["model"][k].float(), atol=1e-6, rtol=0), k
    for k, v in a["ema"]["shadow"].items():
        assert torch.allclose(v, b["ema"]["shadow"][k], atol=1e-6, rtol=0), k
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    # finished run: re-running the same command does nothing and keeps the result
    assert in1k_ae.main(argv(part)) == 0 and final_state(part)["step"] == n


def test_nonfinite_step_is_skipped(tmp_path):
    out = tmp_path / "nan1"
    assert in1k_ae.main(tiny_argv(out, "--inject-nan-steps", "2", steps=4)) == 0
    bad = records(out, "nonfinite")
    assert [r["step"] for r in bad] == [2]
    assert [r["step"] for r in records(out, "train")] == [1, 2, 3, 4]
    state = final_state(out)
    assert state["step"] == 4 and state["guard"]["total"] == 1
    assert state["ema"]["num_updates"] == 3  # the NaN step did not touch weights or EMA
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_too_many_nonfinite_steps_stop_with_last_good_checkpoint(tmp_path, capsys):
    out = tmp_path / "nan3"
    rc = in1k_ae.main(tiny_argv(out, "--inject-nan-steps", "3,4,5", "--max-nonfinite", "3",
                                "--ckpt-every", "1", steps=8))
    assert rc == 3
    err = capsys.readouterr().err
    assert "3 non-finite losses in a row" in err and "last good checkpoint" in err
    assert final_state(out)["step"] == 2  # written before the bad streak, not overwritten
    assert records(out, "abort")


def test_corrupt_files_are_skipped_and_counted(tmp_path):
    data = tmp_path / "data"
    bad = make_image_folder(data)
    ds = ImageFolderDataset(data / "train", 32, train=True)
    i = [p for p, _ in ds.samples].index(str(bad[0]))
    item = ds[(0, i)]
    assert item["bad"] == [str(bad[0])] and item["image"].shape == (3, 32, 32)
    assert item["image"].abs().max() <= 1.0
    out = tmp_path / "run"  # 8 train files, batch 4, 2 steps: every file is read once
    assert in1k_ae.main(tiny_argv(out, "--data", str(data), "--num-workers", "0", steps=2)) == 0
    assert records(out, "train")[-1]["skipped_files"] == 2
    assert sorted(final_state(out)["bad_files"]) == sorted(map(str, bad))


def test_lpips_term_used_when_vgg_weights_given(tmp_path):
    g = torch.Generator().manual_seed(0)
    cfg, feats, cin, i = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512], {}, 3, 0
    for c in cfg:  # random VGG16 trunk in torchvision's key format (offline stand-in for the real file)
        if c == "M":
            i += 1
            continue
        feats[f"features.{i}.weight"] = torch.randn(c, cin, 3, 3, generator=g) * (2.0 / (9 * cin)) ** 0.5
        feats[f"features.{i}.bias"] = torch.zeros(c)
        cin, i = c, i + 2
    vgg = tmp_path / "vgg16.pth"
    torch.save(feats, vgg)
    out = tmp_path / "lp"
    assert in1k_ae.main(tiny_argv(out, "--lpips-weights", str(vgg), "--lpips-weight", "1.0", steps=2)) == 0
    assert records(out, "start")[0]["lpips"] == "on"
    for r in records(out, "train"):
        assert r["lpips"] > 0
        assert abs(r["loss"] - (0.5 * r["cos"] + r["l1"] + r["lpips"])) < 1e-5


def test_resume_refuses_different_arguments(tmp_path, capsys):
    out = tmp_path / "r"
    assert in1k_ae.main(tiny_argv(out, "--stop-after", "1", steps=3)) == 0
    assert records(out, "stopped")[0]["signal"] == "--stop-after"
    assert in1k_ae.main(tiny_argv(out, "--batch-size", "8", steps=3)) == 2
    assert "different --batch-size" in capsys.readouterr().err


def test_stage2_resume_is_exact(tmp_path):
    """Stage 2 (decoder + discriminator, D-only warm-up, latent smoothing, DiffAugment): stop + resume."""
    init = tmp_path / "s1"
    assert in1k_ae.main(tiny_argv(init, steps=1)) == 0
    n = 4
    argv = lambda out, *x: tiny_argv(out, "--stage", "2", "--init-from", str(init),  # noqa: E731
                                     "--disc-warmup-epochs", "0.002", *x, steps=n)
    full, part = tmp_path / "full", tmp_path / "part"
    assert in1k_ae.main(argv(full)) == 0
    assert in1k_ae.main(argv(part, "--stop-after", "2")) == 0
    assert in1k_ae.main(argv(part)) == 0
    ra, rb = records(full, "train"), records(part, "train")
    assert [r["step"] for r in rb] == list(range(1, n + 1))
    assert "g_gan" not in ra[0] and "g_gan" in ra[-1]  # discriminator-only warm-up first
    for a, b in zip(ra, rb):
        for k in ("loss", "l1", "d_loss"):
            assert abs(a[k] - b[k]) <= 1e-6, (a["step"], k, a[k], b[k])
    sa, sb = final_state(full), final_state(part)
    for k, v in sa["disc"].items():
        if v.is_floating_point():
            assert torch.allclose(v, sb["disc"][k], atol=1e-6, rtol=0), k


def test_sigint_writes_checkpoint_and_exits_130(tmp_path, monkeypatch):
    real = in1k_ae._train_step

    def step(*a, **k):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C during the first step
        return real(*a, **k)

    monkeypatch.setattr(in1k_ae, "_train_step", step)
    out = tmp_path / "int"

    def found_int(signum, frame):  # noqa: ARG001 - stands for whatever handler the caller had
        raise AssertionError("the script's own handler must catch SIGINT while it runs")

    # whatever handler the process had (Python's default, SIG_IGN under `pytest ... &`, this one) comes back
    original = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGINT, found_int)
    try:
        found = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
        assert in1k_ae.main(tiny_argv(out, steps=5)) == 128 + signal.SIGINT
        assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == found  # restored
    finally:
        signal.signal(signal.SIGINT, original[0])
    assert final_state(out)["step"] == 1 and records(out, "stopped")[0]["signal"] == "SIGINT"
