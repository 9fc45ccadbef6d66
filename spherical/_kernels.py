"""Shared kernels of the sphere formulas: dot products, the (w, c, n, θ) frame and the antipodal fallback.

Every function here works on ``[..., C]`` tensors and reduces over the last axis to ``[..., 1]``. The
derivations (why ``w = y − σx`` and ``n = √(‖w‖² − ⟨w, x⟩²/R²)`` are exact in float32) are in the
docstring of :mod:`spherical.hypersphere`.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor

from ._series import safe_sqrt

Radius = Union[float, Tensor]


# ----------------------------------------------------------------------------------------------------
# Small building blocks (all reductions keep the last axis: [..., C] -> [..., 1]).
# ----------------------------------------------------------------------------------------------------
def eager_mode() -> bool:
    """True in plain eager execution: not traced by ``torch.compile`` and not inside a ``torch.func``
    transform (vmap, grad, jacrev, jacfwd, jvp, ...).

    Only then do the kernels write in place on fresh tensors (it saves one 64 MiB-class allocation per
    op on CPU) and run data-dependent checks; under compile or transforms everything is out of place
    and branch-free, so vmap uses its batching rules and dynamo traces one graph.
    """
    if torch.compiler.is_compiling():
        return False
    return torch._C._functorch.peek_interpreter_stack() is None


def matmul_exact(dtype: torch.dtype) -> bool:
    """True when a matmul in ``dtype`` is computed in that precision under the current global settings.

    Float32 matmuls lose precision when TF32 is allowed (``torch.backends.cuda.matmul.allow_tf32``,
    ``torch.set_float32_matmul_precision("high")``) or bf16 passes are (``"medium"``, which also sets
    oneDNN's ``torch.backends.mkldnn.matmul.fp32_precision = "bf16"`` for CPUs with bf16 units): a 10-bit or
    7-bit mantissa, far outside the sphere ops' float32 contract. The kernels then take the elementwise
    product and sum instead (float32 whatever the settings; one ``[..., C]`` temporary). Other dtypes are
    never affected. Reads the per-backend ``fp32_precision`` flags (``"none"`` = the global
    ``torch.backends.fp32_precision``) where torch has them, else the legacy flags; ~1 µs.
    """
    if dtype != torch.float32:
        return True
    if _GET_PRECISION is None:  # torch without the per-backend API
        return torch.get_float32_matmul_precision() == "highest" and not torch.backends.cuda.matmul.allow_tf32
    generic = _GET_PRECISION("generic", "all")
    flags = (_GET_PRECISION("cuda", "matmul"), _GET_PRECISION("mkldnn", "matmul"))
    return all((f if f != "none" else generic) in ("none", "ieee") for f in flags)


# the C getter behind torch.backends.{cuda,mkldnn}.matmul.fp32_precision (2 µs for all three flags, 10x
# faster than the Python properties); None on torch versions without it
_GET_PRECISION = getattr(torch._C, "_get_fp32_precision_getter", None)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """⟨a, b⟩ over the last axis, ``[..., C] × [..., C] -> [..., 1]``.

    Eager: a batched matmul (no ``[..., C]`` temporary) when :func:`matmul_exact` holds. Compiled, under
    torch.func, or with TF32/bf16 matmuls allowed: ``(a·b).sum``, which inductor fuses with the
    neighbouring elementwise work (a matmul would stay an extern call) and which stays float32-exact.
    """
    if eager_mode() and matmul_exact(torch.promote_types(a.dtype, b.dtype)):
        return (a.unsqueeze(-2) @ b.unsqueeze(-1)).squeeze(-1)
    return (a * b).sum(-1, keepdim=True)


def _norm(a: Tensor) -> Tensor:
    """‖a‖ over the last axis, ``[..., C] -> [..., 1]``; its gradient at ``a = 0`` is 0.

    Under eager autograd the rows with ``a = 0`` go through a constant branch: the double backward of
    ``vector_norm`` is 0/0 = NaN there (torch.func's rule gives 0), which made the second derivative of
    ``logmap(x, y)`` at ``y = x`` NaN. Costs a second pass only when a gradient is being recorded.
    """
    if eager_mode() and torch.is_grad_enabled() and a.requires_grad:
        with torch.no_grad():
            nz = torch.linalg.vector_norm(a, dim=-1, keepdim=True) > 0
        n = torch.linalg.vector_norm(torch.where(nz, a, torch.ones_like(a)), dim=-1, keepdim=True)
        return torch.where(nz, n, torch.zeros_like(n))
    return torch.linalg.vector_norm(a, dim=-1, keepdim=True)


def _addcmul_fresh(out: Tensor, x: Tensor, k: Tensor) -> Tensor:
    """``out + k·x`` where ``out`` is a fresh tensor: updated in place in eager mode when shapes allow."""
    if eager_mode() and torch.broadcast_shapes(out.shape, x.shape, k.shape) == out.shape:
        return out.addcmul_(x, k)  # in place on a fresh tensor: safe under autograd
    return torch.addcmul(out, x, k)


def _combine(w: Tensor, a: Tensor, x: Tensor, k: Tensor) -> Tensor:
    """``a·w + k·x`` (``a``, ``k``: ``[..., 1]``); one fresh allocation in eager mode."""
    return _addcmul_fresh(w * a, x, k)


def _add_first_two(out: Tensor, g0: Tensor, g1: Tensor) -> Tensor:
    """``out[..., 0] + g0`` and ``out[..., 1] + g1`` (``g0``, ``g1``: ``[..., 1]``), other columns kept.

    Eager mode updates the two columns of the fresh ``out`` in place; otherwise a functional
    ``slice_scatter`` (one copy, fused away by inductor) keeps torch.func's batching rules usable.
    """
    delta = torch.cat([g0, g1], dim=-1)
    shape = torch.broadcast_shapes(out.shape[:-1], delta.shape[:-1]) + out.shape[-1:]
    if not eager_mode():
        out = out.expand(shape)
        return torch.slice_scatter(out, out[..., :2] + delta, dim=-1, start=0, end=2)
    if shape != out.shape:
        out = out.expand(shape).clone()
    out[..., :2] += delta
    return out


class _Frame(NamedTuple):
    """Quantities shared by logmap, dist, geodesic and transp (all but ``w`` are ``[..., 1]``).

    ``w = y − σx``; ``c = ⟨w, x⟩/R²`` so that ``y_⊥ = w − c·x``; ``n = ‖y_⊥‖ = ‖y‖ sin θ``;
    ``n_safe`` is ``n`` with 0 replaced by 1; ``cos_part = ⟨x, y⟩/R = ‖y‖ cos θ``; ``ynorm = ‖y‖``
    (never 0: replaced by 1); ``theta`` ∈ [0, π]; ``antipodal`` marks ``y_⊥ = 0`` with ``⟨x, y⟩ < 0``.
    """

    w: Tensor
    c: Tensor
    n: Tensor
    n_safe: Tensor
    cos_part: Tensor
    ynorm: Tensor
    theta: Tensor
    antipodal: Tensor


class _Angle(NamedTuple):
    """The angle part of the frame: ``w``, ``c``, ``n``, ``cos_part``, ``theta`` (see :class:`_Frame`)."""

    w: Tensor
    c: Tensor
    n: Tensor
    cos_part: Tensor
    theta: Tensor


def _angle(x: Tensor, y: Tensor, r: Radius) -> _Angle:
    """θ = atan2(‖y_⊥‖, ⟨x, y⟩/R) with ``y_⊥`` formed from the exact difference ``w = y − σx``."""
    xy = _dot(x, y)
    w = torch.addcmul(y, x, _neg_sign(xy))  # y − σx, exact cancellation near θ = 0 (σ = 1) and θ = π (σ = −1)
    return _Angle(w, *_angle_tail(xy, _dot(w, x), _norm(w), r))


def _neg_sign(xy: Tensor) -> Tensor:
    """``−σ`` with ``σ = +1`` where ``⟨x, y⟩ ≥ 0`` and ``−1`` otherwise (``[..., 1]``)."""
    return torch.where(xy >= 0, -1.0, 1.0).to(xy.dtype)


def _angle_tail(xy: Tensor, wx: Tensor, wnorm: Tensor, r: Radius) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(c, n, cos_part, θ)`` from the three reductions ``⟨x, y⟩``, ``⟨w, x⟩``, ``‖w‖`` (all ``[..., 1]``)."""
    c = wx / (r * r)
    n = safe_sqrt(wnorm.square() - wx * c)
    cos_part = xy / r
    degenerate = (n == 0) & (cos_part == 0)  # only for y = 0, which is not on the sphere
    theta = torch.atan2(n, torch.where(degenerate, torch.ones_like(cos_part), cos_part))
    return c, n, cos_part, theta


def _frame(x: Tensor, y: Tensor, r: Radius) -> _Frame:
    w, c, n, cos_part, theta = _angle(x, y, r)
    ynorm = torch.hypot(n, cos_part)
    ynorm = torch.where(ynorm > 0, ynorm, torch.ones_like(ynorm))
    zero = n == 0
    n_safe = torch.where(zero, torch.ones_like(n), n)
    return _Frame(w, c, n, n_safe, cos_part, ynorm, theta, zero & (cos_part < 0))


BLOCK_ELEMS = 1 << 19  # 2 MiB of float32 per work buffer: stays in cache, amortises per-op overhead


def blocked_theta(x: Tensor, y: Tensor, r: Radius, block_elems: Optional[int] = None) -> Tensor:
    """θ of :func:`_angle` for same-shape ``x, y: [..., C]``, computed over blocks of rows: ``[..., 1]``.

    The same formula as :func:`_angle` (the three reductions ⟨x, y⟩, ⟨w, x⟩, ‖w‖ of the exact
    difference ``w = y − σx``, then :func:`_angle_tail`), but ``w`` and the products go through two
    block-sized work buffers that are reused, so no batch-sized temporary is ever written. On CPU a
    fresh 64 MiB temporary costs more (page faults) than reading the inputs; this makes ``dist`` read
    ``x`` and ``y`` from memory about once each. Eager only (a Python loop over blocks): callers take
    it when :func:`eager_mode` holds and no gradient is needed.

    Block size (``block_elems=None``): :data:`BLOCK_ELEMS` elements with one intra-op thread; four
    times that with more, because every op on a block is a parallel region whose barrier stalls when
    the cores are oversubscribed (measured: 32 blocks took up to 3 s on a 2-core box at load 12,
    8 blocks up to 0.9 s, geoopt's unblocked two-pass dist 0.1–0.3 s).
    """
    if block_elems is None:
        block_elems = BLOCK_ELEMS if torch.get_num_threads() == 1 else 4 * BLOCK_ELEMS
    C = x.shape[-1]
    xf, yf = x.reshape(-1, C), y.reshape(-1, C)
    M = xf.shape[0]
    rows = max(1, block_elems // C)
    stats = torch.empty(3, M, 1, dtype=x.dtype, device=x.device)  # ⟨x, y⟩, ⟨w, x⟩, ‖w‖ per row
    wbuf = torch.empty(min(rows, M), C, dtype=x.dtype, device=x.device)
    pbuf = torch.empty_like(wbuf)
    for i in range(0, M, rows):
        xb, yb = xf[i:i + rows], yf[i:i + rows]
        w, p = wbuf[:xb.shape[0]], pbuf[:xb.shape[0]]
        xy, wx, wn = stats[0, i:i + rows], stats[1, i:i + rows], stats[2, i:i + rows]
        torch.sum(torch.mul(xb, yb, out=p), dim=-1, keepdim=True, out=xy)
        torch.addcmul(yb, xb, _neg_sign(xy), out=w)
        torch.sum(torch.mul(w, xb, out=p), dim=-1, keepdim=True, out=wx)
        torch.linalg.vector_norm(w, dim=-1, keepdim=True, out=wn)
    rf = r if isinstance(r, float) else r.expand(x.shape[:-1] + (1,)).reshape(-1, 1)
    theta = _angle_tail(stats[0], stats[1], stats[2], rf)[3]
    return theta.reshape(x.shape[:-1] + (1,))


def split_theta(x: Tensor, y: Tensor, r: Radius, block_elems: Optional[int] = None) -> Tensor:
    """θ of :func:`_angle` for same-shape ``x, y: [..., C]`` (``[..., 1]``), in about two reads of the data.

    Two fused reductions without temporaries (batched matrix products; elementwise when
    :func:`matmul_exact` fails): ``p = ⟨x, y⟩/R`` and ``q = ‖y‖²``.
    Where the angle is well conditioned, ``|p| ≤ ½·√q`` (θ ∈ [π/3, 2π/3] for y on the sphere), the
    tangent part ``n = √(q − p²)`` loses at most a factor 4/3 to cancellation, so ``θ = atan2(n, p)`` is
    accurate to a few float32 ulps: the same quantity as :func:`_angle` (which also takes ‖x‖ = R).
    Every other row (near 0 or π, or non-finite) is recomputed with the exact difference ``y − σx`` by
    :func:`blocked_theta`. Random points in high dimension all lie near π/2, so ``dist`` of such batches
    costs two reductions; a batch of near-identical points costs the reductions plus the exact pass.
    Eager only (reads a mask into Python).
    """
    C = x.shape[-1]
    xf, yf = x.reshape(-1, 1, C), y.reshape(-1, C, 1)
    if matmul_exact(x.dtype):
        p = torch.bmm(xf, yf).view(-1, 1)
        q = torch.bmm(yf.transpose(1, 2), yf).view(-1, 1)
    else:  # TF32 / bf16 matmuls allowed globally: elementwise products keep float32
        p = _dot(xf.view(-1, C), yf.view(-1, C))
        q = _dot(yf.view(-1, C), yf.view(-1, C))
    rf = r if isinstance(r, float) else r.expand(x.shape[:-1] + (1,)).reshape(-1, 1)
    p = p / rf
    theta = torch.atan2(safe_sqrt(q - p * p), p)
    ill = ~(p.abs() <= 0.5 * torch.sqrt(q))  # near 0 or π, or NaN / Inf anywhere in the row
    n_ill = int(ill.sum())
    if n_ill == ill.numel():  # every row: the exact pass on the original views (no gathered copies)
        return blocked_theta(xf.view(-1, C), yf.view(-1, C), rf, block_elems).view(x.shape[:-1] + (1,))
    if n_ill:
        rows = ill.view(-1).nonzero().squeeze(1)
        r_ill = rf if isinstance(rf, float) else rf[rows]
        theta[rows] = blocked_theta(xf[rows, 0], yf[rows, :, 0], r_ill, block_elems)
    return theta.view(x.shape[:-1] + (1,))


class _Fallback(NamedTuple):
    """The antipodal direction f̂ = (e_j − (x_j/R²) x)/s, stored as its pieces (``[..., 1]`` each)."""

    first: Tensor  # j == 0 (as x.dtype 1.0/0.0)
    xj: Tensor
    s: Tensor


def _fallback(x: Tensor, r2: Radius) -> _Fallback:
    x0, x1 = x[..., 0:1], x[..., 1:2]
    first = x0 * x0 <= 0.5 * r2
    xj = torch.where(first, x0, x1)
    s = torch.sqrt(torch.clamp(1.0 - xj * xj / r2, min=0.5))  # ≥ √½ by the choice of j
    return _Fallback(first.to(x.dtype), xj, s)


def _fold_fallback(x_coef: Tensor, g: Tensor, fb: _Fallback, r2: Radius) -> Tuple[Tensor, Tensor]:
    """Splits ``g·f̂ = (g/s)·e_j − (g·x_j/(R² s))·x``: returns the new x-coefficient and ``g/s``."""
    return x_coef - g * fb.xj / (r2 * fb.s), g / fb.s
