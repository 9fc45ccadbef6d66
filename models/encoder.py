"""The frozen DINO ViT (teacher and shared student trunk) built from timm, and its weight loading.

Two timm architecture classes are supported, each through timm's own internals:

* DINOv3 (``vit_*_patch16_dinov3*``) is timm's ``Eva`` class: RoPE positions, 4 register ("storage")
  tokens, no absolute position embedding.
* DINOv2 (``vit_*_patch14_dinov2*`` / ``*_reg4_dinov2*``) is timm's ``VisionTransformer``: absolute
  position embedding (resampled to the input grid by timm), optional registers.

Weights come from exactly one of: a local file (``weights=PATH``: ``.pth``/``.pt``/``.bin`` in Meta's
DINOv2/DINOv3 key format or in timm's, or ``.safetensors``), timm's hub download (``pretrained=True``,
needs internet), or an explicit random initialisation (``random_init=True``). Asking for none of them
raises :class:`EncoderWeightsError`; random weights are never used silently.
"""
from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path
from typing import Any, Sequence

import timm
import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

__all__ = ["EncoderWeightsError", "DinoBackbone", "create_dino_vit", "load_dino_weights", "randomize_patch_embed_bias",
           "read_checkpoint", "convert_checkpoint"]

_HELP = ("Pass a local checkpoint with `--encoder-weights PATH` (Python: `weights=PATH`; Meta's "
         "DINOv2/DINOv3 .pth, a timm .pth or a .safetensors file), or `pretrained=True` when online, or ask "
         "for an untrained encoder explicitly with `--random-encoder` (Python: `random_init=True`).")


