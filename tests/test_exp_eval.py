"""Evaluation metrics: Fréchet distance exactness and batch-size independence, PSNR/SSIM, eval_ae.py."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

from experiments.common.data import EmbeddedPhotos, ShardedEvalSampler, collate
from experiments.common.metrics import FrechetStats, frechet_distance, psnr_per_image


def _sqrtm_fd(mu1, c1, mu2, c2):
    """Reference FD with scipy's (non-symmetric) matrix square root."""
    scipy_linalg = pytest.importorskip("scipy.linalg")
    covmean = scipy_linalg.sqrtm(c1 @ c2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * np.trace(covmean))


@given(seed=st.integers(0, 2**16), dim=st.integers(1, 6))
def test_frechet_distance_matches_sqrtm_reference(seed, dim):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(dim, dim)), rng.normal(size=(dim, dim))
    c1, c2 = a @ a.T + 0.1 * np.eye(dim), b @ b.T + 0.1 * np.eye(dim)
    mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
    got = frechet_distance(*(torch.from_numpy(t) for t in (mu1, c1, mu2, c2)))
    assert got == pytest.approx(_sqrtm_fd(mu1, c1, mu2, c2), rel=1e-6, abs=1e-8)
    assert frechet_distance(*(torch.from_numpy(t) for t in (mu1, c1, mu1, c1))) == pytest.approx(0, abs=1e-6)


def test_frechet_1d_closed_form():
    # FD of N(m1, s1²) and N(m2, s2²) is (m1 − m2)² + (s1 − s2)²
    got = frechet_distance(torch.tensor([1.0]), torch.tensor([[4.0]]), torch.tensor([-2.0]),
                           torch.tensor([[9.0]]))
    assert got == pytest.approx(9.0 + 1.0, rel=1e-12)


@given(split=st.lists(st.integers(1, 7), min_size=1, max_size=6))
def test_frechet_stats_independent_of_batching(split):
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(40, 5, generator=g) * 3 + 1
    whole, parts = FrechetStats(5), FrechetStats(5)
    whole.update(feats)
    i = 0
    while i < len(feats):
        for k in split:
            parts.update(feats[i:i + k])
            i += k
    mu_a, cov_a = whole.mean_cov()
    mu_b, cov_b = parts.mean_cov()
    assert torch.allclose(mu_a, mu_b, atol=1e-12) and torch.allclose(cov_a, cov_b, atol=1e-11)
    ref = torch.from_numpy(np.cov(feats.double().numpy(), rowvar=False))
    assert torch.allclose(cov_a, ref, atol=1e-10)


def test_psnr_known_value():
    x = torch.zeros(2, 3, 4, 4)
    y = x + 0.2  # 0.1 on [0, 1] → MSE 0.01 → 20 dB
    assert torch.allclose(psnr_per_image(y, x), torch.full((2,), 20.0), atol=1e-4)


def _loader(ds, batch):
    sampler = ShardedEvalSampler(len(ds), batch)
    return torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collate)


def test_fd_dino_and_metrics_do_not_depend_on_batch_size():
    from experiments.eval_ae import evaluate
    from models import build_autoencoder

    torch.manual_seed(0)
    ae = build_autoencoder("tiny", image_size=32)
    ds = EmbeddedPhotos("eval", 32, length=16)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: faster, and same-thread results either way
    try:
        r3 = evaluate(ae, _loader(ds, 3), torch.device("cpu"), fd="dino")
        r8 = evaluate(ae, _loader(ds, 8), torch.device("cpu"), fd="dino")
    finally:
        torch.set_num_threads(threads)
    assert r3["n_images"] == r8["n_images"] == 16
    assert r3["fd_features"].startswith("dino_teacher") and "rfid" not in r3 and "fid" not in r3
    assert r3["fd_dino"] > 0
    assert abs(r3["fd_dino"] - r8["fd_dino"]) <= 1e-6 * max(1.0, r3["fd_dino"])
    assert abs(r3["psnr"] - r8["psnr"]) < 1e-6 and abs(r3["ssim"] - r8["ssim"]) < 1e-6


