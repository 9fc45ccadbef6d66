"""The DINO Spherical Autoencoder: frozen DINO trunk, trainable conv stem, spherical latent, conv decoder.

Named configurations live in :data:`AE_CONFIGS` (``paper``, ``hae-code``, ``dinov2-b``, ``cpu``, ``tiny``,
``tiny-dinov2``); :func:`build_autoencoder` is the one entry point.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from models.decoder import DECODER_CONFIGS, STRUCTURES, ConvDecoder, DecoderConfig, decoder_config
from models.encoder import (EncoderWeightsError, DinoBackbone, create_dino_vit_for_build,
                            load_dino_weights, _HELP)
from models.latent import gaussian_norm_radius, smooth_latent
from models.stem import STEM_TYPES, HierarchicalConvPatchEmbed, LinearPatchEmbed
from spherical import Hypersphere

__all__ = ["AutoencoderConfig", "AE_CONFIGS", "AutoencoderOutput", "DECODER_INPUTS",
           "DinoSphericalAutoencoder", "build_autoencoder"]

_TINY_VIT = dict(embed_dim=32, depth=2, num_heads=2)
# The CPU demo's DINOv3-architecture ViT: patch 8, C = 192 (ViT-Ti width), 2 blocks (the blocks of a random
# DINOv3 ViT start near the identity, layer scale 1e-5; each costs as much as the decoder's 8×8 stage).
_CPU_VIT = dict(patch_size=8, embed_dim=192, depth=2, num_heads=3)
DECODER_INPUTS = ("raw", "sphere")


@dataclass(frozen=True)
class AutoencoderConfig:
    """Everything that defines a DINO Spherical Autoencoder.

    ``AutoencoderConfig(**json.loads(json.dumps(dataclasses.asdict(cfg)))) == cfg`` (checkpoint-friendly).

    Attributes:
        encoder: timm model name of the DINO ViT (teacher = frozen student trunk).
        encoder_kwargs: timm architecture overrides (used by the tiny test presets).
        image_size: nominal square input size (a multiple of the patch size; N = (image_size/p)²).
        stem: the student's trainable stem, ``"conv"`` (hierarchical conv stem, the paper's) or
            ``"patchify"`` (the standard linear patchify, initialised from the teacher's; paper Table 5).
        stem_widths: hidden widths of the hierarchical conv stem (64, 128, 256 in the paper; ⌈log2 p⌉ − 1
            of them).
        decoder: a :class:`DecoderConfig` (or a name in ``DECODER_CONFIGS``, or its ``asdict`` dict).
        random_encoder: the preset is random by design (tiny tests); no weights are expected.
        decoder_input: what the decoder reads. ``"raw"`` (the paper, v2 §3.2–3.3 and the released code):
            the student's patch tokens after the final norm, magnitude free. ``"sphere"`` (ablation, this
            project's earlier behaviour): those tokens projected to R·z/‖z‖. The DiT's latent is the
            sphere projection in both cases.
        random_embed_bias: std of the random patch-embedding bias given to a ViT *without* real weights
            (:func:`models.encoder.randomize_patch_embed_bias`; 0 keeps timm's init). A stand-in for the
            large biases of a trained DINO, so that the final LayerNorm keeps each patch's brightness.
            Ignored when weights are loaded.
        stem_bias_from_teacher: start the conv stem's last convolution with the teacher's
            patch-embedding bias (its weights stay random), so that the student's tokens start from the
            teacher's constant part. No effect on the ``patchify`` stem, which copies the whole patchify.
        structure: ``"table8"`` (default: this project's reading of the paper) or ``"release"``: build
            exactly what the released DINO-SAE code builds, to load its checkpoints
            (:mod:`models.convert_sae`): conv stem without biases, EfficientViT blocks without norms,
            duplicating shortcuts only, upsampling exactly ×p. Checkpoints
            written before the field existed are ``"table8"``.
    """

    encoder: str = "vit_large_patch16_dinov3.lvd1689m"
    encoder_kwargs: dict[str, Any] = field(default_factory=dict)
    image_size: int = 256
    stem_widths: tuple[int, ...] = (64, 128, 256)
    stem: str = "conv"
    decoder: DecoderConfig | str = DECODER_CONFIGS["paper"]
    random_encoder: bool = False
    decoder_input: str = "raw"
    random_embed_bias: float = 0.0
    stem_bias_from_teacher: bool = False
    structure: str = "table8"

    def __post_init__(self) -> None:
        if self.structure not in STRUCTURES:
            raise ValueError(f"structure must be one of {STRUCTURES}, got {self.structure!r}")
        if self.decoder_input not in DECODER_INPUTS:
            raise ValueError(f"decoder_input must be one of {DECODER_INPUTS}, got {self.decoder_input!r}")
        # accept a preset name, or the plain dict of ``dataclasses.asdict`` / JSON (lists → tuples)
        if isinstance(self.decoder, str):
            object.__setattr__(self, "decoder", decoder_config(self.decoder))
        elif isinstance(self.decoder, dict):
            dec = {k: tuple(v) if isinstance(v, list) else v for k, v in self.decoder.items()}
            object.__setattr__(self, "decoder", DecoderConfig(**dec))
        object.__setattr__(self, "stem_widths", tuple(self.stem_widths))
        if self.stem not in STEM_TYPES:
            raise ValueError(f"unknown stem {self.stem!r}; choose from {sorted(STEM_TYPES)}")
        if self.structure == "release" and (self.stem != "conv" or self.stem_bias_from_teacher):
            raise ValueError("structure='release' has the conv stem without biases: it excludes stem='patchify' "
                             "and stem_bias_from_teacher")
        object.__setattr__(self, "encoder_kwargs", dict(self.encoder_kwargs))


AE_CONFIGS: dict[str, AutoencoderConfig] = {
    # Paper (v2): DINOv3 ViT-L/16, 256 px → 16×16 tokens × 1024, Table 8 decoder.
    "paper": AutoencoderConfig(),
    # Same encoder with the released code's smaller decoder defaults.
    "hae-code": AutoencoderConfig(decoder="hae-code"),
    # DINOv2 ViT-B/14 with registers, 224 px → 16×16 tokens × 768 (patch-14 rule of the stem/decoder).
    "dinov2-b": AutoencoderConfig(encoder="vit_base_patch14_reg4_dinov2.lvd142m", image_size=224),
    # CPU demo (the embedded default), random by design: DINOv3-architecture ViT (RoPE, 4 registers) with
    # patch 8 and C = 192, 64 px → 8×8 tokens × 192 = 12288 latent numbers for 64·64·3 = 12288 pixel
    # values (the paper's ratio: 256 × 1024 for 256·256·3, 1.33); 3-layer conv stem, the "cpu" decoder.
    # (``random_embed_bias=1.0, stem_bias_from_teacher=True`` is measured in README: it helps the patchify
    # stem, 21.01 → 22.77 dB, and hurts this conv stem, 20.94 → 19.87 dB, so it is not the default.)
    "cpu": AutoencoderConfig(encoder="vit_small_patch16_dinov3", encoder_kwargs=_CPU_VIT, image_size=64,
                             stem_widths=(32, 64), decoder="cpu", random_encoder=True),
    # CPU tests, random by design: DINOv3-architecture ViT (RoPE, 4 registers), C = 32, 64 px → 4×4 tokens.
    "tiny": AutoencoderConfig(encoder="vit_small_patch16_dinov3", encoder_kwargs=_TINY_VIT, image_size=64,
                              stem_widths=(8, 16, 16), decoder="tiny", random_encoder=True),
    # CPU tests, random by design: DINOv2-architecture ViT (abs. positions, 4 registers), patch 14, 56 px.
    "tiny-dinov2": AutoencoderConfig(encoder="vit_small_patch14_reg4_dinov2", encoder_kwargs=_TINY_VIT,
                                     image_size=56, stem_widths=(8, 16, 16), decoder="tiny",
                                     random_encoder=True),
}


@dataclass
class AutoencoderOutput:
    """Output of :meth:`DinoSphericalAutoencoder.forward`.

    Attributes:
        recon: reconstructed images ``[B, 3, H, W]`` (≈ [-1, 1]).
        z: the clean student tokens the decoder reads, ``[B, N, C]`` (raw, or on S^{C−1}_R with
            ``decoder_input="sphere"``); the cosine loss against ``z_teacher`` does not see their norm.
        z_teacher: the teacher's patch tokens ``[B, N, C]`` (raw, no grad), or None if not requested.
    """

    recon: torch.Tensor
    z: torch.Tensor
    z_teacher: torch.Tensor | None


class DinoSphericalAutoencoder(nn.Module):
    """Student encoder (conv stem + frozen DINO trunk) → conv decoder; the DiT's latent is the projection
    of the student tokens onto the sphere of radius R (:meth:`sphere_latent`).

    One copy of the DINO ViT is held (``backbone.vit``): the teacher path is timm's original
    patch_embed + blocks + norm, the student path is ``stem`` + the same pos-embed/tokens/blocks/norm.
    All ViT parameters have ``requires_grad=False``; gradients still flow *through* them to the stem.

    Args:
        config: an :class:`AutoencoderConfig`.
        vit: the timm DINO ViT (built by :func:`models.encoder.create_dino_vit`).
        encoder_ready: False when the ViT holds no real weights yet (construction only): ``encode`` and
            ``teacher_tokens`` then raise :class:`EncoderWeightsError` until :meth:`load_encoder_weights`
            or ``load_state_dict`` of a trained autoencoder checkpoint.
    """

    def __init__(self, config: AutoencoderConfig, vit: nn.Module, *, encoder_ready: bool = True) -> None:
        super().__init__()
        self.config = config
        self.backbone = DinoBackbone(vit)
        c, p = self.backbone.embed_dim, self.backbone.patch_size
        if config.image_size % p:
            raise ValueError(f"image_size {config.image_size} is not a multiple of the patch size {p}")
        self.stem: nn.Module = (HierarchicalConvPatchEmbed(c, p, config.stem_widths,
                                                           bias=config.structure != "release")
                                if config.stem == "conv" else LinearPatchEmbed(c, p))
        self._init_stem_from_teacher()
        self.decoder = ConvDecoder(c, p, config.decoder, structure=config.structure)
        self.radius: float = gaussian_norm_radius(c)
        self.register_buffer("encoder_ready", torch.tensor(bool(encoder_ready)))
        self._ready = bool(encoder_ready)
        self.register_load_state_dict_post_hook(DinoSphericalAutoencoder._sync_ready)

    # ------------------------------------------------------------------ properties
    @property
    def latent_dim(self) -> int:
        """Token width C."""
        return self.backbone.embed_dim

    @property
    def patch_size(self) -> int:
        """Pixels per token side."""
        return self.backbone.patch_size

    @property
    def image_size(self) -> int:
        """Nominal input side H = W."""
        return self.config.image_size

    @property
    def num_tokens(self) -> int:
        """N = (image_size / patch)²."""
        return (self.config.image_size // self.patch_size) ** 2

    @property
    def latent_ratio(self) -> float:
        """Latent numbers per pixel value: N·C / (3·H·W) (paper: 256·1024 / (3·256²) = 1.33)."""
        return self.num_tokens * self.latent_dim / (3 * self.config.image_size ** 2)

    @property
    def sphere(self) -> Hypersphere:
        """The latent manifold: the product of N spheres S^{C−1}_R."""
        return Hypersphere(radius=self.radius)

    # ------------------------------------------------------------------ weights
    @staticmethod
    def _sync_ready(module: "DinoSphericalAutoencoder", _incompatible: Any) -> None:
        module._ready = bool(module.encoder_ready)

    def load_encoder_weights(self, path: str | Path) -> None:
        """Loads a DINO checkpoint (Meta or timm format, .pth or .safetensors) into the frozen ViT, and
        re-derives the stem's teacher-initialised part from it (see :meth:`_init_stem_from_teacher`)."""
        load_dino_weights(self.backbone.vit, path)
        self._init_stem_from_teacher()  # the student starts from *these* weights, not the construction-time ones
        self.encoder_ready.fill_(True)
        self._ready = True

    @torch.no_grad()
    def _init_stem_from_teacher(self) -> None:
        """The parts of the stem that start from the teacher's patchify: the whole linear patchify
        (student == teacher at step 0), or the conv stem's last bias with ``stem_bias_from_teacher``."""
        proj = self.backbone.vit.patch_embed.proj
        if isinstance(self.stem, LinearPatchEmbed):
            self.stem.proj.load_state_dict(proj.state_dict())
        elif self.config.stem_bias_from_teacher:
            self.stem.layers[-1][0].bias.copy_(proj.bias)

    def _check_ready(self) -> None:
        if not self._ready:
            raise EncoderWeightsError(
                f"The DINO encoder {self.config.encoder!r} was constructed without weights "
                f"(construction only). {_HELP}")

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing of the frozen ViT blocks (student path) and of every decoder stage:
        identical results, less activation memory, about one extra forward of compute."""
        self.backbone.vit.set_grad_checkpointing(enable)
        self.decoder.grad_checkpointing = enable

    # ------------------------------------------------------------------ training stages
    def stage_parameters(self, stage: int) -> list[nn.Parameter]:
        """Trainable parameters of a training stage: 1 → stem + decoder, 2 → decoder only."""
        if stage == 1:
            return list(self.stem.parameters()) + list(self.decoder.parameters())
        if stage == 2:
            return list(self.decoder.parameters())
        raise ValueError(f"stage must be 1 or 2, got {stage}")

    def set_stage(self, stage: int) -> list[nn.Parameter]:
        """Sets ``requires_grad`` for a stage (stem frozen in stage 2) and returns its parameters."""
        params = self.stage_parameters(stage)
        self.stem.requires_grad_(stage == 1)
        self.decoder.requires_grad_(True)
        self.backbone.requires_grad_(False)
        return params

    # ------------------------------------------------------------------ model
    def student_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Raw student tokens: images ``[B,3,H,W]`` in [-1, 1] → ``[B, N, C]`` patch tokens after the final
        norm (not projected; their norms differ from token to token).

        ImageNet mean/std normalisation is done inside; H, W must be multiples of the patch size.
        """
        self._check_ready()
        x = self.backbone.normalize(images)
        return self.backbone.from_patch_grid(self.stem.forward_nhwc(x))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """What the decoder reads: images ``[B,3,H,W]`` in [-1, 1] → ``[B, N, C]``.

        ``decoder_input="raw"`` (default, the paper): the raw :meth:`student_tokens`.
        ``decoder_input="sphere"`` (ablation): their projection R·z/‖z‖ (float32), as :meth:`to_sphere`.
        The DiT's latent is :meth:`sphere_latent` in both cases.
        """
        return self.decoder_latent(self.student_tokens(images))

    def decoder_latent(self, tokens: torch.Tensor) -> torch.Tensor:
        """Raw student tokens ``[..., C]`` → the decoder's input: unchanged for ``decoder_input="raw"``,
        :meth:`to_sphere` for ``"sphere"``."""
        return tokens if self.config.decoder_input == "raw" else self.to_sphere(tokens)

    def to_sphere(self, tokens: torch.Tensor) -> torch.Tensor:
        """The DiT's latent from tokens ``[..., C]`` of any norm and dtype: z₀ = R·z/‖z‖ in float32
        (``spherical.Hypersphere(R).projx``; PAPER.md v2 Alg. 1)."""
        return self.sphere.projx(tokens.float())

    def sphere_latent(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B,3,H,W]`` in [-1, 1] → the DiT's latent ``[B, N, C]``, float32 on S^{C−1}_R."""
        return self.to_sphere(self.student_tokens(images))

    @torch.no_grad()
    def teacher_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Teacher: timm's original patchify + the frozen trunk, images in [-1, 1] → ``[B, N, C]``
        patch tokens after the final norm (not projected; no gradient)."""
        self._check_ready()
        return self.backbone.teacher(self.backbone.normalize(images))

    def decode(self, z: torch.Tensor, *, norm: float | torch.Tensor | None = None) -> torch.Tensor:
        """Decoder: tokens ``[B, N, C]`` of any norm → images ``[B, 3, p·√N, p·√N]`` (≈ [-1, 1]).

        Args:
            z: tokens, row-major over the square grid.
            norm: if given, every token is first rescaled to this norm by
                ``Hypersphere(radius=norm).projx`` (the sampler passes the checkpoint's ``latent_norm``,
                the typical norm of what the decoder read in training; the paper's s_vae = 14 for DINOv3-L).
        """
        if norm is not None:
            z = Hypersphere(radius=norm).projx(z)
        return self.decoder(z)

    def forward(self, images: torch.Tensor, *, with_teacher: bool = True, smoothing_tau: float = 0.0,
                generator: torch.Generator | None = None) -> AutoencoderOutput:
        """Encode → (optional latent smoothing z + σε, σ ~ U(0, τ) once per batch) → decode.

        The smoothing acts on what the decoder reads (:meth:`encode`: raw tokens by default).

        Args:
            images: ``[B, 3, H, W]`` in [-1, 1].
            with_teacher: also compute the teacher tokens (stage 1's cosine loss).
            smoothing_tau: τ of :func:`models.latent.smooth_latent` (0 = clean latent).
            generator: RNG for the smoothing noise.
        """
        z = self.encode(images)
        recon = self.decode(smooth_latent(z, smoothing_tau, generator))
        z_teacher = self.teacher_tokens(images) if with_teacher else None
        return AutoencoderOutput(recon=recon, z=z, z_teacher=z_teacher)


def build_autoencoder(preset: str = "tiny", *, weights: str | Path | None = None, pretrained: bool = False,
                      random_init: bool = False, image_size: int | None = None,
                      **overrides: Any) -> DinoSphericalAutoencoder:
    """Builds a :class:`DinoSphericalAutoencoder` from a named preset.

    ``tiny`` / ``tiny-dinov2`` are random by design (C = 32 toy ViTs for CPU tests). For the real presets
    the DINO weights come from ``weights=PATH`` (Meta or timm format), ``pretrained=True`` (timm hub,
    online) or ``random_init=True`` (explicit). With none of them the model is built for construction
    only (parameter counting, loading a full autoencoder checkpoint): the ViT is randomly initialised
    and ``encode``/``teacher_tokens`` raise :class:`EncoderWeightsError` until weights are loaded.

    Args:
        preset: a key of :data:`AE_CONFIGS`.
        weights: local DINO checkpoint file.
        pretrained: download timm's weights; raises :class:`EncoderWeightsError` when offline.
        random_init: use a random DINO ViT on purpose.
        image_size: overrides the preset's image size.
        **overrides: :class:`AutoencoderConfig` fields (``decoder`` may be a preset name).

    Returns:
        The model in train mode; the ViT is frozen (requires_grad False, eval mode).
    """
    if preset not in AE_CONFIGS:
        raise KeyError(f"unknown preset {preset!r}; choose from {sorted(AE_CONFIGS)}")
    names = {f.name for f in fields(AutoencoderConfig)}
    unknown = set(overrides) - names
    if unknown:
        raise TypeError(f"unknown AutoencoderConfig fields {sorted(unknown)}")
    if image_size is not None:
        overrides["image_size"] = image_size
    config = replace(AE_CONFIGS[preset], **overrides)
    vit, ready = create_dino_vit_for_build(config.encoder, weights=weights, pretrained=pretrained,
                                           random_init=random_init, random_by_design=config.random_encoder,
                                           img_size=config.image_size,
                                           random_embed_bias=config.random_embed_bias, **config.encoder_kwargs)
    return DinoSphericalAutoencoder(config, vit, encoder_ready=ready)

