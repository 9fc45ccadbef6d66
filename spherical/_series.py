"""Numerically safe scalar helpers: every removable singularity of the sphere formulas lives here.

All functions act elementwise on small per-point tensors (shape ``[..., 1]``), never on the ``C`` axis,
so the ``where`` selections below cost nothing next to the passes over ``[..., C]`` data.

Each series is used below a threshold of 0.1 and kept to the θ⁸ term; the first omitted term is
< 3e-15 relative there, below float64 round-off, and the closed form above the threshold loses at most
~300 ulp in the derivative (the worst case of the cancellation in ``(θ cos θ − sin θ)/θ²`` at θ = 0.1).
"""
from __future__ import annotations

import torch
from torch import Tensor

_SERIES_THRESHOLD = 0.1

# Taylor coefficients in powers of θ² (c0 + c1 θ² + c2 θ⁴ + c3 θ⁶ + c4 θ⁸).
_SINC = (1.0, -1.0 / 6.0, 1.0 / 120.0, -1.0 / 5040.0, 1.0 / 362880.0)          # sin θ / θ
_THETA_OVER_SIN = (1.0, 1.0 / 6.0, 7.0 / 360.0, 31.0 / 15120.0, 127.0 / 604800.0)  # θ / sin θ
_COS = (1.0, -1.0 / 2.0, 1.0 / 24.0, -1.0 / 720.0, 1.0 / 40320.0)                 # cos θ


def _poly_theta2(theta: Tensor, coeffs: tuple[float, ...]) -> Tensor:
    """Horner evaluation of Σ_k coeffs[k]·θ^{2k}."""
    t2 = theta * theta
    out = torch.full_like(theta, coeffs[-1])
    for c in reversed(coeffs[:-1]):
        out = out * t2 + c
    return out


def _switch(theta: Tensor, series: tuple[float, ...], closed_form) -> Tensor:
    """``series(θ)`` for |θ| < threshold, ``closed_form(θ)`` otherwise, with safe gradients.

    The closed form is evaluated at a substituted argument where the series is selected, so neither
    branch produces NaN/Inf values or gradients (the "double where" rule).
    """
    small = theta.abs() < _SERIES_THRESHOLD
    safe = torch.where(small, torch.ones_like(theta), theta)
    return torch.where(small, _poly_theta2(theta, series), closed_form(safe))


def sinc(theta: Tensor) -> Tensor:
    """sin θ / θ, equal to 1 at θ = 0, smooth (finite derivatives of all orders) at 0."""
    return _switch(theta, _SINC, lambda t: torch.sin(t) / t)


def theta_over_sin(theta: Tensor) -> Tensor:
    """θ / sin θ for θ ∈ [0, π/2] (callers clamp); equal to 1 at θ = 0."""
    return _switch(theta, _THETA_OVER_SIN, lambda t: t / torch.sin(t))


def cos_sinc_sq(s: Tensor) -> tuple[Tensor, Tensor]:
    """``(cos θ, sin θ / θ)`` from ``s = θ² ≥ 0``: smooth in ``s`` (so in ``u`` when ``s = ‖u‖²/R²``).

    A function of ``θ = ‖u‖/R`` through ``‖u‖`` has a correct first derivative at ``u = 0`` but a wrong
    second one (the norm's derivative ``u/‖u‖`` is 0/0 there: autograd gives NaN, torch.func 0); both
    factors are even in θ, so below the threshold they are taken as polynomials in ``s`` itself and every
    derivative is the true one (e.g. ``∂²cos(‖u‖/R)/∂u² = −I/R²`` at 0). Above it ``θ = √s``.
    """
    small = s < _SERIES_THRESHOLD**2
    s_small = torch.where(small, s, torch.zeros_like(s))
    theta = safe_sqrt(torch.where(small, torch.ones_like(s), s))
    return (torch.where(small, _poly_theta2_sq(s_small, _COS), torch.cos(theta)),
            torch.where(small, _poly_theta2_sq(s_small, _SINC), torch.sin(theta) / theta))


def _poly_theta2_sq(s: Tensor, coeffs: tuple[float, ...]) -> Tensor:
    """Horner evaluation of Σ_k coeffs[k]·s^k."""
    out = torch.full_like(s, coeffs[-1])
    for c in reversed(coeffs[:-1]):
        out = out * s + c
    return out


def safe_sqrt(s: Tensor) -> Tensor:
    """√s for s ≥ 0 with a zero (not NaN) gradient at s = 0; negative round-off is treated as 0.

    NaN stays NaN: an infinite input coordinate gives
    ``inf − inf = NaN`` upstream, and that must reach the caller rather than read as "distance 0".
    """
    pos = s > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, s, torch.ones_like(s))),
                       torch.where(torch.isnan(s), s, torch.zeros_like(s)))


def safe_div(num: Tensor, den: Tensor) -> Tensor:
    """num / den where den ≠ 0, and 0 where den = 0 (value and gradient finite)."""
    nz = den != 0
    return torch.where(nz, num / torch.where(nz, den, torch.ones_like(den)), torch.zeros_like(num))
