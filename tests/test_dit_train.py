"""experiments/in1k_dit.py and cache_latents.py: loss falls, exact resume, NaN guard, resumable latent cache."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from experiments import cache_latents, in1k_dit
from experiments.common.dit_io import load_dit


def _losses(out: Path) -> dict[int, float]:
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in recs if r["event"] == "train"}


def _events(out: Path, event: str) -> list[dict]:
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if r["event"] == event]


def _argv(out: Path, ae: Path, *extra: str, steps: int = 6) -> list[str]:
    return ["--preset", "tiny", "--ae-ckpt", str(ae), "--out", str(out), "--steps", str(steps), "--batch-size", "8",
            "--log-every", "1", "--ckpt-every", "100", "--sample-steps", "2", "--no-progress", *extra]


def test_loss_falls_on_a_tiny_problem(tmp_path, ae_ckpt, capsys):
    out = tmp_path / "run"
    # alpha 4 (times near the noise end) makes the drop fast; the auto alpha of 4 tokens x 32 ch is 0.18.
    assert in1k_dit.main(_argv(out, ae_ckpt, "--steps", "80", "--batch-size", "16", "--lr", "3e-3",
                               "--warmup-steps", "5", "--alpha", "4")) == 0
    assert f"sample grids decoded at token norm 7 from latent_norm stored in {ae_ckpt}" in capsys.readouterr().out
    losses = list(_losses(out).values())
    first, last = sum(losses[:5]) / 5, sum(losses[-10:]) / 10
    assert last < 0.75 * first, (first, last)
    # The checkpoint rebuilds for sampling: EMA weights, latent metadata of the AE, a sample grid.
    model, latent, args = load_dit(out)
    assert latent["num_tokens"] == 4 and latent["channels"] == 32 and latent["num_classes"] == 8
    assert latent["alpha"] == 4.0 and args["lambda_rad"] == 0.1
    assert not model.training and (out / "train-samples.png").is_file()
    start = _events(out, "start")[0]
    assert start["beta1"] == 0.9 and start["beta2"] == 0.95 and start["cfg_dropout"] == 0.1


def test_resume_is_exact(tmp_path, ae_ckpt):
    full, split = tmp_path / "full", tmp_path / "split"
    assert in1k_dit.main(_argv(full, ae_ckpt)) == 0
    assert in1k_dit.main(_argv(split, ae_ckpt, "--stop-after", "3")) == 0
    assert max(_losses(split)) == 3
    assert in1k_dit.main(_argv(split, ae_ckpt, "--stop-after", "3")) == 0   # same command resumes
    assert _losses(full) == _losses(split) and len(_losses(full)) == 6
    assert load_dit(full)[1]["alpha"] == pytest.approx((4 * 32 / 4096) ** 0.5)  # auto: dimension_shift
    a = torch.load(full / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(split / "checkpoints" / "last.pt", weights_only=False)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["ema"]["shadow"][k], b["ema"]["shadow"][k]) for k in a["ema"]["shadow"])
    # A different batch size must not silently resume.
    assert in1k_dit.main(_argv(split, ae_ckpt, "--steps", "8", "--batch-size", "4")) == 2


def test_nonfinite_steps_are_skipped_then_stop(tmp_path, ae_ckpt):
    out = tmp_path / "nan"
    assert in1k_dit.main(_argv(out, ae_ckpt, "--steps", "4", "--inject-nan-steps", "2")) == 0
    assert [r["step"] for r in _events(out, "nonfinite")] == [2]
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    out2 = tmp_path / "nan2"
    assert in1k_dit.main(_argv(out2, ae_ckpt, "--inject-nan-steps", "2,3", "--max-nonfinite", "2")) == 3
    assert _events(out2, "abort")


def test_cache_latents_is_resumable_and_trains(tmp_path, ae_ckpt):
    lat = tmp_path / "lat"
    argv = ["--out", str(lat), "--ae-ckpt", str(ae_ckpt), "--num-images", "20", "--shard-size", "8",
            "--flip", "--device", "cpu"]
    assert cache_latents.main(argv) == 0
    shards = sorted(lat.glob("shard-*.safetensors"))
    index = json.loads((lat / "index.json").read_text())
    assert len(shards) == 3 and index["complete"] and index["num_images"] == 20
    ds = cache_latents.LatentShards(lat)
    z = torch.stack([ds[i]["latent"] for i in range(20)])
    assert z.shape == (20, 4, 32)
    torch.testing.assert_close(z.norm(dim=-1), torch.full((20, 4), index["radius"]))
    before = {p.name: p.stat().st_mtime_ns for p in shards}
    shards[1].unlink()                                          # a kill lost shard 1
    assert cache_latents.main(argv) == 0
    after = {p.name: p.stat().st_mtime_ns for p in sorted(lat.glob("shard-*.safetensors"))}
    assert set(after) == set(before)
    assert all(after[n] == before[n] for n in before if n != shards[1].name)  # finished shards skipped
    torch.testing.assert_close(torch.stack([cache_latents.LatentShards(lat)[i]["latent"] for i in range(20)]), z)
    # Latents match encoding the same crops now; a cache with other settings is refused.
    bad = ["--out", str(lat), "--ae-ckpt", str(ae_ckpt), "--num-images", "20", "--shard-size", "4"]
    assert cache_latents.main(bad) == 2
    out = tmp_path / "from_cache"
    assert in1k_dit.main(["--latents", str(lat), "--preset", "tiny", "--out", str(out), "--steps", "3",
                          "--batch-size", "4", "--log-every", "1", "--sample-steps", "1", "--no-progress"]) == 0
    assert len(_losses(out)) == 3 and load_dit(out)[1]["ae_ckpt"] == str(ae_ckpt.resolve())


def test_bad_arguments_are_one_line(tmp_path, capsys):
    assert in1k_dit.main(["--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "train/" in capsys.readouterr().err
    assert in1k_dit.main(["--model", "LightningDiT-Q/7", "--out", str(tmp_path / "o"), "--steps", "1"]) == 2
    assert "--model" in capsys.readouterr().err


def test_encode_batch_gives_fp32_sphere_latents_of_the_raw_tokens():
    """The DiT's latents are R·z/‖z‖ of the raw student tokens, in float32, whatever their dtype and norm,
    and whatever the decoder reads (a tiny AE with raw-token decoder input)."""
    from models import build_autoencoder

    torch.manual_seed(0)
    ae = build_autoencoder("tiny").eval()
    img = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    raw = ae.encode(img)
    assert (raw.norm(dim=-1) - ae.radius).abs().max() > 1e-2  # the decoder's input is off the sphere ...
    z = cache_latents.encode_batch(ae, img)
    assert z.dtype == torch.float32
    torch.testing.assert_close(z, raw / raw.norm(dim=-1, keepdim=True) * ae.radius, rtol=1e-5, atol=1e-5)

    class Bf16AE:  # tokens returned in bf16 (reduced-precision encoder): projected in fp32 all the same
        radius = 32.0
        to_sphere = ae.to_sphere.__func__

        def __init__(self):
            from spherical import Hypersphere
            self.sphere = Hypersphere(32.0)

        def student_tokens(self, images):
            return (torch.randn(images.shape[0], 16, 1024, generator=torch.Generator().manual_seed(0))
                    * 7).to(torch.bfloat16)

    zb = cache_latents.encode_batch(Bf16AE(), img)
    assert zb.dtype == torch.float32
    assert (zb.norm(dim=-1) - 32.0).abs().max() < 1e-4  # on the sphere of radius R in float32
    t = Bf16AE().student_tokens(img).float()  # ... and it is the projection of those very tokens
    torch.testing.assert_close(zb, t / t.norm(dim=-1, keepdim=True) * 32.0, rtol=1e-5, atol=1e-5)


def test_tf32_allowed_sets_both_flags_and_restores_what_it_found():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = True, True
        with in1k_dit.tf32_allowed(False):  # plain fp32: cuDNN's TF32 (on by default in torch) is off too
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        with pytest.raises(RuntimeError):
            with in1k_dit.tf32_allowed(True):
                assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
                raise RuntimeError("restored on errors too")
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def test_cache_size_is_printed_and_a_full_disk_refused(tmp_path, ae_ckpt, capsys, monkeypatch):
    """20 images x 4 tokens x 32 ch: float16 = 20·(4·32·2 + 8) bytes, x2 payload with --flip."""
    assert cache_latents.cache_bytes(20, 4, 32, "float16", False) == 20 * (4 * 32 * 2 + 8)
    assert cache_latents.cache_bytes(20, 4, 32, "float32", True) == 20 * (4 * 32 * 4 * 2 + 8)
    assert cache_latents.cache_bytes(1_281_167, 256, 1024, "bfloat16", False) / 1e9 == pytest.approx(671.7, abs=0.1)
    argv = ["--out", str(tmp_path / "lat"), "--ae-ckpt", str(ae_ckpt), "--num-images", "20", "--device", "cpu"]
    monkeypatch.setattr(cache_latents, "_free_bytes", lambda p: 1000)
    assert cache_latents.main(argv) == 2
    err = capsys.readouterr()
    assert "20 images x 4 x 32 float16 = 5.28e-06 GB" in err.out  # the size comes first ...
    assert err.err.count("\n") == 1 and "not enough disk" in err.err  # ... then one line, nothing written
    # the run-folder lock may exist (taken before the check), but no latent data or index was written
    written = [p.name for p in (tmp_path / "lat").glob("*")] if (tmp_path / "lat").exists() else []
    assert not [n for n in written if n != ".run.lock"], written


def test_on_the_fly_and_cache_paths_use_the_same_centre_crops(tmp_path):
    from experiments.common.data import ImageFolderDataset
    from test_exp_support import make_image_folder

    make_image_folder(tmp_path, n_good=4, corrupt=False)
    cache = ImageFolderDataset(tmp_path / "train", 32, train=False)  # what cache_latents encodes
    fly = ImageFolderDataset(tmp_path / "train", 32, train=True, seed=3, augment="none")  # in1k_dit --data
    flip = ImageFolderDataset(tmp_path / "train", 32, train=True, seed=3, augment="flip")  # ... --flip
    for i in range(4):
        c = cache[i]["image"]
        assert torch.equal(fly[(5, i)]["image"], c)
        seen = {bool(torch.equal(flip[(e, i)]["image"], c.flip(-1))) for e in range(12)}
        assert all(torch.equal(flip[(e, i)]["image"], c) or torch.equal(flip[(e, i)]["image"], c.flip(-1))
                   for e in range(12)) and seen == {True, False}
    with pytest.raises(ValueError, match="augment"):
        ImageFolderDataset(tmp_path / "train", 32, train=True, augment="zoom")
