"""Finite or nothing, and fail early (issue 20): sample.py checks the DiT/autoencoder pair and its output
paths before sampling and locks the folders it writes; eval_gen/eval_ae never write NaN into JSON; float
and EXIF-rotated images decode correctly; empty class folders are not classes."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments import eval_ae, eval_gen, sample
from experiments.common import checkpoint, data, finite, provenance, rundir
from experiments.common.dit_io import load_autoencoder, save_autoencoder
from experiments.common.trainer import NonFiniteError, UserError, run_cli

N, C, K = 4, 32, 3


def _one_error(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1, err
    return lines[0]


def _tiny_ae(path: Path, seed: int, image_size: int = 32) -> Path:
    from models import build_autoencoder

    torch.manual_seed(seed)
    save_autoencoder(build_autoencoder("tiny", image_size=image_size), path, "tiny", latent_norm=6.0)
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A DiT run folder whose checkpoint records the content identity of its autoencoder ``ae.pt``."""
    from models.dit import DiTConfig, LightningDiT

    d = tmp_path_factory.mktemp("dit")
    ae = load_autoencoder(_tiny_ae(d / "ae.pt", 0))
    torch.manual_seed(0)
    m = LightningDiT(replace(DiTConfig(), in_channels=C, num_tokens=N, num_classes=K, depth=1, hidden_size=32,
                             num_heads=2))
    latent = dict(num_tokens=N, channels=C, radius=float(ae.radius), alpha=0.5, num_classes=K,
                  ae_ckpt=str(d / "ae.pt"), classes=None, image_size=32, ae_identity=provenance.ae_identity(ae))
    checkpoint.save_atomic({"step": 1, "model": m.state_dict(), "ema": None, "dit_config": asdict(m.config),
                            "latent": latent, "args": {}}, d / "checkpoints" / "last.pt")
    return d


def _argv(run: Path, tmp: Path, *extra: str) -> list[str]:
    return ["--ckpt", str(run), "--num-samples", "2", "--steps", "1", "--device", "cpu",
            "--out", str(tmp / "s.png"), *extra]


@pytest.fixture
def no_sampling(monkeypatch):
    """Fail the test if sampling starts (the checks must come before any compute)."""
    def boom(*a, **k):
        raise AssertionError("sampling started before the check")

    monkeypatch.setattr(sample, "sample_latents", boom)


def test_sample_refuses_another_encoder_before_sampling_unless_accepted(run, tmp_path, capsys, no_sampling):
    other = _tiny_ae(tmp_path / "other.pt", 1)
    assert sample.main(_argv(run, tmp_path, "--ae-ckpt", str(other))) == 2
    line = _one_error(capsys.readouterr().err)
    enc = provenance.ae_identity(load_autoencoder(run / "ae.pt"))["encoder"]
    assert f"the DiT {run / 'checkpoints' / 'last.pt'} was made with encoder {enc[:12]}" in line
    assert "--accept-changed-ae" in line and not (tmp_path / "s.png").exists()


def test_sample_records_provenance_and_accepts_a_change_on_purpose(run, tmp_path, capsys):
    other = _tiny_ae(tmp_path / "other.pt", 1)
    assert sample.main(_argv(run, tmp_path, "--ae-ckpt", str(other), "--accept-changed-ae", "--npz",
                             str(tmp_path / "s.npz"))) == 0
    assert "note: --accept-changed-ae" in capsys.readouterr().out
    rec = json.loads((tmp_path / "s.provenance.json").read_text())
    model = checkpoint.load(run / "checkpoints" / "last.pt")["model"]
    assert rec["dit"]["weights"] == provenance.tensor_digest(model) and rec["ae_change_accepted"] is True
    assert rec["autoencoder"]["encoder"] == provenance.ae_identity(load_autoencoder(other))["encoder"]
    assert rec["dit"]["trained_on"]["encoder"] != rec["autoencoder"]["encoder"]
    assert sorted(rec["outputs"]) == sorted([str(tmp_path / "s.png"), str(tmp_path / "s.npz")])


def test_sample_with_an_autoencoder_of_another_latent_size_fails_before_sampling(run, tmp_path, capsys,
                                                                                 no_sampling):
    big = _tiny_ae(tmp_path / "big.pt", 0, image_size=64)                       # 16 tokens, not 4
    assert sample.main(_argv(run, tmp_path, "--ae-ckpt", str(big), "--accept-changed-ae")) == 2
    line = _one_error(capsys.readouterr().err)
    assert "samples 4x32 latents but the autoencoder" in line and "decodes 16x32" in line


