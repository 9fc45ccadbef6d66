"""DINO-feature discriminator (frozen DINO ViT-S/8 taps + spectral-norm conv heads) and DiffAugment.

Configs are dataclasses in :data:`DISCRIMINATOR_CONFIGS` (``paper``, ``tiny``).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

from models.encoder import EncoderWeightsError, DinoBackbone, create_dino_vit_for_build, _HELP

__all__ = ["diff_augment", "DiscriminatorConfig", "DISCRIMINATOR_CONFIGS", "DinoDiscriminator",
           "build_discriminator"]


# ---------------------------------------------------------------------------------------------- DiffAugment
def _rand(x: torch.Tensor, *shape: int, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=x.device, dtype=x.dtype)


def _color(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Brightness + U(−0.5, 0.5); saturation × U(0, 2) around the pixel mean; contrast × U(0.5, 1.5)."""
    b = x.shape[0]
    x = x + (_rand(x, b, 1, 1, 1, generator=generator) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_rand(x, b, 1, 1, 1, generator=generator) * 2.0) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_rand(x, b, 1, 1, 1, generator=generator) + 0.5) + mean


def _translation(x: torch.Tensor, generator: torch.Generator | None, ratio: float = 0.125) -> torch.Tensor:
    """Integer shift by up to ratio·(H, W) per sample, zero fill."""
    b, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = torch.randint(-sh, sh + 1, (b, 1), generator=generator, device=x.device)
    tx = torch.randint(-sw, sw + 1, (b, 1), generator=generator, device=x.device)
    iy = torch.arange(h, device=x.device).unsqueeze(0) + ty + sh  # [B, H] rows in the padded image
    ix = torch.arange(w, device=x.device).unsqueeze(0) + tx + sw
    padded = F.pad(x, (sw, sw, sh, sh))
    bi = torch.arange(b, device=x.device).view(b, 1, 1)
    return padded.permute(0, 2, 3, 1)[bi, iy[:, :, None], ix[:, None, :]].permute(0, 3, 1, 2)


