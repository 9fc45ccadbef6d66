"""The geoopt manifold contract that geoopt's users rely on, exercised on `Hypersphere`.

Points it creates are `geoopt.ManifoldTensor`s bound to it; projections, retraction and transport obey
geoopt's identities; it composes with `geoopt.Scaled` and `geoopt.ProductManifold`; geoopt's Riemannian
optimisers minimise a Rayleigh quotient on it to the smallest eigenvector at R = 1 and R = 32.
"""
from __future__ import annotations

import math

import geoopt
import pytest
import torch
from hypothesis import given, strategies as st

from spherical import Hypersphere
from spherical import strategies as sst

F64 = torch.float64


# ---------------------------------------------------------------------------------------------- created points
@pytest.mark.parametrize("make", ["random_uniform", "random", "origin"])
def test_created_points_are_manifold_tensors_bound_to_the_manifold(make):
    S = Hypersphere(3.0)
    x = getattr(S, make)(4, 2, 5, dtype=F64)
    assert isinstance(x, geoopt.ManifoldTensor) and x.manifold is S
    assert x.shape == (4, 2, 5) and x.dtype == F64 and not x.requires_grad
    torch.testing.assert_close(x.norm(dim=-1), torch.full((4, 2), 3.0, dtype=F64))
    assert S.check_point_on_manifold(x)
    # geoopt's own methods on the tensor dispatch to this manifold
    y = S.random_uniform(4, 2, 5, dtype=F64)
    torch.testing.assert_close(x.dist(y, p="g"), S.dist(x, y))
    torch.testing.assert_close(x.logmap(y), S.logmap(x, y))
    # torch ops on it give plain tensors: a network never sees the subclass past its first op
    assert type(x * 1.0) is torch.Tensor and type(S.expmap(x, S.proju(x, y))) is torch.Tensor
    # a ManifoldParameter can be made from it directly
    p = geoopt.ManifoldParameter(x)
    assert p.manifold is S and p.requires_grad


def test_origin_is_r_e0_and_random_uniform_takes_a_size_tuple():
    S = Hypersphere(2.0)
    torch.testing.assert_close(S.origin((3, 4)), torch.tensor([[2.0, 0, 0, 0]] * 3))
    g = torch.Generator().manual_seed(0)
    a = S.random_uniform((2, 6), generator=g)
    b = S.random_uniform(2, 6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)


@pytest.mark.parametrize("make", ["random_uniform", "random", "origin"])
@pytest.mark.parametrize("size", [(), ((),), (3, 1), (1,), (4, 0), (-1, 3), ("a", 3), (2.5, "x")])
def test_impossible_sizes_raise_value_error(make, size):
    with pytest.raises(ValueError, match=r"size|sizes"):
        getattr(Hypersphere(1.0), make)(*size)


# ---------------------------------------------------------------------------------------------- identities
@given(sst.points(), sst.seeds)
def test_projx_and_proju_identities(cx, seed):
    case, x = cx
    S = Hypersphere(case.radius)
    g = torch.Generator().manual_seed(seed + 1)  # not the seed that drew x (its direction)
    z = torch.randn(case.shape, generator=g, dtype=case.dtype)
    tol = dict(rtol=1e-5, atol=1e-5 * case.radius) if case.dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12 * case.radius)
    torch.testing.assert_close(S.projx(x), x, **tol)  # points are fixed by projx
    torch.testing.assert_close(S.projx(S.projx(z)), S.projx(z), **tol)
    p = S.proju(x, z)
    ok, why = S.check_vector_on_tangent(x, p, explain=True, atol=1e-4, rtol=1e-4)
    assert ok, why
    torch.testing.assert_close(S.proju(x, p), p, rtol=tol["rtol"], atol=tol["rtol"] * (1 + p.abs().max().item()))
    torch.testing.assert_close(S.proju(x, x), torch.zeros_like(x), rtol=0, atol=10 * tol["rtol"] * case.radius)
    torch.testing.assert_close(S.egrad2rgrad(x, z), p)
    torch.testing.assert_close(S.inner(x, p), S.norm(x, p).square(), rtol=tol["rtol"], atol=tol["rtol"])


def test_broadcasting_follows_torch_rules():
    S = Hypersphere(1.5)
    g = torch.Generator().manual_seed(2)
    x = S.random_uniform(3, 1, 6, dtype=F64, generator=g)
    y = S.random_uniform(1, 4, 6, dtype=F64, generator=g)
    xe, ye = x.expand(3, 4, 6), y.expand(3, 4, 6)
    for name in ("logmap", "dist"):
        torch.testing.assert_close(getattr(S, name)(x, y), getattr(S, name)(xe, ye))
    assert S.dist(x, y).shape == (3, 4) and S.dist(x, y, keepdim=True).shape == (3, 4, 1)
    assert S.inner(x, S.logmap(x, y)).shape == (3, 4)
    torch.testing.assert_close(S.transp(x, y, S.logmap(x, y)), S.transp(xe, ye, S.logmap(xe, ye)))
    torch.testing.assert_close(S.geodesic(x, y, 0.25), S.geodesic(xe, ye, 0.25))


@given(sst.point_pairs(case=sst.sphere_cases(dtype=st.just(F64)), angle=sst.angles(max_angle=math.pi - 1e-3)))
def test_expmap_logmap_and_dist_is_norm_of_log(pair):
    S = Hypersphere(pair.case.radius)
    R = pair.case.radius
    log = S.logmap(pair.x, pair.y)
    torch.testing.assert_close(S.expmap(pair.x, log), pair.y, rtol=1e-9, atol=1e-9 * R)
    torch.testing.assert_close(S.norm(pair.x, log), S.dist(pair.x, pair.y), rtol=1e-10, atol=1e-12 * R)
    torch.testing.assert_close(S.dist(pair.x, pair.y), torch.full(pair.case.batch_shape, R * pair.theta, dtype=F64),
                               rtol=1e-9, atol=1e-12 * R)


