"""in1k_dit.py --flow euclidean (paper Table 4's ablation): straight-path FM loss, ambient Euler sampling,
end to end at tiny scale including sample.py on its checkpoint."""
from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings, strategies as st

from experiments import in1k_dit, sample
from experiments.common.dit_io import load_autoencoder, load_dit
from experiments.common.flows import (check_flow, euclidean_euler, euclidean_fm_loss, euclidean_path,
                                      flow_noise)
from models.latent import gaussian_norm_radius
from spherical import Hypersphere, sample_time


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2 ** 16), t=st.floats(0.0, 1.0), c=st.integers(2, 40))
def test_straight_path_endpoints_and_constant_velocity(seed: int, t: float, c: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x0 = Hypersphere(3.0).random_uniform(2, 3, c, generator=g, dtype=torch.float64)
    x1 = torch.randn(2, 3, c, generator=g, dtype=torch.float64)
    xt, ut = euclidean_path(x0, x1, torch.tensor(t, dtype=torch.float64))
    torch.testing.assert_close(euclidean_path(x0, x1, torch.tensor(0.0, dtype=torch.float64))[0], x0)
    torch.testing.assert_close(euclidean_path(x0, x1, torch.tensor(1.0, dtype=torch.float64))[0], x1)
    h = 1e-6  # d/dt x_t = x1 − x0 at every t (straight line, constant speed)
    fd = (euclidean_path(x0, x1, torch.tensor(t + h, dtype=torch.float64))[0] - xt) / h
    torch.testing.assert_close(fd, ut, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ut, x1 - x0)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2 ** 16))
