"""Adaptive embedded Runge–Kutta pairs on products of spheres, with error control in normal coordinates.

Each step is an explicit RK step in the normal coordinates of its base point x (see
:mod:`spherical._normal`): stage i evaluates the velocity at ``exp_x(h·Σ_j a_ij k_j)`` and pulls it back
to ``k_i ∈ T_xS`` with the exact inverse differential of ``exp_x`` (parallel transport back to x, then
``1/sinc θ`` on the component orthogonal to ξ). Transport alone (or a projection) differs from that
pull-back by ``(1/sinc θ − 1)·w_⊥ = O(θ²)·w_⊥``; the stage vectors are nearly parallel to ξ (``w_⊥ = O(h)``),
so each stage is off by O(h³), each step by O(h⁴), and the method drops to order 3 (measured: the rk4
tableau with transport only converges at order 2.99 on the rotation flow, 4.00 with the exact pull-back:
``tests/test_adaptive.py::test_exact_pullback_is_what_keeps_the_order``); the exact pull-back keeps the
Euclidean orders 5(4) and 3(2).

The step is ``x₁ = exp_x(h·Σ b_i k_i)``; the local error estimate is the tangent vector
``e = h·Σ (b_i − b̂_i) k_i ∈ T_xS``. Its size is measured per point (one token of ``[..., C]``) as
``‖e‖ / (atol + rtol·R)`` (R the radius: the scale of every point), combined over all points by the root
mean square; an auxiliary Euclidean part ``a`` (e.g. a log-determinant) contributes
``|e_a| / (atol + rtol·max(|a₀|, |a₁|))`` with the same RMS, and the larger of the two RMS values is the
step's error ratio ``E``. A step is accepted when ``E ≤ 1``; the next step size is
``h·clip(safety·E^(−1/(q+1) + 0.75β)·E_prev^β, min_factor, max_factor)`` (Hairer's PI controller of DOPRI5,
β = 0.04; no growth right after a rejection; a rejected step retries with ``h·max(min_factor,
safety·E^(−1/(q+1)))``), q the order of the embedded (lower-order) solution. The first step follows
Hairer, Nørsett & Wanner (I, II.4): one explicit Euler trial step, 2 evaluations in all. Both pairs are first-same-as-last: the last stage
sits at the accepted end point, so an accepted or rejected step costs ``stages − 1`` evaluations.

Methods: ``dopri5`` (Dormand–Prince 5(4), 7 stages) and ``bosh3`` (Bogacki–Shampine 3(2), 4 stages).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from ._kernels import _norm
from ._normal import JointField, _combo, _dexp_inv, rk_combine, rk_stages
from .hypersphere import Hypersphere

__all__ = ["ADAPTIVE_METHODS", "Tableau", "SolverStats", "solve_adaptive"]


@dataclass(frozen=True)
class Tableau:
    """An embedded explicit RK pair: rows ``a``, weights ``b`` (order p), ``b_hat`` (order q), nodes ``c``."""

    a: Tuple[Tuple[float, ...], ...]
    b: Tuple[float, ...]
    b_hat: Tuple[float, ...]
    c: Tuple[float, ...]
    error_order: int


_DOPRI5 = Tableau(
    a=((1 / 5,),
       (3 / 40, 9 / 40),
       (44 / 45, -56 / 15, 32 / 9),
       (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
       (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
       (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)),
    b=(35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0),
    b_hat=(5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40),
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    error_order=4,
)
_BOSH3 = Tableau(
    a=((1 / 2,), (0.0, 3 / 4), (2 / 9, 1 / 3, 4 / 9)),
    b=(2 / 9, 1 / 3, 4 / 9, 0.0),
    b_hat=(7 / 24, 1 / 4, 1 / 3, 1 / 8),
    c=(0.0, 1 / 2, 3 / 4, 1.0),
    error_order=2,
)
TABLEAUX: Dict[str, Tableau] = {"dopri5": _DOPRI5, "bosh3": _BOSH3}
ADAPTIVE_METHODS: Tuple[str, ...] = tuple(TABLEAUX)


class SolverStats(NamedTuple):
    """Work done by a solve: velocity evaluations, accepted and rejected steps."""

    nfe: int
    accepted: int
    rejected: int


def _rms(v: Tensor) -> Tensor:
    return v.square().mean().sqrt()


class _Scale:
    """Error ratios of tangent vectors (per point, against ``atol + rtol·R``) and auxiliary vectors."""

    def __init__(self, sphere: Hypersphere, x: Tensor, rtol: float, atol: float) -> None:
        self.rtol, self.atol = rtol, atol
        self.den = atol + rtol * (torch.ones_like(x[..., :1]) * sphere._rad(x))  # [..., 1]

    def __call__(self, e: Tensor, ea: Optional[Tensor] = None, a0: Optional[Tensor] = None,
                 a1: Optional[Tensor] = None) -> Tensor:
        r = _rms(_norm(e) / self.den)
        if ea is not None:
            ref = torch.maximum(a0.abs(), a1.abs()) if a1 is not None else a0.abs()
            r = torch.maximum(r, _rms(ea / (self.atol + self.rtol * ref)))
        return r


def _which(ks: List[Tensor], gs: List[Optional[Tensor]]) -> str:
    """Names the first stage whose velocity (or auxiliary derivative) is not finite (diagnostics only)."""
    for i, (k, g) in enumerate(zip(ks, gs)):
        if not bool(torch.isfinite(k).all()):
            return f"velocity of stage {i + 1}"
        if g is not None and not bool(torch.isfinite(g).all()):
            return f"auxiliary derivative of stage {i + 1}"
    return "error estimate"


def _first_step(field: JointField, sphere: Hypersphere, x: Tensor, aux: Optional[Tensor], t0: Tensor,
                span: Tensor, f0: Tuple[Tensor, Optional[Tensor]], scale: _Scale, q: int) -> Tensor:
    """Hairer's initial step size (magnitude) from ``f0 = field(x, t0)`` and one Euler trial step."""
    d0 = scale(x, aux, aux)
    d1 = scale(f0[0], f0[1], aux)
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1)
    h0 = torch.minimum(h0, span.abs())
    sign = torch.sign(span)
    xi = sign * h0 * f0[0]
    y = sphere.expmap(x, xi)
    f1 = field(y, t0 + sign * h0)
    dv = _dexp_inv(sphere, x, xi, y, f1[0]) - f0[0]
    da = None if f0[1] is None else f1[1] - f0[1]
    d2 = scale(dv, da, aux) / h0
    dm = torch.maximum(d1, d2)
    h1 = torch.where(dm <= 1e-15, torch.maximum(torch.full_like(h0, 1e-6), h0 * 1e-3),
                     (0.01 / dm) ** (1.0 / (q + 1)))
    return torch.minimum(torch.minimum(100 * h0, h1), span.abs())


