"""Densities on the sphere (``spherical.distributions``): normalisation, sampling, shapes and edge cases."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, strategies as st

from spherical.distributions import Uniform, log_sphere_area
from spherical.strategies import batch_shapes, channels, dtypes, radii

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
    assert x.mean(0).abs().max() < 5 * 2.0 / math.sqrt(20000)          # std of each coordinate is R/√C < R
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
