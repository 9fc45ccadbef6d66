"""Riemannian flow matching on products of spheres: the path, its velocity, the loss, the time law.

Convention (as in the paper): ``t = 0`` is data, ``t = 1`` is noise; noise is uniform on the sphere.
"""
from __future__ import annotations

import math
import numbers
from typing import NamedTuple, Optional, Union

import torch
from torch import Tensor

from ._kernels import _dot
from .hypersphere import Hypersphere

__all__ = ["FlowSample", "geodesic_flow", "RFMLoss", "rfm_loss", "time_shift", "dimension_shift", "sample_time"]

_UNIT = Hypersphere(1.0)


class FlowSample(NamedTuple):
    """A point on the probability path and its target velocity.

    Attributes:
        xt: ``[..., C]`` point at time t on the geodesic x0 → x1.
        ut: ``[..., C]`` its time derivative ``dx_t/dt`` (tangent at xt, ``‖ut‖ = dist(x0, x1)``).
    """

    xt: Tensor
    ut: Tensor


def geodesic_flow(x0: Tensor, x1: Tensor, t: Union[float, Tensor], *,
                  sphere: Optional[Hypersphere] = None) -> FlowSample:
    r"""Slerp from ``x0`` (data) to ``x1`` (noise) and its exact time derivative, in closed form.

    With ``Ω = dist(x0, x1)/R``:

    .. math::
        x_t = \frac{\sin((1-t)Ω)\,x_0 + \sin(tΩ)\,x_1}{\sin Ω}, \qquad
        u_t = \frac{Ω}{\sin Ω}\,[\cos(tΩ)\,x_1 - \cos((1-t)Ω)\,x_0],

    evaluated as ``x_t = cos(tΩ)·x0 + R sin(tΩ)·ê`` and ``u_t = −Ω sin(tΩ)·x0 + RΩ cos(tΩ)·ê`` with
    ``ê`` the unit tangent at x0 towards x1 (see :class:`Hypersphere`), which has no 1/sin Ω
    singularity: ``x1 = x0`` gives ``u_t = 0`` and ``x1 = −x0`` follows a deterministic great circle.

    Args:
        x0: ``[..., C]`` data points on the sphere.
        x1: ``[..., C]`` noise points on the same sphere.
        t: float, or tensor broadcastable to ``x0[..., :1]`` (one time per sample: ``[B, 1, 1]`` for
            ``[B, N, C]``).
        sphere: the manifold (its radius); ``None`` means the unit sphere.

    Returns:
        FlowSample(xt, ut), both ``[..., C]``.
    """
    sphere = _UNIT if sphere is None else sphere
    xt, ut = sphere.geodesic_with_velocity(x0, x1, t)
    return FlowSample(xt, ut)


class RFMLoss(NamedTuple):
    """Riemannian flow-matching loss and its parts (0-dim tensors): ``total = tangent + λ·radial``."""

    total: Tensor
    tangent: Tensor
    radial: Tensor


