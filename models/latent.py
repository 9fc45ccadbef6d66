"""The spherical latent's radius and stochastic latent smoothing.

All sphere geometry (projection onto S^{C−1}_R) lives in :mod:`spherical`; this module only supplies the
radius R and the Gaussian smoothing schedule used in stage 2 of autoencoder training.
"""
from __future__ import annotations

import math

import torch

__all__ = ["gaussian_norm_radius", "smoothing_tau", "smooth_latent"]


def gaussian_norm_radius(channels: int) -> float:
    """R = E‖ε‖ for ε ~ N(0, I_C): R = √2 · Γ((C+1)/2) / Γ(C/2), evaluated with lgamma (no overflow).

    On the sphere of this radius each channel has unit second moment on average
    (R ≈ √(C − 1/2); 31.9922 for C = 1024).

    Args:
        channels: C ≥ 1.
    """
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    return math.sqrt(2.0) * math.exp(math.lgamma((channels + 1) / 2) - math.lgamma(channels / 2))


def smoothing_tau(epoch: float, *, start: float = 0.8, end: float = 1.2, ramp_epochs: float = 20.0) -> float:
    """The τ schedule of stochastic latent smoothing: linear ``start → end`` over epochs [0, ramp_epochs],
    then constant ``end`` (paper: 0.8 → 1.2 over epochs 0–20, 1.2 to epoch 40).

    τ(e) = start + (end − start) · clip(e / ramp_epochs, 0, 1).
    """
    frac = min(max(float(epoch) / ramp_epochs, 0.0), 1.0) if ramp_epochs > 0 else 1.0
    return start + (end - start) * frac


def smooth_latent(z: torch.Tensor, tau: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Stochastic latent smoothing z' = z + σ·ε with one σ ~ U(0, τ) for the whole batch and ε ~ N(0, I)
    (v2 App. B.4: σ is drawn once per batch).

    Args:
        z: latents ``[B, ...]`` (the raw tokens the decoder reads, by default).
        tau: the upper bound τ ≥ 0; τ = 0 returns ``z`` unchanged.
        generator: optional torch generator (on z's device) for reproducibility.

    Returns:
        ``[B, ...]``, same dtype and device as ``z`` (computed in float32).
    """
    if tau < 0:
        raise ValueError(f"tau must be >= 0, got {tau}")
    if tau == 0:
        return z
    sigma = torch.rand((), generator=generator, device=z.device, dtype=torch.float32) * tau
    eps = torch.randn(z.shape, generator=generator, device=z.device, dtype=torch.float32)
    return (z.float() + sigma * eps).to(z.dtype)
