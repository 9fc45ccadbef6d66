"""log_likelihood: change of variables on products of spheres, checked against closed forms and quadrature."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spherical import Hypersphere, divergence, log_likelihood
from spherical.distributions import Uniform
from spherical.strategies import channels, radii, seeds

F64 = torch.float64


def log_area(C: int, R: float) -> float:
    """log |S^{C−1}_R| = log 2 + (C/2) log π − lgamma(C/2) + (C − 1) log R."""
    return math.log(2) + C / 2 * math.log(math.pi) - math.lgamma(C / 2) + (C - 1) * math.log(R)


def cap_field(C: int, R: float, kappa: float):
    """``v = −κ·P_x n``: pushes mass away from the pole n = e_0 as t grows (contracts onto the cap at t = 0).

    Along a meridian θ̇ = κ sin θ / R, so tan(θ₁/2) = tan(θ₀/2)·e^{κ/R}; the map x₀ ↦ x₁ scales the area
    element R^{C−1} sin^{C−2}θ dθ dω by (sin θ₁/sin θ₀)^{C−1}, hence
    log p₀(x₀) = −log|S^{C−1}_R| + (C − 1)·log(sin θ₁/sin θ₀). Its divergence is κ(C − 1)⟨x, n⟩/R².
    """
    n = torch.zeros(C, dtype=F64)
    n[0] = 1.0

    def v(x, t):
        return -kappa * (n - (x @ n)[..., None] * x / R**2)

    def exact_logp(x):
        th0 = torch.arccos(((x @ n) / R).clamp(-1, 1))
        th1 = 2 * torch.atan(torch.tan(th0 / 2) * math.exp(kappa / R))
        return (C - 1) * (torch.log(torch.sin(th1)) - torch.log(torch.sin(th0))) - log_area(C, R)

    return v, exact_logp, n


def rotation(C: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(C, C, dtype=F64, generator=g)
    A = A - A.T
    return lambda x, t: (1 + t) * (x @ A.T)


GRID = torch.linspace(0, 1, 17, dtype=F64)


@settings(max_examples=10)
@given(C=channels(2, 6), R=radii(0.1, 10.0), seed=seeds)
def test_divergence_of_gradient_of_linear_function_is_minus_laplacian(C, R, seed):
    """div_S P_x n = −(C − 1)⟨x, n⟩/R², for any radius and dimension; both estimators agree with it."""
    S = Hypersphere(R)
    g = torch.Generator().manual_seed(seed)
    x = S.random_uniform(4, C, dtype=F64, generator=g)
    n = torch.randn(C, dtype=F64, generator=g)
    v, d = divergence(lambda y, t: n + 3.0 * y, x, torch.tensor(0.0), sphere=S)
    torch.testing.assert_close(d, -(C - 1) * (x @ n) / R**2, rtol=1e-9, atol=1e-9 / R**2)
    torch.testing.assert_close(v, n - (x @ n)[:, None] * x / R**2)  # the radial 3y is projected away
    # Hutchinson with many probes converges to it
    eps = torch.randn((3000, 4, C), dtype=F64, generator=g)
    _, dh = divergence(lambda y, t: n.expand_as(y), x, torch.tensor(0.0), sphere=S, method="hutchinson", probe_vectors=eps)
    scale = (C - 1) * n.norm().item() / R
    assert (dh - d).abs().max().item() < 0.15 * scale


@pytest.mark.parametrize("divergence_", ["exact", "hutchinson"])
@pytest.mark.parametrize("method", ["euler", "rk4", "dopri5"])
def test_rotation_flow_keeps_the_uniform_density(method, divergence_):
    """A skew-symmetric linear field is divergence-free: log p is the base log-density exactly."""
    C, R = 4, 2.0
    S = Hypersphere(R)
    x = S.random_uniform(5, C, dtype=F64, generator=torch.Generator().manual_seed(0))
    lp = log_likelihood(rotation(C), x, GRID, sphere=S, method=method, divergence=divergence_,
                        generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(lp, torch.full((5,), -log_area(C, R), dtype=F64), rtol=0, atol=1e-12)
    # The uniform base hides where the flow ends; a non-uniform base does not: divergence 0, so
    # log p(x) = log p_base(x₁) with x₁ = exp(∫₀¹(1+t)dt · A) x = exp(1.5·A) x (A from rotation(C, seed 0)).
    g = torch.Generator().manual_seed(0)
    A = torch.randn(C, C, dtype=F64, generator=g)
    A = A - A.T
    mu = torch.zeros(C, dtype=F64)
    mu[0] = R
    base = lambda y: 3.0 * (y @ mu) / R**2  # an unnormalised vMF-like log-density: only x₁ matters
    lp_b = log_likelihood(rotation(C), x, GRID, sphere=S, method=method, divergence=divergence_, base=base,
                          generator=torch.Generator().manual_seed(0))
    x1 = x @ torch.linalg.matrix_exp(1.5 * A).T
    tol = {"euler": 1.0, "rk4": 2e-4, "dopri5": 1e-4}[method]  # euler: 16 first-order steps (error 0.64)
    torch.testing.assert_close(lp_b, base(x1), rtol=0, atol=tol)


@pytest.mark.parametrize("C,R,method,tol", [
    (3, 1.0, "rk4", 1e-6), (3, 2.5, "rk4", 1e-6), (5, 0.7, "rk4", 1e-6), (3, 1.0, "midpoint", 3e-3), (3, 1.0, "heun", 3e-3),
    (3, 1.0, "euler", 0.2),
    (3, 2.5, "dopri5", 1e-6), (5, 0.7, "dopri5", 1e-6), (3, 1.0, "bosh3", 1e-5)])
def test_cap_flow_matches_closed_form(C, R, method, tol):
    v, exact_logp, _ = cap_field(C, R, kappa=1.5)
    S = Hypersphere(R)
    x = S.random_uniform(6, C, dtype=F64, generator=torch.Generator().manual_seed(1))
    lp = log_likelihood(v, x, torch.linspace(0, 1, 33, dtype=F64), sphere=S, method=method, rtol=1e-7, atol=1e-7)
    assert (lp - exact_logp(x)).abs().max().item() < tol


@pytest.mark.parametrize("R", [1.0, 3.0])
def test_cap_density_integrates_to_one_over_a_lat_lon_grid(R):
    """∫ p dA over S²_R with dA = R² cos(lat) dlat dlon: 1 ± 1e-2 (the density is w.r.t. surface measure)."""
    v, _, _ = cap_field(3, R, kappa=2.0 * R)  # same angular contraction for every R
    S = Hypersphere(R)
    nlat, nlon = 90, 60
    lat = (torch.arange(nlat, dtype=F64) + 0.5) / nlat * math.pi - math.pi / 2
    lon = (torch.arange(nlon, dtype=F64) + 0.5) / nlon * 2 * math.pi
    la, lo = torch.meshgrid(lat, lon, indexing="ij")
    # the pole n = e_0 sits at lat = π/2
    x = R * torch.stack([torch.sin(la), torch.cos(la) * torch.cos(lo), torch.cos(la) * torch.sin(lo)], -1).reshape(-1, 3)
    lp = log_likelihood(v, x, torch.linspace(0, 1, 17, dtype=F64), sphere=S, method="rk4")
    dA = R**2 * torch.cos(la).reshape(-1) * (math.pi / nlat) * (2 * math.pi / nlon)
    mass = (lp.exp() * dA).sum().item()
    assert abs(mass - 1.0) < 1e-2, mass
    # and it is concentrated: far from uniform (the top cap above lat 60° holds most of the mass)
    assert (lp.exp() * dA)[la.reshape(-1) > math.pi / 3].sum().item() > 0.5


def test_hutchinson_agrees_with_exact_within_its_standard_error():
    C, R = 4, 1.5
    S = Hypersphere(R)
    g = torch.Generator().manual_seed(3)
    W = torch.randn(C, C, dtype=F64, generator=g)
    v = lambda x, t: torch.tanh(x @ W.T) * (1 + t)  # noqa: E731  (non-symmetric Jacobian, not tangent)
    x = S.random_uniform(3, C, dtype=F64, generator=g)
    exact = log_likelihood(v, x, GRID, sphere=S)
    K = 40  # K independent estimates per point in one call: samples are independent along the batch axis
    xr = x.repeat(K, 1)
    runs = log_likelihood(v, xr, GRID, sphere=S, divergence="hutchinson", probes=2,
                          generator=torch.Generator().manual_seed(0)).reshape(K, -1)
    mean, se = runs.mean(0), runs.std(0) / math.sqrt(K)
    assert bool((se > 1e-4).all())  # it is an estimate: runs differ
    assert bool(((mean - exact).abs() <= 4 * se).all()), (mean - exact, se)
    gauss = log_likelihood(v, xr, GRID, sphere=S, divergence="hutchinson-gaussian",
                           generator=torch.Generator().manual_seed(1)).reshape(K, -1)
    assert bool(((gauss.mean(0) - exact).abs() <= 4 * gauss.std(0) / math.sqrt(K)).all())
    # more probes, smaller spread (the standard error shrinks like 1/sqrt(probes))
    many = log_likelihood(v, xr, GRID, sphere=S, divergence="hutchinson", probes=32,
                          generator=torch.Generator().manual_seed(2)).reshape(K, -1)
    assert bool((many.std(0) < 0.5 * runs.std(0)).all())
    # same generator seed, same estimate
    a = log_likelihood(v, x, GRID, sphere=S, divergence="hutchinson", generator=torch.Generator().manual_seed(9))
    b = log_likelihood(v, x, GRID, sphere=S, divergence="hutchinson", generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, b)


def test_tokens_sum_for_independent_tokens_and_coupled_exact_trace():
    """[B, N, C]: with tokens moving independently, log p is the sum of the per-token log-likelihoods."""
    B, N, C, R = 3, 4, 3, 2.0
    S = Hypersphere(R)
    g = torch.Generator().manual_seed(4)
    W = torch.randn(N, C, C, dtype=F64, generator=g)
    x = S.random_uniform(B, N, C, dtype=F64, generator=g)

    def v(y, t):  # token n uses its own weights W[n]
        return torch.tanh(torch.einsum("nij,bnj->bni", W, y)) * (1 + t)

    grid = torch.linspace(0, 1, 9, dtype=F64)
    joint = log_likelihood(v, x, grid, sphere=S)
    per_token = sum(log_likelihood(lambda y, t, n=n: torch.tanh(y @ W[n].T) * (1 + t), x[:, n], grid, sphere=S)
                    for n in range(N))
    torch.testing.assert_close(joint, per_token, rtol=1e-10, atol=1e-10)
    base = Uniform(C, R).log_prob(x).sum(-1)
    assert (joint - base).abs().min() > 1e-3  # the flow changes the density

    # coupled tokens: exact divergence = Σ_i ⟨e_i, J e_i⟩ over an explicit orthonormal tangent basis
    M = torch.randn(N * C, N * C, dtype=F64, generator=g) / 3

    def vc(y, t):
        return torch.sin(y.reshape(y.shape[0], -1) @ M.T).reshape(y.shape)

    _, d = divergence(vc, x, torch.tensor(0.0), sphere=S)
    for b in range(B):
        f = lambda z: S.proju(z.reshape(N, C), vc(z.reshape(1, N, C), None)[0]).reshape(-1)  # noqa: E731
        J = torch.autograd.functional.jacobian(f, x[b].reshape(-1))
        basis = []
        for n in range(N):  # orthonormal basis of T_{x_n}S
            P = torch.eye(C, dtype=F64) - torch.outer(x[b, n], x[b, n]) / R**2
            q = torch.linalg.svd(P)[0][:, : C - 1]  # eigenvectors of eigenvalue 1
            blk = torch.zeros(N * C, C - 1, dtype=F64)
            blk[n * C:(n + 1) * C] = q
            basis.append(blk)
        E = torch.cat(basis, 1)
        torch.testing.assert_close(d[b], torch.trace(E.T @ J @ E), rtol=1e-10, atol=1e-10)


def test_no_gradient_leaks_and_bad_arguments():
    S = Hypersphere(1.0)
    lin = torch.nn.Linear(3, 3).double()
    x = S.random_uniform(2, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    x.requires_grad_(True)
    lp = log_likelihood(lambda y, t: lin(y), x, GRID, sphere=S)
    assert not lp.requires_grad and lp.grad_fn is None and lin.weight.grad is None and x.grad is None
    with pytest.raises(ValueError, match="projected_rk4.*not supported"):
        log_likelihood(lambda y, t: y, x, GRID, sphere=S, method="projected_rk4")
    with pytest.raises(ValueError, match="divergence must be"):
        log_likelihood(lambda y, t: y, x, GRID, sphere=S, divergence="trace")
    with pytest.raises(ValueError, match="probes"):
        log_likelihood(lambda y, t: y, x, GRID, sphere=S, divergence="hutchinson", probes=0)
    with pytest.raises(ValueError, match=r"\[B, \.\.\., C\]"):
        log_likelihood(lambda y, t: y, x[0].detach(), GRID, sphere=S)
    with pytest.raises(ValueError, match="shape of x"):
        log_likelihood(lambda y, t: y[..., :2], x, GRID, sphere=S)
    with pytest.raises(ValueError, match="probes of shape"):
        divergence(lambda y, t: y, x.detach(), torch.tensor(0.0), sphere=S, method="hutchinson")
    with pytest.raises(ValueError, match="'exact' or 'hutchinson'"):
        divergence(lambda y, t: y, x.detach(), torch.tensor(0.0), sphere=S, method="trace")
    with pytest.raises(ValueError, match=r"base\(x\) must return"):
        log_likelihood(lambda y, t: y, x, GRID, sphere=S, base=lambda z: z.sum())


def test_per_sample_radius_tensor():
    """A per-sample radius [B, 1]: each sample's density is w.r.t. its own sphere's surface measure."""
    C = 3
    R = torch.tensor([[1.0], [2.5]], dtype=F64)
    S = Hypersphere(R)
    x = S.random_uniform(2, C, dtype=F64, generator=torch.Generator().manual_seed(2))
    lp = log_likelihood(rotation(C), x, GRID, sphere=S)
    torch.testing.assert_close(lp, torch.tensor([-log_area(C, 1.0), -log_area(C, 2.5)], dtype=F64))


def test_tiny_dit_latents_batch_is_per_sample_and_hutchinson_is_unbiased():
    """[B, N, C] through a LightningDiT (tokens interact by attention): each sample's log p does not depend
    on the rest of the batch, and Hutchinson estimates centre on the exact trace."""
    from models.dit import DiTConfig, LightningDiT

    torch.manual_seed(0)
    m = LightningDiT(DiTConfig(in_channels=4, num_tokens=4, hidden_size=32, depth=1, num_heads=2,
                               num_classes=3)).double().eval()  # eval: no label dropout
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.2 * torch.randn_like(p))  # leave the zero init: a non-trivial field
    S = Hypersphere(2.0)
    x = S.random_uniform(3, 4, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2])

    def v(xx, tt, yy=y):  # labels cycle with the batch (x.repeat(K, ...) below)
        return m(xx, tt.reshape(1).expand(xx.shape[0]), yy.repeat(xx.shape[0] // len(yy)))

    grid = torch.linspace(0, 1, 3, dtype=F64)
    lp = log_likelihood(v, x, grid, sphere=S)
    assert (lp + 4 * log_area(4, 2.0)).abs().min() > 1e-3
    alone = torch.cat([log_likelihood(lambda xx, tt, i=i: v(xx, tt, y[i:i + 1]), x[i:i + 1], grid, sphere=S)
                       for i in range(3)])
    torch.testing.assert_close(lp, alone, rtol=1e-9, atol=1e-9)
    K = 16
    runs = log_likelihood(v, x.repeat(K, 1, 1), grid, sphere=S, divergence="hutchinson",
                          generator=torch.Generator().manual_seed(0)).reshape(K, 3)
    se = runs.std(0) / math.sqrt(K)
    assert bool((se > 1e-4).all()) and bool(((runs.mean(0) - lp).abs() <= 4 * se).all()), (runs.mean(0) - lp, se)