def _cutout(x: torch.Tensor, generator: torch.Generator | None, ratio: float = 0.5) -> torch.Tensor:
    """Zeroes one ratio·H × ratio·W square per sample at a uniformly random centre."""
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), generator=generator, device=x.device)
    cx = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), generator=generator, device=x.device)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    inside = ((ys - cy + ch // 2) >= 0) & ((ys - cy + ch // 2) < ch) & \
             ((xs - cx + cw // 2) >= 0) & ((xs - cx + cw // 2) < cw)
    return x * (~inside).unsqueeze(1).to(x.dtype)


_AUGMENTS: dict[str, Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]] = {
    "color": _color, "translation": _translation, "cutout": _cutout}


def diff_augment(x: torch.Tensor, policy: str = "color,translation,cutout",
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Differentiable augmentation (DiffAugment): each op draws independent parameters per sample.

    Args:
        x: images ``[B, C, H, W]`` (any range; [-1, 1] here).
        policy: comma-separated subset of ``color``, ``translation``, ``cutout`` ("" = identity).
        generator: RNG on x's device.

    Returns:
        ``[B, C, H, W]``; gradients flow to ``x``.
    """
    for name in [p for p in policy.split(",") if p]:
        if name not in _AUGMENTS:
            raise ValueError(f"unknown DiffAugment op {name!r}; choose from {sorted(_AUGMENTS)}")
        x = _AUGMENTS[name](x, generator)
    return x


# ---------------------------------------------------------------------------------------------- model
@dataclass(frozen=True)
class DiscriminatorConfig:
    """DINO-feature discriminator.

    Attributes:
        backbone: timm name of the frozen DINO ViT (paper: ViT-S/8).
        backbone_kwargs: timm architecture overrides (tiny tests).
        taps: 0-based block indices whose outputs feed a head (paper: 2, 5, 8, 11).
        input_size: images are resized (bilinear, antialiased) to this side before the ViT.
        head_width: hidden width of each conv head.
        augment: DiffAugment policy applied in ``forward`` (``""`` disables it).
        random_backbone: random by design (tiny tests).
    """

    backbone: str = "vit_small_patch8_224.dino"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    taps: tuple[int, ...] = (2, 5, 8, 11)
    input_size: int = 224
    head_width: int = 256
    augment: str = "color,translation,cutout"
    random_backbone: bool = False


DISCRIMINATOR_CONFIGS: dict[str, DiscriminatorConfig] = {
    "paper": DiscriminatorConfig(),
    "tiny": DiscriminatorConfig(backbone="vit_small_patch8_224",
                                backbone_kwargs=dict(embed_dim=32, depth=4, num_heads=2),
                                taps=(1, 3), input_size=32, head_width=16, random_backbone=True),
}


class _Head(nn.Module):
    """SN-conv1×1 → LReLU(0.2) → SN-conv3×3 → LReLU(0.2) → SN-conv1×1 → 1 logit per position.

    ``[B, C, h, w]`` → ``[B, h·w]``.
    """

    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            spectral_norm(nn.Conv2d(channels, width, 1)), nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(width, width, 3, padding=1)), nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(width, 1, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)


class DinoDiscriminator(nn.Module):
    """Frozen DINO ViT features at several depths → small trainable spectral-norm conv heads.

    Args:
        config: a :class:`DiscriminatorConfig`.
        vit: the frozen timm DINO ViT.
        backbone_ready: False for construction only (``forward`` raises :class:`EncoderWeightsError` until
            ``load_state_dict`` of a discriminator checkpoint that had its weights).

    Shapes:
        images ``[B, 3, H, W]`` in [-1, 1] → logits ``[B, K]`` (K = Σ over taps of h·w positions).
    """

    def __init__(self, config: DiscriminatorConfig, vit: nn.Module, *, backbone_ready: bool = True) -> None:
        super().__init__()
        self.config = config
        self.backbone = DinoBackbone(vit)
        if max(config.taps) >= len(vit.blocks):
            raise ValueError(f"taps {config.taps} exceed the backbone depth {len(vit.blocks)}")
        self.heads = nn.ModuleList(_Head(self.backbone.embed_dim, config.head_width) for _ in config.taps)
        self.register_buffer("backbone_ready", torch.tensor(bool(backbone_ready)))
        self._ready = bool(backbone_ready)
        self.register_load_state_dict_post_hook(DinoDiscriminator._sync_ready)

    @staticmethod
    def _sync_ready(module: "DinoDiscriminator", _incompatible: Any) -> None:
        module._ready = bool(module.backbone_ready)

    def head_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters (the heads; the ViT is frozen)."""
        return list(self.heads.parameters())

    def forward(self, images: torch.Tensor, *, augment: bool = True,
                generator: torch.Generator | None = None) -> torch.Tensor:
        if not self._ready:
            raise EncoderWeightsError(f"The discriminator backbone {self.config.backbone!r} was constructed "
                                      f"without weights (construction only). {_HELP}")
        x = diff_augment(images, self.config.augment, generator) if augment else images
        size = self.config.input_size
        if tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        feats = self.backbone.intermediate_grids(self.backbone.normalize(x), self.config.taps)
        return torch.cat([head(f) for head, f in zip(self.heads, feats)], dim=1)


def build_discriminator(preset: str = "tiny", *, weights: str | Path | None = None, pretrained: bool = False,
                        random_init: bool = False, **overrides: Any) -> DinoDiscriminator:
    """Builds a :class:`DinoDiscriminator` (weights semantics as :func:`models.build_autoencoder`:
    ``tiny`` is random by design; otherwise no weights means construction only)."""
    config = replace(DISCRIMINATOR_CONFIGS[preset], **overrides)
    vit, ready = create_dino_vit_for_build(config.backbone, weights=weights, pretrained=pretrained,
                                           random_init=random_init, random_by_design=config.random_backbone,
                                           img_size=config.input_size, **config.backbone_kwargs)
    return DinoDiscriminator(config, vit, backbone_ready=ready)
