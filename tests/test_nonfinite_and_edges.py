"""Solvers stop at the first non-finite value; exact second derivatives at u = 0; checked radius and λ_rad."""
from __future__ import annotations

import math
import re
import time

import pytest
import torch
from torch.func import hessian

from spherical import Hypersphere, integrate, log_likelihood, odeint, rfm_loss
from spherical.adaptive import solve_adaptive

F64 = torch.float64
BUDGET = 300  # velocity evaluations a NaN field may cost before the test calls it a hang


class Budget:
    """A velocity that is NaN for t < t_bad (rotation field otherwise) and fails the test past BUDGET calls."""

    def __init__(self, t_bad: float) -> None:
        self.t_bad, self.calls = t_bad, 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        assert self.calls <= BUDGET, "the solver kept stepping through a NaN velocity"
        v = torch.roll(x, 1, dims=-1) - torch.roll(x, -1, dims=-1)
        return v * math.nan if float(t) < self.t_bad else v


def _times(msg: str) -> list[float]:
    return [float(s) for s in re.findall(r"t=([-0-9.e+]+)", msg)]


@pytest.mark.parametrize("method", ["euler", "rk4", "dopri5", "bosh3"])
@pytest.mark.parametrize("t_bad", [2.0, 0.5])  # NaN from the start / only once t < 0.5 (sampling runs 1 → 0)
def test_integrators_stop_at_the_first_nan_naming_the_time(method, t_bad):
    S = Hypersphere(2.0)
    x = S.random_uniform(3, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    v = Budget(t_bad)
    start = time.perf_counter()
    with pytest.raises(FloatingPointError, match="NaN/Inf") as info:
        integrate(v, x, torch.linspace(1.0, 0.0, 11, dtype=F64), sphere=S, method=method, rtol=1e-4, atol=1e-4)
    assert time.perf_counter() - start < 10.0
    times = _times(str(info.value))
    assert times, str(info.value)
    if t_bad == 0.5:  # the named step is the first to evaluate below t = 0.5 (it starts at or below 0.5)
        assert min(times) < 0.5 and 0.3 <= max(times) <= 0.5 + 1e-12, str(info.value)
    else:
        assert max(times) == 1.0, str(info.value)


def test_adaptive_solver_stops_on_a_nan_auxiliary_derivative():
    S = Hypersphere(1.0)
    x = S.random_uniform(2, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    calls = []

    def field(y, t):
        calls.append(1)
        assert len(calls) <= BUDGET
        g = torch.full(y.shape[:1], math.nan if float(t) > 0.3 else 1.0, dtype=F64)
        return torch.roll(y, 1, -1) - torch.roll(y, -1, -1), g

    with pytest.raises(FloatingPointError, match="auxiliary derivative"):
        solve_adaptive(field, S, S.projx(x), torch.tensor([0.0, 1.0], dtype=F64),
                       aux=torch.zeros(2, dtype=F64), first_step=0.1)


def test_odeint_and_log_likelihood_stop_on_nan_too():
    S = Hypersphere(1.0)
    x = S.random_uniform(2, 3, dtype=F64, generator=torch.Generator().manual_seed(2))
    with pytest.raises(FloatingPointError, match="between t=1 and t=0"):
        odeint(Budget(2.0), x, torch.tensor([1.0, 0.0], dtype=F64), sphere=S)
    for method in ("rk4", "dopri5"):
        v = Budget(-1.0)
        v.t_bad = 2.0
        with pytest.raises(FloatingPointError, match="NaN/Inf"):
            log_likelihood(v, x, torch.linspace(0, 1, 5, dtype=F64), sphere=S, method=method)


# ---------------------------------------------------------------------------------------------- second derivatives
def _autograd_hessian(f, z):
    z = z.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(z), z, create_graph=True)
    return torch.stack([torch.autograd.grad(g[i], z, retain_graph=True)[0] for i in range(z.numel())])


@pytest.mark.parametrize("R", [1.0, 2.5])
def test_second_derivative_of_expmap_at_u_zero_is_the_series_limit(R):
    """exp_x(u) = cos(‖u‖/R)·x + sinc(‖u‖/R)·u: at u = 0 its Hessian along x is −(x/R²)·I, every other 0."""
    S = Hypersphere(R)
    x = torch.tensor([0.6, 0.0, 0.8], dtype=F64) * R
    u0 = torch.zeros(3, dtype=F64)
    for i in range(3):
        f = lambda u, i=i: S.expmap(x, u)[i]  # noqa: E731
        want = -x[i] / R**2 * torch.eye(3, dtype=F64)
        for H in (hessian(f)(u0), _autograd_hessian(f, u0)):
            torch.testing.assert_close(H, want, rtol=0, atol=1e-12)
        # and it is the limit of the Hessians at small u ≠ 0 (which differ from it by O(‖u‖/R))
        near = hessian(f)(torch.tensor([0.0, 3e-6, 0.0], dtype=F64) * R)
        torch.testing.assert_close(near, want, rtol=0, atol=1e-5)


def test_second_derivative_of_logmap_at_y_equal_x_matches_nearby_points():
    """Both autograd and torch.func give the Hessian of log_x(y) in y (and in x) at y = x, finite and equal
    to the limit of the Hessians at y → x."""
    S = Hypersphere(2.0)
    x = torch.tensor([2.0, 0.0, 0.0], dtype=F64)
    e = torch.tensor([0.0, 1e-5, -2e-5], dtype=F64)
    for i in range(3):
        fy = lambda y, i=i: S.logmap(x, y)[i]  # noqa: E731
        fx = lambda z, i=i: S.logmap(z, x)[i]  # noqa: E731
        for f in (fy, fx):
            limit = hessian(f)(S.projx(x + e))
            for H in (hessian(f)(x.clone()), _autograd_hessian(f, x)):
                assert torch.isfinite(H).all()
                torch.testing.assert_close(H, limit, rtol=0, atol=1e-4)
    # one value by hand: ∂²(log_x y)_1/∂y_0∂y_1 at y = x = R·e_0 is −1/R
    assert abs(_autograd_hessian(lambda y: S.logmap(x, y)[1], x)[0, 1].item() + 0.5) < 1e-12


# ---------------------------------------------------------------------------------------------- radius and λ_rad
def test_a_radius_that_requires_grad_gets_the_true_derivative():
    """dist(R·x̂, R·ŷ) = R·θ, so d/dR = θ (a detached radius gave θ·(1 − 1) ... or no gradient at all)."""
    R = torch.tensor(2.0, dtype=F64, requires_grad=True)
    S = Hypersphere(R)
    xh = torch.tensor([1.0, 0.0, 0.0], dtype=F64)
    yh = torch.tensor([0.6, 0.8, 0.0], dtype=F64)
    (g,) = torch.autograd.grad(S.dist(R * xh, R * yh), R)
    assert abs(g.item() - math.atan2(0.8, 0.6)) < 1e-12
    (g,) = torch.autograd.grad(S.expmap(R * xh, torch.tensor([0.0, 1.0, 0.0], dtype=F64))[0], R)
    # exp = R cos(1/R) e0 + ...: d/dR [R cos(1/R)] = cos(1/R) + sin(1/R)/R
    assert abs(g.item() - (math.cos(0.5) + math.sin(0.5) / 2)) < 1e-12
    plain = Hypersphere(torch.tensor(2.0))
    assert not plain.radius.requires_grad


@pytest.mark.parametrize("bad", ["2", True, False, None, [2.0], torch.tensor(True), torch.tensor(2 + 0j)])
def test_radius_type_is_checked(bad):
    with pytest.raises(ValueError, match="radius must be a real number") as info:
        Hypersphere(bad)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("bad", [math.nan, -0.1, math.inf, "0.1", True, None])
def test_lambda_rad_is_checked(bad):
    x = Hypersphere(1.0).random_uniform(4, 3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="lambda_rad must be a finite number >= 0"):
        rfm_loss(x, x, x, lambda_rad=bad)
    assert torch.isfinite(rfm_loss(x, x, x, lambda_rad=0).total)


def test_series_branches_are_accurate_to_round_off_below_the_threshold():
    """The θ⁸-truncated series (below θ = 0.1) against libm's closed forms, where those have no cancellation:
    the module documents the first omitted term as < 3e-15 relative; one coefficient short is 2e-10 off."""
    from spherical._series import cos_sinc_sq, sinc, theta_over_sin

    th = torch.tensor([1e-3, 0.03, 0.07, 0.0999], dtype=F64)
    s = th * th
    want_sinc = torch.sin(th) / th
    for got, want in ((sinc(th), want_sinc), (theta_over_sin(th), th / torch.sin(th)),
                      (cos_sinc_sq(s)[0], torch.cos(th)), (cos_sinc_sq(s)[1], want_sinc)):
        assert ((got - want).abs() / want).max().item() < 3e-15
    S = Hypersphere(3.0)  # and through expmap: exp_x(u) = cos θ·x + (sin θ/θ)·u at θ = 0.0999
    x = torch.tensor([3.0, 0.0, 0.0], dtype=F64)
    u = torch.tensor([0.0, 0.0999 * 3.0, 0.0], dtype=F64)
    want = torch.tensor([3.0 * math.cos(0.0999), 3.0 * math.sin(0.0999), 0.0], dtype=F64)
    assert (S.expmap(x, u) - want).abs().max().item() < 2e-15
