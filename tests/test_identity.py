"""Identity, not paths (issue 20): a latent cache, a DiT run and samples record the content identity of the
autoencoder they were made from; resumes, ``--latents`` and ``sample.py`` compare it and stop with one
line naming both sides; resumes state every changed option and whether the data order is exact; class
changes stop; shards are verified (size + sha256) on read and on a rerun of the cache."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments import cache_latents, in1k_dit
from experiments.common import provenance
from experiments.common.dit_io import load_autoencoder, save_autoencoder
from experiments.common.trainer import NonFiniteError, UserError


def _one_error(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1, err
    return lines[0]


def _other_ae(path: Path, seed: int, image_size: int = 32, decoder_only: bool = False, base: Path | None = None):
    """A tiny AE at ``path``: fresh weights from ``seed``, or ``base``'s with only the decoder changed."""
    from models import build_autoencoder

    torch.manual_seed(seed)
    ae = build_autoencoder("tiny", image_size=image_size)
    if decoder_only:
        ae.load_state_dict(load_autoencoder(base).state_dict())
        with torch.no_grad():
            next(ae.decoder.parameters()).add_(0.5)
    save_autoencoder(ae, path, "tiny", latent_norm=7.0)
    return path


# ------------------------------------------------------------------------------------------ the digests

def test_identity_is_the_weights_content_not_the_path(tmp_path, ae_ckpt):
    a = provenance.ae_identity(load_autoencoder(ae_ckpt))
    moved = tmp_path / "elsewhere" / "same.pt"
    moved.parent.mkdir()
    moved.write_bytes(ae_ckpt.read_bytes())
    b = provenance.ae_identity(load_autoencoder(moved))
    assert a["path"] != b["path"] and provenance.same_latent_space(a, b) and a["decoder"] == b["decoder"]
    assert provenance.check_ae(a, b, what="x") is None                       # a moved file is the same AE
    stage2 = provenance.ae_identity(load_autoencoder(_other_ae(tmp_path / "s2.pt", 0, decoder_only=True,
                                                               base=ae_ckpt)))
    assert stage2["encoder"] == a["encoder"] and stage2["decoder"] != a["decoder"]  # decoder-only: same space
    other = provenance.ae_identity(load_autoencoder(_other_ae(tmp_path / "o.pt", 1)))
    assert other["encoder"] != a["encoder"]
    with pytest.raises(UserError, match=f"encoder {a['encoder'][:12]}.*encoder {other['encoder'][:12]}"):
        provenance.check_ae(a, other, what="the run R")
    assert provenance.check_ae(a, other, what="R", accept=True) == {"from": a, "to": other}
    # one value changed anywhere in the encoder changes the digest; the key order does not matter
    sd = load_autoencoder(ae_ckpt).state_dict()
    k = next(k for k in sd if k.startswith("stem.") and sd[k].is_floating_point())
    base = provenance.tensor_digest(sd)
    assert provenance.tensor_digest(dict(reversed(list(sd.items())))) == base
    sd[k] = sd[k].clone()
    sd[k].view(-1)[0] = torch.nextafter(sd[k].view(-1)[0], torch.tensor(1e9))
    assert provenance.tensor_digest(sd) != base


# ------------------------------------------------------------------------------------------ latent cache

class _Images(torch.utils.data.Dataset):
    """``n`` random 32 px images, image ``nan_at`` all NaN."""

    classes = ["a", "b"]

    def __init__(self, n: int, nan_at: int | None = None):
        self.x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
        if nan_at is not None:
            self.x[nan_at] = float("nan")

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"image": self.x[i], "label": i % 2, "bad": []}