def rfm_loss(v: Tensor, xt: Tensor, ut: Tensor, *, lambda_rad: float = 0.1) -> RFMLoss:
    r"""Tangent error plus ``λ_rad`` times the radial energy of the prediction.

    The prediction is split at ``x̂ = xt/‖xt‖`` into ``v_rad = ⟨v, x̂⟩x̂`` and ``v_tan = v − v_rad``:

    .. math::
        L = \operatorname{mean}\|v_{tan} - u_t\|^2 + λ_{rad}\,\operatorname{mean}\|v_{rad}\|^2.

    Reduction: squared norms are taken per point over the channel axis ``C`` (per token), then
    averaged over every leading axis (batch and tokens); they are *not* divided by ``C``.
    Computed in float32 at least (half inputs are upcast).

    Args:
        v: ``[..., C]`` network output (an ambient vector).
        xt: ``[..., C]`` points where it was evaluated.
        ut: ``[..., C]`` target velocities (tangent at xt).
        lambda_rad: weight of the radial penalty (paper: 0.1).

    Raises:
        ValueError: on mismatched shapes, or an empty batch (no points: the mean is undefined, and a
            silent NaN loss would poison the optimiser state, so it is refused rather than defined as 0).
    """
    try:
        ok = v.dim() >= 1 and v.shape == ut.shape and torch.broadcast_shapes(v.shape, xt.shape) == v.shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"rfm_loss: expected v and ut of the same shape [..., C] with xt broadcastable, "
                         f"got v {tuple(v.shape)}, xt {tuple(xt.shape)}, ut {tuple(ut.shape)}")
    if isinstance(lambda_rad, bool) or not isinstance(lambda_rad, numbers.Real) or not 0 <= lambda_rad < math.inf:
        raise ValueError(f"rfm_loss: lambda_rad must be a finite number >= 0 (paper: 0.1), got {lambda_rad!r}")
    if v.numel() == 0:
        raise ValueError(f"rfm_loss: empty batch (v has shape {tuple(v.shape)}); expected at least one point")
    dtype = torch.promote_types(v.dtype, torch.float32)
    v, xt, ut = v.to(dtype), xt.to(dtype), ut.to(dtype)
    nx = torch.linalg.vector_norm(xt, dim=-1, keepdim=True)
    xhat = xt / torch.where(nx > 0, nx, torch.ones_like(nx))
    vr = _dot(v, xhat)  # ⟨v, x̂⟩: [..., 1] (float32-exact whatever the TF32 setting)
    err = v - vr * xhat - ut
    tangent = err.square().sum(-1).mean()
    radial = vr.square().mean()
    return RFMLoss(tangent + lambda_rad * radial, tangent, radial)


def time_shift(t: Union[float, Tensor], alpha: float) -> Union[float, Tensor]:
    r"""Resolution shift of times towards noise: ``α·t / (1 + (α − 1)·t)`` (identity for α = 1).

    Maps [0, 1] onto itself monotonically; α > 1 spends more time near t = 1 (noise).

    Args:
        t: a float in ``[0, 1]`` (anything else raises ValueError), or a tensor of times; tensor entries
            outside ``[0, 1]`` (or NaN) give NaN: no data-dependent check, so this stays free of host
            syncs and graph breaks.
        alpha: the shift, a positive finite number.
    """
    if isinstance(alpha, bool) or not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"time_shift: alpha must be a positive finite number, got {alpha!r}")
    if isinstance(t, Tensor):
        inside = (t >= 0) & (t <= 1)
        tt = torch.where(inside, t, torch.zeros_like(t))
        return torch.where(inside, alpha * tt / (1 + (alpha - 1) * tt), torch.full_like(tt, math.nan))
    if not (isinstance(t, (int, float)) and 0.0 <= t <= 1.0):
        raise ValueError(f"time_shift: t must be a time in [0, 1], got {t!r}")
    return alpha * t / (1 + (alpha - 1) * t)


def dimension_shift(num_tokens: int, channels: int, base: int = 4096) -> float:
    r"""The paper's α = √(num_tokens·channels/base): 8.0 for 256 tokens × 1024 channels."""
    if num_tokens <= 0 or channels <= 0 or base <= 0:
        raise ValueError(f"dimension_shift: expected positive sizes, got {num_tokens}, {channels}, {base}")
    return math.sqrt(num_tokens * channels / base)


def sample_time(n: int, *, alpha: float = 1.0, loc: float = 0.0, scale: float = 1.0,
                generator: Optional[torch.Generator] = None, device=None,
                dtype: torch.dtype = torch.float32) -> Tensor:
    r"""``n`` training times ``t = time_shift(sigmoid(loc + scale·ε), α)``, ``ε ~ N(0, 1)``: shape ``[n]``.

    Raises:
        ValueError: unless ``n`` is an integer ≥ 0, ``scale`` a positive finite number, ``loc`` finite
            and ``alpha`` positive finite.
    """
    def real(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0 or not (real(scale) and scale > 0) or not real(loc):
        raise ValueError(f"sample_time: expected an integer n >= 0, a positive finite scale and a finite loc, "
                         f"got n={n!r}, scale={scale!r}, loc={loc!r}")
    if not (real(alpha) and alpha > 0):
        raise ValueError(f"sample_time: alpha must be a positive finite number, got {alpha!r}")
    eps = torch.randn(n, generator=generator, device=device, dtype=dtype)
    return time_shift(torch.sigmoid(loc + scale * eps), alpha)
