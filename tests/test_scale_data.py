"""Data path at scale: latent caching through one DataLoader with workers, latents carried as stored
(float16) to the device, the image tree walked once (rank 0), a complete cache reused without a walk,
flipped latents by default for the paper preset."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from experiments import cache_latents, in1k_dit
from experiments.common import data as data_mod, distributed as D
from test_exp_support import make_image_folder


def _cache_argv(out: Path, ae: Path, *extra: str) -> list[str]:
    return ["--out", str(out), "--ae-ckpt", str(ae), "--num-images", "20", "--shard-size", "8", "--batch-size", "4",
            "--device", "cpu", *extra]


def test_cache_uses_one_loader_with_workers_and_hands_latents_as_stored(tmp_path, ae_ckpt, capsys, monkeypatch):
    from safetensors.torch import load_file

    made = []
    real = torch.utils.data.DataLoader.__init__

    def counting(self, *a, **kw):
        made.append(kw.get("num_workers", 0))
        real(self, *a, **kw)

    monkeypatch.setattr(torch.utils.data.DataLoader, "__init__", counting)
    a, b = tmp_path / "w0", tmp_path / "w2"
    assert cache_latents.main(_cache_argv(a, ae_ckpt, "--num-workers", "0", "--flip")) == 0
    printed = capsys.readouterr().out.splitlines()
    assert cache_latents.main(_cache_argv(b, ae_ckpt, "--num-workers", "2", "--flip")) == 0
    assert made == [0, 2]  # one loader per run for its 3 shards, with the workers asked for
    # The size line comes first and counts the flipped copy: 20 x (4 x 32 x 2 bytes x 2 + 8) = 10400 bytes.
    assert "x 2 (flip) = 1.04e-05 GB" in printed[0] and "wrote" in printed[1]
    shards = sorted(p.name for p in a.glob("shard-*.safetensors"))
    assert len(shards) == 3 and shards == sorted(p.name for p in b.glob("shard-*.safetensors"))
    for name in shards:
        x, y = load_file(str(a / name)), load_file(str(b / name))
        assert x.keys() == y.keys() == {"latents", "latents_flip", "labels"}
        assert all(torch.equal(x[k], y[k]) for k in x)
    raw = cache_latents.LatentShards(b, project=False)
    on = cache_latents.LatentShards(b)
    z16, z32 = raw[(0, 5)]["latent"], on[(0, 5)]["latent"]
    assert z16.dtype == torch.float16 and z32.dtype == torch.float32
    torch.testing.assert_close(z32, on.sphere.projx(z16.float()), rtol=0, atol=0)
    # Training reads them as stored: the float16 batch reaches the step, which projects it in float32.
    seen = []
    real_latents_of = in1k_dit.latents_of

    def spy(ctx, batch):
        seen.append(batch["latent"].dtype)
        x0 = real_latents_of(ctx, batch)
        seen.append((x0.dtype, float((x0.norm(dim=-1) - ctx["sphere"].radius).abs().max())))
        return x0

    monkeypatch.setattr(in1k_dit, "latents_of", spy)
    out = tmp_path / "dit"
    assert in1k_dit.main(["--latents", str(b), "--preset", "tiny", "--out", str(out), "--steps", "1",
                          "--batch-size", "4", "--sample-steps", "1", "--no-progress"]) == 0
    assert seen[0] == torch.float16 and seen[1][0] == torch.float32 and seen[1][1] < 1e-5


def _scan_worker(root: str, tmp: str) -> None:
    info = D.setup("cpu")
    if info.rank != 0:  # only rank 0 may walk the tree
        data_mod._scan = lambda *_: (_ for _ in ()).throw(AssertionError("rank 1 walked the tree"))
    classes, samples = data_mod.scan_image_folder(Path(root) / "train", info)
    try:
        data_mod.scan_image_folder(Path(root) / "missing", info)
        err = None
    except data_mod.DataError as e:
        err = str(e)
    Path(tmp, f"r{info.rank}.json").write_text(json.dumps([classes, samples, err]))
    D.cleanup()


def test_image_tree_is_walked_by_rank_0_only(tmp_path):
    make_image_folder(tmp_path / "data", corrupt=False)
    D.spawn_local(_scan_worker, 2, (str(tmp_path / "data"), str(tmp_path)), start_method="fork")
    r0, r1 = (json.loads((tmp_path / f"r{r}.json").read_text()) for r in (0, 1))
    assert r0 == r1 and r0[0] == ["a", "b"] and len(r0[1]) == 6
    assert r0[2].startswith("dataset folder not found:") and r0[2].endswith("missing")


def test_complete_cache_is_reused_without_walking_the_tree(tmp_path, ae_ckpt, monkeypatch, capsys):
    make_image_folder(tmp_path / "data", n_good=8, corrupt=False)
    argv = ["--data", str(tmp_path / "data"), "--ae-ckpt", str(ae_ckpt), "--cache-latents", "--out",
            str(tmp_path / "run"), "--preset", "tiny", "--batch-size", "4", "--log-every", "1", "--sample-steps", "1",
            "--no-progress", "--num-workers", "0", "--image-size", "32"]
    assert in1k_dit.main(argv + ["--steps", "1"]) == 0
    monkeypatch.setattr(data_mod, "_scan", lambda *_: pytest.fail("the train tree was walked again"))
    assert in1k_dit.main(argv + ["--steps", "2"]) == 0  # resumes on the finished cache
    assert "using the complete latent cache" in capsys.readouterr().out


@pytest.mark.parametrize("extra, preset, flip", [((), "paper", True), (("--no-flip",), "paper", False),
                                                  ((), "tiny", False), (("--flip",), "tiny", True)])
def test_flipped_latents_are_the_paper_preset_default(tmp_path, extra, preset, flip):
    from experiments.common.dit_cli import build_parser, resolve

    (tmp_path / "train").mkdir()
    args = resolve(build_parser().parse_args(["--data", str(tmp_path), "--ae-ckpt", "x", "--preset", preset,
                                              *extra]))
    assert args.flip is flip
    assert resolve(build_parser().parse_args([])).flip is False  # embedded photos: flipped already
