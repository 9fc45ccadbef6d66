"""A time-conditioned MLP velocity field on the sphere S^{C−1} (C = 3 for the earth benchmarks).

``v(x, t) = P_x MLP([x, sin(Bᵀx), cos(Bᵀx), γ(t)])`` with

* ``B ∈ R^{C×F}`` fixed random Fourier features of the position: random directions with frequencies
  geometric from 1 to ``x_scale`` rad⁻¹ (:func:`fourier_directions`, drawn once from ``feature_seed``; a
  buffer saved with the weights; ``F = x_features``, 0 = off). They let a small MLP
  represent densities with features far smaller than a radian (fire and flood events cluster within
  a degree), which plain coordinates learn only slowly;
* ``γ(t) = [sin(2π f_k t), cos(2π f_k t)]_k``, ``f_k`` geometric from ``1/2`` to ``max_freq``;
* ``P_x u = u − ⟨u, x⟩x/‖x‖²`` the projection onto the tangent space at x, so the field is tangent by
  construction. Smooth activations (SiLU) keep the divergence (needed by
:func:`spherical.log_likelihood`) well defined. The forward pass is free of in-place ops and data-dependent
control flow, so it works under ``torch.func`` (``vmap``, ``jacrev``, ``jacfwd``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from spherical import Hypersphere

__all__ = ["SphereMLPConfig", "SphereVelocityMLP"]


@dataclass
class SphereMLPConfig:
    """Sizes of :class:`SphereVelocityMLP`: ``depth`` hidden layers of ``width`` units, ``time_freqs``
    sinusoids of t, ``x_features`` random Fourier features of x of scale ``x_scale`` (rad⁻¹)."""

    channels: int = 3
    width: int = 256
    depth: int = 4
    time_freqs: int = 8
    max_freq: float = 32.0
    x_features: int = 0
    x_scale: float = 8.0
    feature_seed: int = 0

    def __post_init__(self) -> None:
        if (self.channels < 2 or self.width < 1 or self.depth < 1 or self.time_freqs < 1 or self.max_freq <= 0
                or self.x_features < 0 or self.x_scale <= 0):
            raise ValueError(f"SphereMLPConfig: expected channels >= 2, width, depth, time_freqs >= 1, "
                             f"x_features >= 0 and max_freq, x_scale > 0, got {self}")


def fourier_directions(config: SphereMLPConfig) -> Tensor:
    """``B`` ``[C, F]``: column j is ``s_j·d_j`` with ``d_j`` uniform on S^{C−1} and the frequencies ``s_j``
    geometric from 1 to ``x_scale`` (rad⁻¹; one octave band per feature, coarse to fine), from ``feature_seed``."""
    gen = torch.Generator().manual_seed(config.feature_seed)
    d = torch.randn(config.channels, config.x_features, generator=gen)
    d = d / d.norm(dim=0, keepdim=True).clamp_min(1e-12)
    if config.x_features <= 1:
        return d * config.x_scale
    return d * torch.exp(torch.linspace(0.0, math.log(config.x_scale), config.x_features))


class SphereVelocityMLP(nn.Module):
    """``velocity(x, t)``: x ``[..., C]`` on the sphere, t a 0-dim tensor or ``[...]`` (one per point)
    → tangent vectors ``[..., C]``."""

    def __init__(self, config: SphereMLPConfig | None = None, **kwargs) -> None:
        super().__init__()
        self.config = config = config if config is not None else SphereMLPConfig(**kwargs)
        lo, hi = math.log(0.5), math.log(config.max_freq)
        freqs = torch.exp(torch.linspace(lo, hi, config.time_freqs)) if config.time_freqs > 1 else torch.ones(1)
        self.register_buffer("freqs", 2 * math.pi * freqs, persistent=False)
        self.register_buffer("x_proj", fourier_directions(config))
        dims = [config.channels + 2 * config.x_features + 2 * config.time_freqs] + [config.width] * config.depth
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.SiLU()]
        layers.append(nn.Linear(dims[-1], config.channels))
        self.net = nn.Sequential(*layers)

    def time_features(self, t: Tensor, batch_shape: torch.Size) -> Tensor:
        """``γ(t)`` broadcast to ``[*batch_shape, 2·time_freqs]``."""
        t = t.to(self.freqs.dtype)
        if t.dim() > len(batch_shape):
            raise ValueError(f"SphereVelocityMLP: t must be 0-dim or broadcast to x[..., 0] {tuple(batch_shape)}, "
                             f"got {tuple(t.shape)}")
        ang = t.unsqueeze(-1) * self.freqs
        return torch.cat([ang.sin(), ang.cos()], dim=-1).expand(*batch_shape, -1)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if x.shape[-1:] != (self.config.channels,):
            raise ValueError(f"SphereVelocityMLP: expected x [..., {self.config.channels}], got {tuple(x.shape)}")
        t = torch.as_tensor(t, device=x.device)
        xp = x @ self.x_proj.to(x.dtype)
        h = torch.cat([x, xp.sin(), xp.cos(), self.time_features(t, x.shape[:-1]).to(x.dtype)], dim=-1)
        u = self.net(h)
        return Hypersphere(1.0).proju(x, u)  # proju does not depend on the radius
