"""The adaptive controller's behaviour, not only its accuracy: exact SolverStats against an independent
reference controller (Hairer, Nørsett & Wanner I, II.4 and the DOPRI5 code's PI control), and properties.

The reference works on a Euclidean quadrature ``ȧ = g(t)`` (the solver's auxiliary state) while the
sphere part is static (``v = 0``) or a constant-speed geodesic (integrated exactly: zero sphere error),
so the auxiliary error alone drives every decision and the reference needs no geometry.
"""
from __future__ import annotations

import math

import pytest
import torch

from spherical import Hypersphere, integrate
from spherical.adaptive import TABLEAUX, SolverStats, solve_adaptive

F64 = torch.float64


def pulse(t: float) -> list[float]:
    """Two auxiliary rates: a narrow Gaussian pulse at t = 0.6 (forces rejections) and a slow cosine."""
    return [3.0 * math.exp(-(((t - 0.6) / 0.03) ** 2)), 0.2 * math.cos(2.0 * t)]


def reference(g, grid, a0, *, method, rtol, atol, sphere_d0=0.0, sphere_d1=0.0, safety=0.9, min_factor=0.2,
              max_factor=10.0, beta=0.04):
    """Textbook embedded-RK quadrature of ``ȧ = g(t)`` in plain Python floats; returns (a, nfe, acc, rej).

    Error ratio: RMS over entries of ``|e_j| / (atol + rtol·max(|a0_j|, |a1_j|))``. First step: Hairer's
    d0, d1, d2 (``sphere_d0/d1`` are the static sphere part's ratios ‖x‖/sc and ‖v‖/sc, maxed in).
    Accepted: ``h·clip(safety·E^(−(1/(q+1) − 0.75β))·E_prev^β, min, max)`` (E_prev = max(E, 1e-4), starting
    at 1e-4), no growth right after a rejection; rejected: ``h·max(min, safety·E^(−1/(q+1)))``. A step that
    would pass a grid point lands on it and the proposal survives it.
    """
    tab = TABLEAUX[method]
    q = tab.error_order
    n = len(a0)

    def rms(v):
        return math.sqrt(sum(x * x for x in v) / n)

    nfe = 0

    def G(t):
        nonlocal nfe
        nfe += 1
        return g(t)

    t0, span = grid[0], grid[-1] - grid[0]
    a = list(a0)
    f0 = G(t0)
    sc0 = [atol + rtol * abs(x) for x in a]
    d0 = max(sphere_d0, rms([x / s for x, s in zip(a, sc0)]))
    d1 = max(sphere_d1, rms([x / s for x, s in zip(f0, sc0)]))
    h0 = 1e-6 if (d0 < 1e-5 or d1 < 1e-5) else 0.01 * d0 / d1
    h0 = min(h0, abs(span))
    sign = 1.0 if span > 0 else -1.0
    f1 = G(t0 + sign * h0)
    d2 = rms([(y - x) / s for x, y, s in zip(f0, f1, sc0)]) / h0
    dm = max(d1, d2)
    h1 = max(1e-6, h0 * 1e-3) if dm <= 1e-15 else (0.01 / dm) ** (1.0 / (q + 1))
    h_abs = min(100 * h0, h1, abs(span))
    acc = rej = 0
    err_prev, after_reject = 1e-4, False
    db = [bi - bh for bi, bh in zip(tab.b, tab.b_hat)]
    tk, fk = t0, f0
    for t_end in grid[1:]:
        while (t_end - tk) * sign > 0:
            remaining = abs(t_end - tk)
            last = h_abs >= remaining
            h = sign * (remaining if last else h_abs)
            ks = [fk] + [G(tk + c * h) for c in tab.c[1:]]
            a1 = [ai + h * sum(b * k[j] for b, k in zip(tab.b, ks)) for j, ai in enumerate(a)]
            e = [h * sum(d * k[j] for d, k in zip(db, ks)) for j in range(n)]
            err = rms([ej / (atol + rtol * max(abs(x), abs(y))) for ej, x, y in zip(e, a, a1)])
            if err <= 1.0:
                acc += 1
                tk = t_end if last else tk + h
                a, fk = a1, ks[-1]
                grow = max_factor if err == 0 else min(max_factor, max(
                    min_factor, safety * err ** -(1.0 / (q + 1) - 0.75 * beta) * err_prev ** beta))
                if after_reject:
                    grow = min(grow, 1.0)
                err_prev, after_reject = max(err, 1e-4), False
                new = abs(h) * grow
                h_abs = max(h_abs, new) if last else new
            else:
                rej += 1
                after_reject = True
                h_abs = abs(h) * min(1.0, max(min_factor, safety * err ** -(1.0 / (q + 1))))
    return a, nfe, acc, rej


