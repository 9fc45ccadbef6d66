"""Every `Hypersphere` op, `geodesic_flow` and `rfm_loss` under torch.func: vmap, grad, jacrev, jacfwd, jvp.

vmap's per-sample fallback (a Python loop for ops without a batching rule) is switched off for the whole
module, so an op that would fall back raises instead of silently running slowly.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, strategies as st
from torch.func import grad, jacfwd, jacrev, jvp, vmap

from spherical import Hypersphere, geodesic_flow, rfm_loss
from spherical import strategies as sst
from spherical._kernels import eager_mode

F64 = torch.float64


@pytest.fixture(autouse=True)
def no_vmap_fallback():
    """Ops without a batching rule raise instead of looping per sample."""
    before = torch._C._functorch._is_vmap_fallback_enabled()
    torch._C._functorch._set_vmap_fallback_enabled(False)
    yield
    torch._C._functorch._set_vmap_fallback_enabled(before)


def batch(S: Hypersphere, B: int = 6, C: int = 5, seed: int = 0):
    """x, y, u, v: ``[B, C]`` float64 with the special rows y = x (row 0) and y = −x (row 1)."""
    g = torch.Generator().manual_seed(seed)
    x = S.random_uniform(B, C, dtype=F64, generator=g).as_subclass(torch.Tensor)
    y = S.random_uniform(B, C, dtype=F64, generator=g).as_subclass(torch.Tensor)
    y = torch.cat([x[:1], -x[1:2], y[2:]])
    u = 0.7 * S.proju(x, torch.randn(B, C, dtype=F64, generator=g))
    v = S.proju(x, torch.randn(B, C, dtype=F64, generator=g))
    return x, y, u, v


def ops(S: Hypersphere):
    """name -> (fn of (x, y, u, v, t), which of the arguments are per-sample)."""
    return {
        "projx": lambda x, y, u, v, t: S.projx(x + u),
        "proju": lambda x, y, u, v, t: S.proju(x, v + x),
        "egrad2rgrad": lambda x, y, u, v, t: S.egrad2rgrad(x, v + x),
        "inner": lambda x, y, u, v, t: S.inner(x, u, v),
        "norm": lambda x, y, u, v, t: S.norm(x, u),
        "expmap": lambda x, y, u, v, t: S.expmap(x, u),
        "retr": lambda x, y, u, v, t: S.retr(x, u),
        "logmap": lambda x, y, u, v, t: S.logmap(x, y),
        "dist": lambda x, y, u, v, t: S.dist(x, y),
        "geodesic": lambda x, y, u, v, t: S.geodesic(x, y, t),
        "geodesic_with_velocity": lambda x, y, u, v, t: torch.cat(S.geodesic_with_velocity(x, y, t), -1),
        "transp": lambda x, y, u, v, t: S.transp(x, y, v),
        "transp_follow_expmap": lambda x, y, u, v, t: S.transp_follow_expmap(x, u, v),
        "transp_follow_retr": lambda x, y, u, v, t: S.transp_follow_retr(x, u, v),
        "expmap_transp": lambda x, y, u, v, t: torch.cat(S.expmap_transp(x, u, v), -1),
        "retr_transp": lambda x, y, u, v, t: torch.cat(S.retr_transp(x, u, v), -1),
        "geodesic_flow": lambda x, y, u, v, t: torch.cat(geodesic_flow(x, y, t, sphere=S), -1),
    }


RADII = [1.0, 2.5, torch.tensor(0.5, dtype=F64)]


def test_eager_mode_is_false_inside_transforms():
    assert eager_mode()
    seen = []
    vmap(lambda a: seen.append(eager_mode()) or a)(torch.ones(2, 3))
    jvp(lambda a: seen.append(eager_mode()) or a, (torch.ones(3),), (torch.ones(3),))
    grad(lambda a: seen.append(eager_mode()) or a.sum())(torch.ones(3))
    assert seen == [False, False, False]


@pytest.mark.parametrize("radius", RADII, ids=["R1", "R2.5", "R0.5tensor"])
def test_vmap_equals_batched_for_every_op(radius):
    S = Hypersphere(radius)
    x, y, u, v = batch(S)
    t = torch.linspace(0.1, 0.9, x.shape[0], dtype=F64)
    for name, fn in ops(S).items():
        batched = fn(x, y, u, v, t[:, None])
        mapped = vmap(fn)(x, y, u, v, t)  # each sample is [C] (t a 0-dim time)
        torch.testing.assert_close(mapped, batched, rtol=1e-13, atol=1e-13, msg=name)


def test_vmap_over_one_argument_only():
    """In-place updates would fail here (unbatched base, batched update): the functional path is used."""
    S = Hypersphere(2.0)
    x, y, u, v = batch(S)
    x0, y0 = x[3], y[3]
    ts = torch.linspace(0, 1, 5, dtype=F64)
    torch.testing.assert_close(vmap(lambda t: S.geodesic(x0, y0, t))(ts), S.geodesic(x0, y0, ts[:, None]))
    torch.testing.assert_close(vmap(S.expmap, in_dims=(None, 0))(x0, u), S.expmap(x0.expand_as(u), u))
    torch.testing.assert_close(vmap(S.logmap, in_dims=(None, 0))(x0, y), S.logmap(x0.expand_as(y), y))
    torch.testing.assert_close(vmap(S.logmap, in_dims=(None, 0))(x0, torch.stack([x0, -x0])),
                               S.logmap(torch.stack([x0, x0]), torch.stack([x0, -x0])))
    torch.testing.assert_close(vmap(S.transp, in_dims=(None, None, 0))(x0, y0, v),
                               S.transp(x0.expand_as(v), y0.expand_as(v), v))


def test_vmap_of_rfm_loss_is_per_sample_loss():
    S = Hypersphere(3.0)
    g = torch.Generator().manual_seed(1)
    x0, x1 = S.random_uniform(4, 7, 6, dtype=F64, generator=g), S.random_uniform(4, 7, 6, dtype=F64, generator=g)
    t = torch.rand(4, dtype=F64, generator=g)
    vel = torch.randn(4, 7, 6, dtype=F64, generator=g)

    def per_sample(a, b, s, w):
        xt, ut = geodesic_flow(a, b, s, sphere=S)
        return rfm_loss(w, xt, ut, lambda_rad=0.3).total

    mapped = vmap(per_sample)(x0, x1, t, vel)
    xt, ut = geodesic_flow(x0, x1, t.view(4, 1, 1), sphere=S)
    expected = torch.stack([rfm_loss(vel[i], xt[i], ut[i], lambda_rad=0.3).total for i in range(4)])
    torch.testing.assert_close(mapped, expected, rtol=1e-13, atol=0)
    torch.testing.assert_close(mapped.mean(), rfm_loss(vel, xt, ut, lambda_rad=0.3).total, rtol=1e-13, atol=0)


@pytest.mark.parametrize("name", ["expmap", "logmap", "dist", "geodesic", "geodesic_with_velocity", "transp",
                                  "projx", "proju", "geodesic_flow"])
def test_jacrev_jacfwd_and_autograd_agree(name):
    S = Hypersphere(1.7)
    x, y, u, v = batch(S, seed=3)
    fn = ops(S)[name]
    t = torch.tensor(0.35, dtype=F64)
    for row in (0, 1, 4):  # y = x, y = −x, generic
        args = (x[row], y[row], u[row], v[row], t)
        for argnum in range(4):
            rev = jacrev(fn, argnums=argnum)(*args)
            fwd = jacfwd(fn, argnums=argnum)(*args)
            ref = torch.autograd.functional.jacobian(lambda a: fn(*args[:argnum], a, *args[argnum + 1:]),
                                                     args[argnum])
            assert torch.isfinite(rev).all(), (name, row, argnum)
            torch.testing.assert_close(rev, ref, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(fwd, ref, rtol=1e-10, atol=1e-10)


@given(sst.point_pairs(case=sst.sphere_cases(dtype=st.just(F64), batch=st.just(())),
                       angle=sst.angles(max_angle=math.pi - 0.1)), sst.seeds)
def test_jvp_of_expmap_equals_central_difference(pair, seed):
    S = Hypersphere(pair.case.radius)
    x = pair.x
    u = S.logmap(x, pair.y)
    w = S.proju(x, torch.randn(x.shape, dtype=F64, generator=torch.Generator().manual_seed(seed)))
    w = w * pair.case.radius / w.norm().clamp_min(1e-300)
    value, tangent = jvp(lambda a: S.expmap(x, a), (u,), (w,))
    h = 1e-6
    fd = (S.expmap(x, u + h * w) - S.expmap(x, u - h * w)) / (2 * h)
    torch.testing.assert_close(value, S.expmap(x, u))
    torch.testing.assert_close(tangent, fd, rtol=1e-6, atol=1e-6 * pair.case.radius)


def test_jvp_in_time_of_geodesic_is_its_velocity():
    S = Hypersphere(4.0)
    x, y, _, _ = batch(S, seed=5)
    t = torch.full((x.shape[0], 1), 0.6, dtype=F64)
    _, dt = jvp(lambda s: S.geodesic(x, y, s), (t,), (torch.ones_like(t),))
    torch.testing.assert_close(dt, S.geodesic_with_velocity(x, y, t)[1])


def test_grad_of_distance_is_minus_unit_log():
    """∇_x d(x, y) = −log_x(y)/d on the sphere."""
    S = Hypersphere(2.0)
    x, y, _, _ = batch(S, seed=7)
    x, y = x[2:], y[2:]
    g = vmap(grad(lambda a, b: S.dist(a, b)))(x, y)
    torch.testing.assert_close(S.proju(x, g), -S.logmap(x, y) / S.dist(x, y, keepdim=True))


def _divergence(field, x: torch.Tensor, radius: float, jac=jacrev) -> torch.Tensor:
    """Riemannian divergence on the sphere: tr((I − x xᵀ/R²)·J) with J the ambient Jacobian, per point."""
    J = vmap(jac(field))(x)  # [B, C, C]
    C = x.shape[-1]
    P = torch.eye(C, dtype=x.dtype) - x[:, :, None] * x[:, None, :] / radius**2
    return (P * J.transpose(-1, -2)).sum((-1, -2))


@pytest.mark.parametrize("radius", [1.0, 2.5])
@pytest.mark.parametrize("jac", [jacrev, jacfwd], ids=["jacrev", "jacfwd"])
def test_vmap_jacobian_divergence_matches_closed_forms_on_s2(radius, jac):
    S = Hypersphere(radius)
    g = torch.Generator().manual_seed(11)
    p = S.random_uniform(3, dtype=F64, generator=g).as_subclass(torch.Tensor)
    x = S.random_uniform(64, 3, dtype=F64, generator=g).as_subclass(torch.Tensor)
    theta = S.dist(x, p.expand_as(x)) / radius
    x = x[(theta > 0.05) & (theta < math.pi - 0.05)]
    theta = S.dist(x, p.expand_as(x)) / radius
    # log_x(p) = −grad(d²/2): div = −Δ(d²/2) = −(1 + θ cot θ) on S² (any radius: θ = d/R)
    div_log = _divergence(lambda a: S.logmap(a, p), x, radius, jac)
    torch.testing.assert_close(div_log, -(1 + theta / torch.tan(theta)), rtol=1e-9, atol=1e-9)
    # the tangent part of a constant field a is grad⟨a, x⟩, whose Laplacian on S²_R is −2⟨a, x⟩/R²
    a = torch.tensor([0.3, -1.2, 0.5], dtype=F64)
    div_a = _divergence(lambda q: S.proju(q, a), x, radius, jac)
    torch.testing.assert_close(div_a, -2 * (x @ a) / radius**2, rtol=1e-9, atol=1e-9)
