"""The laws of the sphere, property-based; numerical edge cases driven deliberately."""
from __future__ import annotations

import math

import geoopt
import pytest
import torch
from hypothesis import given, strategies as st

from spherical import Hypersphere
from spherical import strategies as sst

# Relative tolerances for laws that compose several ops (round-off grows a few ulp per op).
RTOL = {torch.float32: 2e-5, torch.float64: 1e-11}


def close(a, b, case_or_dtype, scale=1.0, factor=1.0):
    """|a − b| ≤ factor·rtol·(scale + |b|) elementwise."""
    dt = case_or_dtype.dtype if hasattr(case_or_dtype, "dtype") and not isinstance(case_or_dtype, torch.dtype) \
        else case_or_dtype
    tol = factor * RTOL[dt]
    a, b = a.double(), b.double()
    return bool(((a - b).abs() <= tol * (scale + b.abs())).all())


def finite(*ts):
    return all(bool(torch.isfinite(t).all()) for t in ts)


# ---------------------------------------------------------------------------------------------- projections
@given(sst.sphere_cases(), sst.seeds, st.floats(-6, 6))
def test_projx_has_norm_r(case, seed, log_scale):
    S = Hypersphere(case.radius)
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(case.shape, generator=g, dtype=torch.float64) * 10.0**log_scale).to(case.dtype)
    x = S.projx(z)
    assert x.dtype == case.dtype and x.shape == z.shape
    assert close(x.norm(dim=-1), torch.full(case.batch_shape, case.radius, dtype=torch.float64), case)


def test_projx_of_zero_is_deterministic_point():
    S = Hypersphere(3.0)
    x = S.projx(torch.zeros(2, 5))
    assert torch.equal(x, torch.tensor([[3.0, 0, 0, 0, 0]] * 2))


@given(sst.points(), sst.seeds)
def test_proju_is_tangent_and_idempotent(cx, seed):
    case, x = cx
    S = Hypersphere(case.radius)
    u = torch.randn(case.shape, generator=torch.Generator().manual_seed(seed), dtype=case.dtype) * case.radius
    p = S.proju(x, u)
    scale = case.radius * case.radius * (1 + u.double().norm(dim=-1))
    assert close((p * x).sum(-1), torch.zeros(case.batch_shape), case, scale=scale, factor=10)
    assert close(S.proju(x, p), p, case, scale=case.radius * (1 + u.double().norm(dim=-1, keepdim=True)))
    assert torch.equal(S.egrad2rgrad(x, u), p)


# ---------------------------------------------------------------------------------------------- exp / log
@given(sst.point_pairs(angle=sst.angles(max_angle=math.pi - 1e-3)))
def test_exp_of_log_is_identity(pair):
    S = Hypersphere(pair.case.radius)
    y = S.expmap(pair.x, S.logmap(pair.x, pair.y))
    assert close(y, pair.y, pair.case, scale=pair.case.radius, factor=5)


@given(sst.points(), st.floats(0.0, math.pi - 1e-2), sst.seeds)
def test_log_of_exp_is_identity(cx, frac, seed):
    case, x = cx
    S = Hypersphere(case.radius)
    g = torch.Generator().manual_seed(seed)
    v = S.proju(x, torch.randn(case.shape, generator=g, dtype=case.dtype))
    v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    u = S.proju(x, v * frac * case.radius)
    back = S.logmap(x, S.expmap(x, u))
    # near ‖u‖ = πR the log is ill-conditioned (1/sin): allow for it
    cond = 1.0 / max(math.sin(frac), 1e-2)
    assert close(back, u, case, scale=case.radius, factor=10 * cond)


@given(sst.point_pairs())
def test_log_norm_equals_dist_and_dist_symmetric(pair):
    S = Hypersphere(pair.case.radius)
    d = S.dist(pair.x, pair.y)
    assert close(S.logmap(pair.x, pair.y).norm(dim=-1), d, pair.case, factor=5)
    assert close(S.dist(pair.y, pair.x), d, pair.case, factor=5)
    assert bool((d >= 0).all()) and bool((d <= math.pi * pair.case.radius * (1 + 1e-6)).all())


