"""Inputs that look valid but are not: each gets a clear error or a NaN, never a plausible wrong value."""
from __future__ import annotations

import math

import pytest
import torch

from spherical import Hypersphere, geodesic_flow, rfm_loss, sample_time, time_shift


# ---------------------------------------------------------------------------------------------- non-finite points
@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize("where", ["x", "y"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_non_finite_coordinate_gives_nan_not_a_distance(bad, where, dtype):
    S = Hypersphere(2.0)
    g = torch.Generator().manual_seed(0)
    x, y = S.random_uniform(4, 5, dtype=dtype, generator=g), S.random_uniform(4, 5, dtype=dtype, generator=g)
    y = torch.cat([y[:3], x[3:]])  # the last pair has y = x: the bad coordinate must not read as "distance 0"
    x, y = x.clone(), y.clone()
    (x if where == "x" else y)[:, 1] = bad
    v = S.proju(S.random_uniform(4, 5, dtype=dtype, generator=g), torch.ones(4, 5, dtype=dtype))
    outs = {
        "dist": S.dist(x, y), "logmap": S.logmap(x, y), "geodesic": S.geodesic(x, y, 0.4),
        "velocity": S.geodesic_with_velocity(x, y, 0.4)[1], "transp": S.transp(x, y, v),
        "geodesic_flow": geodesic_flow(x, y, 0.4, sphere=S).ut,
    }
    for name, out in outs.items():
        assert torch.isnan(out).all(), (name, out)


def test_large_blocked_dist_is_nan_for_infinite_input_too(monkeypatch):
    import spherical.hypersphere as H

    calls, real = [], H.split_theta
    monkeypatch.setattr(H, "split_theta", lambda *a, **k: calls.append(1) or real(*a, **k))
    S = Hypersphere(1.0)
    x = S.random_uniform(2100, 1024, generator=torch.Generator().manual_seed(1))
    y = x.clone()
    y[5, 3] = math.inf
    d = S.dist(x, y)
    assert torch.isnan(d[5]) and bool((d[:5] == 0).all()) and bool(torch.isfinite(d[6:]).all())
    assert calls == [1]  # the large-batch eager path was really taken


# ---------------------------------------------------------------------------------------------- radius
def test_radius_loaded_from_a_state_dict_is_checked():
    S = Hypersphere(torch.full((2, 1), 3.0))
    for bad in (-1.0, 0.0, math.inf, math.nan, 1e20):
        with pytest.raises(ValueError, match="radius"):
            S.load_state_dict({"radius": torch.full((2, 1), bad)})
    assert torch.equal(S.radius, torch.full((2, 1), 3.0))  # unchanged by the refused loads
    S.load_state_dict({"radius": torch.full((2, 1), 5.0)})
    assert torch.equal(S.radius, torch.full((2, 1), 5.0))


def test_radius_assignment_is_checked():
    S = Hypersphere(2.0)
    for bad in (-1.0, 0.0, math.nan, 1e20):
        with pytest.raises(ValueError, match="radius"):
            S.radius = bad
    assert S.radius == 2.0
    S.radius = 4.0
    torch.testing.assert_close(S.projx(torch.tensor([3.0, 4.0])), torch.tensor([2.4, 3.2]))


def test_radius_edited_in_place_to_a_bad_value_poisons_instead_of_flipping():
    S = Hypersphere(torch.tensor([[1.0], [2.0]]))
    x = S.random_uniform(2, 3, generator=torch.Generator().manual_seed(2))
    y = S.random_uniform(2, 3, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        S.radius[1] = -2.0  # would otherwise return the antipode for row 1
    for out in (S.projx(y), S.logmap(x, y), S.expmap(x, S.proju(x, y)), S.geodesic(x, y, 0.5)):
        assert torch.isfinite(out[0]).all() and torch.isnan(out[1]).all()
    assert torch.isnan(S.dist(x, y)[1]) and torch.isfinite(S.dist(x, y)[0])


@pytest.mark.parametrize("radius", [1e20, 2.0**61, 1e-20, 2.0**-61])
def test_radii_whose_square_is_not_a_normal_float32_are_refused(radius):
    with pytest.raises(ValueError, match=r"2\^-60, 2\^60"):
        Hypersphere(radius)
    with pytest.raises(ValueError, match="radius"):
        Hypersphere(torch.tensor([1.0, radius]))


@pytest.mark.parametrize("radius", [2.0**60, 1e18, 2.0**-60])
def test_extreme_accepted_radii_are_finite_and_correct_in_float32(radius):
    S = Hypersphere(radius)
    x = S.random_uniform(8, 16, generator=torch.Generator().manual_seed(4))
    y = S.random_uniform(8, 16, generator=torch.Generator().manual_seed(5))
    d = S.dist(x, y).double()
    d_ref = Hypersphere(1.0).dist(x.double() / radius, y.double() / radius) * radius
    assert torch.isfinite(d).all()
    torch.testing.assert_close(d, d_ref, rtol=1e-5, atol=0)
    for out in (S.logmap(x, y), S.geodesic(x, y, 0.3), S.transp(x, y, S.logmap(x, y)), S.logmap(x, -x)):
        assert torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------------- time law
@pytest.mark.parametrize("kwargs", [dict(scale=math.nan), dict(scale=math.inf), dict(scale=0.0), dict(scale=-1.0),
                                    dict(loc=math.nan), dict(loc=math.inf), dict(alpha=math.nan), dict(alpha=0.0)])
def test_sample_time_refuses_non_finite_or_non_positive_parameters(kwargs):
    with pytest.raises(ValueError):
        sample_time(3, **kwargs)


@pytest.mark.parametrize("n", [-1, 2.5, True, "3"])
def test_sample_time_refuses_bad_counts(n):
    with pytest.raises(ValueError, match="n"):
        sample_time(n)


@pytest.mark.parametrize("scale", [0.3, 1.0, 2.5])
def test_sample_time_scale_is_the_std_of_the_logit(scale):
    t = sample_time(40000, loc=0.7, scale=scale, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    logit = torch.log(t / (1 - t))
    assert abs(logit.std().item() - scale) < 0.03 * scale
    assert abs(logit.mean().item() - 0.7) < 0.03 * scale


@pytest.mark.parametrize("t", [-0.5, 1.5, math.nan, math.inf])
def test_time_shift_refuses_times_outside_the_unit_interval(t):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        time_shift(t, 3.0)


@pytest.mark.parametrize("alpha", [0.0, -2.0, math.nan, math.inf])
def test_time_shift_refuses_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        time_shift(0.5, alpha)


def test_time_shift_of_a_tensor_is_nan_outside_the_unit_interval():
    t = torch.tensor([-0.5, 0.0, 0.25, 1.0, 1.5, math.nan])
    out = time_shift(t, 3.0)
    torch.testing.assert_close(out[1:4], torch.tensor([0.0, 0.5, 1.0]))
    assert torch.isnan(out[[0, 4, 5]]).all()


# ---------------------------------------------------------------------------------------------- loss and path
@pytest.mark.parametrize("shape", [(0, 4), (2, 0, 4), (0,)])
def test_rfm_loss_refuses_an_empty_batch(shape):
    v = torch.zeros(shape)
    with pytest.raises(ValueError, match="empty batch"):
        rfm_loss(v, v, v)


def test_rfm_loss_refuses_non_broadcasting_xt_with_a_clear_message():
    with pytest.raises(ValueError, match="same shape"):
        rfm_loss(torch.zeros(3, 4), torch.zeros(2, 4), torch.zeros(3, 4))


@pytest.mark.parametrize("fn", ["geodesic", "geodesic_with_velocity", "geodesic_flow"])
def test_time_of_shape_b_for_points_b_c_names_the_expected_shape(fn):
    S = Hypersphere(1.0)
    x, y = S.random_uniform(4, 3), S.random_uniform(4, 3)
    call = {"geodesic": lambda t: S.geodesic(x, y, t),
            "geodesic_with_velocity": lambda t: S.geodesic_with_velocity(x, y, t),
            "geodesic_flow": lambda t: geodesic_flow(x, y, t, sphere=S)}[fn]
    with pytest.raises(ValueError, match=r"t of shape \(4,\) must broadcast with x\[\.\.\., :1\] of shape \(4, 1\)"):
        call(torch.rand(4))
    with pytest.raises(ValueError, match=r"\(4, 1\)"):
        call(torch.rand(3, 1))
    out = call(torch.full((4, 1), 0.5))  # the documented shapes work, as do 0-dim and float times
    first = out if isinstance(out, torch.Tensor) else out[0]
    torch.testing.assert_close(first, call(0.5) if isinstance(out, torch.Tensor) else call(0.5)[0])
    torch.testing.assert_close(first, call(torch.tensor(0.5)) if isinstance(out, torch.Tensor)
                               else call(torch.tensor(0.5))[0])
