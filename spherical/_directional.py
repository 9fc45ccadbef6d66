"""Pieces shared by the directional laws of :mod:`spherical.distributions`.

* argument checks (one-line ``ValueError`` messages saying what was expected);
* :func:`place_on_sphere`: a point from its component ``w = ⟨x̂, μ⟩`` along the mean direction and a
  uniform direction orthogonal to ``μ`` (a Householder reflection carries ``e_1`` to ``μ``);
* :func:`wood_component`: Wood's (1994) rejection sampler for ``w`` under von Mises–Fisher.

Shapes: ``μ: [..., C]`` unit vectors, ``w: sample_shape + [...]``.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from ._series import safe_sqrt

RadiusLike = Union[float, Tensor]

_MAX_REJECTION_ROUNDS = 1000   # Wood's acceptance rate is ≥ ~0.5 for every (C, κ); 1000 rounds never end a run


def check_channels(channels: int) -> int:
    """``C`` as an int ≥ 2 or a ``ValueError``."""
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 2:
        raise ValueError(f"channels must be an int >= 2 (the sphere S^(C-1) in R^C), got {channels!r}")
    return channels


def as_float_tensor(value: Union[float, Tensor], like: Optional[Tensor] = None) -> Tensor:
    """``value`` as a floating tensor (``like``'s dtype/device when given, else its own or the default)."""
    if like is not None:
        return torch.as_tensor(value, dtype=like.dtype, device=like.device)
    t = torch.as_tensor(value)
    return t if t.dtype.is_floating_point else t.to(torch.get_default_dtype())


def check_radius(radius: Tensor, validate: bool = True) -> Tensor:
    """``radius`` unchanged, or a ``ValueError`` unless every entry is finite and > 0."""
    if validate and not bool((torch.isfinite(radius) & (radius > 0)).all()):
        raise ValueError(f"radius must be finite and > 0, got {radius!r}")
    return radius


def check_concentration(kappa: Tensor, validate: bool = True) -> Tensor:
    """``kappa`` unchanged, or a ``ValueError`` unless every entry is finite and ≥ 0."""
    if validate and not bool((torch.isfinite(kappa) & (kappa >= 0)).all()):
        raise ValueError(f"concentration must be finite and >= 0, got {kappa!r}")
    return kappa


def normalise_loc(loc: Tensor, validate: bool = True) -> Tensor:
    """``loc/‖loc‖`` over the last axis (scaled by ``max|loc|`` first, so huge entries do not overflow).

    Raises ``ValueError`` unless ``loc`` has shape ``[..., C]`` with ``C ≥ 2``, finite entries and no zero
    row.
    """
    if loc.dim() < 1 or loc.shape[-1] < 2:
        raise ValueError(f"loc must have shape [..., C] with C >= 2, got shape {tuple(loc.shape)}")
    if validate:
        if not bool(torch.isfinite(loc).all()):
            raise ValueError("loc must be finite (got inf or nan entries)")
        if bool((loc == 0).all(dim=-1).any()):
            raise ValueError("loc must be nonzero in every row (it is normalised to the mean direction)")
    scale = loc.detach().abs().amax(dim=-1, keepdim=True).clamp_min(torch.finfo(loc.dtype).tiny)
    scaled = loc / scale
    return scaled / scaled.norm(dim=-1, keepdim=True)


def beta_pair(a: Tensor, b: Tensor, sample_shape: torch.Size,
              generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
    """``(z, 1 − z)`` with ``z ~ Beta(a, b)``, reparameterised: ``z = X/(X+Y)``, ``X ~ Γ(a)``, ``Y ~ Γ(b)``.

    ``a, b``: broadcastable floating tensors (the batch); the result has ``sample_shape + batch``.
    ``1 − z = Y/(X+Y)`` is formed without cancellation. Gradients reach ``a`` and ``b`` through
    ``torch._standard_gamma`` (implicit reparameterisation, as :class:`torch.distributions.Gamma`),
    and ``generator`` drives both draws (``torch.distributions.Beta`` takes none).
    """
    shape = torch.Size(sample_shape) + torch.broadcast_shapes(a.shape, b.shape)
    x = torch._standard_gamma(a.expand(shape), generator=generator)
    y = torch._standard_gamma(b.expand(shape), generator=generator)
    tiny = torch.finfo(x.dtype).tiny
    s = (x + y).clamp_min(tiny)
    return (x / s).clamp_min(tiny), (y / s).clamp_min(tiny)


def place_on_sphere(w: Tensor, r: Tensor, loc: Tensor, radius: Tensor,
                    generator: Optional[torch.Generator] = None) -> Tensor:
    """Points ``R·(w·μ + r·t)`` with ``t`` uniform on the unit sphere of ``μ^⊥`` (so ``r = √(1−w²)``).

    Args:
        w: ``sample_shape + batch`` components along ``μ`` (any float dtype; cast to ``loc``'s).
        r: same shape, ``√(1 − w²)`` computed by the caller without cancellation.
        loc: ``batch + (C,)`` unit mean directions.
        radius: ``batch`` radii ``R``.

    ``t = H·(0, v)`` with ``v`` uniform on ``S^{C−2}`` and ``H = I − 2uuᵀ/‖u‖²``,
    ``u = sign(μ_1)·e_1 + μ`` (so ``‖u‖² ≥ 2``, no cancellation): ``H`` is an orthogonal map sending
    ``e_1`` to ``∓μ`` and ``e_1^⊥`` onto ``μ^⊥``, so ``t`` is uniform on the unit sphere of ``μ^⊥``.
    Since ``H·(0, v) = (0, v) − (2⟨u, v⟩/‖u‖²)·u``,
    the result is ``(rR/‖v‖)·v + (wR)·μ − (rR·2⟨u, v⟩/(‖u‖²‖v‖))·u``: six passes over the
    ``sample_shape + batch + (C,)`` output (draw, norm, dot, three fused multiply-adds), R folded into
    the per-point scalars.
    """
    dtype = loc.dtype
    rad = radius.unsqueeze(-1)
    w, r = w.to(dtype).unsqueeze(-1) * rad, r.to(dtype).unsqueeze(-1) * rad
    v = torch.randn(w.shape[:-1] + loc.shape[-1:], dtype=dtype, device=loc.device, generator=generator)
    v[..., 0] = 0.0                                                     # (0, ε): ε/‖ε‖ uniform on S^{C−2}
    r = r / torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    sign = torch.where(loc[..., :1] >= 0, 1.0, -1.0).to(dtype)
    u = torch.cat([loc[..., :1] + sign, loc[..., 1:]], dim=-1)           # sign·e_1 + μ, |u_1| ≥ 1
    coef = 2.0 * (v * u).sum(-1, keepdim=True) / (u * u).sum(-1, keepdim=True)
    return torch.addcmul(torch.addcmul(r * v, w, loc), -(r * coef), u)


def wood_component(kappa: Tensor, channels: int, sample_shape: torch.Size,
                   generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
    """``(w, √(1−w²))`` in float64, ``w = ⟨x̂, μ⟩`` under vMF(μ, κ) on ``S^{C−1}`` (Wood 1994).

    With ``m = C``, ``b = (m−1)/(2κ + √(4κ² + (m−1)²))``, ``x₀ = (1−b)/(1+b)``: propose
    ``z ~ Beta((m−1)/2, (m−1)/2)``, ``w = (1 − (1+b)z)/(1 − (1−b)z)``, accept when
    ``κ(w − x₀) + (m−1)·log((1 − x₀w)/(1 − x₀²)) ≥ log U``. Every difference of nearby numbers is
    rewritten in closed form (``1 − w = 2bz/d``, ``1 + w = 2(1−z)/d``, ``1 − x₀ = 2b/(1+b)``,
    ``d = 1 − (1−b)z``), so ``κ = 1e5`` (``b ≈ 1e−5``) loses nothing. At ``κ = 0``: ``b = 1``, ``x₀ = 0``,
    every proposal is accepted and ``w = 1 − 2z`` is exactly the uniform law's component.
    """
    k = kappa.detach().to(torch.float64)
    shape = torch.Size(sample_shape) + k.shape
    k = k.expand(shape)
    m1 = float(channels - 1)
    b = m1 / (2.0 * k + torch.sqrt(4.0 * k * k + m1 * m1))
    one_m_x0 = 2.0 * b / (1.0 + b)
    x0 = 1.0 - one_m_x0
    log_1mx0sq = torch.log(one_m_x0) + math.log(2.0) - torch.log1p(b)  # log((1−x₀)(1+x₀))
    half = torch.full(shape, 0.5 * m1, dtype=torch.float64, device=k.device)
    w = torch.zeros(shape, dtype=torch.float64, device=k.device)
    r = torch.zeros_like(w)
    done = torch.zeros(shape, dtype=torch.bool, device=k.device)
    for _ in range(_MAX_REJECTION_ROUNDS):
        z, one_m_z = beta_pair(half, half, torch.Size(), generator)
        d = 1.0 - (1.0 - b) * z
        one_m_w = 2.0 * b * z / d
        w_new = 1.0 - one_m_w
        r_new = safe_sqrt(4.0 * b * z * one_m_z) / d                  # √((1−w)(1+w))
        log_ratio = torch.log(one_m_x0 + x0 * one_m_w) - log_1mx0sq     # log((1 − x₀w)/(1 − x₀²))
        log_accept = k * (one_m_x0 - one_m_w) + m1 * log_ratio
        accept = ~done & (log_accept >= torch.log(torch.rand(shape, dtype=torch.float64, device=k.device,
                                                                              generator=generator)))
        w, r = torch.where(accept, w_new, w), torch.where(accept, r_new, r)
        done = done | accept
        if bool(done.all()):
            return w, r
    raise RuntimeError(f"vMF rejection sampler did not finish in {_MAX_REJECTION_ROUNDS} rounds")