@given(sst.sphere_cases(), sst.seeds)
def test_triangle_inequality(case, seed):
    S = Hypersphere(case.radius)
    g = torch.Generator().manual_seed(seed)
    x, y, z = (S.projx(torch.randn(case.shape, generator=g, dtype=case.dtype)) for _ in range(3))
    lhs = S.dist(x, z).double()
    rhs = (S.dist(x, y) + S.dist(y, z)).double()
    assert bool((lhs <= rhs + 10 * RTOL[case.dtype] * case.radius).all())


# ---------------------------------------------------------------------------------------------- geodesics
@given(sst.point_pairs(angle=sst.angles(max_angle=math.pi - 1e-3)), st.floats(0, 1), st.floats(0, 1))
def test_geodesic_endpoints_and_constant_speed(pair, s, t):
    S = Hypersphere(pair.case.radius)
    x, y = pair.x, pair.y
    assert close(S.geodesic(x, y, 0.0), x, pair.case, scale=pair.case.radius)
    assert close(S.geodesic(x, y, 1.0), y, pair.case, scale=pair.case.radius, factor=5)
    d = S.dist(x, y).double()
    ds = S.dist(S.geodesic(x, y, s), S.geodesic(x, y, t)).double()
    assert close(ds, abs(s - t) * d, pair.case, scale=pair.case.radius, factor=10)


def test_geodesic_time_broadcasting():
    S = Hypersphere(2.0)
    x, y = S.random_uniform(1, 7, dtype=torch.float64), S.random_uniform(1, 7, dtype=torch.float64)
    ts = torch.linspace(0, 1, 5, dtype=torch.float64)[:, None]
    path = S.geodesic(x, y, ts)
    assert path.shape == (5, 7)
    for k in range(5):
        torch.testing.assert_close(path[k:k + 1], S.geodesic(x, y, float(ts[k])))


# ---------------------------------------------------------------------------------------------- transport
@given(sst.point_pairs(angle=sst.angles(max_angle=math.pi - 1e-3)), sst.seeds)
def test_transport_is_isometry_onto_tangent_space_and_reversible(pair, seed):
    case = pair.case
    S = Hypersphere(case.radius)
    x, y = pair.x, pair.y
    g = torch.Generator().manual_seed(seed)
    v = S.proju(x, torch.randn(case.shape, generator=g, dtype=case.dtype))
    w = S.proju(x, torch.randn(case.shape, generator=g, dtype=case.dtype))
    pv, pw = S.transp(x, y, v), S.transp(x, y, w)
    scale = 1 + v.double().norm(dim=-1) * w.double().norm(dim=-1)
    assert close((pv * pw).sum(-1), (v * w).sum(-1), case, scale=scale, factor=20)
    assert close((pv * y).sum(-1), torch.zeros(case.batch_shape), case, scale=case.radius * scale, factor=20)
    cond = 1.0 / max(math.sin(pair.theta), 1e-3) if pair.theta > math.pi / 2 else 1.0
    assert close(S.transp(y, x, pv), v, case, scale=1 + v.double().norm(dim=-1, keepdim=True), factor=20 * cond)


def test_transport_moves_the_geodesic_direction_along():
    S = Hypersphere(1.5)
    x, y = S.random_uniform(4, 6, dtype=torch.float64), S.random_uniform(4, 6, dtype=torch.float64)
    # the log direction at x is carried to minus the log direction at y
    torch.testing.assert_close(S.transp(x, y, S.logmap(x, y)), -S.logmap(y, x))


# ---------------------------------------------------------------------------------------------- symmetry
@given(sst.point_pairs(case=sst.sphere_cases(channel=st.integers(2, 12))), sst.seeds)
def test_invariance_under_orthogonal_maps(pair, seed):
    case = pair.case
    S = Hypersphere(case.radius)
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(case.channels, case.channels, generator=g, dtype=torch.float64))
    q = q.to(case.dtype)
    x, y = pair.x, pair.y
    assert close(S.dist(x @ q.T, y @ q.T), S.dist(x, y), case, scale=case.radius, factor=50)
    if pair.theta < math.pi - 1e-3:
        assert close(S.logmap(x @ q.T, y @ q.T), S.logmap(x, y) @ q.T, case, scale=case.radius, factor=100)


