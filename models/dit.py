"""LightningDiT: a class-conditional diffusion transformer over a square grid of latent tokens.

The backbone the paper trains Riemannian flow matching with (LightningDiT-XL/1, 677 M parameters):
adaLN-Zero conditioning, RMSNorm, SwiGLU feed-forward, a fixed 2-D sin-cos absolute position embedding
added to the input tokens *and* a 2-D rotary position embedding (RoPE) in attention, both over the
√N×√N token grid, optional QK-norm, patch size 1 (one latent token = one transformer token).
Optionally a wide DDT head (DiT^DH: two blocks of width 2048 after the trunk, conditioned per token on
the trunk output).

Shapes: ``x [B, N, C]`` latent tokens (N a perfect square), ``t [B]`` flow time in [0, 1],
``y [B]`` integer class labels in ``[0, num_classes]`` where ``num_classes`` is the null class used for
classifier-free guidance. The output ``[B, N, C]`` is an *ambient* vector; the tangent projection onto
the product of spheres is the job of ``spherical`` (``rfm_loss`` / ``integrate``), not of the model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from models.dit_positions import apply_rope as _apply_rope
from models.dit_positions import rope_2d, sincos_pos_embed_2d

__all__ = [
    "DiTConfig", "LightningDiT", "LightningDiT_models", "cfg_combine", "config_from_dict", "count_parameters",
    "sincos_pos_embed_2d",
    "LightningDiT_S_1", "LightningDiT_B_1", "LightningDiT_L_1", "LightningDiT_XL_1",
]


@dataclass(frozen=True)
class DiTConfig:
    """Hyper-parameters of :class:`LightningDiT`.

    Attributes:
        in_channels: C, channels per latent token (input and output).
        num_tokens: N, tokens per sample; must be a perfect square (the √N×√N grid RoPE runs over).
        hidden_size: transformer width D.
        depth: number of trunk blocks.
        num_heads: attention heads (``hidden_size // num_heads`` must be divisible by 4 for 2-D RoPE).
        mlp_ratio: SwiGLU hidden width is ``int(2/3 · mlp_ratio · D)`` (parameter-matched to a GELU MLP).
        num_classes: number of real classes; index ``num_classes`` is the null (unconditional) class.
        class_dropout_prob: probability a label is replaced by the null class in training.
        qk_norm: RMS-normalise queries and keys per head before attention (off by default, as in
            LightningDiT's configs; the paper does not state it).
        use_rope: 2-D rotary embedding on the token grid; if False the model has no positional
            information at all and is equivariant to token permutations.
        rope_base: RoPE frequency base.
        abs_pos_embed: add LightningDiT's fixed 2-D sin-cos absolute position embedding
            (:func:`sincos_pos_embed_2d`, a non-trainable buffer) to the embedded tokens, as LightningDiT
            does on top of RoPE. Checkpoints written before this field existed had none: read their
            config with :func:`config_from_dict`, which fills in False.
        time_scale, time_offset: the sinusoidal embedding reads ``time_scale · t + time_offset``
            (ours: 1000·t; a converted LightningDiT checkpoint: 1 − t, LightningDiT's own time, where
            t = 1 is data; see :mod:`models.convert`).
        ddt_head: append the wide DDT head (DiT^DH) after the trunk.
        ddt_hidden, ddt_depth, ddt_heads: width, blocks and heads of that head.
    """

    in_channels: int = 1024
    num_tokens: int = 256
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    class_dropout_prob: float = 0.1
    qk_norm: bool = False
    use_rope: bool = True
    rope_base: float = 10000.0
    abs_pos_embed: bool = True
    time_scale: float = 1000.0
    time_offset: float = 0.0
    ddt_head: bool = False
    ddt_hidden: int = 2048
    ddt_depth: int = 2
    ddt_heads: int = 16


# Values of fields that checkpoints written before the field existed were trained with.
LEGACY_CONFIG_DEFAULTS: dict[str, object] = {"abs_pos_embed": False}


def config_from_dict(d: dict) -> DiTConfig:
    """The :class:`DiTConfig` of a saved ``asdict(config)``; a field the dict predates takes its
    :data:`LEGACY_CONFIG_DEFAULTS` value (what that checkpoint was trained with), else the default."""
    return DiTConfig(**{**LEGACY_CONFIG_DEFAULTS, **d})


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN modulation ``x·(1 + scale) + shift``; x ``[B, N, D]``, shift/scale ``[B, 1 or N, D]``."""
    return x * (1 + scale) + shift


class RMSNorm(nn.Module):
    """RMSNorm over the last axis: ``x / sqrt(mean(x²) + eps) · w``; computed in float32 (float64 inputs
    in float64)."""

    def __init__(self, dim: int, eps: float = 1e-6, affine: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: Tensor) -> Tensor:
        y = x if x.dtype == torch.float64 else x.float()
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
        y = y.to(x.dtype)
        return y * self.weight if self.weight is not None else y


class SwiGLU(nn.Module):
    """SwiGLU feed-forward: ``W3 (silu(W1 x) ⊙ W2 x)``, ``[..., D] -> [..., D]``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


class Attention(nn.Module):
    """Multi-head self-attention with optional QK-norm and 2-D RoPE; ``[B, N, D] -> [B, N, D]``."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} not divisible by {num_heads} heads")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.q_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None) -> Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)                                 # each [B, H, N, hd]
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = _apply_rope(q, *rope), _apply_rope(k, *rope)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