def test_fm_loss_is_mean_squared_error_per_token_and_splits_exactly(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    v, xt, ut = (torch.randn(3, 5, 7, generator=g, dtype=torch.float64) for _ in range(3))
    loss = euclidean_fm_loss(v, xt, ut)
    ref = sum(float(((v[b, n] - ut[b, n]) ** 2).sum()) for b in range(3) for n in range(5)) / 15
    assert float(loss.total) == pytest.approx(ref, rel=1e-12)
    assert float(loss.tangent + loss.radial) == pytest.approx(ref, rel=1e-10)  # Pythagoras at x̂_t
    # each part on its own (the sum above holds for any radial, since tangent is logged as total − radial)
    e, xh = v - ut, xt / xt.norm(dim=-1, keepdim=True)
    along = (e * xh).sum(-1, keepdim=True)
    assert float(loss.radial) == pytest.approx(float(along.square().sum(-1).mean()), rel=1e-10)
    assert float(loss.tangent) == pytest.approx(float((e - along * xh).square().sum(-1).mean()), rel=1e-9)
    assert float(euclidean_fm_loss(ut, xt, ut).total) == 0.0
    with pytest.raises(ValueError, match="one shape"):
        euclidean_fm_loss(v, xt, ut[..., :3])


def test_flow_noise_gaussian_vs_uniform_on_the_sphere() -> None:
    c, r = 64, gaussian_norm_radius(64)
    g = torch.Generator().manual_seed(0)
    e = flow_noise("euclidean", (4000, c), r, generator=g)
    u = flow_noise("riemannian", (4000, c), r, generator=g)
    torch.testing.assert_close(u.norm(dim=-1), torch.full((4000,), r), rtol=1e-5, atol=1e-5)
    norms = e.norm(dim=-1)
    assert abs(float(norms.mean()) / r - 1) < 0.01  # E‖x₁‖ = R
    assert float(norms.std()) > 0.5  # Gaussian: norms spread (≈ 1/√2), not on the sphere
    assert abs(float(e.mean())) < 0.01 and abs(float(e.var()) - 1) < 0.03  # N(0, I) for R = χ_C
    with pytest.raises(ValueError, match="riemannian, euclidean"):
        check_flow("spherical")


def test_euclidean_euler_is_ambient_and_never_projects() -> None:
    x1 = torch.randn(2, 4, 8)
    grid = torch.tensor([1.0, 0.7, 0.2, 0.0])
    c = torch.randn(2, 4, 8)
    out = euclidean_euler(lambda x, t: c.expand_as(x), x1, grid)
    torch.testing.assert_close(out, x1 - c)  # constant field: Σ Δt · c = −c
    seen = []
    out = euclidean_euler(lambda x, t: (seen.append(float(t)), x)[1], x1, grid)  # dx/dt = x
    torch.testing.assert_close(out, x1 * 0.7 * (1 - 0.5) * (1 - 0.2))  # Π (1 + Δt), no renormalisation
    assert seen == pytest.approx([1.0, 0.7, 0.2])


def test_train_flow_loss_is_the_straight_path_one(ae_ckpt) -> None:
    """in1k_dit.flow_loss with --flow euclidean: x₁ Gaussian, x_t on the segment, target x₁ − x₀."""
    from experiments.common.dit_cli import build_parser, resolve

    args = resolve(build_parser().parse_args(["--flow", "euclidean", "--ae-ckpt", str(ae_ckpt), "--out", "x"]))
    r = gaussian_norm_radius(32)
    ctx = dict(args=args, sphere=Hypersphere(r), alpha=0.7, precision="fp32")
    x0 = Hypersphere(r).random_uniform(3, 4, 32, generator=torch.Generator().manual_seed(1))
    seen = {}

    def net(xt, t, y, force_drop=None):
        seen.update(xt=xt, t=t)
        return torch.zeros_like(xt)

    loss = in1k_dit.flow_loss(ctx, net, x0, torch.zeros(3, dtype=torch.long), torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)  # replay the step's draws in flow_loss's order
    x1 = flow_noise("euclidean", (3, 4, 32), r, generator=g)
    t = sample_time(3, alpha=0.7, generator=g)
    torch.testing.assert_close(seen["t"], t)
    torch.testing.assert_close(seen["xt"], (1 - t.view(3, 1, 1)) * x0 + t.view(3, 1, 1) * x1)
    assert float(loss.total) == pytest.approx(float((x1 - x0).square().sum(-1).mean()), rel=1e-5)


def test_flow_euclidean_end_to_end_with_sample_py(ae_ckpt, tmp_path, capsys) -> None:
    out = tmp_path / "dit"
    argv = ["--preset", "tiny", "--flow", "euclidean", "--ae-ckpt", str(ae_ckpt), "--out", str(out), "--steps", "12",
            "--batch-size", "8", "--log-every", "1", "--ckpt-every", "100", "--sample-steps", "2",
            "--no-progress", "--lr", "3e-3", "--warmup-steps", "2"]
    assert in1k_dit.main(argv) == 0
    model, latent, args = load_dit(out)
    assert latent["flow"] == "euclidean" and args["flow"] == "euclidean"
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in recs if r["event"] == "train"]
    assert len(losses) == 12 and all(abs(r["loss"] - r["tangent"] - r["radial"]) < 1e-4 * r["loss"]
                                     for r in recs if r["event"] == "train")
    # sample.py's latents for this checkpoint are ambient Euler from Gaussian noise: replay them by hand
    labels = torch.arange(4) % latent["num_classes"]
    noise = sample.sample_noise(range(4), latent["num_tokens"], latent["channels"], latent["radius"], 0,
                                flow="euclidean")
    z = sample.sample_latents(model, labels, num_tokens=latent["num_tokens"], channels=latent["channels"],
                              radius=latent["radius"], steps=5, alpha=latent["alpha"], noise=noise,
                              flow=latent["flow"])
    grid, x = sample.time_grid(5, latent["alpha"]), noise.clone()
    with torch.no_grad():
        for k in range(5):
            x = x + (grid[k + 1] - grid[k]) * model(x, grid[k].expand(4), labels)
    torch.testing.assert_close(z, x, rtol=1e-5, atol=1e-5)
    off = (z.norm(dim=-1) / latent["radius"] - 1).abs()
    assert float(off.max()) > 1e-3  # not renormalised to R between (or after) the steps
    # the same decode as the Riemannian path: tokens rescaled to the decode norm
    zd, img = sample.generate(model, load_autoencoder(ae_ckpt), labels, latent, decode_norm=3.0, noise=noise,
                              steps=5)
    torch.testing.assert_close(zd, Hypersphere(3.0).projx(z), rtol=1e-5, atol=1e-5)
    assert img.shape == (4, 3, 32, 32)
    png = tmp_path / "s.png"
    assert sample.main(["--ckpt", str(out), "--num-samples", "4", "--steps", "3", "--out", str(png)]) == 0
    assert png.is_file() and "euclidean flow" in capsys.readouterr().out
    assert sample.main(["--ckpt", str(out), "--method", "rk4", "--out", str(png)]) == 2
    assert "--method euler only" in capsys.readouterr().err
