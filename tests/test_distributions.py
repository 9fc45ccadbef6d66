"""Densities on the sphere (``spherical.distributions``): normalisation, sampling, shapes and edge cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from spherical.distributions import PowerSpherical, Uniform, VonMisesFisher, log_sphere_area
from spherical.strategies import batch_shapes, channels, dtypes, radii

# Half the selected profile's examples (ci: 30, dev: 10, thorough: 1500): each example draws C up to 4096.
HALF_PROFILE = settings(max_examples=max(10, settings.default.max_examples // 2))

SPHERE_AREA_S2 = 4.0 * math.pi  # |S^2| for R = 1


# ------------------------------------------------------------------------------------------ Uniform
def test_uniform_log_prob_closed_forms():
    """log p = −log(2π) on S^1, −log(4π) on S^2, −log(2π²) on S^3; radius R adds −(C−1)·log R."""
    for c, area in ((2, 2 * math.pi), (3, SPHERE_AREA_S2), (4, 2 * math.pi**2)):
        for r in (1.0, 0.5, 7.0):
            u = Uniform(c, radius=r)
            x = u.sample((3,))
            expected = -math.log(area) - (c - 1) * math.log(r)
            torch.testing.assert_close(u.log_prob(x.double()), torch.full((3,), expected, dtype=torch.float64))
            assert float(u.entropy()) == pytest.approx(-expected, rel=1e-6)


@HALF_PROFILE
@given(channels(2, 4096), radii(), dtypes(), batch_shapes(max_dims=2), st.integers(0, 2**31 - 1))
def test_uniform_samples_on_sphere_and_shapes(c, r, dtype, batch, seed):
    radius = torch.full(batch, r, dtype=dtype) if batch else r
    u = Uniform(c, radius=radius, validate_args=True)
    x = u.sample((2,), generator=torch.Generator().manual_seed(seed))
    assert x.shape == (2,) + batch + (c,)
    if batch:
        assert x.dtype == dtype
    tol = 1e-5 if x.dtype == torch.float32 else 1e-12
    torch.testing.assert_close(x.double().norm(dim=-1), torch.full(x.shape[:-1], r, dtype=torch.float64),
                               rtol=tol, atol=0.0)
    lp = u.log_prob(x)
    assert lp.shape == (2,) + batch and torch.isfinite(lp).all()
    assert u.expand((5,) + batch).sample().shape == (5,) + batch + (c,)


def test_uniform_is_rotation_invariant_in_mean():
    """E[x] = 0 and E[x xᵀ] = R²/C·I: the second moment of the uniform law, by Monte Carlo (n = 20000)."""
    u = Uniform(5, radius=2.0)
    x = u.sample((20000,), generator=torch.Generator().manual_seed(0)).double()
    assert x.mean(0).abs().max() < 5 * 2.0 / math.sqrt(5 * 20000)      # 5 s.e.: each coordinate has std R/√C
    torch.testing.assert_close(x.T @ x / 20000, 4.0 / 5 * torch.eye(5, dtype=torch.float64), atol=0.05, rtol=0)


def test_uniform_rejects_bad_arguments():
    for bad in (1, 0, 2.5, True):
        with pytest.raises(ValueError, match="channels must be an int >= 2"):
            Uniform(bad)
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="radius must be finite and > 0"):
            Uniform(3, radius=bad)
    with pytest.raises(ValueError):
        Uniform(3, validate_args=True).log_prob(torch.ones(3))  # ‖x‖ = √3 ≠ 1


def test_log_sphere_area_matches_recursion():
    """|S^{C+1}| = 2π/C·|S^{C−1}| (the classical two-step recursion), up to C = 4096."""
    for c in (2, 3, 10, 1023, 4094):
        lhs = float(log_sphere_area(c + 2))
        rhs = math.log(2 * math.pi / c) + float(log_sphere_area(c))
        assert lhs == pytest.approx(rhs, rel=1e-12, abs=1e-12)


# ------------------------------------------------------------------------------ von Mises–Fisher
def _scipy_stats():
    stats = pytest.importorskip("scipy.stats")
    if not hasattr(stats, "vonmises_fisher"):
        pytest.skip("scipy >= 1.11 needed for scipy.stats.vonmises_fisher")
    return stats


def _unit_rows(n: int, c: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    z = torch.randn(n, c, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (z / z.norm(dim=-1, keepdim=True)).to(dtype)


@pytest.mark.parametrize("c", [2, 3, 10, 100, 1024])
def test_vmf_log_prob_matches_scipy(c):
    """log_prob = scipy.stats.vonmises_fisher.logpdf to 1e-6 relative (float64), κ from 1e-8 to 1e4,
    at points near the mode, at random and near the antipode; radius R subtracts (C−1)·log R. (Where
    scipy's own normaliser underflows, e.g. C = 100 at κ = 1e-8, it returns inf: those are skipped and
    covered by the κ = 0 limit test.)"""
    stats = _scipy_stats()
    checked = 0
    mu = _unit_rows(1, c, seed=c)[0]
    x = _unit_rows(6, c, seed=c + 1)
    x = torch.cat([x, (mu + 1e-3 * x[:2]) / (mu + 1e-3 * x[:2]).norm(dim=-1, keepdim=True), -mu[None]])
    for kappa in (1e-8, 0.3, 1.0, 10.0, 300.0, 1e4):
        with np.errstate(divide="ignore", over="ignore"):   # scipy's log(ive) underflows for large C, tiny κ
            ref = stats.vonmises_fisher(mu.numpy(), kappa).logpdf(x.numpy())
        for r in (1.0, 3.5):
            got = VonMisesFisher(mu * 7.0, kappa, radius=r).log_prob(r * x).numpy()   # loc is normalised
            ok = np.isfinite(ref)
            np.testing.assert_allclose(got[ok], ref[ok] - (c - 1) * math.log(r), rtol=1e-6, atol=1e-9)
            checked += ok.sum()
    assert checked >= 9 * 2 * 2        # at least κ = 300 and 1e4 are inside scipy's range for every C

def test_vmf_kappa_zero_is_uniform_and_entropy_matches_scipy():
    """κ = 0: log_prob and entropy equal the uniform law's; κ > 0: entropy = scipy's to 1e-6 relative."""
    stats = _scipy_stats()
    for c in (2, 3, 10, 4096):
        mu = _unit_rows(1, c, seed=1)[0]
        x = _unit_rows(5, c, seed=2)
        v = VonMisesFisher(mu, 0.0, radius=2.0)
        torch.testing.assert_close(v.log_prob(2.0 * x), Uniform(c, 2.0).log_prob(2.0 * x), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(v.entropy(), Uniform(c, torch.tensor(2.0, dtype=torch.float64)).entropy(),
                                   rtol=1e-12, atol=1e-12)
        for kappa in (1e-3, 2.0, 50.0, 1e4):
            if c == 4096:
                continue  # scipy's vonmises_fisher entropy overflows internally at C = 4096
            ref = stats.vonmises_fisher(mu.numpy(), kappa).entropy()
            assert float(VonMisesFisher(mu, kappa).entropy()) == pytest.approx(ref, rel=1e-6, abs=1e-9)


def test_vmf_density_of_the_component_along_mu():
    """Independent route to log_prob: ⟨μ, x̂⟩ = w has density ∝ e^{κw}(1−w²)^{(C−3)/2} on [−1, 1], so
    p(x) = f_w(w)/(|S^{C−2}|·(1−w²)^{(C−3)/2}) with f_w normalised by 1-D quadrature (scipy.integrate.quad)."""
    integrate = pytest.importorskip("scipy.integrate")
    for c, kappa in ((3, 4.0), (5, 0.5), (12, 20.0)):
        unnorm = lambda w: math.exp(kappa * (w - 1)) * (1 - w * w) ** ((c - 3) / 2)  # noqa: E731
        z, _ = integrate.quad(unnorm, -1, 1, epsabs=0, epsrel=1e-12)
        mu = _unit_rows(1, c, seed=3)[0]
        x = _unit_rows(4, c, seed=4)
        w = (x @ mu).tolist()
        ref = [math.log(unnorm(wi) / z) - float(log_sphere_area(c - 1)) - (c - 3) / 2 * math.log(1 - wi * wi)
               for wi in w]
        np.testing.assert_allclose(VonMisesFisher(mu, kappa).log_prob(x).numpy(), ref, rtol=1e-9)


def test_vmf_samples_match_scipy_and_the_mean_resultant_length():
    """Two-sample Kolmogorov–Smirnov on w = ⟨x̂, μ⟩ against scipy's sampler (fixed seeds; p > 1e-3), and
    the sample mean E[x] = A_C(κ)·R·μ with A_C = I_{C/2}/I_{C/2−1} (scipy ive) within 5 standard errors."""
    stats = _scipy_stats()
    special = pytest.importorskip("scipy.special")
    n = 4000
    torch.manual_seed(0)
    for c, kappa in ((2, 0.7), (3, 5.0), (10, 40.0), (64, 1000.0)):
        mu = _unit_rows(1, c, seed=c)[0]
        x = VonMisesFisher(mu, kappa, radius=2.0).sample((n,))
        w = (x @ mu / 2.0).numpy()
        ref_w = stats.vonmises_fisher(mu.numpy(), kappa).rvs(n, random_state=np.random.default_rng(c)) @ mu.numpy()
        assert stats.ks_2samp(w, ref_w).pvalue > 1e-3, (c, kappa)
        a = special.ive(c / 2, kappa) / special.ive(c / 2 - 1, kappa)
        torch.testing.assert_close(VonMisesFisher(mu, kappa, radius=2.0).mean, 2.0 * a * mu, rtol=1e-10, atol=0)
        se = x.std(0) / math.sqrt(n)
        assert ((x.mean(0) - 2.0 * a * mu).abs() <= 5 * se + 1e-12).all(), (c, kappa)


@pytest.mark.parametrize("c,kappa", [(3, 2.0), (10, 3.0)])
def test_log_prob_normalises_by_monte_carlo(c, kappa):
    """E_{x∼Uniform}[p(x)/u(x)] = 1 on S² and S⁹ for vMF and power spherical (n = 200000, within 5 s.e.
    of the estimate; the relative s.e. is ~1e-2 or less here)."""
    torch.manual_seed(c)
    u = Uniform(c, radius=1.7)
    x = u.sample((200_000,)).double()
    mu = _unit_rows(1, c, seed=5)[0]
    for law in (VonMisesFisher(mu, kappa, radius=1.7), PowerSpherical(mu, kappa, radius=1.7)):
        ratio = torch.exp(law.log_prob(x) - u.log_prob(x))
        se = float(ratio.std()) / math.sqrt(x.shape[0])
        assert abs(float(ratio.mean()) - 1.0) < 5 * se and se < 0.02, (type(law).__name__, float(ratio.mean()), se)


@pytest.mark.parametrize("law_cls", ["vmf", "ps"])
def test_entropy_and_kl_by_monte_carlo(law_cls):
    """H = −E[log p] and KL(p‖Uniform) = E[log p − log u] (closed forms vs 10000 own samples, 5 s.e.)."""
    torch.manual_seed(1)
    cls = VonMisesFisher if law_cls == "vmf" else PowerSpherical
    for c, kappa, r in ((3, 4.0, 1.0), (16, 30.0, 2.5), (64, 500.0, 0.5)):
        law = cls(_unit_rows(1, c, seed=c)[0], kappa, radius=r)
        x = law.sample((10_000,))
        lp = law.log_prob(x)
        se = float(lp.std()) / math.sqrt(lp.numel())
        assert abs(float(law.entropy()) + float(lp.mean())) < 5 * se + 1e-9, (c, kappa)
        kl = torch.distributions.kl_divergence(law, Uniform(c, r))
        assert abs(float(kl) - float((lp - Uniform(c, r).log_prob(x)).mean())) < 5 * se + 1e-9
        assert float(kl) > 0


def test_kl_edge_cases():
    """KL = 0 at κ = 0; grows with κ; +inf for another radius; different C is an error."""
    mu = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    for cls in (VonMisesFisher, PowerSpherical):
        kls = torch.distributions.kl_divergence(cls(mu, torch.tensor([0.0, 1e-8, 1.0, 10.0, 1e5])),
                                                Uniform(3, torch.tensor(1.0, dtype=torch.float64)))
        assert float(kls[0]) == pytest.approx(0.0, abs=1e-12) and float(kls[1]) == pytest.approx(0.0, abs=1e-12)
        assert (kls[1:].diff() > 0).all() and torch.isfinite(kls).all()   # KL(κ = 1e-8) ~ κ²: round-off
        assert torch.distributions.kl_divergence(cls(mu, 1.0, radius=2.0), Uniform(3, 1.0)).isinf().all()
        with pytest.raises(ValueError, match="different spheres"):
            torch.distributions.kl_divergence(cls(mu, 1.0), Uniform(4))
    # vMF on S²: p = κ e^{κw}/(4π sinh κ), A = coth κ − 1/κ,
    # so H = log(2π(1 − e^{−2κ})/κ) + κ + 1 − κ coth κ
    kappa = 2.0
    h = math.log(2 * math.pi / kappa * (1 - math.exp(-2 * kappa))) + 1 - kappa / math.tanh(kappa) + kappa
    assert float(VonMisesFisher(mu, kappa).entropy()) == pytest.approx(h, rel=1e-12)


# ---------------------------------------------------------------------------- extreme parameters
extreme_kappas = st.sampled_from([0.0, 1e-8, 1e-3, 1.0, 1e3, 1e5])
extreme_channels = st.sampled_from([2, 3, 4096])


@HALF_PROFILE
@given(extreme_channels, extreme_kappas, dtypes(), radii(1e-2, 1e2), st.sampled_from(["vmf", "ps"]),
       st.integers(0, 2**31 - 1))
def test_extremes_are_finite_and_on_the_sphere(c, kappa, dtype, r, law_cls, seed):
    """κ ∈ {0, 1e-8, …, 1e5}, C ∈ {2, 3, 4096}, float32/float64: samples finite with ‖x‖ = R, log_prob,
    entropy, KL finite, and finite gradients of log_prob in κ and loc (also at the mode and antipode)."""
    torch.manual_seed(seed)
    cls = VonMisesFisher if law_cls == "vmf" else PowerSpherical
    loc = torch.randn(2, c, dtype=dtype, requires_grad=True)
    k = torch.tensor([kappa, kappa], dtype=dtype, requires_grad=True)
    law = cls(loc, k, radius=r, validate_args=True)
    x = law.sample((3,))
    assert x.shape == (3, 2, c) and x.dtype == dtype and torch.isfinite(x).all()
    tol = 2e-6 if dtype == torch.float32 else 1e-13
    torch.testing.assert_close(x.double().norm(dim=-1) / r, torch.ones(3, 2, dtype=torch.float64), rtol=tol, atol=0)
    mode = law.mode.detach()
    pts = torch.cat([x, mode[None], -mode[None]]) if law_cls == "vmf" else torch.cat([x, mode[None]])
    lp = law.log_prob(pts)
    assert torch.isfinite(lp).all() and torch.isfinite(law.entropy()).all()
    assert torch.isfinite(torch.distributions.kl_divergence(law, Uniform(c, r))).all()
    gk, gl = torch.autograd.grad(lp.sum() + law.entropy().sum(), (k, loc))
    assert torch.isfinite(gk).all() and torch.isfinite(gl).all()
    if kappa >= 1e3:   # the mode is the most likely point
        assert (lp[:3] <= lp[3] + 1e-3 * lp[3].abs()).all()


def test_concentration_limits_of_the_samplers():
    """κ = 1e5: the sampled gap 1 − ⟨μ, x̂⟩ (formed as ‖x̂ − μ‖²/2, no cancellation) has mean
    1 − A_C(κ) for vMF and (C−1)/(κ+C−1) for power spherical, within 5 s.e., on S² and S^4095
    (float32 samples for C = 4096); κ = 0: E[⟨μ, x̂⟩] = 0 and E[⟨μ, x̂⟩²] = 1/C."""
    torch.manual_seed(2)
    for c, n, dtype in ((3, 20_000, torch.float64), (4096, 500, torch.float32)):
        mu = _unit_rows(1, c, seed=c)[0].to(dtype)
        for cls in (VonMisesFisher, PowerSpherical):
            law = cls(mu, 1e5)
            gap = 0.5 * torch.linalg.vector_norm(law.sample((n,)) - mu, dim=-1).double().square()
            expected = (1.0 - float(law.mean_resultant_length().double()) if cls is VonMisesFisher
                        else (c - 1) / (1e5 + c - 1))
            se = float(gap.std()) / math.sqrt(n)
            assert abs(float(gap.mean()) - expected) < 5 * se, (c, cls.__name__, float(gap.mean()), expected)
            w = (cls(mu, 0.0).sample((n,)) @ mu).double()
            assert abs(float(w.mean())) < 5 / math.sqrt(c * n)
            assert float((w * w).mean()) == pytest.approx(1 / c, rel=5 * math.sqrt(2 / n))


# ----------------------------------------------------------------------------------- PowerSpherical
def test_power_spherical_density_of_the_component_along_mu():
    """⟨μ, x̂⟩ = 2z − 1 with z ∼ Beta(α, β): p(x) = Beta.pdf(z)/2 / (|S^{C−2}|·(1−w²)^{(C−3)/2})."""
    stats = pytest.importorskip("scipy.stats")
    for c, kappa in ((3, 4.0), (5, 0.5), (12, 20.0), (300, 1e3)):
        mu = _unit_rows(1, c, seed=3)[0]
        x = _unit_rows(4, c, seed=4)
        x = torch.cat([x, (mu + 0.1 * x[:1]) / (mu + 0.1 * x[:1]).norm()])
        w = (x @ mu).numpy()
        a, b = (c - 1) / 2 + kappa, (c - 1) / 2
        ref = (stats.beta(a, b).logpdf((w + 1) / 2) - math.log(2) - float(log_sphere_area(c - 1))
               - (c - 3) / 2 * np.log1p(-w * w))
        np.testing.assert_allclose(PowerSpherical(mu, kappa).log_prob(x).numpy(), ref, rtol=1e-9)
        xs = PowerSpherical(mu, kappa).sample((4000,))
        assert stats.kstest(((xs @ mu).numpy() + 1) / 2, stats.beta(a, b).cdf).pvalue > 1e-3


def test_power_spherical_log_prob_at_the_mode_and_antipode():
    """p(−μ) = 0 for κ > 0 (log_prob = −inf, no NaN), uniform at κ = 0; at the mode log_prob = κ log 2 − log N
    exactly (float32, κ = 1e5: within 1e-7 relative); near the antipode gradients are finite."""
    for dtype in (torch.float32, torch.float64):
        mu = torch.tensor([0.6, 0.0, -0.8], dtype=dtype)
        law = PowerSpherical(mu, torch.tensor([0.0, 2.0, 1e5], dtype=dtype), radius=3.0)
        lp = law.log_prob(-law.mode)                                   # exactly −R·μ (μ = normalised loc)
        assert float(lp[0]) == pytest.approx(-math.log(4 * math.pi * 9.0), rel=1e-6)
        assert lp[1:].isneginf().all()
        at_mode = law.log_prob(law.mode).double()
        ref = law.concentration.double() * math.log(2.0) - law._log_normaliser64() - 2 * math.log(3.0)
        torch.testing.assert_close(at_mode, ref, rtol=1e-7, atol=1e-6)
        loc = mu.clone().requires_grad_(True)
        x = -3.0 * (mu + torch.tensor([0.0, 1e-3, 0.0], dtype=dtype))
        (g,) = torch.autograd.grad(PowerSpherical(loc, 2.0, radius=3.0).log_prob(3.0 * x / x.norm()), loc)
        assert torch.isfinite(g).all()


def test_power_spherical_rsample_gradients_match_finite_differences():
    """∇ of the Monte Carlo estimate of E[⟨a, x⟩] through rsample (n = 40000) matches central finite
    differences of the closed form E[⟨a, x⟩] = R·κ/(κ + C − 1)·⟨a, loc/‖loc‖⟩, in κ and in loc."""
    torch.manual_seed(3)
    c, r = 5, 1.5
    a = torch.tensor([0.3, -1.0, 0.5, 2.0, 0.1], dtype=torch.float64)
    loc0 = torch.tensor([1.0, 0.5, -0.2, 0.3, 0.0], dtype=torch.float64)

    def closed(loc, kappa):
        return r * kappa / (kappa + c - 1) * (a @ (loc / loc.norm()))

    loc = loc0.clone().requires_grad_(True)
    kappa = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    x = PowerSpherical(loc, kappa, radius=r).rsample((40_000,))
    est = (x @ a).mean()
    g_loc, g_k = torch.autograd.grad(est, (loc, kappa))
    assert torch.isfinite(g_loc).all() and torch.isfinite(g_k)
    h = 1e-5
    fd_k = (closed(loc0, 3.0 + h) - closed(loc0, 3.0 - h)) / (2 * h)
    fd_loc = torch.stack([(closed(loc0 + h * e, 3.0) - closed(loc0 - h * e, 3.0)) / (2 * h)
                          for e in torch.eye(c, dtype=torch.float64)])
    torch.testing.assert_close(g_k, fd_k, rtol=0.1, atol=0.01)
    torch.testing.assert_close(g_loc, fd_loc, rtol=0.1, atol=0.05)
    torch.testing.assert_close(PowerSpherical(loc0, 3.0, radius=r).mean @ a, closed(loc0, 3.0), rtol=1e-12, atol=0)


def test_vmf_log_prob_gradients_gradcheck():
    """log_prob, entropy and mean are differentiable in κ and loc (float64 gradcheck, κ from 1e-3 to 1e3)."""
    x = _unit_rows(3, 4, seed=9)
    loc = torch.tensor([0.5, -1.0, 0.3, 0.2], dtype=torch.float64, requires_grad=True)
    k = torch.tensor([1e-3, 0.8, 1e3], dtype=torch.float64).reshape(3).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda l, kk: VonMisesFisher(l, kk).log_prob(x), (loc, k))
    assert torch.autograd.gradcheck(lambda l, kk: VonMisesFisher(l, kk).entropy(), (loc, k))
    assert torch.autograd.gradcheck(lambda l, kk: VonMisesFisher(l, kk).mean, (loc, k))
    assert torch.autograd.gradcheck(lambda l, kk: PowerSpherical(l, kk).log_prob(x), (loc, k))


# ------------------------------------------------------------------------------ shapes and errors
def test_batch_shapes_and_expand():
    loc = torch.randn(4, 1, 6)
    for cls in (VonMisesFisher, PowerSpherical):
        law = cls(loc, torch.rand(3) * 5, radius=torch.tensor(2.0))
        assert law.batch_shape == (4, 3) and law.event_shape == (6,)
        x = law.sample((2,))
        assert x.shape == (2, 4, 3, 6) and law.log_prob(x).shape == (2, 4, 3)
        assert law.log_prob(x[:, :, :1]).shape == (2, 4, 3)             # value broadcasts against the batch
        big = law.expand((5, 4, 3))
        assert big.sample().shape == (5, 4, 3, 6) and big.entropy().shape == (5, 4, 3)
        torch.testing.assert_close(big.entropy()[0], law.entropy())


def test_bad_arguments_raise_one_line_errors():
    good = torch.tensor([1.0, 0.0, 0.0])
    for cls in (VonMisesFisher, PowerSpherical):
        for bad_k in (-1.0, float("inf"), float("nan")):
            with pytest.raises(ValueError, match="concentration must be finite and >= 0"):
                cls(good, bad_k)
        with pytest.raises(ValueError, match="loc must be nonzero"):
            cls(torch.zeros(2, 3), 1.0)
        with pytest.raises(ValueError, match="loc must be finite"):
            cls(torch.tensor([1.0, float("inf"), 0.0]), 1.0)
        with pytest.raises(ValueError, match=r"loc must have shape \[..., C\] with C >= 2"):
            cls(torch.ones(3, 1), 1.0)
        with pytest.raises(ValueError, match="radius must be finite and > 0"):
            cls(good, 1.0, radius=0.0)
        with pytest.raises(ValueError):
            cls(good, 1.0, validate_args=True).log_prob(torch.tensor([2.0, 0.0, 0.0]))   # off the sphere
    huge = VonMisesFisher(torch.tensor([1e30, 1e30, 0.0]), 1.0)                         # no overflow in ‖loc‖
    torch.testing.assert_close(huge.loc, torch.tensor([1.0, 1.0, 0.0]) / math.sqrt(2))
