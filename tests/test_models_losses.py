"""Losses: cosine alignment, L1, hinge GAN, adaptive weight, LPIPS (offline), latent smoothing."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, strategies as st

from models.latent import smooth_latent, smoothing_tau
from models.losses import (STAGE_LOSS_WEIGHTS, LossWeights, LPIPSLoss, LPIPSWeightsError, adaptive_gan_weight,
                           autoencoder_losses, cosine_alignment_loss, hinge_d_loss, hinge_g_loss, l1_loss)

# VGG16 `features` convolutions: index → (out, in)
_VGG = {0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128), 12: (256, 256),
        14: (256, 256), 17: (512, 256), 19: (512, 512), 21: (512, 512), 24: (512, 512), 26: (512, 512),
        28: (512, 512)}


@given(seed=st.integers(0, 10_000), scale=st.floats(1e-3, 1e3))
def test_cosine_loss_known_values(seed: int, scale: float) -> None:
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(2, 5, 16, generator=g)
    assert cosine_alignment_loss(t * scale, t).item() == pytest.approx(0.0, abs=1e-5)  # magnitude-free
    assert cosine_alignment_loss(-t * scale, t).item() == pytest.approx(2.0, abs=1e-5)
    e = torch.eye(16)
    assert cosine_alignment_loss(e[:8].unsqueeze(0), e[8:].unsqueeze(0)).item() == pytest.approx(1.0)


def test_cosine_loss_is_a_token_mean_and_does_not_train_the_teacher() -> None:
    s = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]], requires_grad=True)
    t = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]], requires_grad=True)
    loss = cosine_alignment_loss(s, t)
    assert loss.item() == pytest.approx(1.0)  # (0 + 2) / 2
    loss.backward()
    assert t.grad is None and s.grad is not None


def test_l1_and_hinge_known_values() -> None:
    assert l1_loss(torch.zeros(2, 3), torch.full((2, 3), -0.5)).item() == pytest.approx(0.5)
    real = torch.tensor([2.0, 0.5, -1.0])  # relu(1 - real) = 0, 0.5, 2 → mean 5/6
    fake = torch.tensor([-2.0, 0.0, 1.0])  # relu(1 + fake) = 0, 1, 2 → mean 1
    assert hinge_d_loss(real, fake).item() == pytest.approx(5 / 6 + 1.0)
    assert hinge_d_loss(torch.full((4,), 1.0), torch.full((4,), -1.0)).item() == 0.0  # margins met
    assert hinge_g_loss(fake).item() == pytest.approx(1 / 3)


def test_adaptive_gan_weight_is_the_gradient_norm_ratio() -> None:
    w = torch.randn(4, 3, requires_grad=True)
    x = torch.randn(3)
    rec = (w @ x).square().sum()  # ∇_w = 2 (w x) xᵀ
    gan = 0.5 * w.sum()  # ∇_w = 0.5
    lam = adaptive_gan_weight(rec, gan, w)
    expect = (2 * torch.outer(w @ x, x)).norm() / (torch.full((4, 3), 0.5).norm() + 1e-4)
    assert lam.item() == pytest.approx(expect.item(), rel=1e-5)
    assert not lam.requires_grad
    assert adaptive_gan_weight(rec, 0.0 * w.sum(), w, max_weight=10.0).item() == 10.0  # clamped
    rec.backward()  # the graph was retained for the real backward


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    g = torch.Generator().manual_seed(0)
    state = {}
    for i, (cout, cin) in _VGG.items():
        state[f"features.{i}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * (2.0 / (9 * cin)) ** 0.5
        state[f"features.{i}.bias"] = torch.zeros(cout)
    path = tmp_path_factory.mktemp("vgg") / "vgg16-397923af.pth"
    torch.save(state, path)
    return path, state


def test_lpips_loads_a_local_vgg_and_behaves_like_a_distance(vgg_file) -> None:
    path, state = vgg_file
    lp = LPIPSLoss(path)
    torch.testing.assert_close(getattr(lp.net.net.slice5, "28").weight, state["features.28.weight"])
    assert not any(p.requires_grad for p in lp.parameters())
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    y = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    assert lp(x, x).item() == pytest.approx(0.0, abs=1e-7)
    d = lp(x, y)
    assert d.item() > 0 and lp(y, x).item() == pytest.approx(d.item(), rel=1e-5)
    assert lp(x, (x + 0.05 * (y - x))).item() < d.item()
    xr = x.clone().requires_grad_()
    lp(xr, y).backward()
    assert xr.grad.abs().sum() > 0


def test_lpips_matches_the_lpips_package_with_the_same_trunk(vgg_file, monkeypatch) -> None:
    import types

    import lpips
    import lpips.pretrained_networks as pn
    from torchvision.models import vgg as tv_vgg

    path, state = vgg_file
    # the package's own LPIPS, with torchvision's VGG16 built without its (unused) 120M-param classifier
    monkeypatch.setattr(pn.tv, "vgg16", lambda *a, **k: types.SimpleNamespace(
        features=tv_vgg.make_layers(tv_vgg.cfgs["D"])))
    ref = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
    for k in range(1, 6):
        for name, m in getattr(ref.net, f"slice{k}").named_children():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.data.copy_(state[f"features.{name}.weight"])
                m.bias.data.copy_(state[f"features.{name}.bias"])
    x, y = torch.rand(2, 2, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(LPIPSLoss(path)(x, y), ref(x, y).mean())


def test_lpips_offline_without_weights_raises(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(LPIPSWeightsError, match="vgg_path") as info:
        LPIPSLoss()
    assert isinstance(info.value, RuntimeError) and "disable LPIPS" in str(info.value)
    # the torch hub cache is the default location
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(LPIPSWeightsError, match=str(tmp_path / "checkpoints")):
        LPIPSLoss()


def test_autoencoder_losses_weights_and_skipping() -> None:
    img = torch.zeros(1, 3, 8, 8)
    rec = torch.full((1, 3, 8, 8), 0.25)
    z = torch.randn(1, 4, 8)
    out = autoencoder_losses(rec, img, z, -z, STAGE_LOSS_WEIGHTS[1], lpips_fn=None)
    assert out.cosine.item() == pytest.approx(2.0) and out.l1.item() == pytest.approx(0.25)
    assert out.lpips is None and list(out.parts()) == ["cos", "l1"]
    assert out.total.item() == pytest.approx(0.5 * 2.0 + 0.25)
    out2 = autoencoder_losses(rec, img, z, None, STAGE_LOSS_WEIGHTS[2], lpips_fn=lambda a, b: torch.tensor(3.0))
    assert out2.cosine is None and out2.total.item() == pytest.approx(0.25 + 3.0)
    assert STAGE_LOSS_WEIGHTS[2] == LossWeights(cosine=0.0, l1=1.0, lpips=1.0, gan=0.5)


def test_smoothing_tau_ramp() -> None:
    assert smoothing_tau(0) == pytest.approx(0.8)
    assert smoothing_tau(10) == pytest.approx(1.0)
    assert smoothing_tau(20) == pytest.approx(1.2)
    assert smoothing_tau(35) == pytest.approx(1.2)
    assert smoothing_tau(-1) == pytest.approx(0.8)


@given(seed=st.integers(0, 10_000), tau=st.floats(0.01, 2.0))
def test_smooth_latent_keeps_clean_at_zero_and_bounds_sigma(seed: int, tau: float) -> None:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(3, 64, 32, generator=g)
    assert smooth_latent(z, 0.0) is z
    out = smooth_latent(z, tau, torch.Generator().manual_seed(seed))
    again = smooth_latent(z, tau, torch.Generator().manual_seed(seed))
    torch.testing.assert_close(out, again)  # reproducible with a generator
    sigma_hat = (out - z).std()  # the batch's σ, estimated from 6144 normals
    assert sigma_hat < tau * 1.1 + 1e-6


def test_smooth_latent_draws_one_uniform_sigma_per_batch() -> None:
    g = torch.Generator().manual_seed(0)
    one = smooth_latent(torch.zeros(6, 8192), 1.2, g).std(dim=1)  # six samples of one batch
    assert (one.max() - one.min()).item() < 0.05 * one.mean().item() + 1e-3  # one σ for all of them
    sig = torch.stack([smooth_latent(torch.zeros(1, 2048), 1.2, g).std() for _ in range(3000)])
    assert sig.mean().item() == pytest.approx(0.6, abs=0.02)  # E U(0, τ) = τ/2 over batches
    assert sig.std().item() == pytest.approx(1.2 / 12 ** 0.5, abs=0.02)  # sd U(0, τ) = τ/√12
    with pytest.raises(ValueError):
        smooth_latent(torch.zeros(2, 4), -0.1)
