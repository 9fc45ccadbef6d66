"""Checkpoints of the released DINO-SAE code (wkdgnsgo/dino-sae ``src/model.py``) ⇄ our autoencoder.

The release's ``DINOSphericalAutoencoder`` holds ``dino_model.*`` (Meta's DINOv3 ViT whose
``patch_embed`` is replaced by the trained ``CnnPatchEmbed``: ``dino_model.patch_embed.cnn.*``) and
``decoder.*`` (its ``DCAE_Decoder``). Ours holds ``backbone.vit.*`` (timm's DINOv3), ``stem.*`` and
``decoder.*``. A released checkpoint computes our function only in the structure the release builds:
``AutoencoderConfig(structure="release")`` (see :class:`models.decoder.ConvDecoder`); loading it into the
Table 8 structure raises one line naming that option.

Maps (each exact: a rename, a reshape or a permutation):

* stem: ``cnn.i.conv.weight`` ⇄ ``layers.i.0.weight`` (no biases on either side), ``cnn.i.norm.weight``
  ``[1, C, 1, 1]`` ⇄ ``layers.i.1.weight`` ``[C]``.
* decoder: ``project_in[.main].conv`` ⇄ ``project_in``; ``stages.i.op_list.j`` ⇄ ``stages.i.j``
  (upsampling ``main.conv.conv`` ⇄ ``conv``; ResBlock ``main.conv{1,2}.conv`` ⇄ ``conv{1,2}``,
  ``main.conv2.norm`` ⇄ ``norm``; EfficientViT ``context_module.main.{qkv,proj}.conv`` ⇄ ``attn.{qkv,proj}``
  with the qkv rows reordered from per-head [q k v] to [q | k | v], ``local_module.main.{inverted,depth,
  point}_conv.conv`` ⇄ ``local.{inverted,depthwise,point}``); ``project_out.op_list.0`` ⇄ ``out_norm``,
  ``project_out.op_list.2.conv`` ⇄ ``out_conv``.
* trunk: Meta's DINOv3 keys through timm's own ``checkpoint_filter_fn`` (``models.encoder``), and back
  (``ls1.gamma`` ⇄ ``gamma_1``, ``storage_tokens`` ⇄ ``reg_token``, ``qkv.bias`` ⇄ ``q_bias``/``v_bias``
  with k's bias 0). Meta's non-learned or pretraining-only entries (``rope_embed.periods``,
  ``*.bias_mask``, ``mask_token``) are not produced: load the export into the release with
  ``strict=False`` or take them from the DINO checkpoint.
* Not in a released checkpoint: the teacher's own patchify (``patch_embed.proj``, which the release
  replaced by the stem); it keeps the value it has (from ``load_encoder_weights``).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from models.decoder import ConvDecoder, DecoderConfig
from models.decoder_blocks import EfficientViTBlock, ResBlock, UpsampleBlock
from models.encoder import convert_checkpoint

__all__ = ["ReleaseFormatError", "decoder_config_from_release", "release_decoder_to_ours",
           "ours_decoder_to_release", "release_stem_to_ours", "ours_stem_to_release", "release_to_ours",
           "ours_to_release", "load_release_state"]


class ReleaseFormatError(ValueError):
    """A released-layout checkpoint that does not fit the target model (the message says why)."""


# ----------------------------------------------------------------------------------------------- config
_BLOCKS = {"ResBlock": "res", "EViT_GLU": "evit_glu"}
_UPSAMPLE = {"ConvPixelShuffle": "pixel_shuffle", "InterpolateConv": "interpolate"}


def decoder_config_from_release(cfg: dict[str, Any]) -> DecoderConfig:
    """The release's ``DecoderConfig`` fields (width lists shallow → deep) → ours (decoding order).

    Only what the release's defaults and our blocks share converts: norm ``trms2d``, act ``silu``,
    duplicating upsampling shortcuts, ``upsample_match_channel``; anything else raises
    :class:`ReleaseFormatError`.
    """
    def per_stage(v: Any, n: int) -> list:
        return [v] * n if isinstance(v, str) else list(v)

    n = len(cfg["width_list"])
    fixed = {"norm": "trms2d", "act": "silu", "upsample_shortcut": "duplicating", "out_norm": "trms2d",
             "upsample_match_channel": True, "in_channels": 3}
    for k, want in fixed.items():
        got = cfg.get(k, want)
        if any(g != want for g in (per_stage(got, n) if k in ("norm", "act") else [got])):
            raise ReleaseFormatError(f"release decoder {k}={got!r}: only {want!r} converts")
    if cfg.get("in_shortcut", "duplicating") not in ("duplicating", None):
        raise ReleaseFormatError(f"release decoder in_shortcut={cfg['in_shortcut']!r}: only 'duplicating' or None")
    blocks = per_stage(cfg.get("block_type", "ResBlock"), n)
    return DecoderConfig(widths=tuple(cfg["width_list"][::-1]), depths=tuple(cfg["depth_list"][::-1]),
                         block_types=tuple(_BLOCKS[b] for b in blocks[::-1]),
                         upsample=_UPSAMPLE[cfg.get("upsample_block_type", "ConvPixelShuffle")],
                         attn_head_dim=32, glu_expand=4.0, out_act=cfg.get("out_act", "relu"),
                         in_shortcut=cfg.get("in_shortcut", "duplicating") is not None)


# ------------------------------------------------------------------------------------------ key maps
def _block_map(block: nn.Module, ours: str, rel: str) -> list[tuple[str, str, str]]:
    """(our key, release key, kind) for one decoder block; kind: same | norm (reshape) | qkv:<heads>."""
    c = lambda name: f"{rel}.{name}.conv"  # noqa: E731 -- efficientvit's ConvLayer wraps its nn.Conv2d
    if isinstance(block, UpsampleBlock):
        return [(f"{ours}.conv.{p}", f"{rel}.main.conv.conv.{p}", "same") for p in ("weight", "bias")]
    if isinstance(block, ResBlock):
        return [(f"{ours}.conv1.weight", c("main.conv1") + ".weight", "same"),
                (f"{ours}.conv1.bias", c("main.conv1") + ".bias", "same"),
                (f"{ours}.conv2.weight", c("main.conv2") + ".weight", "same"),
                (f"{ours}.norm.weight", f"{rel}.main.conv2.norm.weight", "norm")]
    if isinstance(block, EfficientViTBlock):
        if not isinstance(block.attn.norm, nn.Identity):
            raise ReleaseFormatError("the decoder's EfficientViT blocks have norms: build it with structure='release'")
        return [(f"{ours}.attn.qkv.weight", c("context_module.main.qkv") + ".weight", f"qkv:{block.attn.heads}"),
                (f"{ours}.attn.proj.weight", c("context_module.main.proj") + ".weight", "same"),
                (f"{ours}.local.inverted.weight", c("local_module.main.inverted_conv") + ".weight", "same"),
                (f"{ours}.local.inverted.bias", c("local_module.main.inverted_conv") + ".bias", "same"),
                (f"{ours}.local.depthwise.weight", c("local_module.main.depth_conv") + ".weight", "same"),
                (f"{ours}.local.depthwise.bias", c("local_module.main.depth_conv") + ".bias", "same"),
                (f"{ours}.local.point.weight", c("local_module.main.point_conv") + ".weight", "same")]
    raise ReleaseFormatError(f"no released counterpart of a {type(block).__name__} in the decoder")


def _decoder_map(decoder: ConvDecoder) -> list[tuple[str, str, str]]:
    if decoder.structure != "release":
        raise ReleaseFormatError("this decoder has the Table 8 structure; a released checkpoint needs "
                                 "structure='release' (AutoencoderConfig(structure='release'))")
    pin = "project_in.main.conv" if decoder.project_in_shortcut is not None else "project_in.conv"
    rows = [("project_in.weight", f"{pin}.weight", "same"), ("project_in.bias", f"{pin}.bias", "same")]
    for i, stage in enumerate(decoder.stages):
        for j, block in enumerate(stage):
            rows += _block_map(block, f"stages.{i}.{j}", f"stages.{i}.op_list.{j}")
    return rows + [("out_norm.weight", "project_out.op_list.0.weight", "norm"),
                   ("out_conv.weight", "project_out.op_list.2.conv.weight", "same"),
                   ("out_conv.bias", "project_out.op_list.2.conv.bias", "same")]


def _qkv(v: Tensor, heads: int, to_ours: bool) -> Tensor:
    """Rows per head [q k v] (efficientvit) ⇄ [q of all heads | k | v] (ours)."""
    d = v.shape[0] // (3 * heads)
    src = (heads, 3, d) if to_ours else (3, heads, d)
    return v.reshape(*src, *v.shape[1:]).transpose(0, 1).reshape(v.shape).contiguous()


def _convert(v: Tensor, kind: str, to_ours: bool) -> Tensor:
    if kind == "norm":
        return v.reshape(-1).clone() if to_ours else v.reshape(1, -1, 1, 1).clone()
    if kind.startswith("qkv:"):
        return _qkv(v, int(kind[4:]), to_ours)
    return v.clone()


def _apply(rows: list[tuple[str, str, str]], state: dict[str, Tensor], to_ours: bool, what: str
           ) -> dict[str, Tensor]:
    src = 1 if to_ours else 0
    missing = [r[src] for r in rows if r[src] not in state]
    expected = {r[src] for r in rows}
    extra = [k for k in state if k not in expected]
    if missing or extra:
        raise ReleaseFormatError(f"{what} does not match: missing {missing[:4]}, unexpected {extra[:4]} "
                                 "(other widths/depths/blocks, or the Table 8 structure)")
    return {r[1 - src]: _convert(state[r[src]], r[2], to_ours) for r in rows}


def release_decoder_to_ours(state: dict[str, Tensor], decoder: ConvDecoder) -> dict[str, Tensor]:
    """The release's ``DCAE_Decoder.state_dict()`` → ``decoder.load_state_dict`` (``structure="release"``)."""
    return _apply(_decoder_map(decoder), state, True, "the released decoder state")