# ---------------------------------------------------------------------------------------------- edge cases
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("radius", [1e-2, 1.0, 32.0, 1e3])
def test_special_points_values_and_gradients_are_finite(dtype, radius):
    S = Hypersphere(radius)
    x0 = S.random_uniform(3, 5, dtype=dtype, generator=torch.Generator().manual_seed(0))
    cases = {
        "logmap(x, x)": lambda x, y: S.logmap(x, y), "dist(x, x)": lambda x, y: S.dist(x, y),
        "geodesic(x, x)": lambda x, y: S.geodesic(x, y, 0.3),
        "transp(x, x)": lambda x, y: S.transp(x, y, S.proju(x, torch.ones_like(x))),
    }
    for y_of in (lambda x: x, lambda x: -x):
        for name, fn in cases.items():
            x = x0.clone().requires_grad_(True)
            y = y_of(x0).clone().requires_grad_(True)
            out = fn(x, y)
            out.sum().backward()
            assert finite(out, x.grad, y.grad), name
    # u = 0 in expmap: value x, gradient w.r.t. u is the identity
    x = x0.clone()
    u = torch.zeros_like(x, requires_grad=True)
    out = S.expmap(x, u)
    assert torch.equal(out, x)
    (out * torch.arange(5, dtype=dtype)).sum().backward()
    torch.testing.assert_close(u.grad, torch.arange(5, dtype=dtype).expand(3, 5))


def test_logmap_at_y_equals_x_has_projection_jacobian():
    S = Hypersphere(2.0)
    x = S.random_uniform(6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    jac = torch.autograd.functional.jacobian(lambda y: S.logmap(x, y), x.clone())
    proj = torch.eye(6, dtype=torch.float64) - torch.outer(x, x) / 4.0
    torch.testing.assert_close(jac, proj)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@given(case=sst.sphere_cases(batch=st.just((4,))))
def test_antipodal_log_is_deterministic_and_exp_lands_on_minus_x(dtype, case):
    S = Hypersphere(case.radius)
    x = S.random_uniform(4, case.channels, dtype=dtype, generator=torch.Generator().manual_seed(case.channels))
    u = S.logmap(x, -x)
    assert close(u.norm(dim=-1), torch.full((4,), math.pi * case.radius, dtype=torch.float64), dtype, factor=5)
    assert close((u * x).sum(-1), torch.zeros(4), dtype, scale=case.radius**2, factor=10)
    assert torch.equal(u, S.logmap(x.clone(), -x))
    assert close(S.expmap(x, u), -x, dtype, scale=case.radius, factor=10)
    assert close(S.geodesic(x, -x, 1.0), -x, dtype, scale=case.radius, factor=10)
    v = S.proju(x, torch.ones_like(x))
    pv = S.transp(x, -x, v)
    assert close(pv.norm(dim=-1), v.norm(dim=-1), dtype, factor=10)


def test_antipodal_direction_rule_is_documented_one():
    S = Hypersphere(1.0)
    x = torch.tensor([[0.6, 0.8, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    u = S.logmap(x, -x)
    # row 0: x0² = .36 ≤ ½ → e_0 projected; row 1: x0² = 1 > ½ → e_1 projected
    e0 = torch.tensor([1.0, 0, 0], dtype=torch.float64) - 0.6 * x[0]
    torch.testing.assert_close(u[0], math.pi * e0 / e0.norm())
    torch.testing.assert_close(u[1], torch.tensor([0.0, math.pi, 0.0], dtype=torch.float64))


def test_gradcheck_float64_generic_points():
    S = Hypersphere(1.7)
    g = torch.Generator().manual_seed(3)
    x = S.random_uniform(3, 4, dtype=torch.float64, generator=g).requires_grad_(True)
    y = S.random_uniform(3, 4, dtype=torch.float64, generator=g).requires_grad_(True)
    u = (0.4 * S.proju(x, torch.randn(3, 4, dtype=torch.float64, generator=g))).detach().requires_grad_(True)
    t = torch.rand(3, 1, dtype=torch.float64, generator=g)
    assert torch.autograd.gradcheck(lambda a, b: S.logmap(a, b), (x, y))
    assert torch.autograd.gradcheck(lambda a, b: S.dist(a, b), (x, y))
    assert torch.autograd.gradcheck(lambda a, b: S.expmap(a, b), (x, u))
    assert torch.autograd.gradcheck(lambda a, b: S.geodesic(a, b, t), (x, y))
    assert torch.autograd.gradcheck(lambda a, b, c: S.transp(a, b, c), (x, y, u))
    # and at a tiny angle (the series branch)
    y2 = S.expmap(x, 1e-3 * u).detach().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: S.logmap(a, b), (x, y2))


# ---------------------------------------------------------------------------------------------- radius & dtypes
def test_tensor_radius_matches_per_sample_spheres():
    radii = torch.tensor([0.5, 2.0, 30.0], dtype=torch.float64).view(3, 1, 1)
    S = Hypersphere(radii)
    x = S.random_uniform(3, 4, 6, dtype=torch.float64)
    y = S.random_uniform(3, 4, 6, dtype=torch.float64)
    torch.testing.assert_close(x.norm(dim=-1), radii.view(3, 1).expand(3, 4))
    for i, r in enumerate([0.5, 2.0, 30.0]):
        Si = Hypersphere(r)
        torch.testing.assert_close(S.logmap(x, y)[i], Si.logmap(x[i], y[i]))
        torch.testing.assert_close(S.dist(x, y)[i], Si.dist(x[i], y[i]))
        torch.testing.assert_close(S.geodesic(x, y, 0.3)[i], Si.geodesic(x[i], y[i], 0.3))


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), torch.tensor([1.0, -2.0]), "abc"])
def test_bad_radius_raises(bad):
    with pytest.raises(ValueError, match="radius"):
        Hypersphere(bad)


