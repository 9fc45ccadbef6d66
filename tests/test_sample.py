"""experiments/sample.py: Riemannian Euler sampling with CFG, decode-norm rescaling, PNG grid, ADM npz."""
from __future__ import annotations

import math
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments import sample
from experiments.common import checkpoint
from experiments.common.distributed import DistInfo
from experiments.common.dit_io import load_dit, save_autoencoder
from spherical import Hypersphere, integrate, time_shift

N, C, K = 4, 32, 3  # tokens (2x2 grid, 32 px tiny AE), channels, classes
LATENT_NORM = 6.75  # the fixture autoencoder's stored latent_norm


def _dit(seed: int = 0):
    from models.dit import DiTConfig, LightningDiT

    torch.manual_seed(seed)
    m = LightningDiT(replace(DiTConfig(), in_channels=C, num_tokens=N, num_classes=K, depth=1, hidden_size=32,
                             num_heads=2))
    with torch.no_grad():  # adaLN-Zero starts at v = 0: give every weight a value so v depends on (x, t, y)
        for p in m.parameters():
            p.normal_(0.0, 0.1)
    return m.eval()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A hand-made in1k_dit.py checkpoint (random DiT, random tiny AE at 32 px) in a run folder."""
    from models import build_autoencoder

    d = tmp_path_factory.mktemp("dit_run")
    torch.manual_seed(0)
    ae = build_autoencoder("tiny", image_size=32)
    save_autoencoder(ae, d / "ae.pt", "tiny", latent_norm=LATENT_NORM)
    m = _dit()
    latent = dict(num_tokens=N, channels=C, radius=float(ae.radius), alpha=0.5, num_classes=K,
                  ae_ckpt=str(d / "ae.pt"), classes=None, image_size=32)
    checkpoint.save_atomic({"step": 1, "model": m.state_dict(), "ema": None, "dit_config": asdict(m.config),
                            "latent": latent, "args": {}}, d / "checkpoints" / "last.pt")
    return d


def test_time_grid_is_the_shifted_linspace():
    g = sample.time_grid(50, 3.0)
    assert g.shape == (51,) and g[0] == 1 and g[-1] == 0 and bool((g[1:] < g[:-1]).all())
    torch.testing.assert_close(g, time_shift(torch.linspace(1, 0, 51), 3.0))


def test_cfg_scale_one_is_the_conditional_model():
    m, y = _dit(), torch.tensor([0, 1, 2])
    x = Hypersphere(5.0).random_uniform(3, N, C, generator=torch.Generator().manual_seed(1))
    t = torch.tensor(0.3)
    v = sample.guided_velocity(m, y, 1.0)(x, t)
    assert torch.equal(v, m(x, t.expand(3), y))
    kw = dict(num_tokens=N, channels=C, radius=5.0, steps=6, alpha=2.0, noise=x)
    z1 = sample.sample_latents(m, y, cfg_scale=1.0, **kw)
    by_hand = integrate(lambda xx, tt: m(xx, tt.reshape(1).expand(3), y), x, sample.time_grid(6, 2.0),
                        sphere=Hypersphere(5.0))
    assert torch.equal(z1, by_hand)
    # Guidance outside its interval is the conditional model; inside it changes the result.
    assert torch.equal(sample.sample_latents(m, y, cfg_scale=4.0, cfg_interval=(2.0, 3.0), **kw), z1)
    z4 = sample.sample_latents(m, y, cfg_scale=4.0, **kw)
    assert (z4 - z1).abs().max() > 1e-3
    # CFG = v_u + w (v_c - v_u) at one point
    null = torch.full_like(y, K)
    v4 = sample.guided_velocity(m, y, 4.0)(x, t)
    vc, vu = m(x, t.expand(3), y), m(x, t.expand(3), null)
    torch.testing.assert_close(v4, vu + 4.0 * (vc - vu), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["euler", "rk4", "odeint:rk4", "dopri5"])
def test_samples_stay_on_the_sphere(method):
    m, y = _dit(), torch.tensor([0, 2])
    z = sample.sample_latents(m, y, num_tokens=N, channels=C, radius=5.0, steps=5, method=method,
                              generator=torch.Generator().manual_seed(0), rtol=1e-3, atol=1e-3)
    assert z.shape == (2, N, C) and z.dtype == torch.float32
    torch.testing.assert_close(z.norm(dim=-1), torch.full((2, N), 5.0), rtol=1e-5, atol=1e-5)


def test_adaptive_method_matches_a_fine_fixed_grid():
    """--method dopri5: the adaptive pair on the sphere reaches the fine-grid rk4 solution (same end points)."""
    torch.manual_seed(0)
    from models.dit import DiTConfig, LightningDiT

    m = LightningDiT(replace(DiTConfig(), in_channels=C, num_tokens=N, num_classes=K, depth=1, hidden_size=32,
                             num_heads=2, time_scale=1.0))  # smooth in t: a 32-step rk4 reference suffices
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.1)
    m, y = m.eval(), torch.tensor([0, 2])
    kw = dict(num_tokens=N, channels=C, radius=5.0, alpha=1.0)
    ref = sample.sample_latents(m, y, steps=32, method="rk4", generator=torch.Generator().manual_seed(0), **kw)
    z = sample.sample_latents(m, y, method="dopri5", rtol=1e-6, atol=1e-6, generator=torch.Generator().manual_seed(0),
                              **kw)
    assert (z - ref).norm(dim=-1).max().item() < 2e-5
    loose = sample.sample_latents(m, y, method="bosh3", rtol=1e-2, atol=1e-2,
                                  generator=torch.Generator().manual_seed(0), **kw)
    assert 2e-5 < (loose - ref).norm(dim=-1).max().item() < 5e-2  # the tolerance is passed through


def test_generate_rescales_to_decode_norm_and_decodes(run_dir):
    model, latent, _ = load_dit(run_dir)
    from experiments.common.dit_io import load_autoencoder

    ae = load_autoencoder(latent["ae_ckpt"])
    noise = sample.sample_noise(range(3), N, C, latent["radius"], seed=0)
    z, img = sample.generate(model, ae, torch.tensor([0, 1, 2]), latent, decode_norm=9.0, noise=noise, steps=4)
    torch.testing.assert_close(z.norm(dim=-1), torch.full((3, N), 9.0), rtol=1e-5, atol=1e-5)
    assert img.shape == (3, 3, 32, 32) and img.min() >= -1 and img.max() <= 1
    z14, _ = sample.generate(model, ae, torch.tensor([0, 1, 2]), latent, decode_norm=14.0, noise=noise, steps=4)
    torch.testing.assert_close(z14.norm(dim=-1), torch.full((3, N), 14.0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(z14 / 14.0, z / 9.0, rtol=1e-5, atol=1e-6)  # same directions


def test_cli_png_and_adm_npz(run_dir, tmp_path):
    npz, png = tmp_path / "s.npz", tmp_path / "grid.png"
    rc = sample.main(["--ckpt", str(run_dir), "--num-samples", "10", "--steps", "3", "--batch-size", "4",
                      "--npz", str(npz), "--out", str(png), "--device", "cpu"])
    assert rc == 0
    with np.load(npz) as f:
        assert f.files == ["arr_0"]
        arr = f["arr_0"]
    assert arr.dtype == np.uint8 and arr.shape == (10, 32, 32, 3)  # NHWC
    from PIL import Image

    assert Image.open(png).size == (8 * 32, 2 * 32)  # 10 images, 8 per row
    # Sample i depends only on (seed, i): another batch size gives the same images.
    rc = sample.main(["--ckpt", str(run_dir), "--num-samples", "10", "--steps", "3", "--batch-size", "10",
                      "--npz", str(tmp_path / "t.npz"), "--out", str(png), "--device", "cpu"])
    with np.load(tmp_path / "t.npz") as f:
        diff = np.abs(f["arr_0"].astype(int) - arr.astype(int))
    # same noise and latents; the decoder's convolutions sum in a batch-size-dependent order, so a value
    # sitting on a rounding boundary may move by one uint8 level, never more, and only rarely
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_sharded_ranks_gather_to_the_single_process_result(run_dir, tmp_path):
    argv = ["--ckpt", str(run_dir), "--num-samples", "5", "--steps", "2", "--batch-size", "2", "--device", "cpu"]
    single = tmp_path / "single.npz"
    assert sample.main(argv + ["--npz", str(single), "--out", str(tmp_path / "a.png")]) == 0
    sharded = tmp_path / "sharded.npz"
    args = sample.build_parser().parse_args(argv + ["--npz", str(sharded), "--out", str(tmp_path / "b.png")])
    sample.run(args, DistInfo(rank=1, world_size=2))    # rank 1 writes its slice (no process group: no wait)
    assert not sharded.exists()
    sample.run(args, DistInfo(rank=0, world_size=2))    # rank 0 samples its slice, gathers, writes
    with np.load(single) as a, np.load(sharded) as b:
        assert np.array_equal(a["arr_0"], b["arr_0"]) and b["arr_0"].shape[0] == 5
    assert not list(tmp_path.glob(".sharded*"))  # parts cleaned up


def test_labels_are_arange_mod_classes_and_bad_inputs_fail(run_dir, capsys):
    assert sample.main(["--ckpt", str(run_dir), "--labels", "7", "--num-samples", "2", "--steps", "1"]) == 2
    assert "labels must be in [0, 3)" in capsys.readouterr().err
    assert sample.main(["--ckpt", str(run_dir / "nope")]) == 2
    assert "--ckpt" in capsys.readouterr().err
    assert sample.main(["--ckpt", str(run_dir), "--method", "leapfrog"]) == 2
    assert sample.build_parser().parse_args([]).decode_norm is None  # None = the checkpoint's latent_norm


def _record_decode_norms(monkeypatch) -> list[float]:
    seen: list[float] = []
    real = sample.generate

    def spy(*a, decode_norm, **k):
        seen.append(decode_norm)
        return real(*a, decode_norm=decode_norm, **k)

    monkeypatch.setattr(sample, "generate", spy)
    return seen


def test_cli_decodes_at_the_checkpoints_latent_norm_and_says_so(run_dir, tmp_path, monkeypatch, capsys):
    seen = _record_decode_norms(monkeypatch)
    argv = ["--ckpt", str(run_dir), "--num-samples", "2", "--steps", "2", "--out", str(tmp_path / "g.png"),
            "--device", "cpu"]
    assert sample.main(argv) == 0
    assert seen == [LATENT_NORM]  # exactly the stored value, not 14
    assert f"decode norm {LATENT_NORM:g} from latent_norm stored in {run_dir / 'ae.pt'}" in capsys.readouterr().out
    assert sample.main(argv + ["--decode-norm", "14"]) == 0  # the override wins, and says so
    assert seen[-1] == 14.0 and "decode norm 14 from --decode-norm" in capsys.readouterr().out


def test_decode_norm_of_checkpoints_without_latent_norm(tmp_path):
    """Checkpoints written before latent_norm was stored: sphere-input decoders decode at R; a raw-token
    decoder needs --decode-norm (one-line error)."""
    from experiments.common.dit_io import decode_norm, load_autoencoder
    from experiments.common.trainer import UserError
    from models import build_autoencoder

    for inp in ("sphere", "raw"):
        ae = build_autoencoder("tiny", image_size=32, decoder_input=inp)
        state = {"model": ae.state_dict(), "step": 0, "args": {"preset": "tiny", "image_size": 32}}
        if inp == "raw":
            state["args"]["decoder_input"] = "raw"
        checkpoint.save_atomic(state, tmp_path / f"{inp}.pt")
        loaded = load_autoencoder(tmp_path / f"{inp}.pt")
        assert loaded.config.decoder_input == inp and loaded.latent_norm is None  # missing key = sphere
        assert decode_norm(loaded, 3.0) == (3.0, "--decode-norm")
    assert decode_norm(load_autoencoder(tmp_path / "sphere.pt"))[0] == pytest.approx(ae.radius)
    with pytest.raises(UserError, match="no latent_norm.*--decode-norm"):
        decode_norm(loaded)
    with pytest.raises(UserError, match="> 0"):
        decode_norm(loaded, 0.0)


def test_readme_log_likelihood_of_dit_samples_runs_verbatim(run_dir, monkeypatch):
    """The flows guide's block (log p of DiT samples) on the fixture run: [8] finite values; with the exact trace in
    place of Hutchinson the estimate agrees within 4 standard errors of the probe average."""
    import re

    import experiments.common.dit_io as dit_io
    from spherical import log_likelihood

    readme = (Path(__file__).resolve().parents[1] / "docs" / "flows.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "load_dit(DEFAULT_DIT_RUN)" in b)
    monkeypatch.setattr(dit_io, "DEFAULT_DIT_RUN", str(run_dir))
    ns: dict = {}
    exec(compile(block, "docs/flows.md", "exec"), ns)
    lp = ns["lp"]
    assert lp.shape == (8,) and bool(torch.isfinite(lp).all())
    v, z, S = ns["guided_velocity"](ns["model"], ns["labels"]), ns["z"], ns["Hypersphere"](ns["latent"]["radius"])
    grid = torch.linspace(0, 1, 9)  # a coarser grid than README's for the check (same grid on both sides)
    exact = log_likelihood(v, z, grid, sphere=S, divergence="exact")
    draws = torch.stack([log_likelihood(v, z, grid, sphere=S, divergence="hutchinson", probes=4,
                                        generator=torch.Generator().manual_seed(s)) for s in range(1, 7)])
    se = draws.std(0) / math.sqrt(draws.shape[0]) + 1e-6
    assert bool(((draws.mean(0) - exact).abs() <= 4 * se + 1e-4 * exact.abs()).all())