def run(method, grid, *, rtol, atol, omega=0.0, a0=(0.5, -1.0), R=2.0, k=1.0):
    """The solver on the same quadrature, the sphere part static (ω = 0) or a geodesic of speed ω·R."""
    S = Hypersphere(R)
    x = torch.tensor([[R, 0.0, 0.0]], dtype=F64)
    J = torch.zeros(3, 3, dtype=F64)
    J[0, 1], J[1, 0] = -1.0, 1.0

    def field(y, t):
        return omega * (y @ J.T), k * torch.tensor(pulse(float(t)), dtype=F64)

    _, a, stats = solve_adaptive(field, S, x, torch.tensor(grid, dtype=F64), method=method, rtol=rtol, atol=atol,
                                 aux=torch.tensor(a0, dtype=F64))
    return a, stats


A0 = (0.5, -1.0)
# The last case makes the auxiliary state (not the sphere, R = 0.01) set Hairer's d0, and fast rates make
# 100·h0 (not h1) the first step: it pins d0 = max(sphere, auxiliary) of the first-step formula.
CASES = [("dopri5", [0.0, 1.0], 1e-6, 0.0, A0, 2.0, 1.0),
         ("dopri5", [0.0, 0.3, 0.55, 0.61, 1.0], 1e-6, 0.0, A0, 2.0, 1.0),
         ("dopri5", [1.0, 0.0], 1e-8, 0.0, A0, 2.0, 1.0), ("bosh3", [0.0, 1.0], 1e-5, 0.0, A0, 2.0, 1.0),
         ("bosh3", [0.0, 0.5, 1.0], 1e-5, 0.0, A0, 2.0, 1.0), ("dopri5", [0.0, 1.0], 1e-6, 3.0, A0, 2.0, 1.0),
         ("bosh3", [0.0, 0.45, 1.0], 1e-4, 50.0, A0, 2.0, 1.0),
         ("dopri5", [0.0, 1.0], 1e-6, 0.0, (100.0, -100.0), 0.01, 5000.0)]


@pytest.mark.parametrize("method,grid,tol,omega,a0,R,k", CASES)
def test_stats_equal_the_reference_controller(method, grid, tol, omega, a0, R, k):
    sc = tol + tol * R
    a_ref, nfe, acc, rej = reference(lambda t: [k * p for p in pulse(t)], grid, list(a0), method=method, rtol=tol,
                                     atol=tol, sphere_d0=R / sc, sphere_d1=omega * R / sc)
    a, stats = run(method, grid, rtol=tol, atol=tol, omega=omega, R=R, a0=a0, k=k)
    assert stats == SolverStats(nfe, acc, rej), (stats, (nfe, acc, rej))
    assert rej >= 1 or method == "bosh3" and omega == 50.0  # the pulse forces rejections
    torch.testing.assert_close(a, torch.tensor(a_ref, dtype=F64), rtol=1e-12, atol=1e-14)


def test_reference_counts_by_hand_on_a_zero_field():
    """ȧ = 0, v = 0: Hairer's first step is 1e-6 (d1 = 0), every step has E = 0 and grows ×10, so the span
    [0, 1] takes the steps 1e-6, 1e-5, ..., 1e-1 (6 steps, t = 0.111111) and then 0.888889 to land: 7 accepted,
    2 + 7·6 = 44 evaluations (dopri5, FSAL)."""
    S = Hypersphere(1.0)
    x = torch.tensor([[1.0, 0.0]], dtype=F64)
    _, _, stats = solve_adaptive(lambda y, t: (torch.zeros_like(y), torch.zeros(1, dtype=F64)), S, x,
                                 torch.tensor([0.0, 1.0], dtype=F64), aux=torch.zeros(1, dtype=F64))
    assert stats == SolverStats(44, 7, 0)


