"""Riemannian flow matching: closed-form path and velocity, loss, time law."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, strategies as st

from spherical import (FlowSample, Hypersphere, RFMLoss, dimension_shift, geodesic_flow, rfm_loss, sample_time,
                       time_shift)
from spherical import strategies as sst

f64_pairs = sst.point_pairs(case=sst.sphere_cases(dtype=st.just(torch.float64), radius=sst.radii(1e-1, 1e2)),
                            angle=sst.angles(max_angle=math.pi - 1e-3))
times = st.floats(0.0, 1.0)


@given(f64_pairs, st.floats(1e-3, 1 - 1e-3))
def test_velocity_is_central_difference_of_geodesic(pair, t):
    S = Hypersphere(pair.case.radius)
    xt, ut = geodesic_flow(pair.x, pair.y, t, sphere=S)
    h = 1e-5
    fd = (S.geodesic(pair.x, pair.y, t + h) - S.geodesic(pair.x, pair.y, t - h)) / (2 * h)
    torch.testing.assert_close(ut, fd, rtol=1e-6, atol=1e-6 * pair.case.radius)
    torch.testing.assert_close(xt, S.geodesic(pair.x, pair.y, t))


@given(f64_pairs, times)
def test_velocity_tangent_constant_speed_and_log_identity(pair, t):
    R = pair.case.radius
    S = Hypersphere(R)
    xt, ut = geodesic_flow(pair.x, pair.y, t, sphere=S)
    torch.testing.assert_close((ut * xt).sum(-1), torch.zeros_like(ut[..., 0]), rtol=0, atol=1e-9 * R * R)
    torch.testing.assert_close(ut.norm(dim=-1), S.dist(pair.x, pair.y), rtol=1e-9, atol=1e-9 * R)
    torch.testing.assert_close(xt.norm(dim=-1), torch.full_like(xt[..., 0], R))
    if t < 0.99:
        torch.testing.assert_close(ut, S.logmap(xt, pair.y) / (1 - t), rtol=1e-7, atol=1e-7 * R)


def test_paper_slerp_formula_and_shapes():
    R = 31.99
    S = Hypersphere(R)
    g = torch.Generator().manual_seed(0)
    x0, x1 = S.random_uniform(3, 5, 16, dtype=torch.float64, generator=g), S.random_uniform(3, 5, 16, dtype=torch.float64, generator=g)
    t = torch.rand(3, 1, 1, dtype=torch.float64, generator=g)
    out = geodesic_flow(x0, x1, t, sphere=S)
    assert isinstance(out, FlowSample) and out.xt.shape == out.ut.shape == (3, 5, 16)
    om = torch.arccos((x0 * x1).sum(-1, keepdim=True) / R**2)
    xt = (torch.sin((1 - t) * om) * x0 + torch.sin(t * om) * x1) / torch.sin(om)
    ut = om / torch.sin(om) * (torch.cos(t * om) * x1 - torch.cos((1 - t) * om) * x0)
    torch.testing.assert_close(out.xt, xt)
    torch.testing.assert_close(out.ut, ut)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("t", [0.0, 0.5, 1.0])
def test_degenerate_pairs_are_finite_with_finite_gradients(dtype, t):
    S = Hypersphere(32.0)
    x0 = S.random_uniform(4, 8, dtype=dtype, generator=torch.Generator().manual_seed(1))
    # x1 = x0: no motion
    a, b = x0.clone().requires_grad_(True), x0.clone().requires_grad_(True)
    xt, ut = geodesic_flow(a, b, t, sphere=S)
    assert torch.equal(ut, torch.zeros_like(ut)) and torch.allclose(xt, x0)
    (xt.sum() + ut.square().sum()).backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
    # x1 = −x0: a deterministic great circle of length πR
    a, b = x0.clone().requires_grad_(True), (-x0).clone().requires_grad_(True)
    xt, ut = geodesic_flow(a, b, t, sphere=S)
    torch.testing.assert_close(ut.norm(dim=-1), torch.full((4,), math.pi * 32.0, dtype=dtype), rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(xt.norm(dim=-1), torch.full((4,), 32.0, dtype=dtype), rtol=1e-5, atol=1e-4)
    (xt.sum() + ut.square().sum()).backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()


def test_default_sphere_is_unit():
    x0 = torch.tensor([[1.0, 0.0]])
    x1 = torch.tensor([[0.0, 1.0]])
    xt, ut = geodesic_flow(x0, x1, 0.5)
    torch.testing.assert_close(xt, torch.tensor([[math.sqrt(0.5)] * 2]))
    torch.testing.assert_close(ut.norm(), torch.tensor(math.pi / 2))


# --------------------------------------------------------------------------------------------- loss
@given(sst.points(sst.sphere_cases(dtype=st.just(torch.float64))), st.floats(0.0, 10.0), st.floats(0.0, 2.0))
def test_loss_zero_at_target_and_grows_with_radial_error(cx, s, lam):
    case, x0 = cx
    S = Hypersphere(case.radius)
    x1 = S.random_uniform(*case.shape, dtype=case.dtype, generator=torch.Generator().manual_seed(7))
    xt, ut = geodesic_flow(x0, x1, 0.3, sphere=S)
    zero = rfm_loss(ut, xt, ut, lambda_rad=lam)
    assert isinstance(zero, RFMLoss)
    assert zero.total.item() < 1e-18 * (1 + case.radius**4) + 1e-20
    xhat = xt / xt.norm(dim=-1, keepdim=True)
    out = rfm_loss(ut + s * xhat, xt, ut, lambda_rad=lam)
    torch.testing.assert_close(out.radial, torch.tensor(s * s, dtype=torch.float64))
    assert out.tangent.item() < 1e-16 * (1 + case.radius**2)
    torch.testing.assert_close(out.total, out.tangent + lam * out.radial)


def test_loss_reduction_is_mean_of_per_token_squared_norms():
    xt = torch.zeros(2, 3, 4)
    xt[..., 0] = 1.0
    ut = torch.zeros(2, 3, 4)
    v = torch.zeros(2, 3, 4)
    v[0, 0, 1] = 2.0  # tangent error of squared norm 4 on one of 6 tokens
    v[1, 2, 0] = 3.0  # radial component of squared norm 9 on one of 6 tokens
    out = rfm_loss(v, xt, ut, lambda_rad=0.1)
    torch.testing.assert_close(out.tangent, torch.tensor(4 / 6))
    torch.testing.assert_close(out.radial, torch.tensor(9 / 6))
    with pytest.raises(ValueError, match="same shape"):
        rfm_loss(v, xt, ut[:, :2])


def test_loss_on_half_inputs_is_float32():
    xt = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    out = rfm_loss(xt.bfloat16(), xt.bfloat16(), torch.zeros(4, 8, dtype=torch.bfloat16))
    assert out.total.dtype == torch.float32


# --------------------------------------------------------------------------------------------- time law
@given(st.floats(0.0, 1.0), st.floats(0.05, 20.0))
def test_time_shift_is_monotone_bijection_of_unit_interval(t, alpha):
    s = time_shift(t, alpha)
    assert 0.0 <= s <= 1.0 + 1e-12
    assert time_shift(0.0, alpha) == 0.0 and abs(time_shift(1.0, alpha) - 1.0) < 1e-12
    assert abs(time_shift(s, 1.0 / alpha) - t) < 1e-9  # the inverse shift is 1/α
    if alpha > 1:
        assert s >= t - 1e-12  # pushes towards noise


def test_dimension_shift_and_sample_time():
    assert dimension_shift(256, 1024) == 8.0
    assert dimension_shift(16, 16) == pytest.approx(0.25)
    g = torch.Generator().manual_seed(0)
    t1 = sample_time(20000, generator=g)
    assert t1.shape == (20000,) and bool(((t1 > 0) & (t1 < 1)).all())
    assert abs(t1.median().item() - 0.5) < 0.02  # logit-normal(0, 1) has median 1/2
    t8 = sample_time(20000, alpha=8.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(t8, time_shift(t1, 8.0))
    assert abs(t8.median().item() - 8 * 0.5 / (1 + 7 * 0.5)) < 0.02
    with pytest.raises(ValueError):
        time_shift(0.5, 0.0)