def test_sample_output_paths_are_checked_first_and_leave_nothing(run, tmp_path, capsys, no_sampling):
    (tmp_path / "folder").mkdir()
    (tmp_path / "afile").write_text("x")
    cases = [(["--out", str(tmp_path / "folder")], "--out", "is a folder"),
             (["--npz", str(tmp_path / "folder")], "--npz", "is a folder"),
             (["--out", str(tmp_path / "afile" / "s.png")], "--out", f"{tmp_path / 'afile'} is a file"),
             (["--npz", str(tmp_path / "afile" / "x" / "s.npz")], "--npz", f"{tmp_path / 'afile'} is a file")]
    for extra, flag, words in cases:
        argv = ["--ckpt", str(run), "--num-samples", "2", "--steps", "1", "--device", "cpu", *extra]
        assert sample.main(argv) == 2
        line = _one_error(capsys.readouterr().err)
        assert flag in line and words in line
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["afile", "folder"]   # no temp file, no lock file


def test_sample_refuses_a_folder_a_training_run_holds(run, tmp_path, capsys, no_sampling):
    with rundir.RunLock(tmp_path, prog="in1k_dit.py"):
        assert sample.main(_argv(run, tmp_path)) == 2
    assert "in use by another run" in _one_error(capsys.readouterr().err)
    assert not (tmp_path / "s.png").exists()


# ------------------------------------------------------------------------------------------ metrics JSON

class _Stub(torch.nn.Module):
    """Features = per-channel means (+ NaN for image ``nan_at`` of the stream)."""

    def __init__(self, nan_at: int | None = None):
        super().__init__()
        self.nan_at, self.seen = nan_at, 0

    def forward(self, x):
        f = torch.cat([x.float().mean((2, 3)), x.float().std((2, 3))], 1)
        if self.nan_at is not None and self.seen <= self.nan_at < self.seen + len(x):
            f[self.nan_at - self.seen, 1] = float("nan")
        self.seen += len(x)
        return f, f


def _npz(path: Path, seed: int, **extra) -> Path:
    rng = np.random.default_rng(seed)
    np.savez(path, arr_0=rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8), **extra)
    return path


def test_eval_gen_never_writes_nan_json(tmp_path, capsys):
    samples, out = _npz(tmp_path / "s.npz", 0), tmp_path / "r.json"
    sigma = np.eye(6)
    sigma[2, 3] = np.nan
    ref = _npz(tmp_path / "ref.npz", 1, mu=np.zeros(6), sigma=sigma)

    def go(ref_path, extractor):
        args = eval_gen.build_parser().parse_args(["--samples", str(samples), "--ref", str(ref_path), "--out",
                                                   str(out), "--batch-size", "4", "--splits", "2"])
        return run_cli(lambda _: eval_gen.run(args, extractor=extractor) and 0, prog="eval_gen.py")

    assert go(ref, _Stub()) == 2                           # before: "fid": NaN written, exit 0
    assert f"{ref}: stored sigma holds 1 NaN/Inf values (first at [2, 3])" in _one_error(capsys.readouterr().err)
    ok = _npz(tmp_path / "ok.npz", 1)
    assert go(ok, _Stub(nan_at=17)) == 3                   # sample image 5 (after 12 reference images)
    line = _one_error(capsys.readouterr().err)
    assert f"non-finite pool_features (1 of 24 values NaN/Inf, first at item 5 [5, 1]) in the features of {samples}, images 4..7" in line
    assert not out.exists()
    assert go(ok, _Stub()) == 0 and math.isfinite(json.loads(out.read_text())["fid"])


def test_eval_ae_never_writes_nan_json(tmp_path, monkeypatch, capsys):
    ae = _tiny_ae(tmp_path / "ae.pt", 0)
    monkeypatch.setattr(eval_ae, "evaluate", lambda *a, **k: {"psnr": float("nan"), "ssim": 0.5, "n_images": 2})
    out = tmp_path / "eval.json"
    rc = eval_ae.main(["--ckpt", str(ae), "--out", str(out), "--num-images", "2", "--num-workers", "0",
                       "--no-lpips", "--fd", "off", "--device", "cpu"])
    assert rc == 3 and "psnr is not finite; nothing written" in _one_error(capsys.readouterr().err)
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))


def test_dumps_strict_names_the_key():
    with pytest.raises(NonFiniteError, match=r"sweep\[1\]\.psnr is not finite"):
        finite.dumps_strict({"sweep": [{"psnr": 1.0}, {"psnr": float("inf")}]}, "x")
    assert json.loads(finite.dumps_strict({"a": [1.5]}, "x")) == {"a": [1.5]}


# ------------------------------------------------------------------------------------------ images

