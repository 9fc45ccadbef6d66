"""ODE integration on products of spheres: fixed-grid Runge–Kutta in normal coordinates, and torchdiffeq.

Manifold methods (``euler``, ``midpoint``, ``heun``, ``rk4``) take each step in the normal coordinates
of the step's base point x: the ODE ``ẋ = v(x, t)`` becomes ``ξ̇ = F(ξ, t) = (D exp_x(ξ))⁻¹ v(exp_x ξ, t)``
on the vector space ``T_xS``, a classical explicit Runge–Kutta step is taken there from ``ξ = 0``, and the
result is mapped back with ``exp_x``. The change of variables is exact, so each method keeps its
Euclidean order (1, 2, 2, 4). On the sphere of radius R the inverse differential is closed-form:
with ``y = exp_x(ξ)``, ``θ = ‖ξ‖/R`` and ``w̄ = P_{y→x} w`` (parallel transport back),
``(D exp_x(ξ))⁻¹ w = w̄_∥ + w̄_⊥ / sinc θ`` where ``∥``/``⊥`` split along ``ξ``.

``dopri5`` and ``bosh3`` are adaptive embedded pairs taken in the same normal coordinates, with the error
estimate measured in ``T_xS`` (:mod:`spherical.adaptive`).

``projected_euler`` and ``projected_rk4`` step in ambient space and project onto the sphere (for
comparison: they are what most codebases do).

Every velocity output is tangent-projected first, so a model predicting a radial component cannot
leave the sphere.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Tuple, Union

import torch
import torchdiffeq
from torch import Tensor

from ._normal import rk_combine, rk_stages
from .adaptive import ADAPTIVE_METHODS, SolverStats, solve_adaptive
from .hypersphere import Hypersphere

__all__ = ["integrate", "odeint", "METHODS", "ADAPTIVE_METHODS", "SolverStats"]

Velocity = Callable[[Tensor, Tensor], Tensor]

# Explicit Butcher tableaux (a, b, c) of the classical schemes.
_TABLEAUX: Dict[str, Tuple[Sequence[Sequence[float]], Sequence[float], Sequence[float]]] = {
    "euler": ((), (1.0,), (0.0,)),
    "midpoint": (((0.5,),), (0.0, 1.0), (0.0, 0.5)),
    "heun": (((1.0,),), (0.5, 0.5), (0.0, 1.0)),
    "rk4": (((0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)), (1 / 6, 1 / 3, 1 / 3, 1 / 6), (0.0, 0.5, 0.5, 1.0)),
}


class _Counted:
    """Wraps ``velocity`` so that every call is tangent-projected and counted."""

    def __init__(self, velocity: Velocity, sphere: Hypersphere) -> None:
        self.velocity, self.sphere, self.nfe = velocity, sphere, 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.nfe += 1
        v = self.velocity(x, t)
        if v.shape != x.shape:
            raise ValueError(f"velocity(x, t) must return the shape of x {tuple(x.shape)}, got {tuple(v.shape)}")
        return self.sphere.proju(x, v.to(x.dtype))


def _rk_normal_step(f: _Counted, x: Tensor, t: Tensor, h: Tensor, tableau) -> Tensor:
    """One explicit RK step of ``ξ̇ = F(ξ)`` in ``T_xS`` from ξ = 0; returns ``exp_x(ξ_1)``."""
    a, b, c = tableau
    ks, gs, _ = rk_stages(lambda y, tt: (f(y, tt), None), f.sphere, x, t, h, a, c)
    return rk_combine(f.sphere, x, None, h, b, ks, gs)[0]


def _projected_euler_step(f: _Counted, x: Tensor, t: Tensor, h: Tensor) -> Tensor:
    return f.sphere.projx(x + h * f(x, t))


def _projected_rk4_step(f: _Counted, x: Tensor, t: Tensor, h: Tensor) -> Tensor:
    p = f.sphere.projx
    k1 = f(x, t)
    k2 = f(p(x + 0.5 * h * k1), t + 0.5 * h)
    k3 = f(p(x + 0.5 * h * k2), t + 0.5 * h)
    k4 = f(p(x + h * k3), t + h)
    return p(x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4))


_STEPS: Dict[str, Callable[[_Counted, Tensor, Tensor, Tensor], Tensor]] = {
    **{name: (lambda tab: (lambda f, x, t, h: _rk_normal_step(f, x, t, h, tab)))(tab) for name, tab in _TABLEAUX.items()},
    "projected_euler": _projected_euler_step,
    "projected_rk4": _projected_rk4_step,
}
METHODS: Tuple[str, ...] = tuple(_STEPS)


def _check_grid(t: Tensor, name: str) -> Tensor:
    if not isinstance(t, Tensor) or t.dim() != 1 or t.numel() < 2:
        raise ValueError(f"{name}: t must be a 1-D tensor time grid with at least 2 points, got "
                         f"{getattr(t, 'shape', type(t))}")
    d = t[1:] - t[:-1]
    if not (bool((d > 0).all()) or bool((d < 0).all())):
        raise ValueError(f"{name}: the time grid must be strictly monotone (increasing or decreasing)")
    return t


def _check_finite(x: Tensor, name: str, t: Tensor, k: int) -> None:
    """FloatingPointError naming the step ``t[k] → t[k+1]`` when the state after it holds NaN/Inf.

    A non-finite velocity (or one large enough to overflow) makes the next state non-finite, so one
    check of the state per step (one host sync) stops at the first bad step instead of carrying NaN on.
    """
    if not bool(torch.isfinite(x).all()):
        raise FloatingPointError(f"{name}: the state became non-finite in the step from t={float(t[k]):.6g} to "
                                 f"t={float(t[k + 1]):.6g}; the velocity field returned NaN/Inf")


def integrate(velocity: Velocity, x: Tensor, t: Tensor, *, sphere: Hypersphere, method: str = "euler",
              return_path: bool = False, return_nfe: bool = False, rtol: float = 1e-5, atol: float = 1e-5,
              return_stats: bool = False) -> Union[Tensor, Tuple[Tensor, int], Tuple[Tensor, SolverStats]]:
    r"""Integrates ``ẋ = v(x, t)`` on the sphere over a fixed time grid, or adaptively between its points.

    Args:
        velocity: ``v(x, t) -> [..., C]`` with ``x: [..., C]`` and ``t`` a 0-dim tensor; the output is an
            ambient vector and is tangent-projected before use.
        x: ``[..., C]`` start points on ``sphere`` (at time ``t[0]``).
        t: ``[K]`` strictly monotone grid (decreasing for sampling from noise at t = 1 to data at 0).
        sphere: the manifold.
        method: one of ``euler``, ``midpoint``, ``heun``, ``rk4`` (steps through the exponential map,
            orders 1, 2, 2, 4), ``projected_euler``, ``projected_rk4`` (ambient step + projx), or the
            adaptive pairs ``dopri5``, ``bosh3`` (:mod:`spherical.adaptive`: embedded RK 5(4)/3(2) in normal
            coordinates; ``t`` then only lists the times to report, two end points suffice).
        return_path: return all grid points ``[K, ..., C]`` instead of the end point ``[..., C]``.
        return_nfe: also return the number of velocity evaluations.
        rtol: relative tolerance of the adaptive methods (ignored by the fixed-grid ones).
        atol: absolute tolerance of the adaptive methods (ignored by the fixed-grid ones).
        return_stats: also return :class:`SolverStats` ``(nfe, accepted, rejected)`` (fixed grids:
            ``(nfe, K − 1, 0)``); not together with ``return_nfe``.

    Returns:
        The end point (or the path), and the evaluation count if ``return_nfe`` / the stats if
        ``return_stats``.

    Raises:
        FloatingPointError: the velocity returned NaN/Inf; raised at the first step it happens in, naming
            that step's times (fixed grids check the state after every step; the adaptive pairs check every
            step's stages and error estimate, so a NaN field costs one step, not ``max_steps`` rejections).
    """
    if method not in _STEPS and method not in ADAPTIVE_METHODS:
        raise ValueError(f"integrate: unknown method {method!r}; expected one of {METHODS + ADAPTIVE_METHODS}")
    if return_nfe and return_stats:
        raise ValueError("integrate: pass return_nfe or return_stats, not both")
    t = _check_grid(t, "integrate").to(device=x.device)
    f = _Counted(velocity, sphere)
    if method in ADAPTIVE_METHODS:
        out, _, stats = solve_adaptive(lambda y, tt: (f(y, tt), None), sphere, x, t, method=method, rtol=rtol,
                                       atol=atol, return_path=return_path)
    else:
        step = _STEPS[method]
        path = [x]
        for k in range(t.numel() - 1):
            tk = t[k].to(x.dtype if x.is_floating_point() else torch.float32)
            x = step(f, x, tk, (t[k + 1] - t[k]).to(tk.dtype))
            _check_finite(x, "integrate", t, k)
            if return_path:
                path.append(x)
        out = torch.stack(path) if return_path else x
        stats = SolverStats(f.nfe, t.numel() - 1, 0)
    if return_stats:
        return out, stats
    return (out, f.nfe) if return_nfe else out


def odeint(velocity: Velocity, x: Tensor, t: Tensor, *, sphere: Hypersphere, method: str = "dopri5",
           rtol: float = 1e-5, atol: float = 1e-5, return_path: bool = False, return_nfe: bool = False,
           **options) -> Union[Tensor, Tuple[Tensor, int]]:
    r"""Integrates ``ẋ = v(x, t)`` with a torchdiffeq solver, kept on the sphere.

    The ambient field ``F(y, t) = proju(ŷ, v(ŷ, t))`` with ``ŷ = projx(y)`` is orthogonal to ``y``, so its
    exact flow preserves ``‖y‖``; in addition the state is re-projected at every grid point of ``t``.

    Args:
        velocity: as in :func:`integrate`.
        x: as in :func:`integrate`.
        t: as in :func:`integrate` (it may have just its two end points).
        sphere: as in :func:`integrate`.
        method: any torchdiffeq method (``dopri5``, ``dopri8``, ``bosh3``, ``rk4``, ...).
        rtol: relative solver tolerance.
        atol: absolute solver tolerance.
        return_path: return ``[K, ..., C]`` at all grid points.
        return_nfe: also return the number of velocity evaluations.
        **options (Any): forwarded to ``torchdiffeq.odeint`` as ``options``.
    """
    t = _check_grid(t, "odeint").to(device=x.device, dtype=x.dtype)
    f = _Counted(velocity, sphere)

    last: List[Tuple[Tensor, Tensor]] = []

    def field(tt: Tensor, y: Tensor) -> Tensor:
        v = f(sphere.projx(y), tt)
        last[:] = [(tt, v)]  # kept to name a NaN velocity if torchdiffeq fails ("underflow in dt")
        return v

    path = [x]
    for k in range(t.numel() - 1):
        try:
            seg = torchdiffeq.odeint(field, x, t[k:k + 2], method=method, rtol=rtol, atol=atol,
                                     options=options or None)
        except AssertionError:
            if last and not bool(torch.isfinite(last[0][1]).all()):
                raise FloatingPointError(f"odeint: the velocity returned NaN/Inf between t={float(t[k]):.6g} and "
                                         f"t={float(t[k + 1]):.6g} (torchdiffeq stopped with a step-size "
                                         f"underflow)") from None
            raise
        x = sphere.projx(seg[-1])
        _check_finite(x, "odeint", t, k)
        if return_path:
            path.append(x)
    out = torch.stack(path) if return_path else x
    return (out, f.nfe) if return_nfe else out
