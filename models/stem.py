"""TRMS2d and the hierarchical convolutional patch embedding (the student's trainable stem)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["TRMS2d", "HierarchicalConvPatchEmbed"]


class TRMS2d(nn.Module):
    """RMS normalisation over (C, H, W) jointly per sample, with a learned per-channel weight.

    y[b, c, h, w] = w_c · x[b, c, h, w] / sqrt(mean_{c',h',w'} x[b, c', h', w']² + eps)

    Computed in at least float32 (half-precision inputs are upcast; returned in the input dtype).

    Args:
        channels: number of channels C (length of the weight).
        eps: added to the mean square.

    Shapes:
        x: ``[B, C, H, W]`` → ``[B, C, H, W]``.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        rms_inv = torch.rsqrt(xf.pow(2).mean(dim=(1, 2, 3), keepdim=True) + self.eps)
        return (xf * rms_inv).to(x.dtype) * self.weight.to(x.dtype).view(1, -1, 1, 1)


class _ConvNormAct(nn.Sequential):
    """conv k×k / stride s (same padding) → optional TRMS2d → optional SiLU."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, norm_act: bool) -> None:
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2)]
        if norm_act:
            layers += [TRMS2d(cout), nn.SiLU()]
        super().__init__(*layers)


class HierarchicalConvPatchEmbed(nn.Module):
    """Four stride-2 convolutions replacing the ViT's linear patchify (total stride 16).

    | layer | kernel | stride | out ch      | norm   | act  |
    |-------|--------|--------|-------------|--------|------|
    | 1     | 7×7    | 2      | widths[0]=64  | TRMS2d | SiLU |
    | 2     | 3×3    | 2      | widths[1]=128 | TRMS2d | SiLU |
    | 3     | 3×3    | 2      | widths[2]=256 | TRMS2d | SiLU |
    | 4     | 3×3    | 2      | embed_dim C   | none   | none |

    Patch-size rule: the convolutions always reduce by 16. For ``patch_size == 16`` the result is the
    token grid (H/16, W/16). For any other patch size p (DINOv2 uses 14) the /16 feature map is resized
    with bilinear interpolation (``align_corners=False``) to the teacher's grid (H/p, W/p), so student and
    teacher tokens correspond one to one (224 px with p = 14: 14×14 → 16×16). H and W must be multiples
    of p (ValueError otherwise).

    Args:
        embed_dim: output width C (the ViT width).
        patch_size: the teacher's patch size p.
        widths: the three hidden widths (64, 128, 256 in the paper; smaller for tests).
        in_chans: input channels.

    Shapes:
        images ``[B, in_chans, H, W]`` → ``[B, C, H/p, W/p]`` (``forward``), or NHWC via ``forward_nhwc``.
    """

    def __init__(self, embed_dim: int, patch_size: int = 16, widths: Sequence[int] = (64, 128, 256),
                 in_chans: int = 3) -> None:
        super().__init__()
        if len(widths) != 3:
            raise ValueError(f"widths must list three hidden widths, got {tuple(widths)}")
        w1, w2, w3 = (int(w) for w in widths)
        self.patch_size = int(patch_size)
        self.embed_dim = int(embed_dim)
        self.layers = nn.Sequential(
            _ConvNormAct(in_chans, w1, 7, 2, True),
            _ConvNormAct(w1, w2, 3, 2, True),
            _ConvNormAct(w2, w3, 3, 2, True),
            _ConvNormAct(w3, embed_dim, 3, 2, False),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {p}")
        x = self.layers(images)
        grid = (height // p, width // p)
        if tuple(x.shape[-2:]) != grid:
            x = F.interpolate(x, size=grid, mode="bilinear", align_corners=False)
        return x

    def forward_nhwc(self, images: torch.Tensor) -> torch.Tensor:
        """Same as ``forward`` in timm's dynamic-size patch-embed layout ``[B, H/p, W/p, C]``."""
        return self.forward(images).permute(0, 2, 3, 1)
