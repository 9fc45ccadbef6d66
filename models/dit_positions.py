"""Position encodings of :class:`models.dit.LightningDiT` over a row-major √N×√N token grid: 2-D rotary
embedding (RoPE) tables and their application, and LightningDiT's fixed 2-D sin-cos absolute table."""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["rope_2d", "apply_rope", "sincos_pos_embed_2d"]


def rope_2d(num_tokens: int, head_dim: int, base: float = 10000.0,
            device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """Cos/sin tables of a 2-D rotary embedding over a row-major √N×√N grid.

    Half of each head's channels rotate with the row index, the other half with the column index,
    each half with ``head_dim/4`` frequencies ``ω_k = 1 / base^(2k/(head_dim/2))``, computed in float32
    exactly as LightningDiT (EVA's ``VisionRotaryEmbeddingFast``) computes them. Pairing: channel j
    rotates with channel ``j + head_dim/2`` (rotate-half); LightningDiT pairs adjacent channels
    ``(2j, 2j+1)`` with the same angle, so the two agree up to a permutation of q/k rows
    (:func:`models.convert.rope_permutation`).

    Returns:
        ``(cos, sin)`` each ``[N, head_dim]``, laid out for :func:`apply_rope` (rotate-half pairs).
    """
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"RoPE needs a square token grid, got N={num_tokens}")
    if head_dim % 4:
        raise ValueError(f"head_dim must be divisible by 4 for 2-D RoPE, got {head_dim}")
    quarter = head_dim // 4
    exps = torch.arange(0, 2 * quarter, 2, dtype=torch.float32, device=device) / (2 * quarter)
    freqs = 1.0 / (base ** exps)
    pos = torch.arange(side, dtype=torch.float32, device=device)
    rows, cols = torch.meshgrid(pos, pos, indexing="ij")
    ang_r = rows.reshape(-1, 1) * freqs                         # [N, hd/4]
    ang_c = cols.reshape(-1, 1) * freqs
    ang = torch.cat([ang_r, ang_c], dim=-1)                     # [N, hd/2]
    ang = torch.cat([ang, ang], dim=-1)                         # [N, hd] (rotate-half layout)
    return ang.cos(), ang.sin()


def sincos_pos_embed_2d(num_tokens: int, dim: int) -> Tensor:
    """LightningDiT's (and MAE's) fixed 2-D sin-cos position embedding of a row-major √N×√N grid.

    Token ``i·√N + j`` (row i, column j) gets ``[e(j), e(i)]``: the first ``dim/2`` channels encode the
    column, the last ``dim/2`` the row, each as ``e(p) = [sin(p·ω_k), cos(p·ω_k)]`` over the
    ``dim/4`` frequencies ``ω_k = 10000^(-k/(dim/4))``. Computed in float64 and rounded to float32 once,
    as LightningDiT stores it.

    Returns:
        ``[N, dim]`` float32.
    """
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"the sin-cos position embedding needs a square token grid, got N={num_tokens}")
    if dim % 4:
        raise ValueError(f"the sin-cos position embedding needs a width divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter)      # [dim/4]
    pos = torch.arange(side, dtype=torch.float64)
    rows, cols = torch.meshgrid(pos, pos, indexing="ij")

    def one_axis(p: Tensor) -> Tensor:                           # [N] -> [N, dim/2]
        ang = p.reshape(-1, 1) * omega
        return torch.cat([ang.sin(), ang.cos()], dim=-1)

    return torch.cat([one_axis(cols), one_axis(rows)], dim=-1).float()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x [B, H, N, hd]`` by the angles in ``cos/sin [N, hd]`` (rotate-half convention);
    computed in float32, or float64 for float64 inputs."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    wide = torch.float64 if x.dtype == torch.float64 else torch.float32
    return (x.to(wide) * cos.to(wide) + rotated.to(wide) * sin.to(wide)).to(x.dtype)