def ours_decoder_to_release(state: dict[str, Tensor], decoder: ConvDecoder) -> dict[str, Tensor]:
    """Our ``decoder.state_dict()`` → the release's ``DCAE_Decoder`` layout (inverse, exact)."""
    return _apply(_decoder_map(decoder), state, False, "the decoder state")


def _stem_map(state_keys: list[str], to_ours: bool) -> list[tuple[str, str, str]]:
    pat = ("layers.", ".0.weight") if to_ours else ("cnn.", ".conv.weight")
    n = sum(k.startswith(pat[0]) and k.endswith(pat[1]) for k in state_keys)
    rows = []
    for i in range(n):
        rows.append((f"layers.{i}.0.weight", f"cnn.{i}.conv.weight", "same"))
        if i < n - 1:
            rows.append((f"layers.{i}.1.weight", f"cnn.{i}.norm.weight", "norm"))
    return rows


def release_stem_to_ours(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The release's ``CnnPatchEmbed.state_dict()`` (``cnn.*``) → our conv stem without biases."""
    if any(k.endswith(".bias") for k in state):
        raise ReleaseFormatError("the released stem has no convolution biases; this state has some")
    return _apply(_stem_map(list(state), False), state, True, "the released stem state")


def ours_stem_to_release(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our conv stem's state (``structure="release"``: no biases) → ``CnnPatchEmbed`` layout."""
    if any(k.endswith(".bias") for k in state):
        raise ReleaseFormatError("this stem has convolution biases, the released one has none: build it with "
                                 "structure='release'")
    return _apply(_stem_map(list(state), True), state, False, "the stem state")


# ------------------------------------------------------------------------------------------ trunk
def _trunk_to_meta(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """timm's DINOv3 (Eva) keys → Meta's (the inverse of timm's ``checkpoint_filter_fn`` for DINOv3)."""
    out: dict[str, Tensor] = {}
    for k, v in state.items():
        if k.startswith("patch_embed.") or "rope" in k:
            continue                                    # replaced by the stem / recomputed tables
        if k.endswith("attn.q_bias") or k.endswith("attn.v_bias"):
            continue                                    # folded into qkv.bias below
        k = k.replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma").replace("reg_token", "storage_tokens")
        out[k] = v.clone()
        if k.endswith("attn.qkv.weight"):
            pre = k[: -len("qkv.weight")]
            q = state.get(pre + "q_bias")
            dim = v.shape[1]
            if q is None:
                out[pre + "qkv.bias"] = torch.zeros(3 * dim, dtype=v.dtype)
            else:
                out[pre + "qkv.bias"] = torch.cat([q, torch.zeros_like(q), state[pre + "v_bias"]])
    return out


# ------------------------------------------------------------------------------------------ whole model
def release_to_ours(state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """A released ``DINOSphericalAutoencoder.state_dict()`` → a state dict for ``model`` (our autoencoder
    built with ``structure="release"``), without the teacher's patchify and ``encoder_ready``.

    Raises:
        ReleaseFormatError: one line, e.g. when ``model`` has the Table 8 structure.
    """
    if getattr(model.config, "structure", "table8") != "release":
        raise ReleaseFormatError("this autoencoder has the Table 8 structure; a released DINO-SAE checkpoint "
                                 "loads only with AutoencoderConfig(structure='release')")
    sd = {k.removeprefix("module."): v for k, v in state.items()}
    stem = {k[len("dino_model.patch_embed."):]: v for k, v in sd.items() if k.startswith("dino_model.patch_embed.")}
    trunk = {k[len("dino_model."):]: v for k, v in sd.items()
             if k.startswith("dino_model.") and not k.startswith("dino_model.patch_embed.")}
    dec = {k[len("decoder."):]: v for k, v in sd.items() if k.startswith("decoder.")}
    if not stem or not trunk or not dec:
        raise ReleaseFormatError("not a released DINO-SAE state dict: expected dino_model.patch_embed.cnn.*, "
                                 "dino_model.* and decoder.* entries")
    out = {"stem." + k: v for k, v in release_stem_to_ours(stem).items()}
    out |= {"decoder." + k: v for k, v in release_decoder_to_ours(dec, model.decoder).items()}
    out |= {"backbone.vit." + k: v.clone() for k, v in convert_checkpoint(trunk, model.backbone.vit).items()}
    return out


def ours_to_release(model: nn.Module) -> dict[str, Tensor]:
    """Our autoencoder (``structure="release"``) → the release's ``DINOSphericalAutoencoder`` layout."""
    if getattr(model.config, "structure", "table8") != "release":
        raise ReleaseFormatError("this autoencoder has the Table 8 structure (stem biases, block norms); only "
                                 "AutoencoderConfig(structure='release') has a released layout")
    sd = model.state_dict()
    part = lambda p: {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}  # noqa: E731
    out = {"dino_model.patch_embed." + k: v for k, v in ours_stem_to_release(part("stem.")).items()}
    out |= {"dino_model." + k: v for k, v in _trunk_to_meta(part("backbone.vit.")).items()}
    out |= {"decoder." + k: v for k, v in ours_decoder_to_release(part("decoder."), model.decoder).items()}
    return out


def load_release_state(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Load a released DINO-SAE state dict into ``model`` (``structure="release"``): every stem, trunk and
    decoder tensor must be covered; the teacher's patchify keeps its value; the encoder counts as ready."""
    sd = release_to_ours(state, model)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not (k.startswith("backbone.vit.patch_embed.") or "rope" in k
                                          or k == "encoder_ready")]
    if missing or unexpected:
        raise ReleaseFormatError(f"released state does not cover the model: missing {missing[:4]}, "
                                 f"unexpected {unexpected[:4]}")
    model.encoder_ready.fill_(True)
    model._ready = True
