"""A time-conditioned MLP velocity field on the sphere S^{C−1} (C = 3 for the earth benchmarks).

``v(x, t) = P_x MLP([x, γ(t)])`` with ``γ(t) = [sin(2π f_k t), cos(2π f_k t)]_k`` (``f_k`` geometric from
``1/2`` to ``max_freq``) and ``P_x u = u − ⟨u, x⟩x/‖x‖²`` the projection onto the tangent space at x, so the
field is tangent by construction. Smooth activations (SiLU) keep the divergence (needed by
:func:`spherical.log_likelihood`) well defined. The forward pass is free of in-place ops and data-dependent
control flow, so it works under ``torch.func`` (``vmap``, ``jacrev``, ``jacfwd``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["SphereMLPConfig", "SphereVelocityMLP"]


@dataclass
class SphereMLPConfig:
    """Sizes of :class:`SphereVelocityMLP`: ``depth`` hidden layers of ``width`` units."""

    channels: int = 3
    width: int = 256
    depth: int = 4
    time_freqs: int = 8
    max_freq: float = 32.0

    def __post_init__(self) -> None:
        if self.channels < 2 or self.width < 1 or self.depth < 1 or self.time_freqs < 1 or self.max_freq <= 0:
            raise ValueError(f"SphereMLPConfig: expected channels >= 2, width, depth, time_freqs >= 1 and "
                             f"max_freq > 0, got {self}")


class SphereVelocityMLP(nn.Module):
    """``velocity(x, t)``: x ``[..., C]`` on the sphere, t a 0-dim tensor or ``[...]`` (one per point)
    → tangent vectors ``[..., C]``."""

    def __init__(self, config: SphereMLPConfig | None = None, **kwargs) -> None:
        super().__init__()
        self.config = config = config if config is not None else SphereMLPConfig(**kwargs)
        lo, hi = math.log(0.5), math.log(config.max_freq)
        freqs = torch.exp(torch.linspace(lo, hi, config.time_freqs)) if config.time_freqs > 1 else torch.ones(1)
        self.register_buffer("freqs", 2 * math.pi * freqs, persistent=False)
        dims = [config.channels + 2 * config.time_freqs] + [config.width] * config.depth
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
        h = torch.cat([x, self.time_features(t, x.shape[:-1]).to(x.dtype)], dim=-1)
        u = self.net(h)
        return u - (u * x).sum(-1, keepdim=True) / (x * x).sum(-1, keepdim=True) * x
