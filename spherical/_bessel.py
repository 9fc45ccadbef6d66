"""log I_ν(x), the modified Bessel function of the first kind, without overflow for any ν ≥ 0, x ≥ 0.

Everything the von Mises–Fisher law needs reduces to two quantities, computed together in float64:

* ``h_ν(x) = log I_ν(x) − ν·log x − x``: finite at ``x = 0`` (``−ν log 2 − lgamma(ν+1)``) and of
  size ``O(ν + log x)`` for large ``x`` (the ``e^x`` growth is taken out), so nothing overflows;
* ``q_{ν+1}(x) = x·I_ν(x)/I_{ν+1}(x)`` (``2ν+2`` at ``x = 0``), which gives the ratio
  ``A_ν(x) = I_{ν+1}(x)/I_ν(x) = x/q_{ν+1}`` and ``A_ν(x)/x = 1/q_{ν+1}`` without a 0/0.

Scheme
------
1. For order ``n ≥ N_DEBYE`` the uniform asymptotic (Debye) expansion, with ``z = x/n``,
   ``p = √(1+z²)``, ``t = 1/p``::

       I_n(n z) ~ e^{n η} / (√(2π n)·(1+z²)^{1/4}) · Σ_k u_k(t)/n^k,   η = p + log(z/(1+p)),

   so ``h_n(x) = n/(p+z) − n·log(1+p) − n·log n − ½ log(2π n) − ½ log p + log Σ_k u_k(t)/n^k``
   (``n·p − x = n/(p+z)``: the ``e^x`` factor cancels analytically). The polynomials ``u_k`` are
   generated exactly (rational arithmetic) from ``u_0 = 1`` and
   ``u_{k+1}(t) = ½ t²(1−t²) u_k'(t) + ⅛ ∫_0^t (1−5s²) u_k(s) ds``. The expansion is uniform in
   ``z ∈ [0, ∞)``: one formula covers small and large arguments.
2. For order ``ν < N_DEBYE`` the three-term recurrence ``I_{n−1} = I_{n+1} + (2n/x) I_n`` is run
   *downwards* from the Debye values at ``n = ν + m ≥ N_DEBYE``, in the form
   ``q_n = 2n + x²/q_{n+1}``, ``h_{n−1} = h_n + log q_n``. Every term is positive (no cancellation),
   the backward direction is the stable one for ``I``, and ``x = 0`` needs no special case.

Accuracy: the truncation error of step 1 is below 2e-14 relative (see ``DEBYE_TERMS``) and step 2
adds positive terms only. Measured (``python benchmarks/bench_distributions.py``): max error 3.6e-14
relative to ``max(1, |log I|)`` against scipy over C = 2 … 4096, x = 1e-8 … 1e5; ``tests/test_bessel.py``
also checks mpmath (40 digits) where scipy under/overflows, to 1e-13.
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import List, Tuple

import torch
from torch import Tensor

__all__ = ["log_iv", "log_iv_scaled", "bessel_ratio", "N_DEBYE", "DEBYE_TERMS"]

N_DEBYE = 30        # smallest order evaluated by the Debye expansion (lower orders: recurrence)
DEBYE_TERMS = 9     # u_0 … u_8: first omitted term ≤ max_[0,1]|u_9|/30^9 = 0.38/30^9 ≈ 1.9e-14


def _debye_polynomials(count: int) -> List[List[float]]:
    """Coefficients ``[c_0, c_1, …]`` (powers of t) of u_0 … u_{count−1}, exact then rounded."""
    polys: List[List[Fraction]] = [[Fraction(1)]]
    for _ in range(count - 1):
        u = polys[-1]
        du = [i * c for i, c in enumerate(u)][1:]                       # u'(t)
        nxt = [Fraction(0)] * (len(u) + 3)
        for i, c in enumerate(du):                                     # ½ t²(1 − t²) u'
            nxt[i + 2] += c / 2
            nxt[i + 4] -= c / 2
        for i, c in enumerate(u):                                      # ⅛ ∫ (1 − 5 s²) u(s) ds
            nxt[i + 1] += c / (8 * (i + 1))
            nxt[i + 3] -= 5 * c / (8 * (i + 3))
        while nxt and nxt[-1] == 0:
            nxt.pop()
        polys.append(nxt)
    return [[float(c) for c in p] for p in polys]


_U = _debye_polynomials(DEBYE_TERMS)


def _horner(coeffs: List[float], t: Tensor) -> Tensor:
    out = torch.full_like(t, coeffs[-1])
    for c in reversed(coeffs[:-1]):
        out = out * t + c
    return out


def _debye(n: float, x: Tensor) -> Tensor:
    """``h_n(x) = log I_n(x) − n log x − x`` for ``n ≥ N_DEBYE`` (x float64, ≥ 0, any finite size)."""
    z = x / n
    p = torch.hypot(torch.ones_like(z), z)                               # √(1+z²) without overflow
    t = 1.0 / p
    series = torch.zeros_like(t)
    for k in reversed(range(DEBYE_TERMS)):                               # Σ u_k(t) n^{−k}, Horner in 1/n
        series = series / n + _horner(_U[k], t)
    return (n / (p + z) - n * torch.log1p(p) - n * math.log(n) - 0.5 * math.log(2 * math.pi * n)
            - 0.5 * torch.log(p) + torch.log(series))


def _core(nu: float, x: Tensor) -> Tuple[Tensor, Tensor]:
    """``(h_ν(x), q_{ν+1}(x))`` in float64 for a float ``ν ≥ 0`` and ``x ≥ 0`` (see the module docstring)."""
    steps = max(0, math.ceil(N_DEBYE - nu))
    top = nu + steps
    h = _debye(top, x)
    q = torch.exp(h - _debye(top + 1, x))                               # q_{top+1} = x I_top / I_{top+1}
    x2 = x * x
    for j in range(steps):                                              # n = top, top−1, …, ν+1
        n = top - j
        q = 2.0 * n + x2 / q
        h = h + torch.log(q)
    return h, q


def _prepare(nu: float, x: Tensor) -> Tensor:
    if not (isinstance(nu, (int, float)) and math.isfinite(nu) and nu >= 0):
        raise ValueError(f"order nu must be a finite float >= 0, got {nu!r}")
    return x.detach().to(torch.float64).clamp_min(0.0)


class _LogIvScaled(torch.autograd.Function):
    """``h_ν(x)`` with ``dh/dx = A_ν(x) − 1 = x/q_{ν+1} − 1`` (from ``I_ν' = I_{ν+1} + (ν/x) I_ν``)."""

    @staticmethod
    def forward(ctx, x: Tensor, nu: float) -> Tensor:
        h, q = _core(nu, _prepare(nu, x))
        ctx.save_for_backward(x)
        ctx.nu = nu
        return h.to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        # A − 1 in float64 (A → 1 as x → ∞: float32 would keep ~2 digits of 1 − A at x = 1e5)
        return grad * (bessel_ratio(ctx.nu, x.to(torch.float64)) - 1.0).to(grad.dtype), None


class _BesselRatio(torch.autograd.Function):
    """``A_ν(x) = I_{ν+1}/I_ν`` with ``A' = 1 − A² − (2ν+1)·A/x`` and ``A/x = 1/q_{ν+1}`` (finite at 0)."""

    @staticmethod
    def forward(ctx, x: Tensor, nu: float) -> Tensor:
        x64 = _prepare(nu, x)
        _, q = _core(nu, x64)
        a = x64 / q
        ctx.save_for_backward(a, q)
        ctx.nu = nu
        return a.to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        a, q = ctx.saved_tensors
        da = 1.0 - a * a - (2.0 * ctx.nu + 1.0) / q
        return grad * da.to(grad.dtype), None


def log_iv_scaled(nu: float, x: Tensor) -> Tensor:
    """``log I_ν(x) − ν·log x − x`` for ``x ≥ 0`` (any shape, float32/float64; computed in float64).

    Finite for every finite ``x ≥ 0`` (``−ν log 2 − lgamma(ν+1)`` at 0); differentiable in ``x``.
    """
    return _LogIvScaled.apply(x, nu)


def log_iv(nu: float, x: Tensor) -> Tensor:
    """``log I_ν(x)`` for ``x ≥ 0`` (``−inf`` at ``x = 0`` for ``ν > 0``, 0 for ``ν = 0``)."""
    xs = x.clamp_min(0.0)
    lx = torch.xlogy(torch.full_like(xs, float(nu)), xs) if nu > 0 else torch.zeros_like(xs)
    return log_iv_scaled(nu, xs) + lx + xs


def bessel_ratio(nu: float, x: Tensor) -> Tensor:
    """``A_ν(x) = I_{ν+1}(x)/I_ν(x) ∈ [0, 1)`` for ``x ≥ 0`` (0 at ``x = 0``); differentiable in ``x``."""
    return _BesselRatio.apply(x, nu)
