"""Shared kernels of the sphere formulas: dot products, the (w, c, n, θ) frame and the antipodal fallback.

Every function here works on ``[..., C]`` tensors and reduces over the last axis to ``[..., 1]``. The
derivations (why ``w = y − σx`` and ``n = √(‖w‖² − ⟨w, x⟩²/R²)`` are exact in float32) are in the
docstring of :mod:`spherical.hypersphere`.
"""
from __future__ import annotations

from typing import NamedTuple, Tuple, Union

import torch
from torch import Tensor

from ._series import safe_sqrt

Radius = Union[float, Tensor]


# ----------------------------------------------------------------------------------------------------
# Small building blocks (all reductions keep the last axis: [..., C] -> [..., 1]).
# ----------------------------------------------------------------------------------------------------
def _dot(a: Tensor, b: Tensor) -> Tensor:
    """⟨a, b⟩ over the last axis, ``[..., C] × [..., C] -> [..., 1]`` (a batched matmul: no temporaries)."""
    return (a.unsqueeze(-2) @ b.unsqueeze(-1)).squeeze(-1)


def _norm(a: Tensor) -> Tensor:
    """‖a‖ over the last axis, ``[..., C] -> [..., 1]``; its gradient at ``a = 0`` is 0."""
    return torch.linalg.vector_norm(a, dim=-1, keepdim=True)


def _combine(w: Tensor, a: Tensor, x: Tensor, k: Tensor) -> Tensor:
    """``a·w + k·x`` with one fresh allocation (``a``, ``k``: ``[..., 1]``)."""
    out = w * a
    if torch.broadcast_shapes(out.shape, x.shape, k.shape) == out.shape:
        return out.addcmul_(x, k)  # in place on a fresh tensor: safe under autograd
    return torch.addcmul(out, x, k)


def _add_first_two(out: Tensor, g0: Tensor, g1: Tensor) -> Tensor:
    """``out[..., 0] += g0`` and ``out[..., 1] += g1`` (``g0``, ``g1``: ``[..., 1]``)."""
    delta = torch.cat([g0, g1], dim=-1)
    if torch.broadcast_shapes(out[..., :2].shape, delta.shape) != out[..., :2].shape:
        out = out.expand(torch.broadcast_shapes(out.shape[:-1], delta.shape[:-1]) + out.shape[-1:])
        out = out.clone()
    out[..., :2] += delta
    return out


class _Frame(NamedTuple):
    """Quantities shared by logmap, dist, geodesic and transp (all but ``w`` are ``[..., 1]``).

    ``w = y − σx``; ``c = ⟨w, x⟩/R²`` so that ``y_⊥ = w − c·x``; ``n = ‖y_⊥‖ = ‖y‖ sin θ``;
    ``n_safe`` is ``n`` with 0 replaced by 1; ``cos_part = ⟨x, y⟩/R = ‖y‖ cos θ``; ``ynorm = ‖y‖``
    (never 0: replaced by 1); ``theta`` ∈ [0, π]; ``antipodal`` marks ``y_⊥ = 0`` with ``⟨x, y⟩ < 0``.
    """

    w: Tensor
    c: Tensor
    n: Tensor
    n_safe: Tensor
    cos_part: Tensor
    ynorm: Tensor
    theta: Tensor
    antipodal: Tensor


def _frame(x: Tensor, y: Tensor, r: Radius) -> _Frame:
    r2 = r * r
    xy = _dot(x, y)
    sigma = torch.where(xy >= 0, 1.0, -1.0).to(xy.dtype)
    w = torch.addcmul(y, x, -sigma)  # y − σx, exact cancellation near θ = 0 (σ = 1) and θ = π (σ = −1)
    wx = _dot(w, x)
    c = wx / r2
    n = safe_sqrt(_norm(w).square() - wx * c)
    cos_part = xy / r
    degenerate = (n == 0) & (cos_part == 0)  # only for y = 0, which is not on the sphere
    theta = torch.atan2(n, torch.where(degenerate, torch.ones_like(cos_part), cos_part))
    ynorm = torch.hypot(n, cos_part)
    ynorm = torch.where(ynorm > 0, ynorm, torch.ones_like(ynorm))
    zero = n == 0
    n_safe = torch.where(zero, torch.ones_like(n), n)
    return _Frame(w, c, n, n_safe, cos_part, ynorm, theta, zero & (cos_part < 0))


class _Fallback(NamedTuple):
    """The antipodal direction f̂ = (e_j − (x_j/R²) x)/s, stored as its pieces (``[..., 1]`` each)."""

    first: Tensor  # j == 0 (as x.dtype 1.0/0.0)
    xj: Tensor
    s: Tensor


def _fallback(x: Tensor, r2: Radius) -> _Fallback:
    x0, x1 = x[..., 0:1], x[..., 1:2]
    first = x0 * x0 <= 0.5 * r2
    xj = torch.where(first, x0, x1)
    s = torch.sqrt(torch.clamp(1.0 - xj * xj / r2, min=0.5))  # ≥ √½ by the choice of j
    return _Fallback(first.to(x.dtype), xj, s)


def _fold_fallback(x_coef: Tensor, g: Tensor, fb: _Fallback, r2: Radius) -> Tuple[Tensor, Tensor]:
    """Splits ``g·f̂ = (g/s)·e_j − (g·x_j/(R² s))·x``: returns the new x-coefficient and ``g/s``."""
    return x_coef - g * fb.xj / (r2 * fb.s), g / fb.s