def solve_adaptive(field: JointField, sphere: Hypersphere, x: Tensor, t: Tensor, *, method: str = "dopri5",
                   rtol: float = 1e-5, atol: float = 1e-5, aux: Optional[Tensor] = None,
                   first_step: Optional[float] = None, safety: float = 0.9, min_factor: float = 0.2,
                   max_factor: float = 10.0, beta: float = 0.04, max_steps: int = 100_000,
                   return_path: bool = False
                   ) -> Tuple[Tensor, Optional[Tensor], SolverStats]:
    r"""Integrates ``ẋ = v(x, t)`` on the sphere (and ``ȧ = g(x, t)``) with an adaptive embedded RK pair.

    The solver steps through every point of the grid ``t`` exactly (a step that would pass the next grid
    point is shortened to land on it); only those points are returned.

    Args:
        field: ``(y [..., C], t 0-dim) -> (v tangent at y, g or None)``; ``g`` is the auxiliary derivative,
            shaped like ``aux``.
        sphere: the manifold.
        x: ``[..., C]`` start points at ``t[0]``.
        t: ``[K]`` strictly monotone grid (either direction), ``K ≥ 2``; a 0-dim float tensor per entry.
        method: ``dopri5`` or ``bosh3``.
        rtol: relative tolerance of the error ratio (module docstring); rtol, atol ≥ 0, not both zero.
        atol: absolute tolerance of the error ratio.
        aux: optional auxiliary Euclidean state at ``t[0]`` (any shape); requires ``field`` to return ``g``.
        first_step: initial step magnitude; ``None`` selects it automatically.
        safety: step-size controller safety factor.
        min_factor: smallest step-size factor per step.
        max_factor: largest step-size factor per step.
        beta: weight of the previous error in the PI controller (Hairer's DOPRI5 default 0.04; 0 is the
            classical I controller ``safety·E^(−1/(q+1))``).
        max_steps: raises ``RuntimeError`` after this many attempted steps.
        return_path: stack the states at all grid points (``[K, ...]``) instead of the last one.

    Returns:
        ``(x, aux, stats)`` at ``t[-1]`` (or their paths), ``aux`` is ``None`` without an auxiliary state.

    Raises:
        FloatingPointError: at the first step whose stages or error estimate hold NaN/Inf (a non-finite
            velocity cannot be cured by a smaller step: the solver stops at once, naming the times).
    """
    if method not in TABLEAUX:
        raise ValueError(f"solve_adaptive: unknown method {method!r}; expected one of {ADAPTIVE_METHODS}")
    if not (rtol >= 0 and atol >= 0 and rtol + atol > 0):
        raise ValueError(f"solve_adaptive: expected rtol, atol >= 0 and not both 0, got rtol={rtol}, atol={atol}")
    if not (0 < safety <= 1 and 0 < min_factor <= 1 <= max_factor and 0 <= beta < 0.2):
        raise ValueError("solve_adaptive: expected 0 < safety <= 1, 0 < min_factor <= 1 <= max_factor, 0 <= beta < 0.2")
    tab = TABLEAUX[method]
    nfe = [0]

    def f(y: Tensor, tt: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        nfe[0] += 1
        return field(y, tt)

    dt = x.dtype if x.is_floating_point() else torch.float32
    ts = t.double().tolist()  # step bookkeeping in Python float64: exact landing, no device syncs

    def at(v: float) -> Tensor:  # a time or step on the device, in the field's dtype
        return torch.tensor(v, dtype=dt, device=x.device)

    scale = _Scale(sphere, x, rtol, atol)
    expo = 1.0 / (tab.error_order + 1)
    db = [bi - bh for bi, bh in zip(tab.b, tab.b_hat)]
    xs: List[Tensor] = [x]
    auxs: List[Optional[Tensor]] = [aux]
    tk = ts[0]
    if not bool(torch.isfinite(x).all()) or (aux is not None and not bool(torch.isfinite(aux).all())):
        raise FloatingPointError(f"solve_adaptive: the start state at t={tk:.6g} holds NaN/Inf")
    fk = f(x, at(tk))
    if first_step is not None:
        h_abs = float(first_step)
    else:
        h_abs = float(_first_step(f, sphere, x, aux, at(tk), at(ts[-1] - ts[0]), fk, scale, tab.error_order))
    if not math.isfinite(h_abs):  # only a NaN/Inf velocity at t0 or at the Euler trial point gives this
        raise FloatingPointError(f"solve_adaptive: non-finite velocity at or just after t={tk:.6g} (while "
                                 f"choosing the first step); the velocity field returned NaN/Inf")
    accepted = rejected = 0
    err_prev, after_reject = 1e-4 if beta > 0 else 1.0, False
    for t_end in ts[1:]:
        sign = 1.0 if t_end > tk else -1.0
        while (t_end - tk) * sign > 0:
            if accepted + rejected >= max_steps:
                raise RuntimeError(f"solve_adaptive: more than max_steps={max_steps} steps before t={t_end}; "
                                   f"loosen rtol/atol or raise max_steps")
            remaining = abs(t_end - tk)
            last = h_abs >= remaining
            h64 = sign * (remaining if last else h_abs)
            h = at(h64)
            ks, gs, out = rk_stages(f, sphere, x, at(tk), h, tab.a, tab.c, first=fk)
            x1, aux1 = rk_combine(sphere, x, aux, h, tab.b, ks, gs)
            e = _combo(h, db, ks)
            ea = None if aux is None else _combo(h, db, gs)
            err = float(scale(e, ea, aux, aux1).detach())
            if not math.isfinite(err):  # a NaN/Inf stage: no step size makes it finite, so stop here
                raise FloatingPointError(
                    f"solve_adaptive: non-finite velocity or error estimate in the step from t={tk:.6g} to "
                    f"t={tk + h64:.6g} ({_which(ks, gs)}); the velocity field returned NaN/Inf")
            if err <= 1.0:
                accepted += 1
                tk = t_end if last else tk + h64
                x, aux, fk = x1, aux1, out  # FSAL: the last stage is field(x1, tk)
                if err == 0.0:
                    grow = max_factor
                else:  # PI control: err^(−(1/(q+1) − 0.75β))·err_prev^β
                    grow = safety * err ** -(expo - 0.75 * beta) * err_prev ** beta
                    grow = min(max_factor, max(min_factor, grow))
                if after_reject:
                    grow = min(grow, 1.0)
                err_prev, after_reject = max(err, 1e-4), False
                new = abs(h64) * grow
                h_abs = max(h_abs, new) if last else new  # a step shortened to land keeps its proposal
            else:
                rejected += 1
                after_reject = True
                shrink = min(1.0, max(min_factor, safety * err ** -expo))
                h_abs = abs(h64) * shrink
                if h_abs <= 1e-14 * abs(ts[-1] - ts[0]):
                    raise RuntimeError(f"solve_adaptive: step size underflow at t={tk}")
        xs.append(x)
        auxs.append(aux)
    stats = SolverStats(nfe[0], accepted, rejected)
    if return_path:
        return torch.stack(xs), (torch.stack(auxs) if aux is not None else None), stats
    return x, aux, stats