# ---------------------------------------------------------------------------------------------- properties
def rotation(C=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(C, C, dtype=F64, generator=g)
    A = (A - A.T) / torch.linalg.matrix_norm(A - A.T, ord=2)
    return (lambda x, t: (1 + 3 * t) * (x @ A.T)), g


def test_near_static_rows_lower_the_cost():
    """The error ratio is an RMS over points: 15 nearly static rows next to a moving one dilute its error
    (a max norm would cost exactly as much as the moving row alone)."""
    v, g = rotation()
    S = Hypersphere(1.0)
    x = S.random_uniform(16, 6, dtype=F64, generator=g)
    speed = torch.full((16, 1), 1e-6, dtype=F64)
    speed[0] = 1.0
    ends = torch.tensor([0.0, 1.0], dtype=F64)
    _, alone = integrate(v, x[:1], ends, sphere=S, method="dopri5", rtol=1e-7, atol=1e-7, return_stats=True)
    _, mixed = integrate(lambda y, t: speed * v(y, t), x, ends, sphere=S, method="dopri5", rtol=1e-7, atol=1e-7,
                         return_stats=True)
    assert mixed.nfe < alone.nfe, (mixed, alone)


@pytest.mark.parametrize("k", [1, 3, 7])
def test_k_interior_grid_points_add_at_most_k_accepted_steps(k):
    v, g = rotation(seed=k)
    S = Hypersphere(1.5)
    x = S.random_uniform(3, 6, dtype=F64, generator=g)
    gen = torch.Generator().manual_seed(10 + k)
    inner = torch.sort(torch.rand(k, dtype=F64, generator=gen) * 0.98 + 0.01).values
    for method in ("dopri5", "bosh3"):
        _, base = integrate(v, x, torch.tensor([0.0, 1.0], dtype=F64), sphere=S, method=method, rtol=1e-6,
                            atol=1e-6, return_stats=True)
        grid = torch.cat([torch.zeros(1, dtype=F64), inner, torch.ones(1, dtype=F64)])
        _, more = integrate(v, x, grid, sphere=S, method=method, rtol=1e-6, atol=1e-6, return_stats=True)
        assert base.accepted <= more.accepted <= base.accepted + k, (method, base, more)


def test_no_step_growth_right_after_a_rejection():
    """Attempts are read off the evaluation times (dopri5: stages at t + h/5, ..., t + h); the step after
    an accepted step that followed a rejection is never larger than that accepted step."""
    times: list[float] = []

    def field(y, t):
        times.append(float(t))
        return torch.zeros_like(y), torch.tensor(pulse(float(t)), dtype=F64)

    S = Hypersphere(1.0)
    _, _, stats = solve_adaptive(field, S, torch.tensor([[1.0, 0.0]], dtype=F64), torch.tensor([0.0, 1.0], dtype=F64),
                                 aux=torch.zeros(2, dtype=F64), rtol=1e-7, atol=1e-7)
    calls = times[2:]  # f(t0) and the first-step trial
    attempts = [(c[4] - (c[4] - c[0]) / 0.8, (c[4] - c[0]) / 0.8) for c in zip(*[iter(calls)] * 6)]
    assert len(attempts) == stats.accepted + stats.rejected and stats.rejected >= 2
    status = [abs(nxt[0] - (t + h)) < 1e-12 for (t, h), nxt in zip(attempts, attempts[1:])] + [True]
    checked = 0
    for i in range(1, len(attempts) - 1):
        if not status[i - 1] and status[i]:  # rejected, then accepted: the next step does not grow
            assert attempts[i + 1][1] <= attempts[i][1] * (1 + 1e-12), (i, attempts[i - 1:i + 2])
            checked += 1
    assert checked >= 1
    assert any(b[1] > a[1] * 1.5 for a, b in zip(attempts, attempts[1:]))  # elsewhere steps do grow
