"""Integrators on the sphere: convergence orders on an exact rotation flow, invariants, odeint."""
from __future__ import annotations

import math

import pytest
import torch

from spherical import METHODS, Hypersphere, integrate, odeint

ORDERS = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4, "projected_euler": 1, "projected_rk4": 4}


def rotation_problem(C=5, R=2.0, seed=0):
    """v(x, t) = (1 + t)·A·x with A skew, exact solution x(1) = expm(1.5·A)·x0."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(C, C, dtype=torch.float64, generator=g)
    A = A - A.T
    A = A / torch.linalg.matrix_norm(A, ord=2)
    S = Hypersphere(R)
    x0 = S.random_uniform(3, C, dtype=torch.float64, generator=g)
    exact = x0 @ torch.linalg.matrix_exp(1.5 * A).T
    return S, A, x0, exact, (lambda x, t: (1 + t) * (x @ A.T))


@pytest.mark.parametrize("method", list(ORDERS))
def test_observed_order(method):
    S, A, x0, exact, v = rotation_problem()
    errs = []
    for n in (8, 16, 32):
        x = integrate(v, x0, torch.linspace(0, 1, n + 1, dtype=torch.float64), sphere=S, method=method)
        errs.append((x - exact).norm(dim=-1).max().item())
    orders = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
    assert all(abs(p - ORDERS[method]) <= 0.3 for p in orders), (method, errs, orders)


@pytest.mark.parametrize("method", METHODS)
def test_stays_on_sphere_even_with_radial_velocity(method):
    S = Hypersphere(32.0)
    x0 = S.random_uniform(4, 6, 16, generator=torch.Generator().manual_seed(0))
    W = torch.randn(16, 16, generator=torch.Generator().manual_seed(1))

    def v(x, t):  # arbitrary ambient field with a large radial part
        return torch.tanh(x @ W / 32.0) * 40.0 + 5.0 * x

    path, nfe = integrate(v, x0, torch.linspace(1, 0, 11), sphere=S, method=method, return_path=True,
                          return_nfe=True)
    assert path.shape == (11, 4, 6, 16)
    torch.testing.assert_close(path.norm(dim=-1), torch.full((11, 4, 6), 32.0), rtol=2e-5, atol=0)
    stages = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4, "projected_euler": 1, "projected_rk4": 4}[method]
    assert nfe == 10 * stages


@pytest.mark.parametrize("method", ["euler", "rk4"])
def test_forward_then_backward_returns_to_start(method):
    S, A, x0, exact, v = rotation_problem()
    grid = torch.linspace(0, 1, 65, dtype=torch.float64)
    x1 = integrate(v, x0, grid, sphere=S, method=method)
    back = integrate(v, x1, grid.flip(0), sphere=S, method=method)
    tol = 1e-9 if method == "rk4" else 0.3
    assert (back - x0).norm(dim=-1).max().item() < tol


def test_rk4_reaches_1e6_in_16_steps():
    S, A, x0, exact, v = rotation_problem(C=8, R=1.0)
    x = integrate(v, x0, torch.linspace(0, 1, 17, dtype=torch.float64), sphere=S, method="rk4")
    assert (x - exact).norm(dim=-1).max().item() < 1e-6


@pytest.mark.parametrize("tol", [1e-5, 1e-8])
def test_odeint_matches_exact_solution_to_tolerance(tol):
    S, A, x0, exact, v = rotation_problem()
    x, nfe = odeint(v, x0, torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64), sphere=S, rtol=tol, atol=tol,
                    return_nfe=True)
    assert (x - exact).norm(dim=-1).max().item() < 100 * tol * 2.0
    torch.testing.assert_close(x.norm(dim=-1), torch.full((3,), 2.0, dtype=torch.float64))
    assert nfe > 0
    path = odeint(v, x0, torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64), sphere=S, rtol=tol, atol=tol,
                  return_path=True)
    assert path.shape == (3, 3, 5) and torch.equal(path[-1], x)


def test_bad_arguments():
    S = Hypersphere(1.0)
    x = S.random_uniform(2, 3)
    with pytest.raises(ValueError, match="unknown method"):
        integrate(lambda x, t: x, x, torch.linspace(0, 1, 3), sphere=S, method="rk45")
    with pytest.raises(ValueError, match="monotone"):
        integrate(lambda x, t: x, x, torch.tensor([0.0, 1.0, 0.5]), sphere=S)
    with pytest.raises(ValueError, match="shape of x"):
        integrate(lambda x, t: x[..., :2], x, torch.linspace(0, 1, 3), sphere=S)