def test_float_tiffs_are_scaled_or_refused(tmp_path):
    from PIL import Image

    v = np.linspace(0, 1, 48 * 64, dtype=np.float32).reshape(48, 64)
    Image.fromarray(v, mode="F").save(tmp_path / "f.tif")
    with Image.open(tmp_path / "f.tif") as im:
        assert im.mode == "F"
    rgb = data.load_rgb(tmp_path / "f.tif")
    assert rgb.shape == (48, 64, 3) and np.array_equal(rgb[..., 1], np.rint(v.astype(np.float64) * 255).astype(np.uint8))
    assert rgb.max() == 255 and rgb.mean() == pytest.approx(127.5, abs=0.5)      # before: all 0 or 1 (black)
    counts = (np.arange(48 * 64, dtype=np.float32).reshape(48, 64) * 20)         # whole numbers up to 61420
    Image.fromarray(counts, mode="F").save(tmp_path / "c.tif")
    assert np.array_equal(data.load_rgb(tmp_path / "c.tif")[..., 0],
                          np.rint(counts.astype(np.float64) * 255 / 65535).astype(np.uint8))
    Image.fromarray(v * 300.5, mode="F").save(tmp_path / "odd.tif")
    with pytest.raises(data.DataError, match=r"odd.tif: 32-bit float image with values in \[0, 300.5\]"):
        data.load_rgb(tmp_path / "odd.tif")
    Image.fromarray(np.full((8, 8), 70000, np.int32), mode="I").save(tmp_path / "i.tif")
    with pytest.raises(data.DataError, match=r"32-bit integer image with values in \[70000, 70000\]"):
        data.load_rgb(tmp_path / "i.tif")


def test_exif_orientation_is_applied(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    im = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6                                       # "rotate 90 CW to display"
    im.save(tmp_path / "r.png", exif=exif)
    rgb = data.load_rgb(tmp_path / "r.png")
    assert rgb.shape == (30, 20, 3) and np.array_equal(rgb, np.rot90(arr, k=-1))  # before: (20, 30, 3) as stored


def test_empty_class_folders_are_not_classes_and_are_named(tmp_path, capsys):
    from PIL import Image

    for c, n in (("a", 2), ("b", 0), ("c", 1), ("d", 0)):
        (tmp_path / c).mkdir()
        for i in range(n):
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / c / f"{i}.png")
    (tmp_path / "d" / "notes.txt").write_text("not an image")
    ds = data.ImageFolderDataset(tmp_path, 8, train=False)
    assert ds.classes == ["a", "c"] and [lab for _, lab in ds.samples] == [0, 0, 1]  # before: 4 classes, c = 2
    err = capsys.readouterr().err.strip()
    assert err == f"warning: 2 empty class folder(s) under {tmp_path} ignored (no image files; they are not " \
                  f"classes): 'b', 'd'"


def test_a_non_finite_stored_latent_norm_is_one_line(run, tmp_path, capsys, no_sampling):
    state = torch.load(run / "ae.pt", weights_only=False)
    state["latent_norm"] = float("nan")
    torch.save(state, tmp_path / "nan_norm.pt")                # same weights: the identity check passes
    assert sample.main(_argv(run, tmp_path, "--ae-ckpt", str(tmp_path / "nan_norm.pt"))) == 2
    assert "stores latent_norm = nan (expected a finite number > 0): pass --decode-norm S" in \
        _one_error(capsys.readouterr().err)


def test_training_sample_grid_is_not_written_when_not_finite(run, tmp_path, capsys):
    from types import SimpleNamespace

    from experiments import in1k_dit
    from experiments.common.distributed import DistInfo
    from experiments.common.dit_io import load_dit
    from experiments.common.ema import EMA

    model, latent, _ = load_dit(run)
    ctx = dict(args=SimpleNamespace(seed=0, flow="riemannian", sample_steps=1, sample_cfg=1.0), info=DistInfo(),
               ae=load_autoencoder(run / "ae.pt"), precision="fp32", decode_norm=6.0)
    in1k_dit.sample_grid(ctx, model, EMA(model, 0.9), latent, tmp_path / "ok.png", per_class=1)
    assert (tmp_path / "ok.png").is_file()
    with torch.no_grad():
        next(ctx["ae"].decoder.parameters()).fill_(float("nan"))  # a decoder that returns NaN
    in1k_dit.sample_grid(ctx, model, EMA(model, 0.9), latent, tmp_path / "bad.png", per_class=1)
    assert not (tmp_path / "bad.png").exists()                   # before: an all-black grid
    err = capsys.readouterr().err
    assert "in1k_dit: warning: EMA samples hold" in err and f"{tmp_path / 'bad.png'} not written" in err