class EncoderWeightsError(RuntimeError):
    """Raised when the DINO encoder has no weights: offline without a local file, or none requested."""


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Reads a state dict from ``.safetensors`` or a torch pickle (``.pth``, ``.pt``, ``.bin``).

    Nested wrappers (``{"model": ...}``, ``{"state_dict": ...}``, ``{"teacher": ...}``) are unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise EncoderWeightsError(f"Encoder weights file not found: {path}. {_HELP}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        state = load_file(str(path), device="cpu")
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in ("model_ema", "model", "state_dict", "teacher", "module"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if isinstance(state, dict) and any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    return dict(state)


def convert_checkpoint(state: dict[str, torch.Tensor], vit: nn.Module) -> dict[str, torch.Tensor]:
    """Maps a Meta-format (or timm-format) state dict onto ``vit``'s keys with timm's own filter.

    Uses ``checkpoint_filter_fn`` of the timm module that defines ``type(vit)`` (``timm.models.eva`` for
    DINOv3, ``timm.models.vision_transformer`` for DINOv2); timm-format dicts pass through unchanged.
    """
    filter_fn = getattr(sys.modules[type(vit).__module__], "checkpoint_filter_fn", None)
    if filter_fn is None:
        return dict(state)
    with contextlib.redirect_stdout(io.StringIO()):  # timm prints a note per skipped all-zero qkv bias
        return dict(filter_fn(dict(state), vit))


def load_dino_weights(vit: nn.Module, path: str | Path) -> None:
    """Loads a local checkpoint into ``vit`` (strict: every parameter must be covered)."""
    state = convert_checkpoint(read_checkpoint(path), vit)
    missing, unexpected = vit.load_state_dict(state, strict=False)
    missing = [k for k in missing if "rope" not in k]  # rope tables are recomputed, not stored
    if missing or unexpected:
        raise EncoderWeightsError(
            f"Checkpoint {path} does not match {type(vit).__name__}: missing {missing[:8]}, "
            f"unexpected {unexpected[:8]}. {_HELP}")


def create_dino_vit(name: str, *, weights: str | Path | None = None, pretrained: bool = False,
                    random_init: bool = False, img_size: int | None = None,
                    **timm_kwargs: Any) -> nn.Module:
    """Creates a timm DINO ViT (no head, dynamic image size) and fills its weights.

    Args:
        name: timm model name, e.g. ``"vit_large_patch16_dinov3.lvd1689m"``.
        weights: a local checkpoint file (Meta or timm key format, ``.pth`` or ``.safetensors``).
        pretrained: download timm's hub weights (needs internet).
        random_init: keep timm's random initialisation; must be asked for explicitly.
        img_size: nominal input size (sets the size of DINOv2's stored position table; DINOv3 has none).
        **timm_kwargs: architecture overrides forwarded to ``timm.create_model`` (tiny test models).

    Raises:
        EncoderWeightsError: none of ``weights``/``pretrained``/``random_init`` given, the download
            failed (offline), or the file does not match the architecture.
    """
    if weights is None and not pretrained and not random_init:
        raise EncoderWeightsError(f"No weights requested for the DINO encoder {name!r}. {_HELP}")
    kwargs: dict[str, Any] = dict(num_classes=0, dynamic_img_size=True, **timm_kwargs)
    if img_size is not None:
        kwargs["img_size"] = img_size
    if weights is None and pretrained:
        try:
            vit = timm.create_model(name, pretrained=True, **kwargs)
        except Exception as err:  # network, hub or hash failures all mean "no weights"
            raise EncoderWeightsError(
                f"Downloading timm weights for {name!r} failed ({type(err).__name__}: {err}). "
                f"{_HELP}") from err
    else:
        vit = timm.create_model(name, pretrained=False, **kwargs)
        if weights is not None:
            load_dino_weights(vit, weights)
    vit.requires_grad_(False)
    vit.eval()
    return vit


def create_dino_vit_for_build(name: str, *, weights: str | Path | None, pretrained: bool, random_init: bool,
                              random_by_design: bool, img_size: int | None, random_embed_bias: float = 0.0,
                              **timm_kwargs: Any) -> tuple[nn.Module, bool]:
    """The weight-source rule shared by the ``build_*`` entry points; returns ``(vit, ready)``.

    ``ready`` is True when real weights were loaded (``weights`` file or ``pretrained``) or a random
    network was asked for (``random_init``, or a preset that is random by design such as ``tiny``).
    Otherwise the network is built with random weights for construction only and ``ready`` is False,
    so the caller can refuse to run it until weights are loaded.

    A ViT without real weights gets :func:`randomize_final_norm` and, when ``random_embed_bias > 0``,
    :func:`randomize_patch_embed_bias` with that standard deviation (never on the pretrained path).
    """
    if not (random_embed_bias >= 0.0 and random_embed_bias < float("inf")):
        raise ValueError(f"random_embed_bias must be a finite number >= 0, got {random_embed_bias!r}")
    random = random_init or random_by_design
    ready = weights is not None or pretrained or random
    vit = create_dino_vit(name, weights=weights, pretrained=pretrained and weights is None,
                          random_init=not ready or random, img_size=img_size, **timm_kwargs)
    if weights is None and not pretrained:
        randomize_final_norm(vit)
        if random_embed_bias > 0.0:
            randomize_patch_embed_bias(vit, random_embed_bias)
    return vit, ready


@torch.no_grad()
def randomize_final_norm(vit: nn.Module) -> None:
    """Gives a random ViT's final LayerNorm non-trivial affine parameters (torch's global RNG):
    weight_c = exp(0.5·g_c), bias_c = 0.5·h_c with g, h ~ N(0, 1).

    timm initialises it to weight 1, bias 0, so every token of a random trunk would have norm exactly √C
    (LayerNorm output has zero mean and unit variance over C). A trained DINO's final norm is far from
    the identity and its token norms vary from token to token: the magnitude the paper's decoder reads
    (PAPER.md "Autoencoder"). Real weights loaded later overwrite these values.
    """
    norm = getattr(vit, "norm", None)
    if getattr(norm, "weight", None) is None:
        return
    norm.weight.copy_(torch.exp(0.5 * torch.randn_like(norm.weight)))
    if getattr(norm, "bias", None) is not None:
        norm.bias.copy_(0.5 * torch.randn_like(norm.bias))


@torch.no_grad()
def randomize_patch_embed_bias(vit: nn.Module, std: float) -> None:
    """Draws a random ViT's patch-embedding bias as b_c ~ N(0, std²) (torch's global RNG).

    Why: a patch token of a random trunk is t = W·vec(patch) + b, and the blocks of a random DINOv3 ViT
    are near the identity (layer scale 1e-5), so the final LayerNorm sees ≈ t. LayerNorm is invariant
    to t ↦ α·t, so with timm's tiny bias (std ≈ 0.04 against |W·x| ≈ 0.75 per channel) a flat patch and
    the same patch α times brighter (relative to the ImageNet mean) give the same token: the teacher,
    and a student that copies it through the cosine loss, lose each patch's brightness and colour
    saturation. A trained DINO has large biases, position and register terms, so its tokens are not
    scale-invariant in the pixels. With b of the size of W·x, LN(α·W·x + b) changes direction with α.
    Real weights loaded later overwrite the bias.

    Raises:
        ValueError: ``std`` is not a finite number > 0, or the ViT's patch embedding has no bias.
    """
    if not (std > 0.0 and std < float("inf")):
        raise ValueError(f"patch-embed bias std must be a finite number > 0, got {std!r}")
    bias = getattr(getattr(getattr(vit, "patch_embed", None), "proj", None), "bias", None)
    if bias is None:
        raise ValueError(f"{type(vit).__name__} has no patch_embed.proj.bias to randomise")
    bias.copy_(std * torch.randn_like(bias))


class DinoBackbone(nn.Module):
    """A frozen timm DINO ViT exposing its pieces around the patch embedding.

    ``teacher(x)`` is timm's ``forward_features`` (patch_embed → tokens/positions → blocks → norm);
    ``from_patch_grid(g)`` runs the same pipeline from a patch grid produced by any other embedding
    (the student's conv stem), through timm's ``_pos_embed``/``norm_pre``/blocks/``norm``. Both drop the
    class and register tokens and return ``[B, N, C]`` patch tokens after the final norm.

    Args:
        vit: a timm ``Eva`` (DINOv3, RoPE) or ``VisionTransformer`` (DINOv2, absolute positions) built
            with ``dynamic_img_size=True`` (as :func:`create_dino_vit` does).
    """

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        if not getattr(vit, "dynamic_img_size", False):
            raise ValueError("DinoBackbone needs a timm ViT built with dynamic_img_size=True")
        self.vit = vit
        self.vit.requires_grad_(False)
        self.vit.eval()
        cfg = getattr(vit, "pretrained_cfg", {}) or {}
        mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406)), dtype=torch.float32)
        std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225)), dtype=torch.float32)
        self.register_buffer("mean", mean.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", std.view(1, 3, 1, 1), persistent=False)

    @property
    def embed_dim(self) -> int:
        """Token width C."""
        return int(self.vit.embed_dim)

    @property
    def patch_size(self) -> int:
        """Side of one patch in pixels (16 for DINOv3, 14 for DINOv2)."""
        return int(self.vit.patch_embed.patch_size[0])

    @property
    def num_prefix_tokens(self) -> int:
        """Class + register tokens that are dropped from every output."""
        return int(self.vit.num_prefix_tokens)

    def train(self, mode: bool = True) -> "DinoBackbone":
        """The frozen ViT always stays in eval mode (no dropout / drop-path)."""
        super().train(mode)
        self.vit.eval()
        return self

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Maps images in [-1, 1] to ImageNet-normalised input: ((x + 1)/2 − mean)/std. ``[B,3,H,W]``."""
        return ((images + 1.0) * 0.5 - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Token grid (H/p, W/p); raises ValueError when the image is not a multiple of the patch."""
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {p}")
        return height // p, width // p

    def _drop_prefix(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, self.num_prefix_tokens:]

    def teacher(self, x: torch.Tensor) -> torch.Tensor:
        """Original DINO path on normalised images ``[B,3,H,W]`` → patch tokens ``[B, N, C]``."""
        self.grid_size(x.shape[-2], x.shape[-1])
        return self._drop_prefix(self.vit.forward_features(x))

    def from_patch_grid(self, grid: torch.Tensor) -> torch.Tensor:
        """Runs the frozen trunk on an embedded patch grid.

        Args:
            grid: ``[B, h, w, C]`` (NHWC, the layout timm's dynamic-size patch_embed produces).

        Returns:
            Patch tokens after the final norm, ``[B, h·w, C]``.
        """
        vit = self.vit
        x = vit.patch_embed.norm(grid)
        if hasattr(vit, "rope"):  # timm Eva (DINOv3): _pos_embed also returns the RoPE table
            x, rope = vit._pos_embed(x)
            x = vit.norm_pre(x)
            mixed = getattr(vit, "rope_mixed", False) and rope is not None
            for i, blk in enumerate(vit.blocks):
                x = self._run_block(blk, x, rope=rope[i] if mixed else rope)
        else:  # timm VisionTransformer (DINOv2)
            x = vit._pos_embed(x)
            x = vit.patch_drop(x)
            x = vit.norm_pre(x)
            for blk in vit.blocks:
                x = self._run_block(blk, x)
        return self._drop_prefix(vit.norm(x))

    def _run_block(self, blk: nn.Module, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """One block, recomputed in backward when timm's ``set_grad_checkpointing()`` is on."""
        if getattr(self.vit, "grad_checkpointing", False) and torch.is_grad_enabled():
            return checkpoint(blk, x, use_reentrant=False, **kwargs)
        return blk(x, **kwargs)

    def patch_grid(self, x: torch.Tensor) -> torch.Tensor:
        """timm's original patchify of normalised images: ``[B,3,H,W]`` → ``[B, H/p, W/p, C]``."""
        return self.vit.patch_embed(x)

    def intermediate_grids(self, x: torch.Tensor, indices: Sequence[int]) -> list[torch.Tensor]:
        """Block outputs at ``indices`` (0-based) as ``[B, C, h, w]`` maps, via timm's forward_intermediates."""
        return self.vit.forward_intermediates(x, indices=list(indices), norm=False, stop_early=True,
                                              output_fmt="NCHW", intermediates_only=True)
