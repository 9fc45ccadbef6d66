"""Runge–Kutta stages in the normal coordinates of a base point, shared by the fixed-grid and adaptive solvers.

An explicit RK step from ``x`` solves ``ξ̇ = F(ξ, t) = (D exp_x(ξ))⁻¹ v(exp_x ξ, t)`` on the vector space
``T_xS`` from ``ξ = 0`` (Runge–Kutta–Munthe-Kaas with the exact inverse differential): stage i evaluates
the field at ``y_i = exp_x(h·Σ_j a_ij k_j)`` and pulls it back to ``k_i = (D exp_x(ξ_i))⁻¹ v(y_i) ∈ T_xS``.
The change of variables is exact, so every tableau keeps its Euclidean order and its embedded error
estimate ``h·Σ (b_i − b̂_i) k_i`` is a vector of ``T_xS``.

A field may carry a Euclidean quadrature part: ``field(y, t) -> (v, g)`` with ``v`` tangent at ``y``
and ``g`` the derivative of an auxiliary state ``a`` (``ȧ = g(x, t)``, e.g. the divergence of v for
log-likelihoods) or ``None``. The auxiliary stages ``g_i`` are plain Euclidean RK stages.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ._kernels import _dot, _norm
from ._series import sinc
from .hypersphere import Hypersphere

JointField = Callable[[Tensor, Tensor], Tuple[Tensor, Optional[Tensor]]]


def _dexp_inv(sphere: Hypersphere, x: Tensor, xi: Tensor, y: Tensor, w: Tensor) -> Tensor:
    """``(D exp_x(ξ))⁻¹ w`` for ``w ∈ T_yS``, ``y = exp_x(ξ)``; all ``[..., C]``.

    With ``θ = ‖ξ‖/R`` and ``w̄ = P_{y→x} w`` (parallel transport back),
    ``(D exp_x(ξ))⁻¹ w = w̄_∥ + w̄_⊥ / sinc θ`` where ``∥``/``⊥`` split along ``ξ``.
    """
    wb = sphere.transp(y, x, w)
    r = sphere._rad(x)
    nxi = _norm(xi)
    ehat = xi / torch.where(nxi > 0, nxi, torch.ones_like(nxi))
    par = _dot(wb, ehat) * ehat
    return par + (wb - par) / sinc(nxi / r)


def _combo(h: Tensor, coeffs: Sequence[float], vecs: Sequence[Tensor]) -> Optional[Tensor]:
    """``h·Σ c_j v_j`` over the non-zero coefficients (``None`` when all are zero)."""
    terms = [c * v for c, v in zip(coeffs, vecs) if c != 0.0]
    if not terms:
        return None
    return h * torch.stack(terms).sum(0) if len(terms) > 1 else h * terms[0]


def rk_stages(field: JointField, sphere: Hypersphere, x: Tensor, t: Tensor, h: Tensor,
              a: Sequence[Sequence[float]], c: Sequence[float],
              first: Optional[Tuple[Tensor, Optional[Tensor]]] = None
              ) -> Tuple[List[Tensor], List[Optional[Tensor]], Tuple[Tensor, Optional[Tensor]]]:
    """All stages of one explicit RK step in ``T_xS``.

    Args:
        field: ``(y [..., C], t 0-dim) -> (v tangent at y, g or None)``.
        sphere, x, t, h: manifold, base point ``[..., C]``, start time, step (0-dim tensors).
        a, c: the tableau's lower-triangular rows ``a[i-1]`` (for stage i ≥ 1) and nodes.
        first: ``field(x, t)`` if already known (first-same-as-last reuse).

    Returns:
        ``(k, g, last)``: stage vectors ``k_i ∈ T_xS``, auxiliary stages ``g_i``, and the raw
        ``field`` output of the last stage (tangent at its own point: reusable as the next step's
        ``first`` when the last stage sits at the step's end point).
    """
    ks: List[Tensor] = []
    gs: List[Optional[Tensor]] = []
    out = first if first is not None else field(x, t)
    ks.append(out[0])  # F(0) = v(x): D exp_x(0) is the identity
    gs.append(out[1])
    for i in range(1, len(c)):
        xi = _combo(h, a[i - 1], ks)
        if xi is None:
            out = field(x, t + c[i] * h)
            ks.append(out[0])
        else:
            y = sphere.expmap(x, xi)
            out = field(y, t + c[i] * h)
            ks.append(_dexp_inv(sphere, x, xi, y, out[0]))
        gs.append(out[1])
    return ks, gs, out


def rk_combine(sphere: Hypersphere, x: Tensor, aux: Optional[Tensor], h: Tensor, b: Sequence[float],
               ks: Sequence[Tensor], gs: Sequence[Optional[Tensor]]) -> Tuple[Tensor, Optional[Tensor]]:
    """The step's end: ``(exp_x(h·Σ b_i k_i), a + h·Σ b_i g_i)``."""
    xi = _combo(h, b, ks)
    x1 = x if xi is None else sphere.expmap(x, xi)
    if aux is None:
        return x1, None
    da = _combo(h, b, gs)
    return x1, aux if da is None else aux + da