@given(sst.points(sst.sphere_cases(dtype=st.just(F64), channel=st.integers(2, 10))), sst.seeds)
def test_retraction_is_second_order_and_transp_follow_retr_is_an_isometry(cx, seed):
    case, x = cx
    S = Hypersphere(case.radius)
    g = torch.Generator().manual_seed(seed + 1)  # not the seed that drew x (its direction)
    u = S.proju(x, torch.randn(case.shape, generator=g, dtype=F64))
    u = 0.1 * case.radius * u / u.norm(dim=-1, keepdim=True)
    v = S.proju(x, torch.randn(case.shape, generator=g, dtype=F64))
    errs = [(S.retr(x, s * u) - S.expmap(x, s * u)).norm(dim=-1).max().item() for s in (1.0, 0.5)]
    assert errs[1] <= errs[0] / 6 + 1e-13 * case.radius  # O(‖u‖³): halving u divides the gap by ≈ 8
    y = S.retr(x, u)
    assert S.check_point_on_manifold(y)
    pv = S.transp_follow_retr(x, u, v)
    torch.testing.assert_close(pv, S.transp(x, y, v))
    torch.testing.assert_close((pv * y).sum(-1), torch.zeros(case.batch_shape, dtype=F64), rtol=0,
                               atol=1e-10 * case.radius * (1 + v.norm(dim=-1).max().item()))
    torch.testing.assert_close(pv.norm(dim=-1), v.norm(dim=-1))
    y2, pv2 = S.retr_transp(x, u, v)
    torch.testing.assert_close(y2, y)
    torch.testing.assert_close(pv2, pv)


# ---------------------------------------------------------------------------------------------- composition
def test_scaled_multiplies_distances_and_divides_steps():
    S = Hypersphere(2.0)
    Z = geoopt.Scaled(S, 3.0)
    g = torch.Generator().manual_seed(4)
    x, y = S.random_uniform(5, 4, dtype=F64, generator=g), S.random_uniform(5, 4, dtype=F64, generator=g)
    torch.testing.assert_close(Z.dist(x, y), 3.0 * S.dist(x, y))
    torch.testing.assert_close(Z.logmap(x, y), 3.0 * S.logmap(x, y))
    torch.testing.assert_close(Z.expmap(x, Z.logmap(x, y)), y)
    torch.testing.assert_close(Z.retr(x, 3.0 * S.logmap(x, y)), S.retr(x, S.logmap(x, y)))
    assert Z.check_point_on_manifold(x)


def test_product_manifold_with_a_hypersphere_factor():
    S = Hypersphere(2.0)
    g = torch.Generator().manual_seed(5)
    a = S.random_uniform(3, 4, dtype=F64, generator=g)
    e = geoopt.ManifoldTensor(torch.randn(3, 2, dtype=F64, generator=g), manifold=geoopt.Euclidean(ndim=1))
    P = geoopt.ProductManifold.from_point(a, e, batch_dims=1)
    assert P.manifolds[0] is S
    b = S.random_uniform(3, 4, dtype=F64, generator=g)
    f = torch.randn(3, 2, dtype=F64, generator=g)
    xp, yp = P.pack_point(a, e), P.pack_point(b, f)
    assert xp.shape == (3, 6)
    torch.testing.assert_close(P.dist(xp, yp), torch.sqrt(S.dist(a, b) ** 2 + (e - f).norm(dim=-1) ** 2))
    log = P.logmap(xp, yp)
    torch.testing.assert_close(P.take_submanifold_value(log, 0), S.logmap(a, b))
    torch.testing.assert_close(P.expmap(xp, log), yp)
    z = P.projx(torch.randn(3, 6, dtype=F64, generator=g))
    torch.testing.assert_close(P.take_submanifold_value(z, 0).norm(dim=-1), torch.full((3,), 2.0, dtype=F64))
    r = P.random(3, 6, dtype=F64)
    assert S.check_point_on_manifold(P.take_submanifold_value(r, 0))


# ---------------------------------------------------------------------------------------------- optimisers
def _rayleigh_problem(n: int = 6):
    g = torch.Generator().manual_seed(6)
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=F64, generator=g))
    A = q @ torch.diag(torch.arange(1.0, n + 1, dtype=F64)) @ q.T  # eigenvalues 1 … n, gap 1
    return A, q[:, 0]


@pytest.mark.parametrize("radius", [1.0, 32.0])
@pytest.mark.parametrize("optimiser", ["adam", "sgd"])
def test_riemannian_optimisers_find_the_smallest_eigenvector(radius, optimiser):
    """min xᵀAx/R² over ‖x‖ = R is λ_min = 1, at x = ±R·v_min."""
    A, vmin = _rayleigh_problem()
    S = Hypersphere(radius)
    x = geoopt.ManifoldParameter(S.random_uniform(6, dtype=F64, generator=torch.Generator().manual_seed(8)))
    assert x.manifold is S
    if optimiser == "adam":
        opt = geoopt.optim.RiemannianAdam([x], lr=0.05 * radius)  # Adam's step is ≈ lr per coordinate
    else:
        opt = geoopt.optim.RiemannianSGD([x], lr=0.2 * radius**2, momentum=0.5)  # egrad scales as 1/R
    for _ in range(300):
        opt.zero_grad()
        loss = x @ A @ x / radius**2
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert abs(x.norm().item() - radius) < 1e-9 * radius
        assert (x @ A @ x / radius**2).item() == pytest.approx(1.0, abs=1e-6)
        assert abs(torch.dot(x / radius, vmin).item()) == pytest.approx(1.0, abs=1e-6)
