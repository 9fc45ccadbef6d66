"""experiments/eval_gen.py: gFID / IS through torchmetrics, with a tiny stand-in feature extractor
(no Inception weights can exist offline) and the clear missing-weights error."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st
from torch import nn

from experiments import eval_gen


class StandIn(nn.Module):
    """uint8 [B,3,H,W] -> (pool [B,16], logits [B,10]); fixed random weights."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.head = nn.Linear(16, 10)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x):
        h = torch.relu(self.conv(x.float() / 127.5 - 1))
        pool = torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1)
        return pool, self.head(pool)


def _npz(path: Path, arr: np.ndarray) -> Path:
    np.savez(path, arr_0=arr)
    return path


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(48, 16, 16, 3), dtype=np.uint8)


def test_fd_of_a_set_to_itself_is_zero_and_batch_size_free(tmp_path, images):
    a = _npz(tmp_path / "a.npz", images)
    same = eval_gen.evaluate(a, a, StandIn(), batch_size=48)
    assert abs(same["fid"]) < 1e-6 and same["n_samples"] == same["n_reference"] == 48
    other = _npz(tmp_path / "b.npz", (images // 2).astype(np.uint8))  # darker images
    d1 = eval_gen.evaluate(other, a, StandIn(), batch_size=48)
    d2 = eval_gen.evaluate(other, a, StandIn(), batch_size=7)
    assert d1["fid"] > 0.1
    assert d1["fid"] == pytest.approx(d2["fid"], rel=1e-5)  # float64 sums: batch size does not matter
    assert d1["is"] == pytest.approx(d2["is"], rel=1e-5)


def test_inception_score_is_one_for_identical_images(tmp_path, images):
    same_img = _npz(tmp_path / "s.npz", np.repeat(images[:1], 20, axis=0))
    res = eval_gen.evaluate(same_img, same_img, StandIn(), splits=2)
    assert res["is"] == pytest.approx(1.0, abs=1e-5)


def test_folder_reference_equals_npz(tmp_path, images):
    from PIL import Image

    folder = tmp_path / "ref" / "cls"
    folder.mkdir(parents=True)
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i:03d}.png")
    a = _npz(tmp_path / "a.npz", images)
    res = eval_gen.evaluate(a, tmp_path / "ref", StandIn(), batch_size=10)
    assert abs(res["fid"]) < 1e-6 and res["n_reference"] == 48


def test_cli_writes_json_with_stand_in(tmp_path, images):
    a = _npz(tmp_path / "a.npz", images)
    args = eval_gen.build_parser().parse_args(["--samples", str(a), "--ref", str(a), "--splits", "4",
                                               "--out", str(tmp_path / "r.json")])
    returned = eval_gen.run(args, extractor=StandIn())
    res = json.loads((tmp_path / "r.json").read_text())
    assert set(res) >= {"fid", "is", "is_std", "n_samples", "n_reference"} and res["splits"] == 4
    # the file holds what evaluate() gives for the same options, plus the two paths
    direct = eval_gen.evaluate(a, a, StandIn(), splits=4)
    assert res == json.loads(json.dumps(returned))
    for k in ("fid", "is", "is_std", "n_samples", "n_reference"):
        assert res[k] == pytest.approx(direct[k], rel=1e-6, abs=1e-9), k
    assert abs(res["fid"]) < 1e-6 and res["n_samples"] == len(images)
    assert res["samples"] == res["reference"] == str(a)


def test_missing_inception_weights_is_one_clear_line(tmp_path, images, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    a = _npz(tmp_path / "a.npz", images)
    rc = eval_gen.main(["--samples", str(a), "--ref", str(a), "--out", str(tmp_path / "r.json")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "--inception-weights" in err
    assert not (tmp_path / "r.json").exists()
    rc = eval_gen.main(["--samples", str(a), "--ref", str(a), "--inception-weights", str(tmp_path / "no.pth")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--inception-weights" in err and "no.pth" in err


def test_bad_npz_is_rejected(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(eval_gen.UserError, match="arr_0"):
        list(eval_gen.iter_images(bad, 4))
    np.savez(bad, arr_0=np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(eval_gen.UserError, match="uint8"):
        list(eval_gen.iter_images(bad, 4))


class StandInSpatial(StandIn):
    """StandIn plus a 'spatial' feature (the pre-ReLU conv map's first 2 channels, flattened): the sFID path."""

    def forward(self, x):
        c = self.conv(x.float() / 127.5 - 1)
        h = torch.relu(c)
        pool = torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1)
        return pool, self.head(pool), c[:, :2, ::3, ::3].permute(0, 2, 3, 1).reshape(x.shape[0], -1)


def _np_fd(mu1, s1, mu2, s2) -> float:
    """Reference Fréchet distance with scipy's sqrtm (as the ADM evaluator computes it)."""
    sqrtm = pytest.importorskip("scipy.linalg").sqrtm
    covmean = sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_identical_sets_give_precision_recall_one_and_fid_sfid_zero(tmp_path, images):
    a = _npz(tmp_path / "a.npz", images)
    res = eval_gen.evaluate(a, a, StandInSpatial(), batch_size=10)
    assert res["precision"] == res["recall"] == 1.0 and abs(res["fid"]) < 1e-6 and abs(res["sfid"]) < 1e-6
    assert res["reference_stats"].startswith("computed from the 48 reference images")  # the fallback, stated
    assert res["pr_k"] == 3 and res["pr_features"] == {"reference": 48, "samples": 48}
    assert eval_gen.evaluate(a, a, StandIn())["sfid"] is None  # no spatial features: sFID None
    sub = eval_gen.evaluate(a, a, StandIn(), pr_max_features=20)  # seeded subsets of 20 per side
    assert sub["pr_features"] == {"reference": 20, "samples": 20} and 0 < sub["precision"] <= 1


def test_stored_mu_sigma_are_used_instead_of_the_images_statistics(tmp_path, images):
    """A reference file whose stored mu/sigma (and mu_s/sigma_s) differ from its images' statistics: FID and
    sFID are the Fréchet distances to the stored ones (ADM's read_statistics)."""
    net = StandInSpatial()
    gen_imgs = (images // 2).astype(np.uint8)
    with torch.no_grad():
        pool, _, spatial = net(torch.from_numpy(gen_imgs).permute(0, 3, 1, 2))
    pool, spatial = pool.double().numpy(), spatial.double().numpy()
    rng = np.random.default_rng(1)
    m = rng.normal(size=(16, 16))
    stored = dict(mu=pool.mean(0) + rng.normal(size=16), sigma=m @ m.T / 16 + np.eye(16),
                  mu_s=spatial.mean(0) + 0.5, sigma_s=np.cov(spatial, rowvar=False) * 2.0)
    ref = tmp_path / "ref.npz"
    np.savez(ref, arr_0=images, **stored)
    res = eval_gen.evaluate(_npz(tmp_path / "g.npz", gen_imgs), ref, net, batch_size=16)
    want = _np_fd(pool.mean(0), np.cov(pool, rowvar=False), stored["mu"], stored["sigma"])
    want_s = _np_fd(spatial.mean(0), np.cov(spatial, rowvar=False), stored["mu_s"], stored["sigma_s"])
    assert res["fid"] == pytest.approx(want, rel=1e-5) and res["sfid"] == pytest.approx(want_s, rel=1e-5)
    assert res["reference_stats"] == f"stored mu/sigma of {ref}"
    without = eval_gen.evaluate(_npz(tmp_path / "g.npz", gen_imgs), _npz(tmp_path / "r.npz", images), net)
    assert abs(without["fid"] - res["fid"]) > 1e-3 * res["fid"]  # the images' own statistics differ
    np.savez(ref, arr_0=images, mu=np.zeros(5), sigma=np.eye(5))
    with pytest.raises(eval_gen.UserError, match="stored mu/sigma have 5 dims"):
        eval_gen.evaluate(tmp_path / "g.npz", ref, net)


def test_well_separated_sets_give_precision_recall_zero(tmp_path):
    rng = np.random.default_rng(0)
    dark = rng.integers(0, 40, size=(24, 16, 16, 3), dtype=np.uint8)
    bright = rng.integers(215, 256, size=(24, 16, 16, 3), dtype=np.uint8)
    res = eval_gen.evaluate(_npz(tmp_path / "d.npz", dark), _npz(tmp_path / "b.npz", bright), StandIn())
    assert res["precision"] == res["recall"] == 0.0 and res["fid"] > 1.0


def test_precision_recall_by_hand():
    """1-D, k = 1: reference {0,...,4} has squared radii 1; samples {0.5, 10} have squared radii 9.5²."""
    ref = torch.arange(5.0).reshape(5, 1)
    gen = torch.tensor([[0.5], [10.0]])
    assert eval_gen.precision_recall(ref, gen, k=1) == (0.5, 1.0)  # 0.5 is inside, 10 is not; all 5 covered
    torch.testing.assert_close(eval_gen.manifold_radii(ref, 2), torch.tensor([4.0, 1, 1, 1, 4], dtype=ref.dtype))
    with pytest.raises(eval_gen.UserError, match="more than 3"):
        eval_gen.precision_recall(ref[:3], gen, k=3)


@given(seed=st.integers(0, 1000))
def test_precision_recall_swap_and_isometry_invariance(seed):
    """P(ref, gen) = R(gen, ref), and both are invariant under a rotation + translation of the features."""
    g = torch.Generator().manual_seed(seed)
    ref, gen = torch.randn(30, 6, generator=g), torch.randn(25, 6, generator=g) + 0.7
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    shift = torch.randn(6, generator=g, dtype=torch.float64)
    p, r = eval_gen.precision_recall(ref, gen)
    assert eval_gen.precision_recall(gen, ref) == (r, p)
    p2, r2 = eval_gen.precision_recall(ref.double() @ q + shift, gen.double() @ q + shift)
    assert (p2, r2) == pytest.approx((p, r), abs=1.5 / 25)  # at most a boundary point may flip in rounding


def test_inception_gives_adm_shaped_spatial_features(tmp_path, monkeypatch):
    """The real feature network's wiring (random weights: none can be downloaded here): pool 2048, logits
    1008 and ADM's sFID feature, mixed_6/conv's first 7 channels on the 17×17 grid = 2023 values."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    monkeypatch.setattr(torch, "load", lambda *a, **k: {})
    monkeypatch.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None)
    torch.manual_seed(0)
    net = eval_gen.InceptionFeatures(str(tmp_path / "random.pth"))
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    seen = {}
    net.net.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: seen.setdefault("map", o))
    pool, logits, spatial = net(x)
    assert pool.shape == (2, 2048) and logits.shape == (2, 1008) and spatial.shape == (2, 17 * 17 * 7)
    # (h, w, c) order of ADM's NHWC tensor: element (h=1, w=2, c=3) sits at (1·17 + 2)·7 + 3
    assert spatial[1, (1 * 17 + 2) * 7 + 3] == seen["map"][1, 3, 1, 2]


def test_precision_recall_use_every_sample_by_default(tmp_path):
    """ADM's evaluator compares all samples (50 k) with all reference images (10 k): no subset by default,
    through the function and the command line."""
    rng = np.random.default_rng(3)
    ref, gen = tmp_path / "ref.npz", tmp_path / "gen.npz"
    np.savez(ref, arr_0=rng.integers(0, 256, (9, 16, 16, 3), dtype=np.uint8))
    np.savez(gen, arr_0=rng.integers(0, 256, (23, 16, 16, 3), dtype=np.uint8))
    assert eval_gen.build_parser().parse_args(["--samples", "s", "--ref", "r"]).pr_max_features == 0
    res = eval_gen.evaluate(gen, ref, StandIn(), splits=1)
    assert res["pr_features"] == {"reference": 9, "samples": 23}