def test_eval_ae_cli_writes_json(tmp_path, capsys):
    from experiments import eval_ae, in1k_ae
    from test_exp_support import tiny_argv

    run = tmp_path / "run"
    assert in1k_ae.main(tiny_argv(run, steps=1)) == 0
    assert eval_ae.main(["--ckpt", str(run), "--batch-size", "5", "--num-workers", "0",
                         "--fd", "dino"]) == 0
    res = json.loads((run / "eval.json").read_text())
    assert res["n_images"] == 8 and res["step"] == 1 and res["ema"] is True
    assert {"psnr", "ssim", "fd_dino"} <= set(res) and "rfid" not in res
    assert (run / "eval_recon.png").is_file()
    (run / "eval.json").unlink()
    assert in1k_ae.main(tiny_argv(run, "--eval-only")) == 0  # same numbers through the training script
    res2 = json.loads((run / "eval.json").read_text())
    assert res2["step"] == 1 and abs(res2["psnr"] - res["psnr"]) < 1e-6
    assert eval_ae.main(["--ckpt", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


class _TinyFeatures(torch.nn.Module):
    """Stand-in for the Inception net inside torchmetrics' FID (offline: no Inception weights here)."""

    num_features = 12

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 12, 5, stride=4)

    def forward(self, x):
        return torch.tanh(self.conv(x.float())).mean((2, 3))


def test_rfid_branch_uses_torchmetrics_fid_when_weights_exist(tmp_path, monkeypatch):
    from torchmetrics.image.fid import FrechetInceptionDistance

    from experiments import eval_ae
    from models import build_autoencoder

    weights = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    weights.write_bytes(b"stand-in")
    seen = []

    def fake_make_fid(path, device):
        seen.append(path)
        torch.manual_seed(1)
        return FrechetInceptionDistance(feature=_TinyFeatures(), normalize=False).to(device)

    monkeypatch.setattr(eval_ae, "make_fid", fake_make_fid)
    torch.manual_seed(0)
    ae = build_autoencoder("tiny", image_size=32)
    ds = EmbeddedPhotos("eval", 32, length=10)
    r3 = eval_ae.evaluate(ae, _loader(ds, 3), torch.device("cpu"), inception_weights=str(weights))
    r8 = eval_ae.evaluate(ae, _loader(ds, 8), torch.device("cpu"), inception_weights=str(weights))
    assert seen == [str(weights)] * 2
    assert r3["fd_features"] == "inception_pool3_2048" and "fd_dino" not in r3 and r3["rfid"] > 0
    assert abs(r3["rfid"] - r8["rfid"]) <= 1e-5 * max(1.0, r3["rfid"])
    with pytest.raises(FileNotFoundError):
        eval_ae.evaluate(ae, _loader(ds, 8), torch.device("cpu"), inception_weights=str(tmp_path / "no"))


def test_trained_ae_stores_latent_norm_and_decodes_best_near_it(tmp_path, capsys):
    """A short tiny run (raw-token decoder) stores ``latent_norm`` = the held-out mean norm of the tokens its
    decoder reads, prints its evaluation, and decoding sphere-normalised tokens at that norm reconstructs
    better than at half or double it (eval_ae.py --decode-norm-sweep)."""
    from experiments import eval_ae, in1k_ae
    from experiments.common.distributed import DistInfo
    from test_exp_support import final_state, tiny_argv

    run = tmp_path / "run"
    argv = tiny_argv(run, "--batch-size", "16", "--eval-every", "100", steps=100)
    assert in1k_ae.main(argv) == 0
    out = capsys.readouterr().out
    state = final_state(run)
    ln = state["latent_norm"]
    assert isinstance(ln, float) and state["args"]["decoder_input"] == "raw"
    assert f"latent_norm {ln:.4g}" in out and "held-out PSNR" in out and "→" in out
    ae, _ = eval_ae.load_autoencoder(run)
    loader = eval_ae._loader(None, "val", 32, 8, 4, 0, DistInfo())
    assert eval_ae.mean_latent_norm(ae, loader, torch.device("cpu")) == pytest.approx(ln, rel=1e-5)
    tokens = torch.cat([ae.encode(b["image"]).detach() for b in loader])
    assert tokens.norm(dim=-1).std() > 0.02 * ln  # raw tokens: the norm varies from token to token
    js = tmp_path / "sweep.json"
    assert eval_ae.main(["--ckpt", str(run), "--decode-norm-sweep", str(ln / 2), str(ln), str(2 * ln),
                         "--out", str(js), "--num-workers", "0", "--batch-size", "4"]) == 0
    res = json.loads(js.read_text())
    half, at, double = (r["psnr"] for r in res["sweep"])
    assert at > half and at > double, res["sweep"]
    assert res["latent_norm"] == pytest.approx(ln) and res["latent_norm_source"] == "checkpoint"
    assert js.with_suffix(".png").is_file()


def test_rfid_sees_rounded_uint8_images_as_sample_py_writes_them(tmp_path, monkeypatch):
    """The FID inputs are sample.py's rounded uint8 (round((x+1)·127.5)), not floats that torchmetrics
    truncates ((x·255).byte(): a −½ LSB bias). Pixels at k + 0.6 LSB tell the two apart."""
    from experiments import eval_ae
    from experiments.sample import to_uint8

    weights = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    weights.write_bytes(b"stand-in")
    fed: dict[bool, list] = {True: [], False: []}

    class Recorder:
        def update(self, imgs, real):
            fed[real].append(imgs)

        def compute(self):
            return torch.tensor(0.0)

    class Identity(torch.nn.Module):  # decode(encode(x)) = x: the reconstruction is the original
        latent_dim, training = 4, False

        def encode(self, x):
            return torch.ones(x.shape[0], 2, 4)

        def decode(self, z):
            return self.image

    monkeypatch.setattr(eval_ae, "make_fid", lambda path, device: Recorder())
    x = (torch.arange(2 * 3 * 16 * 16) % 200).float().add(0.6).reshape(2, 3, 16, 16) / 127.5 - 1
    ae = Identity()
    ae.image = x
    res = eval_ae.evaluate(ae, [{"image": x}], torch.device("cpu"), inception_weights=str(weights))
    assert "rfid" in res
    for real in (True, False):
        (got,) = fed[real]
        assert got.dtype == torch.uint8, "FID must get uint8 images"
        want = torch.from_numpy(to_uint8(x)).permute(0, 3, 1, 2)
        assert torch.equal(got, want)
        assert not torch.equal(got, ((x + 1) / 2 * 255).byte())  # truncation differs at k + 0.6