def test_shape_errors_are_clear():
    S = Hypersphere(1.0)
    with pytest.raises(ValueError, match="broadcast"):
        S.logmap(torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match="C >= 2"):
        S.projx(torch.randn(3, 1))
    with pytest.raises(ValueError, match="radius of shape"):
        Hypersphere(torch.ones(5, 1)).projx(torch.randn(3, 4))
    ok, why = S.check_point_on_manifold(torch.ones(2, 3), explain=True)
    assert not ok and "‖x‖ should equal the radius" in why
    ok, why = S.check_vector_on_tangent(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]), explain=True)
    assert not ok and "orthogonal" in why


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_computed_in_float32(dtype):
    S = Hypersphere(32.0)
    x32, y32 = S.random_uniform(8, 64), S.random_uniform(8, 64)
    x, y = x32.to(dtype), y32.to(dtype)
    d = S.dist(x, y)
    assert d.dtype == dtype
    ref = S.dist(x.float(), y.float())
    assert torch.equal(d, ref.to(dtype))
    assert S.logmap(x, y).dtype == dtype and torch.isfinite(S.logmap(x, -x).float()).all()


def test_all_methods_compile_without_graph_breaks():
    S = Hypersphere(torch.full((2, 1), 3.0))
    x, y = S.random_uniform(2, 8), S.random_uniform(2, 8)
    u = S.proju(x, torch.randn(2, 8))
    for fn in (S.expmap, S.logmap, S.dist, S.proju, lambda a, b: S.geodesic(a, b, 0.25),
               lambda a, b: S.transp(a, b, u), lambda a, b: S.projx(a + b)):
        compiled = torch.compile(fn, fullgraph=True, backend="eager")
        b = u if fn is S.expmap else y
        torch.testing.assert_close(compiled(x, b), fn(x, b))


# ---------------------------------------------------------------------------------------------- geoopt interop
def test_riemannian_adam_optimises_on_the_sphere():
    torch.manual_seed(0)
    S = Hypersphere(2.0)
    target = S.random_uniform(5, 16)
    p = geoopt.ManifoldParameter(S.random_uniform(5, 16), manifold=S)
    opt = geoopt.optim.RiemannianAdam([p], lr=0.05)
    start = S.dist(p.detach(), target).mean().item()
    for _ in range(200):
        opt.zero_grad()
        loss = S.dist(p, target).square().sum()
        loss.backward()
        opt.step()
        assert S.check_point_on_manifold(p.detach(), atol=1e-4, rtol=1e-4)
    end = S.dist(p.detach(), target).mean().item()
    assert end < 0.05 * start