def test_cache_never_writes_a_non_finite_latent_and_names_the_first_bad_image(tmp_path, ae_ckpt):
    ae, out = load_autoencoder(ae_ckpt), tmp_path / "lat"
    with pytest.raises(NonFiniteError, match=r"non-finite latents .*first at item 9 .* in shard 1 .*images 8\.\.11"):
        cache_latents.cache_latents(ae, _Images(12, nan_at=9), out, meta={"source": "t", "classes": ["a", "b"]},
                                    shard_size=8, batch_size=4, log=lambda *_: None)
    assert (out / "shard-00000.safetensors").is_file() and not (out / "shard-00001.safetensors").exists()
    assert not json.loads((out / "index.json").read_text())["complete"]
    # the CLI: an autoencoder holding a NaN exits 3 with one line, and never marks the cache complete
    bad = tmp_path / "nan_ae.pt"
    state = torch.load(ae_ckpt, weights_only=False)
    k = next(k for k, v in state["model"].items() if k.startswith("stem.") and v.is_floating_point())
    state["model"][k].view(-1)[0] = float("nan")
    torch.save(state, bad)
    rc = cache_latents.main(["--out", str(tmp_path / "c2"), "--ae-ckpt", str(bad), "--num-images", "4",
                             "--shard-size", "4", "--device", "cpu"])
    assert rc == 3 and not list((tmp_path / "c2").glob("shard-*.safetensors"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory, ae_ckpt):
    """A complete 12-image cache (3 shards of 4) of ``ae_ckpt``; its argv; the latents read back."""
    lat = tmp_path_factory.mktemp("cache") / "lat"
    argv = ["--out", str(lat), "--ae-ckpt", str(ae_ckpt), "--num-images", "12", "--shard-size", "4",
            "--device", "cpu"]
    assert cache_latents.main(argv) == 0
    z = torch.stack([cache_latents.LatentShards(lat)[i]["latent"] for i in range(12)])
    return lat, argv, z


def test_shards_are_verified_on_read_and_a_damaged_one_is_named_and_remade(cache, capsys):
    lat, argv, z = cache
    index = json.loads((lat / "index.json").read_text())
    assert [r["bytes"] for r in index["shards"]] == [p.stat().st_size for p in sorted(lat.glob("shard-*.safetensors"))]
    assert index["ae_identity"]["encoder"] and index["classes"]
    shard = lat / "shard-00001.safetensors"
    good = shard.read_bytes()
    shard.write_bytes(good[: len(good) // 2])                                  # truncated
    with pytest.raises(cache_latents.DataError, match="latent shard .*shard-00001.safetensors is damaged .*truncated"):
        cache_latents.LatentShards(lat)
    flipped = bytearray(good)
    flipped[-7] ^= 0xFF                                                        # same size, one byte changed
    shard.write_bytes(bytes(flipped))
    with pytest.raises(cache_latents.DataError, match="shard-00001.safetensors is damaged .*sha256"):
        cache_latents.LatentShards(lat)
    assert cache_latents.LatentShards(lat, verify="size") is not None          # size-only check: passes
    capsys.readouterr()
    mtimes = {p.name: p.stat().st_mtime_ns for p in lat.glob("shard-*.safetensors")}
    assert cache_latents.main(argv) == 0                                       # the rerun re-makes it
    out = capsys.readouterr().out
    assert f"{shard} is damaged (sha256" in out and "1 shards written, 2 already there" in out
    assert all(p.stat().st_mtime_ns == mtimes[p.name] for p in lat.glob("shard-*.safetensors") if p != shard)
    torch.testing.assert_close(torch.stack([cache_latents.LatentShards(lat)[i]["latent"] for i in range(12)]), z)


def test_cache_rerun_and_latents_with_another_autoencoder_are_refused(cache, tmp_path, capsys):
    lat, argv, _ = cache
    other = _other_ae(tmp_path / "other.pt", seed=5)
    # the same --ae-ckpt path retrained in between: the rerun would splice two autoencoders' latents
    same_path = tmp_path / "ae.pt"
    same_path.write_bytes(Path(argv[3]).read_bytes())
    moved = list(argv)
    moved[3] = str(same_path)
    assert cache_latents.main(moved) == 0                    # a moved file with the same weights: accepted
    same_path.write_bytes(other.read_bytes())
    capsys.readouterr()
    assert cache_latents.main(moved) == 2
    enc = json.loads((lat / "index.json").read_text())["ae_identity"]["encoder"]
    line = _one_error(capsys.readouterr().err)
    assert f"the latent cache {lat} was made with encoder {enc[:12]}" in line and "other weights" in line
    # --latents with an autoencoder of another encoder (same shape): stop before training, naming both
    run = ["--latents", str(lat), "--preset", "tiny", "--out", str(tmp_path / "dit"), "--steps", "1",
           "--batch-size", "4", "--sample-steps", "1", "--no-progress", "--ae-ckpt", str(other)]
    assert in1k_dit.main(run) == 2
    line = _one_error(capsys.readouterr().err)
    assert f"the latent cache {lat} was made with encoder {enc[:12]}" in line and "--accept-changed-ae" in line
    assert not (tmp_path / "dit" / "metrics.jsonl").exists()
    assert in1k_dit.main(run + ["--accept-changed-ae"]) == 0
    start = [json.loads(ln) for ln in (tmp_path / "dit" / "metrics.jsonl").read_text().splitlines()][0]
    assert start["ae_changes"][0]["from"]["encoder"] == enc and start["latent"]["ae_identity"]["encoder"] != enc


# ------------------------------------------------------------------------------------------ DiT resumes

def _image_tree(root: Path, classes: dict[str, int]) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, n in classes.items():
        (root / "train" / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / "train" / c / f"{i}.png")
    return root


def _dit_argv(out, ae, data, *extra):
    return ["--data", str(data), "--ae-ckpt", str(ae), "--preset", "tiny", "--out", str(out), "--steps", "8",
            "--batch-size", "4", "--log-every", "1", "--ckpt-every", "100", "--sample-steps", "1",
            "--num-workers", "0", "--no-progress", *extra]


def test_resume_states_changes_and_stops_on_another_autoencoder_or_class_list(tmp_path, ae_ckpt, capsys):
    data, out = _image_tree(tmp_path / "d", {"cat": 4, "dog": 4}), tmp_path / "run"
    assert in1k_dit.main(_dit_argv(out, ae_ckpt, data, "--stop-after", "2")) == 0
    capsys.readouterr()
    # a changed --lr is stated, and the data order is exact
    assert in1k_dit.main(_dit_argv(out, ae_ckpt, data, "--stop-after", "3", "--lr", "0.002")) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "resuming from" in ln)
    assert "changed options: --lr 0.001 -> 0.002;" in line and "data order exact (8 items" in line
    rec = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in rec if r["event"] == "resume"][-1]["data_order_exact"] is True
    # an image more: the batch order changed, and the resume says so
    _image_tree(tmp_path / "extra", {"cat": 1})
    (tmp_path / "extra" / "train" / "cat" / "0.png").rename(data / "train" / "cat" / "9.png")
    assert in1k_dit.main(_dit_argv(out, ae_ckpt, data, "--stop-after", "4", "--lr", "0.002")) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "resuming from" in ln)
    assert "changed options: none" in line and "DATA CHANGED (8 -> 9 items" in line
    # another autoencoder: one line naming both encoders, nothing trained; --accept-changed-ae continues
    other = _other_ae(tmp_path / "other.pt", seed=3)
    before = (out / "metrics.jsonl").read_text()
    assert in1k_dit.main(_dit_argv(out, other, data, "--stop-after", "5", "--lr", "0.002")) == 2
    a, b = (provenance.ae_identity(load_autoencoder(p))["encoder"][:12] for p in (ae_ckpt, other))
    line = _one_error(capsys.readouterr().err)
    assert f"was made with encoder {a}" in line and f"has encoder {b}" in line and "--accept-changed-ae" in line
    assert (out / "metrics.jsonl").read_text() == before
    assert in1k_dit.main(_dit_argv(out, other, data, "--stop-after", "5", "--lr", "0.002",
                                   "--accept-changed-ae")) == 0
    assert "AUTOENCODER CHANGED by --accept-changed-ae" in capsys.readouterr().out
    rec = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in rec if r["event"] == "resume"][-1]["ae_changes"][0]["to"]["encoder"][:12] == b
    # a renamed class folder permutes the labels, an added one shifts them: both stop with one line
    (data / "train" / "dog").rename(data / "train" / "ant")
    assert in1k_dit.main(_dit_argv(out, other, data, "--lr", "0.002")) == 2
    line = _one_error(capsys.readouterr().err)
    assert "class list" in line and "1 added (e.g. 'ant'), 1 removed or renamed (e.g. 'dog')" in line
    (data / "train" / "ant").rename(data / "train" / "dog")
    _image_tree(data, {"eel": 2})
    assert in1k_dit.main(_dit_argv(out, other, data, "--lr", "0.002")) == 2
    assert "2 -> 3 classes, 1 added (e.g. 'eel')" in _one_error(capsys.readouterr().err)
