"""TRMS2d and the student's trainable stems: the hierarchical convolutional patch embedding (the paper's)
and the standard linear patchify (the Table 5 baseline)."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["TRMS2d", "HierarchicalConvPatchEmbed", "LinearPatchEmbed", "STEM_TYPES", "stem_depth"]


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
    """conv k×k / stride s (same padding, optional bias) → optional TRMS2d → optional SiLU."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, norm_act: bool, bias: bool = True) -> None:
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=bias)]
        if norm_act:
            layers += [TRMS2d(cout), nn.SiLU()]
        super().__init__(*layers)


def stem_depth(patch_size: int) -> int:
    """Number of stride-2 convolutions of the conv stem for a patch size p: L = ⌈log2 p⌉.

    p = 16 → 4 (the paper's table), p = 14 → 4 (then resized to the /14 grid), p = 8 → 3, p = 4 → 2.
    """
    if patch_size < 2:
        raise ValueError(f"the conv stem needs a patch size >= 2, got {patch_size}")
    return math.ceil(math.log2(patch_size))


class HierarchicalConvPatchEmbed(nn.Module):
    """L = ⌈log2 p⌉ stride-2 convolutions replacing the ViT's linear patchify (total stride 2^L).

    For the paper's patch 16 (L = 4):

    | layer | kernel | stride | out ch      | norm   | act  |
    |-------|--------|--------|-------------|--------|------|
    | 1     | 7×7    | 2      | widths[0]=64  | TRMS2d | SiLU |
    | 2     | 3×3    | 2      | widths[1]=128 | TRMS2d | SiLU |
    | 3     | 3×3    | 2      | widths[2]=256 | TRMS2d | SiLU |
    | 4     | 3×3    | 2      | embed_dim C   | none   | none |

    Other patch sizes keep the pattern (first conv 7×7, the others 3×3, TRMS2d + SiLU after all but the
    last, which maps to C) with L − 1 hidden widths: patch 8 has three layers and two hidden widths.

    Patch-size rule: the convolutions reduce by 2^L. When 2^L == p the result is the token grid
    (H/p, W/p). Otherwise (DINOv2 uses 14, so 2^L = 16) the /2^L feature map is resized with bilinear
    interpolation (``align_corners=False``) to the teacher's grid (H/p, W/p), so student and teacher
    tokens correspond one to one (224 px with p = 14: 14×14 → 16×16). H and W must be multiples of p
    (ValueError otherwise).

    Args:
        embed_dim: output width C (the ViT width).
        patch_size: the teacher's patch size p ≥ 2.
        widths: the L − 1 hidden widths (64, 128, 256 in the paper for p = 16; smaller for tests).
        in_chans: input channels.
        bias: convolution biases (True: ours; False: the released DINO-SAE code, whose efficientvit-style
            ``ConvLayer`` defaults to ``use_bias=False``, for all four convolutions).

    Shapes:
        images ``[B, in_chans, H, W]`` → ``[B, C, H/p, W/p]`` (``forward``), or NHWC via ``forward_nhwc``.
    """

    def __init__(self, embed_dim: int, patch_size: int = 16, widths: Sequence[int] = (64, 128, 256),
                 in_chans: int = 3, bias: bool = True) -> None:
        super().__init__()
        depth = stem_depth(int(patch_size))
        if len(widths) != depth - 1:
            raise ValueError(f"a conv stem for patch {patch_size} has {depth} stride-2 layers, so widths must "
                             f"list {depth - 1} hidden widths, got {tuple(widths)}")
        self.patch_size = int(patch_size)
        self.embed_dim = int(embed_dim)
        chans = [int(in_chans)] + [int(w) for w in widths] + [int(embed_dim)]
        self.layers = nn.Sequential(*[
            _ConvNormAct(chans[i], chans[i + 1], 7 if i == 0 else 3, 2, i < depth - 1, bias) for i in range(depth)])

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


class LinearPatchEmbed(nn.Module):
    """The ViT's standard linear patchify as a trainable student stem (paper Table 5's baseline).

    One convolution with kernel = stride = p, i.e. the same affine map of every non-overlapping p×p×3
    patch: ``tokens[b, :, i, j] = W · vec(x[b, :, p·i:p·(i+1), p·j:p·(j+1)]) + bias`` (W: C × 3p²).
    :class:`models.autoencoder.DinoSphericalAutoencoder` initialises it from the teacher's own
    patchify, so at step 0 the student equals the teacher.

    Args:
        embed_dim: output width C.
        patch_size: p.
        in_chans: input channels.

    Shapes:
        images ``[B, in_chans, H, W]`` → ``[B, C, H/p, W/p]``, or NHWC via ``forward_nhwc``.
    """

    def __init__(self, embed_dim: int, patch_size: int = 16, in_chans: int = 3) -> None:
        super().__init__()
        if patch_size < 1:
            raise ValueError(f"patch size must be >= 1, got {patch_size}")
        self.patch_size = int(patch_size)
        self.embed_dim = int(embed_dim)
        self.proj = nn.Conv2d(in_chans, embed_dim, self.patch_size, self.patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {self.patch_size}")
        return self.proj(images)

    def forward_nhwc(self, images: torch.Tensor) -> torch.Tensor:
        """Same as ``forward`` in timm's dynamic-size patch-embed layout ``[B, H/p, W/p, C]``."""
        return self.forward(images).permute(0, 2, 3, 1)


#: Student stems by name (``AutoencoderConfig.stem``; ``--stem`` of in1k_ae.py).
STEM_TYPES: dict[str, type[nn.Module]] = {"conv": HierarchicalConvPatchEmbed, "patchify": LinearPatchEmbed}
