"""DC-AE-style convolutional decoder: token grid ``[B, N, C]`` → image ``[B, 3, p·√N, p·√N]``.

Configs are dataclasses held in the registry :data:`DECODER_CONFIGS` (``paper``, ``hae-code``, ``cpu``, ``tiny``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from models.decoder_blocks import BLOCK_TYPES, ChannelShortcut, UpsampleBlock, conv3x3
from models.stem import TRMS2d

__all__ = ["DecoderConfig", "DECODER_CONFIGS", "ConvDecoder", "tokens_to_grid", "STRUCTURES"]

#: ``"table8"``: this project's reading of the paper (Table 8). ``"release"``: exactly what the released
#: DINO-SAE code (wkdgnsgo/dino-sae ``src/model.py``) builds, for its checkpoints (models.convert_sae).
STRUCTURES = ("table8", "release")


@dataclass(frozen=True)
class DecoderConfig:
    """Decoder hyper-parameters. Stage lists run in *decoding order* (first = at the token resolution).

    Attributes:
        widths: channel width of each stage.
        depths: number of blocks in each stage.
        block_types: ``"evit_glu"`` (EfficientViT: ReLU linear attention + GLU MBConv) or ``"res"``.
        upsample: ``"interpolate"`` (nearest ×2 + conv) or ``"pixel_shuffle"``; both with a
            channel-duplicating shortcut.
        attn_head_dim: head width of the linear attention.
        glu_expand: expansion ratio of GLU MBConv.
        out_act: activation after the output TRMS2d (``"silu"`` or ``"relu"``).
        out_channels: 3 for RGB.
        in_shortcut: the parameter-free channel shortcut around the input convolution (when one width
            divides the other); False: none (the released code's ``in_shortcut=None``).
    """

    widths: tuple[int, ...] = (1024, 1024, 512, 512, 256)
    depths: tuple[int, ...] = (3, 3, 3, 5, 5)
    block_types: tuple[str, ...] = ("evit_glu", "evit_glu", "res", "res", "res")
    upsample: str = "interpolate"
    attn_head_dim: int = 32
    glu_expand: float = 4.0
    out_act: str = "silu"
    out_channels: int = 3
    in_shortcut: bool = True

    def __post_init__(self) -> None:
        n = len(self.widths)
        if not (len(self.depths) == len(self.block_types) == n) or n == 0:
            raise ValueError("widths, depths and block_types must have the same non-zero length")
        unknown = set(self.block_types) - set(BLOCK_TYPES)
        if unknown:
            raise ValueError(f"unknown block types {sorted(unknown)}; choose from {sorted(BLOCK_TYPES)}")


DECODER_CONFIGS: dict[str, DecoderConfig] = {
    # v2 Table 8: widths 1024/1024/512/512/256, depths 3/3/3/5/5, EfficientViT GLU in the first two stages.
    "paper": DecoderConfig(),
    # The released code's defaults (DC-AE widths 128/256/512/512 listed shallow → deep), ResBlocks,
    # pixel-shuffle upsampling, ReLU after the output norm; unlike the release (which cannot build these
    # widths at C = 1024, patch 16) one extra ×2 upsampling block and a channel-averaging input shortcut.
    "hae-code": DecoderConfig(widths=(512, 512, 256, 128), depths=(2, 2, 2, 2),
                              block_types=("res",) * 4, upsample="pixel_shuffle", out_act="relu"),
    # CPU demo (AE preset "cpu", patch 8): 8×8 tokens → 64 px in three pixel-shuffle ×2 steps, sized for
    # 2 cores: the blocks run at the token resolution, where they are cheap; the ×2 steps keep the numbers
    # per position ≥ the pixel values they cover (192 per 8×8×3, 96 per 4×4×3, 48 per 2×2×3).
    "cpu": DecoderConfig(widths=(192, 96, 48, 24), depths=(2, 0, 0, 0),
                         block_types=("evit_glu", "res", "res", "res"), upsample="pixel_shuffle",
                         attn_head_dim=32, glu_expand=2.0),
    # CPU tests: every block kind, a few thousand parameters.
    "tiny": DecoderConfig(widths=(32, 16, 8), depths=(1, 1, 1), block_types=("evit_glu", "res", "res"),
                          attn_head_dim=8, glu_expand=2.0),
}


def tokens_to_grid(z: torch.Tensor) -> torch.Tensor:
    """``[B, N, C]`` tokens (row-major square grid) → ``[B, C, √N, √N]``."""
    b, n, c = z.shape
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"the decoder needs a square token grid, got N = {n}")
    return z.transpose(1, 2).reshape(b, c, side, side)


class ConvDecoder(nn.Module):
    """Token grid → image, DC-AE style.

    project-in: conv3×3 (C → widths[0]) + parameter-free channel shortcut (when one width divides
    the other); stages of blocks with a ×2
    :class:`UpsampleBlock` between consecutive stages; then, if the stages upsample less than the
    patch needs, further ×2 upsampling blocks at the last width until 2^k ≥ patch; if 2^k ≠ patch
    (DINOv2's 14), a bilinear (antialiased) resize of the feature map to patch·√N; project-out:
    TRMS2d → act → conv3×3 (→ out_channels). No output squashing: values are "[-1, 1]-ish".

    Args:
        latent_dim: token width C.
        patch_size: pixels per token side (output side = patch_size · √N).
        config: a :class:`DecoderConfig`.
        structure: ``"table8"`` (above) or ``"release"``: the released code's decoder. There the
            EfficientViT blocks have no norms, every shortcut duplicates channels
            (it cannot average: widths that need averaging raise ValueError, as the release's assert
            does), and the stages upsample exactly ``patch_size`` (len(widths) − 1 = log2 p, every stage
            with blocks): no extra upsampling blocks, no resize.

    Shapes:
        z ``[B, N, C]`` → ``[B, out_channels, patch·√N, patch·√N]``.
    """

    def __init__(self, latent_dim: int, patch_size: int, config: DecoderConfig, structure: str = "table8") -> None:
        super().__init__()
        if structure not in STRUCTURES:
            raise ValueError(f"structure must be one of {STRUCTURES}, got {structure!r}")
        release = structure == "release"
        if release:
            _check_release(latent_dim, patch_size, config)
        self.config, self.latent_dim, self.patch_size, self.structure = config, latent_dim, patch_size, structure
        widths = config.widths
        self.project_in = conv3x3(latent_dim, widths[0])
        divisible = widths[0] % latent_dim == 0 or (latent_dim % widths[0] == 0 and not release)
        self.project_in_shortcut = (ChannelShortcut(latent_dim, widths[0]) if divisible and config.in_shortcut
                                    else None)
        num_up = max(0, math.ceil(math.log2(patch_size)))
        stages: list[nn.Module] = []
        for i, (width, depth, kind) in enumerate(zip(widths, config.depths, config.block_types)):
            blocks: list[nn.Module] = []
            if i > 0 and i <= num_up:
                blocks.append(UpsampleBlock(widths[i - 1], width, config.upsample))
            elif i > 0 and widths[i - 1] != width:
                blocks.append(conv3x3(widths[i - 1], width))
            blocks += [BLOCK_TYPES[kind](width, head_dim=config.attn_head_dim, expand=config.glu_expand,
                                         release=release) for _ in range(depth)]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        extra = max(0, num_up - (len(widths) - 1))
        self.extra_upsample = nn.Sequential(*[UpsampleBlock(widths[-1], widths[-1], config.upsample)
                                              for _ in range(extra)])
        self.out_norm = TRMS2d(widths[-1])
        self.out_act = {"silu": nn.SiLU, "relu": nn.ReLU}[config.out_act]()
        self.out_conv = conv3x3(widths[-1], config.out_channels)
        self.grad_checkpointing = False  # recompute each stage in backward (activation memory ↓)

    @property
    def last_layer(self) -> nn.Parameter:
        """Weight of the output convolution (for the adaptive GAN weight)."""
        return self.out_conv.weight

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = tokens_to_grid(z)
        side = x.shape[-1] * self.patch_size
        y = self.project_in(x)
        x = y + self.project_in_shortcut(x) if self.project_in_shortcut is not None else y
        for stage in list(self.stages) + [self.extra_upsample]:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(stage, x, use_reentrant=False)
            else:
                x = stage(x)
        if x.shape[-1] != side:
            x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
        return self.out_conv(self.out_act(self.out_norm(x)))


def _check_release(latent_dim: int, patch_size: int, config: DecoderConfig) -> None:
    """The released code can build this decoder (else one line saying why, as its asserts would)."""
    w, n = config.widths, len(config.widths)
    if 2 ** (n - 1) != patch_size:
        raise ValueError(f"structure='release' upsamples x2 between stages only: {n} stages give "
                         f"x{2 ** (n - 1)}, the patch size is {patch_size}")
    if not all(config.depths):
        raise ValueError(f"structure='release' needs blocks in every stage (a stage without blocks does not "
                         f"upsample there), got depths {config.depths}")
    for cin, cout in zip(w[:-1], w[1:]):
        if (4 * cout) % cin:
            raise ValueError(f"structure='release': the upsampling shortcut duplicates channels, so 4x{cout} must "
                             f"be a multiple of {cin}")
    if "evit_glu" in config.block_types and (config.attn_head_dim != 32 or config.glu_expand != 4.0):
        raise ValueError("structure='release': its EfficientViT blocks have head width 32 and GLU expansion 4, "
                         f"got attn_head_dim={config.attn_head_dim}, glu_expand={config.glu_expand}")
    if config.in_shortcut and w[0] % latent_dim:
        raise ValueError(f"structure='release': the input shortcut duplicates channels, so widths[0]={w[0]} must "
                         f"be a multiple of the latent width {latent_dim} (the release asserts)")


def decoder_config(name_or_config: str | DecoderConfig, **overrides: object) -> DecoderConfig:
    """Looks up a registry preset (or takes a config) and applies dataclass field overrides."""
    cfg = DECODER_CONFIGS[name_or_config] if isinstance(name_or_config, str) else name_or_config
    return replace(cfg, **overrides) if overrides else cfg