def _adaln(modulation: nn.Module, c: Tensor, k: int) -> tuple[Tensor, ...]:
    """The ``k`` modulation vectors of condition ``c`` ``[B, D]`` (broadcast over tokens) or ``[B, N, D]``."""
    mod = modulation(c)
    return (mod.unsqueeze(1) if mod.dim() == 2 else mod).chunk(k, dim=-1)


class DiTBlock(nn.Module):
    """Pre-norm transformer block with adaLN-Zero: six modulation vectors from the condition.

    ``x [B, N, D]``, condition ``c [B, D]`` (global) or ``[B, N, D]`` (per token, used by the DDT head).
    The modulation layer is zero-initialised, so each block starts as the identity.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qk_norm: bool) -> None:
        super().__init__()
        self.norm1 = RMSNorm(dim)
        self.attn = Attention(dim, num_heads, qk_norm)
        self.norm2 = RMSNorm(dim)
        self.mlp = SwiGLU(dim, int(2 / 3 * mlp_ratio * dim))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: Tensor, c: Tensor, rope: tuple[Tensor, Tensor] | None) -> Tensor:
        sh_a, sc_a, g_a, sh_m, sc_m, g_m = _adaln(self.adaLN_modulation, c, 6)
        x = x + g_a * self.attn(_modulate(self.norm1(x), sh_a, sc_a), rope)
        return x + g_m * self.mlp(_modulate(self.norm2(x), sh_m, sc_m))


class FinalLayer(nn.Module):
    """adaLN-modulated RMSNorm + linear to C channels (both zero-initialised): ``[B,N,D] -> [B,N,C]``."""

    def __init__(self, dim: int, out_channels: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim)
        self.linear = nn.Linear(dim, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = _adaln(self.adaLN_modulation, c, 2)
        return self.linear(_modulate(self.norm(x), shift, scale))


class TimestepEmbedder(nn.Module):
    """Sinusoidal embedding of ``time_scale · t + time_offset`` (float32, DiT's frequencies) followed by
    a 2-layer SiLU MLP: ``[B] -> [B, D]``."""

    def __init__(self, dim: int, freq_dim: int = 256, time_scale: float = 1000.0,
                 time_offset: float = 0.0) -> None:
        super().__init__()
        self.freq_dim, self.time_scale, self.time_offset = freq_dim, time_scale, time_offset
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        s = self.time_scale * t.float()
        s = s + self.time_offset if self.time_offset else s
        args = s.unsqueeze(-1) * freqs
        emb = torch.cat([args.cos(), args.sin()], dim=-1)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class embedding with a null class (index ``num_classes``) and label dropout: ``[B] -> [B, D]``."""

    def __init__(self, num_classes: int, dim: int, dropout_prob: float) -> None:
        super().__init__()
        self.num_classes, self.dropout_prob = num_classes, dropout_prob
        self.embedding_table = nn.Embedding(num_classes + 1, dim)

    def drop(self, y: Tensor, force_drop: Tensor | None = None,
             generator: torch.Generator | None = None) -> Tensor:
        """Replace labels by the null class: where ``force_drop`` is True, or else with prob. p."""
        if force_drop is None:
            u = torch.rand(y.shape, generator=generator, device=y.device)
            force_drop = u < self.dropout_prob
        return torch.where(force_drop.bool(), torch.full_like(y, self.num_classes), y)

    def forward(self, y: Tensor, train: bool, force_drop: Tensor | None = None) -> Tensor:
        if (train and self.dropout_prob > 0) or force_drop is not None:
            y = self.drop(y, force_drop)
        return self.embedding_table(y)


class DDTHead(nn.Module):
    """Wide decoder head of DiT^DH: ``ddt_depth`` blocks of width ``ddt_hidden``.

    Its tokens start from the noisy input ``x_t`` and every block is modulated *per token* by the trunk
    output plus the global (time + class) condition: ``x [B,N,C], s [B,N,D], c [B,D] -> [B,N,C]``.
    """

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        w = cfg.ddt_hidden
        self.x_in = nn.Linear(cfg.in_channels, w)
        self.s_proj = nn.Linear(cfg.hidden_size, w)
        self.c_proj = nn.Linear(cfg.hidden_size, w)
        self.blocks = nn.ModuleList(
            DiTBlock(w, cfg.ddt_heads, cfg.mlp_ratio, cfg.qk_norm) for _ in range(cfg.ddt_depth))
        self.final = FinalLayer(w, cfg.in_channels)
        self.grad_checkpointing = False

    def forward(self, x: Tensor, s: Tensor, c: Tensor, rope: tuple[Tensor, Tensor] | None) -> Tensor:
        h = self.x_in(x)
        cond = self.s_proj(s) + self.c_proj(c).unsqueeze(1)    # [B, N, w]
        for block in self.blocks:
            h = _run_block(block, h, cond, rope, self.grad_checkpointing)
        return self.final(h, cond)


class LightningDiT(nn.Module):
    """LightningDiT with patch size 1 over N latent tokens: ``(x [B,N,C], t [B], y [B]) -> [B,N,C]``."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = cfg = config
        self.x_embedder = nn.Linear(cfg.in_channels, cfg.hidden_size)
        # fixed, not trained, not saved (rebuilt from the config): [1, N, D] or absent
        self.pos_embed: Tensor | None
        self.register_buffer("pos_embed", sincos_pos_embed_2d(cfg.num_tokens, cfg.hidden_size)[None]
                             if cfg.abs_pos_embed else None, persistent=False)
        self.t_embedder = TimestepEmbedder(cfg.hidden_size, time_scale=cfg.time_scale,
                                           time_offset=cfg.time_offset)
        self.y_embedder = LabelEmbedder(cfg.num_classes, cfg.hidden_size, cfg.class_dropout_prob)
        self.blocks = nn.ModuleList(
            DiTBlock(cfg.hidden_size, cfg.num_heads, cfg.mlp_ratio, cfg.qk_norm)
            for _ in range(cfg.depth))
        # the output layer: the trunk's own, or the DDT head's (no unused parameters: DDP needs all used)
        self.final_layer = None if cfg.ddt_head else FinalLayer(cfg.hidden_size, cfg.in_channels)
        self.head = DDTHead(cfg) if cfg.ddt_head else None
        self._rope_cache: dict[tuple, tuple[Tensor, Tensor]] = {}
        self.grad_checkpointing = False  # see set_grad_checkpointing (not part of the config)
        self.initialize_weights()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing per block (trunk and DDT head, as LightningDiT's ``use_checkpoint``):
        only each block's input is kept for backward and the block is recomputed there (non-reentrant
        ``torch.utils.checkpoint``: same values and gradients, ~1/3 more compute, activation memory of one
        block instead of ``depth``). Applies only while gradients are enabled."""
        self.grad_checkpointing = bool(enable)
        if self.head is not None:
            self.head.grad_checkpointing = bool(enable)

    @property
    def null_class(self) -> int:
        """Label index of the unconditional (null) class."""
        return self.config.num_classes

    def initialize_weights(self) -> None:
        """Xavier linears, N(0, 0.02) embeddings, and adaLN-Zero: every modulation layer and the
        output linear(s) start at zero, so the initial model outputs exactly zero."""
        def _basic(m: nn.Module) -> None:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        self.apply(_basic)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        for lin in (self.t_embedder.mlp[0], self.t_embedder.mlp[2]):
            nn.init.normal_(lin.weight, std=0.02)
        blocks = list(self.blocks) + (list(self.head.blocks) if self.head is not None else [])
        finals = [self.head.final if self.head is not None else self.final_layer]
        for m in blocks + finals:
            nn.init.zeros_(m.adaLN_modulation[-1].weight)
            nn.init.zeros_(m.adaLN_modulation[-1].bias)
        for f in finals:
            nn.init.zeros_(f.linear.weight)
            nn.init.zeros_(f.linear.bias)

    def _rope(self, n: int, head_dim: int, device: torch.device) -> tuple[Tensor, Tensor] | None:
        if not self.config.use_rope:
            return None
        key = (n, head_dim, str(device))
        if key not in self._rope_cache:
            self._rope_cache[key] = rope_2d(n, head_dim, self.config.rope_base, device)
        return self._rope_cache[key]

    def forward(self, x: Tensor, t: Tensor, y: Tensor, force_drop: Tensor | None = None) -> Tensor:
        """Velocity prediction.

        Args:
            x: ``[B, N, C]`` tokens at time t.
            t: ``[B]`` (or a scalar, broadcast) flow time in [0, 1]; t = 0 data, t = 1 noise.
            y: ``[B]`` int64 labels in ``[0, num_classes]``; ``num_classes`` is the null class.
                In training mode labels are dropped to the null class with ``class_dropout_prob``.
            force_drop: optional ``[B]`` bool; True forces the null class (overrides random dropout).

        Returns:
            ``[B, N, C]`` ambient velocity (not projected to the tangent space).
        """
        b, n, _ = x.shape
        t = t.reshape(-1).expand(b) if t.numel() == 1 else t
        c = self.t_embedder(t) + self.y_embedder(y, self.training, force_drop)   # [B, D]
        h = self.x_embedder(x)
        if self.pos_embed is not None:
            if n != self.pos_embed.shape[1]:
                raise ValueError(f"the absolute position embedding is built for N={self.pos_embed.shape[1]} "
                                 f"tokens, got N={n}")
            h = h + self.pos_embed.to(h.dtype)
        rope = self._rope(n, self.config.hidden_size // self.config.num_heads, x.device)
        for block in self.blocks:
            h = _run_block(block, h, c, rope, self.grad_checkpointing)
        if self.head is None:
            return self.final_layer(h, c)
        head_rope = self._rope(n, self.config.ddt_hidden // self.config.ddt_heads, x.device)
        return self.head(x, h, c, head_rope)

    def forward_with_cfg(self, x: Tensor, t: Tensor, y: Tensor, cfg_scale: float) -> Tensor:
        """Classifier-free guidance ``v = v_u + w·(v_c − v_u)`` in one batched pass of size 2B.

        Args:
            x: ``[B, N, C]``; t: ``[B]`` or scalar; y: ``[B]`` real labels; cfg_scale: w (1 = conditional).

        Returns:
            ``[B, N, C]`` guided ambient velocity. For w = 1 only the conditional pass is run.
        """
        if not torch.is_tensor(cfg_scale) and cfg_scale == 1.0:
            return self(x, t, y)
        b = x.shape[0]
        t = t.reshape(-1).expand(b) if t.numel() == 1 else t
        y_null = torch.full_like(y, self.null_class)
        v = self(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, y_null]))
        v_c, v_u = v.chunk(2)
        return cfg_combine(v_c, v_u, cfg_scale)


def _run_block(block: nn.Module, h: Tensor, c: Tensor, rope: tuple[Tensor, Tensor] | None, ckpt: bool) -> Tensor:
    """``block(h, c, rope)``, recomputed in backward when ``ckpt`` and gradients are on."""
    if ckpt and torch.is_grad_enabled():
        return checkpoint(block, h, c, rope, use_reentrant=False)
    return block(h, c, rope)


def cfg_combine(v_cond: Tensor, v_uncond: Tensor, scale: float | Tensor) -> Tensor:
    """Classifier-free guidance: ``v_u + w·(v_c − v_u)`` (any matching shapes).

    Computed with ``torch.lerp`` so that w = 1 returns ``v_c`` and w = 0 returns ``v_u`` exactly.
    """
    if not torch.is_tensor(scale):
        scale = torch.tensor(float(scale), dtype=v_cond.dtype, device=v_cond.device)
    return torch.lerp(v_uncond, v_cond, scale.to(v_cond.dtype))


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of (trainable) parameters; works on the meta device."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _factory(depth: int, hidden: int, heads: int) -> Callable[..., LightningDiT]:
    def build(**overrides: object) -> LightningDiT:
        cfg = replace(DiTConfig(), depth=depth, hidden_size=hidden, num_heads=heads)
        return LightningDiT(replace(cfg, **overrides))
    build.__doc__ = f"LightningDiT with depth {depth}, width {hidden}, {heads} heads; kwargs override DiTConfig."
    return build


LightningDiT_S_1 = _factory(12, 384, 6)
LightningDiT_B_1 = _factory(12, 768, 12)
LightningDiT_L_1 = _factory(24, 1024, 16)
LightningDiT_XL_1 = _factory(28, 1152, 16)

LightningDiT_models: dict[str, Callable[..., LightningDiT]] = {
    "LightningDiT-S/1": LightningDiT_S_1,
    "LightningDiT-B/1": LightningDiT_B_1,
    "LightningDiT-L/1": LightningDiT_L_1,
    "LightningDiT-XL/1": LightningDiT_XL_1,
}
