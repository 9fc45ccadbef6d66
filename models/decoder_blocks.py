"""Building blocks of the DC-AE-style decoder: ResBlock, EfficientViT (ReLU linear attention + GLU
MBConv) block, upsampling with a channel-duplicating shortcut."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.stem import TRMS2d

__all__ = ["ResBlock", "ReLULinearAttention", "GLUMBConv", "EfficientViTBlock", "UpsampleBlock",
           "ChannelShortcut", "BLOCK_TYPES", "conv3x3"]


def conv3x3(cin: int, cout: int, bias: bool = True) -> nn.Conv2d:
    """3×3 convolution, stride 1, same padding."""
    return nn.Conv2d(cin, cout, 3, 1, 1, bias=bias)


class ChannelShortcut(nn.Module):
    """Parameter-free channel matching: duplicate (cout multiple of cin) or group-average (cin multiple of
    cout) the channels. ``[B, cin, H, W]`` → ``[B, cout, H, W]``.

    Duplication is ``repeat_interleave`` (channel c is copied to c·r … c·r + r − 1, r = cout/cin);
    averaging takes the mean of consecutive groups of cin/cout channels.
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        if cout % cin and cin % cout:
            raise ValueError(f"channel shortcut needs one width to divide the other, got {cin} → {cout}")
        self.cin, self.cout = cin, cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cout >= self.cin:
            return x.repeat_interleave(self.cout // self.cin, dim=1)
        b, _, h, w = x.shape
        return x.view(b, self.cout, self.cin // self.cout, h, w).mean(dim=2)


class ResBlock(nn.Module):
    """x + TRMS2d(conv3×3(SiLU(conv3×3(x)))). ``[B, C, H, W]`` → same shape."""

    def __init__(self, channels: int, **_: object) -> None:
        super().__init__()
        self.conv1 = conv3x3(channels, channels, bias=True)
        self.act = nn.SiLU()
        self.conv2 = conv3x3(channels, channels, bias=False)
        self.norm = TRMS2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.norm(self.conv2(self.act(self.conv1(x))))


class ReLULinearAttention(nn.Module):
    """Multi-head ReLU linear attention over all H·W positions (EfficientViT's LiteMLA, no multi-scale).

    With q = ReLU(W_q x), k = ReLU(W_k x), v = W_v x per head (1×1 convs):
        out_i = Σ_j v_j (k_j·q_i) / (Σ_j k_j·q_i + eps),
    computed as (V Kᵀ) q_i / ((Σ_j k_j)·q_i + eps) in O(N d²), in ≥ float32; then a 1×1 projection and
    TRMS2d. The qkv rows are ordered [q of all heads | k | v] (efficientvit interleaves them per head:
    :mod:`models.convert_sae` permutes).

    Args:
        channels: C; heads = max(1, C // head_dim).
        head_dim: d.
        eps: added to the denominator; 1e-15 as efficientvit's LiteMLA and the released code (the output
            is a convex combination of the v_j whenever the denominator is positive, so a tiny eps is
            safe; it is computed in ≥ float32).
        norm: the TRMS2d after the projection (False: the released code's blocks, which lose it).

    Shapes:
        ``[B, C, H, W]`` → ``[B, C, H, W]`` (the residual is added by the block).
    """

    def __init__(self, channels: int, head_dim: int = 32, eps: float = 1e-15, norm: bool = True) -> None:
        super().__init__()
        self.heads = max(1, channels // head_dim)
        self.head_dim = head_dim
        self.eps = eps
        inner = self.heads * head_dim
        self.qkv = nn.Conv2d(channels, 3 * inner, 1, bias=False)
        self.proj = nn.Conv2d(inner, channels, 1, bias=False)
        self.norm = TRMS2d(channels) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        qkv = self.qkv(x)
        qkv = (qkv.float() if qkv.dtype in (torch.float16, torch.bfloat16) else qkv).view(b, 3, self.heads, self.head_dim, h * w)
        q, k, v = F.relu(qkv[:, 0]), F.relu(qkv[:, 1]), qkv[:, 2]  # [B, heads, d, N]
        kv = torch.einsum("bhdn,bhen->bhde", k, v)  # Σ_j k_j v_jᵀ: [B, heads, d_k, d_v]
        num = torch.einsum("bhdn,bhde->bhen", q, kv)  # [B, heads, d_v, N]
        den = torch.einsum("bhdn,bhd->bhn", q, k.sum(dim=-1))  # [B, heads, N]
        out = (num / (den.unsqueeze(2) + self.eps)).to(x.dtype)
        return self.norm(self.proj(out.reshape(b, self.heads * self.head_dim, h, w)))


class GLUMBConv(nn.Module):
    """Gated inverted-bottleneck conv: 1×1 (C → 2M, SiLU) → depthwise 3×3 → a ⊙ SiLU(g) → 1×1 (M → C) → TRMS2d.

    M = round(expand · C). ``[B, C, H, W]`` → ``[B, C, H, W]``. ``norm=False`` drops the TRMS2d (the
    released code's blocks).
    """

    def __init__(self, channels: int, expand: float = 4.0, norm: bool = True) -> None:
        super().__init__()
        mid = int(round(channels * expand))
        self.inverted = nn.Conv2d(channels, 2 * mid, 1, bias=True)
        self.depthwise = nn.Conv2d(2 * mid, 2 * mid, 3, 1, 1, groups=2 * mid, bias=True)
        self.point = nn.Conv2d(mid, channels, 1, bias=False)
        self.act = nn.SiLU()
        self.norm = TRMS2d(channels) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.depthwise(self.act(self.inverted(x)))
        a, gate = y.chunk(2, dim=1)
        return self.norm(self.point(a * self.act(gate)))


class EfficientViTBlock(nn.Module):
    """x ← x + Attn(x); x ← x + GLUMBConv(x). ``[B, C, H, W]`` → same shape.

    ``release=True`` builds what the released DINO-SAE code builds: no TRMS2d in either branch (it hands
    efficientvit's ``build_norm`` a module where a name is expected, so the norms silently vanish).
    """

    def __init__(self, channels: int, head_dim: int = 32, expand: float = 4.0, release: bool = False,
                 **_: object) -> None:
        super().__init__()
        self.attn = ReLULinearAttention(channels, head_dim, norm=not release)
        self.local = GLUMBConv(channels, expand, norm=not release)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.local(x)


BLOCK_TYPES: dict[str, type[nn.Module]] = {"res": ResBlock, "evit_glu": EfficientViTBlock}


class UpsampleBlock(nn.Module):
    """×2 upsampling: main path + parameter-free channel-duplicating shortcut.

    main ("interpolate"): nearest ×2 then conv3×3 (cin → cout);
    main ("pixel_shuffle"): conv3×3 (cin → 4·cout) then pixel-shuffle ×2;
    shortcut: pixel_shuffle(ChannelShortcut(cin → 4·cout)(x), 2).

    Shapes:
        ``[B, cin, H, W]`` → ``[B, cout, 2H, 2W]``.
    """

    def __init__(self, cin: int, cout: int, mode: str = "interpolate") -> None:
        super().__init__()
        if mode not in ("interpolate", "pixel_shuffle"):
            raise ValueError(f"unknown upsample mode {mode!r}")
        self.mode = mode
        self.conv = conv3x3(cin, cout if mode == "interpolate" else 4 * cout)
        self.shortcut = ChannelShortcut(cin, 4 * cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "interpolate":
            main = self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        else:
            main = F.pixel_shuffle(self.conv(x), 2)
        return main + F.pixel_shuffle(self.shortcut(x), 2)
