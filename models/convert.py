"""Checkpoint converters between this project's DiT and LightningDiT (hustvl/LightningDiT), both ways.

The released DINO-SAE layout (``dino_model.*``, ``decoder.*``) has its own module:
:mod:`models.convert_sae`.

LightningDiT ⇄ :class:`models.dit.LightningDiT`, patch size 1, SwiGLU + RMSNorm + RoPE (the configuration
the paper trains). The maps, each exact (a permutation, a reshape or a sign):

* ``x_embedder.proj`` (1×1 conv ``[D, C, 1, 1]``) ⇄ ``x_embedder`` (linear ``[D, C]``).
* ``attn.qkv`` rows of q and k (and ``q_norm``/``k_norm`` weights): LightningDiT's RoPE rotates adjacent
  channel pairs ``(2m, 2m+1)``, ours rotate-half pairs ``(m, m + hd/2)`` with the same angle, so
  our channel m is its channel 2m and our channel m + hd/2 its channel 2m + 1
  (:func:`rope_permutation`). Attention logits q·k are unchanged by one permutation applied to both.
* ``final_layer.norm_final`` ⇄ ``final_layer.norm``.
* Label table: LightningDiT has ``num_classes + 1`` rows when trained with label dropout (the last row is
  the null class, as ours); a table without the null row is refused.
* Time: LightningDiT embeds its t unscaled and t = 1 is data; ours embeds ``time_scale·t + time_offset``
  with t = 0 data. ``flip_time=True`` (default) gives a model in our convention computing LightningDiT's
  dynamics, ``v(x, t) = −v_LightningDiT(x, 1 − t)`` (time_scale −1, time_offset 1, output layer negated);
  ``flip_time=False`` gives the same function of the same t (time_scale 1, time_offset 0).
* Fixed tables (``pos_embed``, ``feat_rope.freqs_*``) are checked, not loaded: ours rebuilds them.

Refused with one line: patch size > 1, ``learn_sigma`` (2C outputs), GELU MLP (``use_swiglu=False``),
LayerNorm (``use_rmsnorm=False``), ``wo_shift``; in the other direction a DDT head, or a time map
LightningDiT cannot express (our default ``time_scale=1000``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from models.dit import DiTConfig, rope_2d, sincos_pos_embed_2d

__all__ = ["rope_permutation", "lightningdit_to_ours", "ours_to_lightningdit", "LightningDiTExport",
           "ConversionError"]


class ConversionError(ValueError):
    """A checkpoint that the converter cannot map exactly (the message says what and why)."""


def rope_permutation(head_dim: int) -> Tensor:
    """Index map ``perm`` with ``ours[..., j] = lightningdit[..., perm[j]]`` within one head.

    ``perm[m] = 2m`` and ``perm[m + hd/2] = 2m + 1`` for ``m < hd/2``. ``[head_dim]`` int64.
    """
    half = head_dim // 2
    m = torch.arange(half)
    return torch.cat([2 * m, 2 * m + 1])


def _permute_qk(qkv: Tensor, heads: int, perm: Tensor) -> Tensor:
    """Permute the q and k rows of a ``[3D, ...]`` qkv weight or bias head by head (v untouched)."""
    hd = perm.numel()
    out = qkv.reshape(3, heads, hd, *qkv.shape[1:]).clone()
    out[0], out[1] = out[0][:, perm], out[1][:, perm]
    return out.reshape(qkv.shape)


def _inverse(perm: Tensor) -> Tensor:
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel())
    return inv


def _infer_mlp_ratio(hidden: int, dim: int) -> float:
    """The mlp_ratio for which both models build a SwiGLU hidden width of ``hidden`` (4.0 if it fits)."""
    for r in (4.0, 1.5 * hidden / dim):
        if int(2 / 3 * r * dim) == hidden and int(2 / 3 * int(dim * r)) == hidden:
            return r
    raise ConversionError(f"SwiGLU width {hidden} for D={dim} matches no mlp_ratio that both models build")


def lightningdit_to_ours(state: dict[str, Tensor], *, num_heads: int | None = None, flip_time: bool = True,
                         class_dropout_prob: float = 0.1, num_classes: int | None = None
                         ) -> tuple[DiTConfig, dict[str, Tensor]]:
    """A LightningDiT state dict (its ``model``/``ema`` entry) → ``(DiTConfig, our state dict)``.

    Args:
        state: LightningDiT's ``state_dict()``.
        num_heads: attention heads; read from the RoPE table when the checkpoint has one.
        flip_time: our time convention (see the module docstring) or LightningDiT's t as is.
        class_dropout_prob: training-only, not in the weights; stored in the config.
        num_classes: the real classes, when known: the table must then have num_classes + 1 rows
            (LightningDiT has no null row when trained without label dropout, and that cannot be told
            from the weights alone; default: rows − 1).

    Raises:
        ConversionError: one line, for anything that cannot be mapped exactly.
    """
    sd = {k.removeprefix("module."): v for k, v in state.items()}
    if "x_embedder.proj.weight" not in sd:
        raise ConversionError("not a LightningDiT state dict: no x_embedder.proj.weight")
    w_in = sd["x_embedder.proj.weight"]
    dim, chans, p = w_in.shape[0], w_in.shape[1], w_in.shape[-1]
    if p != 1:
        raise ConversionError(f"LightningDiT patch size {p}: ours has patch size 1 (one latent token per token)")
    out_rows = sd["final_layer.linear.weight"].shape[0]
    if out_rows == 2 * chans:
        raise ConversionError("learn_sigma=True (2C outputs: velocity and sigma) is not supported; ours "
                              "predicts the velocity only")
    if "blocks.0.mlp.w12.weight" not in sd:
        raise ConversionError("use_swiglu=False (GELU MLP) is not supported; ours is SwiGLU")
    if "blocks.0.norm1.weight" not in sd:
        raise ConversionError("use_rmsnorm=False (LayerNorm) is not supported; ours is RMSNorm")
    if sd["blocks.0.adaLN_modulation.1.weight"].shape[0] != 6 * dim:
        raise ConversionError("wo_shift=True (4 modulation vectors) is not supported; ours has shift")
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    rope = "feat_rope.freqs_cos" in sd
    if rope:
        num_heads = dim // sd["feat_rope.freqs_cos"].shape[-1]
    elif num_heads is None:
        raise ConversionError("this LightningDiT has no RoPE table to read the head count from: pass num_heads")
    num_tokens = sd["pos_embed"].shape[1]
    rows = sd["y_embedder.embedding_table.weight"].shape[0]
    if num_classes is not None and rows != num_classes + 1:
        raise ConversionError(f"label table with {rows} rows for {num_classes} classes: expected {num_classes + 1} "
                              "(the last row is the null class; a LightningDiT trained without label dropout "
                              "has none, and ours needs it)")
    if rows < 2:
        raise ConversionError(f"label table with {rows} row(s): LightningDiT trained with label dropout has "
                              "num_classes + 1 rows (the last is the null class)")
    if class_dropout_prob <= 0:
        raise ConversionError("class_dropout_prob must be > 0: ours always has a null-class row")
    cfg = DiTConfig(in_channels=chans, num_tokens=num_tokens, hidden_size=dim, depth=depth, num_heads=num_heads,
                    mlp_ratio=_infer_mlp_ratio(sd["blocks.0.mlp.w3.weight"].shape[1], dim), num_classes=rows - 1,
                    class_dropout_prob=class_dropout_prob, qk_norm="blocks.0.attn.q_norm.weight" in sd,
                    use_rope=rope, abs_pos_embed=True, time_scale=-1.0 if flip_time else 1.0,
                    time_offset=1.0 if flip_time else 0.0)
    _check_tables(sd, cfg)
    perm = rope_permutation(dim // num_heads)
    out: dict[str, Tensor] = {}
    for k, v in sd.items():
        if k == "pos_embed" or k.startswith("feat_rope."):
            continue                                     # fixed tables, rebuilt by our model
        if k.startswith("x_embedder.proj."):
            k, v = k.replace("x_embedder.proj.", "x_embedder."), v.reshape(dim, chans) if v.dim() == 4 else v
        elif k.endswith("attn.qkv.weight") or k.endswith("attn.qkv.bias"):
            v = _permute_qk(v, num_heads, perm) if rope else v
        elif k.endswith("q_norm.weight") or k.endswith("k_norm.weight"):
            v = v[perm] if rope else v
        elif k.startswith("final_layer.norm_final."):
            k = k.replace("final_layer.norm_final.", "final_layer.norm.")
        if k.startswith("final_layer.linear.") and flip_time:
            v = -v
        out[k] = v.clone()
    return cfg, out


def _check_tables(sd: dict[str, Tensor], cfg: DiTConfig) -> None:
    """The checkpoint's fixed tables are the ones our model rebuilds (else its weights mean something else)."""
    pe = sincos_pos_embed_2d(cfg.num_tokens, cfg.hidden_size)
    if not torch.allclose(sd["pos_embed"].reshape(pe.shape).float(), pe, atol=1e-6, rtol=0):
        raise ConversionError("pos_embed is not the fixed 2-D sin-cos table for this grid (trained or other grid)")
    if cfg.use_rope:
        cos, _ = rope_2d(cfg.num_tokens, cfg.hidden_size // cfg.num_heads)
        perm = rope_permutation(cos.shape[-1])
        if not torch.allclose(sd["feat_rope.freqs_cos"].float()[:, perm], cos, atol=1e-5, rtol=0):
            raise ConversionError("feat_rope table differs from 2-D RoPE with base 10000 on this grid")


@dataclass(frozen=True)
class LightningDiTExport:
    """Our DiT in LightningDiT's layout.

    Attributes:
        state_dict: load with ``LightningDiT(**kwargs).load_state_dict(state_dict)`` (strict).
        kwargs: LightningDiT constructor arguments that build the matching network.
    """

    state_dict: dict[str, Tensor]
    kwargs: dict[str, object]


def ours_to_lightningdit(state: dict[str, Tensor], config: DiTConfig) -> LightningDiTExport:
    """Our DiT's ``state_dict()`` and config → LightningDiT's layout (the inverse of
    :func:`lightningdit_to_ours`; a round trip is exact).

    A model without the absolute embedding gets an all-zero ``pos_embed`` (LightningDiT always adds it).

    Raises:
        ConversionError: a DDT head, a RoPE base other than 10000, or a time map other than
            ``(time_scale, time_offset)`` = (1, 0) or (−1, 1): LightningDiT embeds its t unscaled.
    """
    cfg = config
    if cfg.ddt_head:
        raise ConversionError("LightningDiT has no DDT head: a model with ddt_head=True cannot be converted")
    if cfg.use_rope and cfg.rope_base != 10000.0:
        raise ConversionError(f"LightningDiT's RoPE base is 10000, this model's is {cfg.rope_base}")
    flips = {(1.0, 0.0): False, (-1.0, 1.0): True}
    key = (float(cfg.time_scale), float(cfg.time_offset))
    if key not in flips:
        raise ConversionError(f"time_scale={cfg.time_scale}, time_offset={cfg.time_offset}: LightningDiT embeds "
                              "its t unscaled, so only (1, 0) or LightningDiT's direction (-1, 1) convert")
    flip = flips[key]
    hd = cfg.hidden_size // cfg.num_heads
    inv = _inverse(rope_permutation(hd))
    out: dict[str, Tensor] = {}
    for k, v in state.items():
        if k == "pos_embed":
            continue
        if k.startswith("x_embedder."):
            k, v = k.replace("x_embedder.", "x_embedder.proj."), v.reshape(*v.shape, 1, 1) if v.dim() == 2 else v
        elif k.endswith("attn.qkv.weight") or k.endswith("attn.qkv.bias"):
            v = _permute_qk(v, cfg.num_heads, inv) if cfg.use_rope else v
        elif k.endswith("q_norm.weight") or k.endswith("k_norm.weight"):
            v = v[inv] if cfg.use_rope else v
        elif k.startswith("final_layer.norm."):
            k = k.replace("final_layer.norm.", "final_layer.norm_final.")
        if k.startswith("final_layer.linear.") and flip:
            v = -v
        out[k] = v.clone()
    pe = sincos_pos_embed_2d(cfg.num_tokens, cfg.hidden_size)
    out["pos_embed"] = (pe if cfg.abs_pos_embed else torch.zeros_like(pe))[None]
    if cfg.use_rope:
        cos, sin = rope_2d(cfg.num_tokens, hd, cfg.rope_base)
        out["feat_rope.freqs_cos"], out["feat_rope.freqs_sin"] = cos[:, inv], sin[:, inv]
    kwargs = dict(input_size=math.isqrt(cfg.num_tokens), patch_size=1, in_channels=cfg.in_channels,
                  hidden_size=cfg.hidden_size, depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio,
                  class_dropout_prob=cfg.class_dropout_prob, num_classes=cfg.num_classes, learn_sigma=False,
                  use_qknorm=cfg.qk_norm, use_swiglu=True, use_rope=cfg.use_rope, use_rmsnorm=True,
                  wo_shift=False)
    return LightningDiTExport(out, kwargs)
