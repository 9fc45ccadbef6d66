"""Adaptive embedded RK pairs in normal coordinates (integrate(method="dopri5" | "bosh3"))."""
from __future__ import annotations

import pytest
import torch

from spherical import ADAPTIVE_METHODS, Hypersphere, SolverStats, integrate
from spherical.adaptive import TABLEAUX, solve_adaptive

F64 = torch.float64
ENDS = torch.tensor([0.0, 1.0], dtype=F64)


def rotation_problem(C=5, R=2.0, seed=0, batch=(3,)):
    """v(x, t) = (1 + t)·A·x with A skew (‖A‖₂ = 1): x(t) = expm((t + t²/2)·A)·x0."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(C, C, dtype=F64, generator=g)
    A = A - A.T
    A = A / torch.linalg.matrix_norm(A, ord=2)
    S = Hypersphere(R)
    x0 = S.random_uniform(*batch, C, dtype=F64, generator=g)

    def exact(t):
        return x0 @ torch.linalg.matrix_exp((t + t * t / 2) * A).T

    return S, x0, exact, (lambda x, t: (1 + t) * (x @ A.T))


def test_tableaux_are_consistent():
    """Row sums equal the nodes, both weight vectors sum to 1, and the last stage is first-same-as-last."""
    for tab in TABLEAUX.values():
        for ai, ci in zip(tab.a, tab.c[1:]):
            assert abs(sum(ai) - ci) < 1e-14
        assert abs(sum(tab.b) - 1) < 1e-14 and abs(sum(tab.b_hat) - 1) < 1e-14
        assert tuple(tab.a[-1]) == tuple(tab.b[: len(tab.a[-1])]) and tab.c[-1] == 1.0


@pytest.mark.parametrize("method,tol", [("dopri5", 1e-4), ("dopri5", 1e-6), ("dopri5", 1e-8), ("bosh3", 1e-4),
                                        ("bosh3", 1e-6)])  # bosh3 at 1e-8: ~1000 evaluations
def test_hits_tolerance_on_the_rotation_flow(method, tol):
    S, x0, exact, v = rotation_problem()
    x, stats = integrate(v, x0, ENDS, sphere=S, method=method, rtol=tol, atol=tol, return_stats=True)
    err = (x - exact(1.0)).norm(dim=-1).max().item()
    assert err < 5 * tol * 2.0, (err, stats)  # ratio err/(atol + rtol·R): measured ≤ 1 here
    torch.testing.assert_close(x.norm(dim=-1), torch.full((3,), 2.0, dtype=F64), rtol=1e-12, atol=0)
    stages = len(TABLEAUX[method].b)
    assert stats.nfe == 2 + (stages - 1) * (stats.accepted + stats.rejected)  # FSAL + Hairer's first step


@pytest.mark.parametrize("method", ADAPTIVE_METHODS)
def test_nfe_grows_as_rtol_shrinks(method):
    S, x0, exact, v = rotation_problem()
    nfes, errs = [], []
    for tol in (1e-2, 1e-4, 1e-6):
        x, nfe = integrate(v, x0, ENDS, sphere=S, method=method, rtol=tol, atol=tol, return_nfe=True)
        nfes.append(nfe)
        errs.append((x - exact(1.0)).norm(dim=-1).max().item())
    assert nfes[0] < nfes[1] < nfes[2], nfes
    assert errs[0] > errs[1] > errs[2], errs


def test_stays_on_the_sphere_with_radial_float32_field():
    S = Hypersphere(32.0)
    x0 = S.random_uniform(4, 6, 16, generator=torch.Generator().manual_seed(0))
    W = torch.randn(16, 16, generator=torch.Generator().manual_seed(1))

    def v(x, t):  # large radial part: projected away
        return torch.tanh(x @ W / 32.0) * 40.0 + 5.0 * x

    path, stats = integrate(v, x0, torch.linspace(1, 0, 5), sphere=S, method="dopri5", rtol=1e-4, atol=1e-4,
                            return_path=True, return_stats=True)
    assert path.shape == (5, 4, 6, 16) and path.dtype == torch.float32 and torch.equal(path[0], x0)
    torch.testing.assert_close(path.norm(dim=-1), torch.full((5, 4, 6), 32.0), rtol=2e-6, atol=0)
    assert isinstance(stats, SolverStats) and stats.accepted >= 4  # at least one step per grid interval


@pytest.mark.parametrize("method", ADAPTIVE_METHODS)
def test_backward_in_time_and_grid_points(method):
    """From t = 1 back to 0 (the sampling direction), reporting the intermediate grid point t = 0.5."""
    S, x0, exact, v = rotation_problem()
    grid = torch.tensor([1.0, 0.5, 0.0], dtype=F64)
    path = integrate(v, exact(1.0), grid, sphere=S, method=method, rtol=1e-7, atol=1e-7, return_path=True)
    assert path.shape == (3, 3, 5)
    for k, tk in enumerate((1.0, 0.5, 0.0)):
        assert (path[k] - exact(tk)).norm(dim=-1).max().item() < 5e-6


def test_batch_of_independent_samples():
    """Samples solved together agree with each solved alone (a shared step only changes round-off-size errors)."""
    S, x0, exact, v = rotation_problem(C=4, batch=(4, 3))
    x = integrate(v, x0, ENDS, sphere=S, method="dopri5", rtol=1e-9, atol=1e-9)
    assert x.shape == (4, 3, 4)
    for b in range(4):
        alone = integrate(v, x0[b], ENDS, sphere=S, method="dopri5", rtol=1e-9, atol=1e-9)
        assert (alone - x[b]).norm(dim=-1).max().item() < 1e-7
    assert (x - exact(1.0)).norm(dim=-1).max().item() < 1e-7


def test_exp_map_steps_are_exact_on_geodesics():
    """A constant-speed geodesic (v = ω·J x, x in J's rotation plane) is integrated exactly by exp-map steps."""
    S = Hypersphere(1.5)
    C = 4
    J = torch.zeros(C, C, dtype=F64)
    J[0, 1], J[1, 0] = -1.0, 1.0
    x0 = torch.tensor([[1.5, 0.0, 0.0, 0.0], [0.0, 1.5, 0.0, 0.0]], dtype=F64)
    x, stats = integrate(lambda x, t: 2.0 * (x @ J.T), x0, ENDS, sphere=S, method="dopri5", rtol=1e-10,
                         atol=1e-10, return_stats=True)
    torch.testing.assert_close(x, x0 @ torch.linalg.matrix_exp(2.0 * J).T, rtol=0, atol=1e-12)
    # the error estimate vanishes, so every step grows by max_factor = 10 from Hairer's first guess
    assert stats.rejected == 0 and stats.accepted <= 4, stats


def test_bad_arguments():
    S, x0, exact, v = rotation_problem()
    with pytest.raises(ValueError, match="rtol"):
        integrate(v, x0, ENDS, sphere=S, method="dopri5", rtol=-1.0)
    with pytest.raises(ValueError, match="return_nfe or return_stats"):
        integrate(v, x0, ENDS, sphere=S, method="dopri5", return_nfe=True, return_stats=True)
    with pytest.raises(ValueError, match="unknown method"):
        solve_adaptive(lambda y, t: (v(y, t), None), S, x0, ENDS, method="rk45")
    with pytest.raises(RuntimeError, match="max_steps"):
        solve_adaptive(lambda y, t: (S.proju(y, v(y, t)), None), S, x0, ENDS, rtol=1e-12, atol=1e-12,
                       max_steps=3)


def test_exact_pullback_is_what_keeps_the_order(monkeypatch):
    """rk4 in normal coordinates converges at order 4; pulling stages back by parallel transport alone
    (dropping the 1/sinc θ factor on the component orthogonal to ξ) gives order 3."""
    import math

    import spherical._normal as normal

    S, x0, exact, v = rotation_problem()

    def orders():
        errs = [(integrate(v, x0, torch.linspace(0, 1, n + 1, dtype=F64), sphere=S, method="rk4") - exact(1.0))
                .norm(dim=-1).max().item() for n in (16, 32, 64)]
        return [math.log2(errs[i] / errs[i + 1]) for i in range(2)]

    assert all(abs(p - 4.0) < 0.1 for p in orders())
    monkeypatch.setattr(normal, "_dexp_inv", lambda sphere, x, xi, y, w: sphere.transp(y, x, w))
    assert all(abs(p - 3.0) < 0.1 for p in orders())
