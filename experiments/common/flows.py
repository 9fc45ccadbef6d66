"""The two flows ``in1k_dit.py`` can train and ``sample.py`` can sample (paper Table 4's ablation).

* ``riemannian`` (default, the paper's): noise uniform on S^{C−1}_R, slerp path, ``spherical.rfm_loss``,
  Riemannian Euler (exp map) sampling; lives in :mod:`spherical`.
* ``euclidean`` (flat flow matching on the *same* latents x₀ = R·z/‖z‖): noise x₁ = (R/χ_C)·ε with
  ε ~ N(0, I_C) per token (χ_C = E‖ε‖, so E‖x₁‖ = R), straight path and its constant velocity

      x_t = (1 − t)·x₀ + t·x₁,        u_t = dx_t/dt = x₁ − x₀,

  loss ``mean‖v − u_t‖²`` (squared norm over channels per token, averaged over tokens and batch: the
  reduction of ``rfm_loss``), and ambient Euler sampling x ← x + (t_{k+1} − t_k)·v(x, t_k) from t = 1 to 0
  with no projection between steps. Both flows' samples are then decoded the same way (every token
  rescaled to the decode norm).

Shapes: latents ``[B, N, C]``; times ``[B]`` (broadcast as ``[B, 1, 1]``) or 0-dim in the sampler.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from models.latent import gaussian_norm_radius
from spherical import Hypersphere, RFMLoss

__all__ = ["FLOWS", "check_flow", "flow_noise", "step_draws", "euclidean_path", "euclidean_fm_loss",
           "euclidean_euler"]

FLOWS = ("riemannian", "euclidean")


def check_flow(flow: str) -> str:
    """Returns ``flow`` or raises ``ValueError`` naming the choices."""
    if flow not in FLOWS:
        raise ValueError(f"unknown flow {flow!r}; expected one of {', '.join(FLOWS)}")
    return flow


def flow_noise(flow: str, shape: tuple[int, ...], radius: float, *, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> Tensor:
    """The t = 1 noise of a flow, float32 ``shape = (..., C)``.

    riemannian: uniform on S^{C−1}_R (``Hypersphere(R).random_uniform``); euclidean: (R/χ_C)·N(0, I_C),
    χ_C = :func:`models.latent.gaussian_norm_radius` (C), so E‖x₁‖ = R as for the spherical noise.
    """
    check_flow(flow)
    if flow == "riemannian":
        return Hypersphere(radius).random_uniform(*shape, generator=generator, device=device)
    eps = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
    return eps * (float(radius) / gaussian_norm_radius(shape[-1]))


def step_draws(flow: str, seed: int, step: int, offset: int, b: int, global_batch: int, shape: tuple[int, int],
               radius: float, *, alpha: float, loc: float, scale: float, drop_prob: float,
               device: torch.device | str = "cpu") -> tuple[Tensor, Tensor, Tensor]:
    """The random draws of one training step for the global samples ``offset .. offset + b − 1``.

    Returns ``(x1 [b, N, C] float32, t [b], drop [b] bool)`` on ``device``: noise, times and label dropout.
    Each is a pure function of ``(seed, step, global sample index)``: times and dropout are drawn for the whole
    global batch of ``global_batch`` samples on the CPU from a generator seeded by ``(seed, step)`` and sliced;
    the noise of sample i comes from a generator seeded by ``(seed, step, i)``. So the union over processes of
    a step's draws, hence the averaged gradient, does not depend on how many processes share the batch (rank
    r of W passes ``offset = r·global_batch/W``): a run resumed on another world size continues the same
    trajectory (up to float summation order).
    """
    from experiments.common.data import mix_seed
    from spherical import sample_time

    g = torch.Generator().manual_seed(mix_seed(seed, step))
    t = sample_time(global_batch, alpha=alpha, loc=loc, scale=scale, generator=g)[offset:offset + b]
    drop = (torch.rand(global_batch, generator=g) < drop_prob)[offset:offset + b]
    gi = torch.Generator(device)
    x1 = torch.cat([flow_noise(flow, (1, *shape), radius, generator=gi.manual_seed(mix_seed(seed, step, offset + i)),
                               device=device) for i in range(b)])
    return x1, t.to(device), drop.to(device)


def euclidean_path(x0: Tensor, x1: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Straight path of flat flow matching: ``x_t = (1 − t)·x₀ + t·x₁`` and ``u_t = x₁ − x₀``.

    Args:
        x0: data ``[..., C]`` (t = 0). x1: noise ``[..., C]`` (t = 1). t: broadcastable to x0 (e.g. ``[B,1,1]``).
    """
    if x0.shape != x1.shape:
        raise ValueError(f"euclidean_path: x0 and x1 must have the same shape, got {tuple(x0.shape)} "
                         f"and {tuple(x1.shape)}")
    return (1 - t) * x0 + t * x1, x1 - x0


def euclidean_fm_loss(v: Tensor, xt: Tensor, ut: Tensor) -> RFMLoss:
    r"""Flat flow-matching loss ``mean‖v − u_t‖²`` (channels summed, tokens and batch averaged), fp32.

    Returned as :class:`spherical.RFMLoss` so the training loop logs it like the Riemannian loss; here
    ``total = tangent + radial`` is the exact split of the squared error e = v − u_t at x̂ = x_t/‖x_t‖ into
    ``‖e − ⟨e, x̂⟩x̂‖²`` (tangent) and ``⟨e, x̂⟩²`` (radial), both averaged like the total. No radial penalty.
    """
    if v.shape != ut.shape or v.shape != xt.shape:
        raise ValueError(f"euclidean_fm_loss: expected v, xt and ut of one shape [..., C], got v "
                         f"{tuple(v.shape)}, xt {tuple(xt.shape)}, ut {tuple(ut.shape)}")
    dtype = torch.promote_types(v.dtype, torch.float32)
    err = v.to(dtype) - ut.to(dtype)
    total = err.square().sum(-1).mean()
    with torch.no_grad():  # the split is logged only: radial along x̂_t, tangent = total − radial (Pythagoras)
        radial = (err.detach() * Hypersphere(1.0).projx(xt.to(dtype))).sum(-1).square().mean()
    return RFMLoss(total, total.detach() - radial, radial)


def euclidean_euler(v: Callable[[Tensor, Tensor], Tensor], x1: Tensor, grid: Tensor) -> Tensor:
    """Ambient Euler from ``grid[0]`` (noise) to ``grid[-1]`` (data): x ← x + (t_{k+1} − t_k)·v(x, t_k).

    No projection anywhere (the samples' norms are whatever the field gives).

    Args:
        v: ``(x [B, N, C], t 0-dim) -> [B, N, C]``.
        x1: start points ``[B, N, C]``.
        grid: ``[K + 1]`` times, e.g. ``time_shift(linspace(1, 0, K + 1), α)``.
    """
    if grid.dim() != 1 or grid.numel() < 2:
        raise ValueError(f"euclidean_euler: grid must be 1-D with >= 2 times, got shape {tuple(grid.shape)}")
    x = x1.float()
    grid = grid.to(x.device, torch.float32)
    for k in range(grid.numel() - 1):
        x = x + (grid[k + 1] - grid[k]) * v(x, grid[k]).float()
    return x
