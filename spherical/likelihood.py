r"""Log-likelihoods of flows on products of spheres (continuous change of variables).

For the ODE ``ẋ = v(x, t)`` on ``M = (S^{C−1}_R)^N`` the densities ``p_t`` (w.r.t. the Riemannian volume,
i.e. the product of surface measures of radius R) transported by the flow obey
``d/dt log p_t(x_t) = −div_M v(x_t, t)``, hence for a sample ``x`` at the data end ``t_0`` and the base
density at the noise end ``t_1``:

.. math::
    \log p_{t_0}(x) = \log p_{t_1}(x_{t_1}) + \int_{t_0}^{t_1} \operatorname{div}_M v(x_t, t)\,dt .

Divergence on the sphere. Extend the tangent field to a neighbourhood by
``Ṽ(y) = P_y v(y) = v(y) − (⟨y, v(y)⟩/‖y‖²)·y`` (per token) and let ``J = DṼ(x)`` be its ambient Jacobian,
``[D, D]`` with ``D = N·C``. The Riemannian divergence of a tangent field on an embedded submanifold is the
trace of the Jacobian of any extension restricted to the tangent space:
``div_M V = Σ_i ⟨e_i, J e_i⟩`` over an orthonormal basis of ``T_xM``, i.e. ``tr(P J P) = tr(P J)`` with ``P``
the block-diagonal tangent projector (``I − x̂x̂ᵀ`` per token). Because ``Ṽ`` is tangent at every ``y``,
``⟨y_n, Ṽ_n(y)⟩ ≡ 0`` and its derivative gives ``x̂_nᵀ J x̂_n = 0``, so ``tr(P J) = tr(J)`` as well; the
code evaluates ``tr(P J P)`` directly. Check: for ``v = ∇⟨x, n⟩ = P_x n`` on ``S^{C−1}_R`` this gives
``div = −(C − 1)⟨x, n⟩/R²`` (the Laplacian of a linear function on the sphere).

Estimators: ``exact`` sums ``⟨P e_i, J P e_i⟩`` over the D coordinate vectors (D vector–Jacobian products per
evaluation, batched in chunks of 256: for small ``N·C``);
``hutchinson`` uses ``E[zᵀ J z] = tr(P J P)`` for ``z = P ε`` with ``ε`` Rademacher or Gaussian
(``E[εεᵀ] = I``), one VJP per probe. The probes ``ε`` are drawn once per call (fixed along the
trajectory, so the augmented ODE is smooth and adaptive solvers see a deterministic field) and the
estimates of ``probes`` of them are averaged.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

from ._normal import rk_combine, rk_stages
from .adaptive import ADAPTIVE_METHODS, solve_adaptive
from .distributions import Uniform
from .hypersphere import Hypersphere
from .integrate import _TABLEAUX, _check_finite, _check_grid

__all__ = ["log_likelihood", "LIKELIHOOD_METHODS", "divergence"]

Velocity = Callable[[Tensor, Tensor], Tensor]
LIKELIHOOD_METHODS: Tuple[str, ...] = tuple(_TABLEAUX) + ADAPTIVE_METHODS
_DIVERGENCES = ("exact", "hutchinson", "hutchinson-gaussian")
_EXACT_CHUNK = 256  # vector-Jacobian products per batched backward pass


def _tangent_field(velocity: Velocity, sphere: Hypersphere, y: Tensor, t: Tensor) -> Tensor:
    v = velocity(y, t)
    if not isinstance(v, Tensor) or v.shape != y.shape:
        raise ValueError(f"log_likelihood: velocity(x, t) must return the shape of x {tuple(y.shape)}, "
                         f"got {tuple(getattr(v, 'shape', ()))}")
    return sphere.proju(y, v.to(y.dtype))


def _vjps(out: Tensor, inp: Tensor, cots: Tensor, size: int = _EXACT_CHUNK) -> Tensor:
    """``[K, *out.shape]`` cotangents → ``[K, *inp.shape]`` vector–Jacobian products (graph retained),
    ``size`` of them per batched backward pass."""
    rows = []
    for chunk in cots.split(size):
        try:
            rows.append(torch.autograd.grad(out, inp, chunk, retain_graph=True, is_grads_batched=True)[0])
        except RuntimeError:  # an op without a batching rule: one backward pass per cotangent
            rows.append(torch.stack([torch.autograd.grad(out, inp, c, retain_graph=True)[0] for c in chunk]))
    return torch.cat(rows)


def divergence(velocity: Velocity, x: Tensor, t: Tensor, *, sphere: Hypersphere, method: str = "exact",
               probe_vectors: Optional[Tensor] = None, chunk: int = _EXACT_CHUNK,
               probes: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    r"""The tangent-projected velocity and its Riemannian divergence on the sphere, per sample.

    ``div_M v(x) = tr(P J P)`` where ``J = ∂Ṽ/∂x`` is the ambient Jacobian of the projected field
    ``Ṽ(y) = P_y v(y, t)`` **with respect to the point** ``x`` (at fixed ``t``; the parameters of
    ``velocity`` are not differentiated), ``[D, D]`` with ``D = N·C`` per sample, and ``P`` the tangent
    projector at ``x`` (``I − x̂x̂ᵀ`` per token). See the module docstring for why this is the divergence.

    Args:
        velocity: ``v(x, t)`` as in :func:`spherical.integrate` (samples must not interact: axis 0 is a batch).
        x: ``[B, ..., C]`` points on ``sphere``.
        t: 0-dim time.
        sphere: the manifold.
        method: ``exact`` (``Σ_i ⟨P e_i, J P e_i⟩ = tr(P J P)`` over the D coordinate vectors: D
            vector–Jacobian products) or ``hutchinson`` (``mean_p ⟨z_p, J z_p⟩`` with ``z_p = P ε_p``).
        probe_vectors: for ``hutchinson``: ``[P, B, ..., C]`` ambient probe vectors ``ε`` (``E[εεᵀ] = I``);
            they are tangent-projected at ``x`` here. (:func:`log_likelihood` draws them: its ``probes`` is
            their count.)
        chunk: the memory knob of both methods: how many vector–Jacobian products one batched backward
            pass computes (memory ``O(chunk·B·D)`` for the cotangents and their products; default 256).
        probes: the former name of ``probe_vectors`` (a tensor; accepted with a ``FutureWarning``).

    Returns:
        ``(v [B, ..., C] tangent at x, div [B])``, both detached.
    """
    if probes is not None:
        if not isinstance(probes, Tensor):
            raise ValueError(f"divergence: probes={probes!r} is log_likelihood's probe count; divergence takes "
                             f"the vectors themselves as probe_vectors=[P, *x.shape]")
        if probe_vectors is not None:
            raise ValueError("divergence: pass probe_vectors only (probes is its former name)")
        warnings.warn("divergence(probes=tensor) is now divergence(probe_vectors=tensor)", FutureWarning,
                      stacklevel=2)
        probe_vectors = probes
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2 or x.shape[-1] < 2:
        raise ValueError(f"divergence: x must be a floating [B, ..., C] tensor with C >= 2, got "
                         f"{getattr(x, 'shape', type(x))}")
    if method not in ("exact", "hutchinson"):
        raise ValueError(f"divergence: method must be 'exact' or 'hutchinson', got {method!r}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"divergence: chunk must be a positive int (VJPs per backward pass), got {chunk!r}")
    if method == "hutchinson" and (not isinstance(probe_vectors, Tensor) or probe_vectors.dim() != x.dim() + 1
                                   or probe_vectors.shape[1:] != x.shape):
        got = tuple(probe_vectors.shape) if isinstance(probe_vectors, Tensor) else probe_vectors
        raise ValueError(f"divergence: hutchinson needs probe_vectors, probes of shape [P, *x.shape] = "
                         f"[P, {tuple(x.shape)}], got {got}")
    B = x.shape[0]
    with torch.enable_grad():
        y = x.detach().requires_grad_(True)
        v = _tangent_field(velocity, sphere, y, t)
        if method == "exact":  # Σ_i ⟨P e_i, J P e_i⟩ = tr(P J P), in chunks of basis vectors
            D = x[0].numel()
            div = torch.zeros(B, dtype=x.dtype, device=x.device)
            for i0 in range(0, D, chunk):
                k = min(chunk, D - i0)
                e = torch.zeros(k, D, dtype=x.dtype, device=x.device)
                e[torch.arange(k), torch.arange(i0, i0 + k)] = 1.0
                pe = sphere.proju(x.unsqueeze(0), e.reshape((k, 1) + tuple(x.shape[1:])).expand((k,) + tuple(x.shape)))
                div = div + (_vjps(v, y, pe, chunk) * pe).reshape(k, B, -1).sum(-1).sum(0)
        else:
            z = sphere.proju(x.unsqueeze(0), probe_vectors.to(x.dtype))
            zJ = _vjps(v, y, z, chunk)
            div = (zJ * z).reshape(z.shape[0], B, -1).sum(-1).mean(0)
    return v.detach(), div.detach()


def _check_on_sphere(sphere: Hypersphere, x: Tensor, rtol: float = 1e-4) -> None:
    """ValueError naming ``x`` and its worst point unless every ``‖x‖`` is within ``rtol·R`` of ``R``."""
    nx = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    r = torch.ones_like(nx) * sphere._rad(x)
    gap = ((nx - r).abs() / r).nan_to_num(nan=math.inf)
    worst = float(gap.max())
    if not worst <= rtol:
        idx = tuple(int(i) for i in torch.unravel_index(gap.argmax(), gap.shape)[:-1])
        raise ValueError(f"log_likelihood: x must lie on the sphere (|‖x‖ − R| <= {rtol:g}·R), but x{list(idx)} "
                         f"has ‖x‖ = {float(nx[idx]):.6g} against R = {float(r[idx]):.6g}; project it with "
                         f"sphere.projx(x) first")


def _uniform_log_prob(sphere: Hypersphere, x: Tensor) -> Tensor:
    """``Σ_tokens log Uniform(C, R).log_prob`` of ``x: [B, ..., C]`` → ``[B]``."""
    r = sphere._rad(x)
    radius = r[..., 0] if isinstance(r, Tensor) else r
    lp = Uniform(x.shape[-1], radius).log_prob(x)
    return lp.reshape(x.shape[0], -1).sum(-1) if lp.dim() > 1 else lp


@torch.no_grad()
def log_likelihood(velocity: Velocity, x: Tensor, t: Tensor, *, sphere: Hypersphere, method: str = "rk4",
                   divergence: str = "exact", probes: int = 1,
                   base: Optional[Callable[[Tensor], Tensor]] = None,
                   generator: Optional[torch.Generator] = None, rtol: float = 1e-5, atol: float = 1e-5,
                   chunk: int = _EXACT_CHUNK) -> Tensor:
    r"""``log p(x)`` under the flow of ``velocity``, from the data end ``t[0]`` to the noise end ``t[-1]``.

    Integrates ``x`` (on the manifold) jointly with ``a = ∫ div_M v(x_t, t) dt`` (Euclidean) and returns
    ``log p_base(x_{t[-1]}) + a``. Densities are w.r.t. the product of surface measures of radius R.

    Args:
        velocity: ``v(x, t) -> [B, ..., C]`` ambient vector (tangent-projected here), ``t`` a 0-dim tensor.
            Samples must be independent (axis 0 is a batch: no batch norm in training mode).
        x: ``[B, ..., C]`` data points on ``sphere``; axis 0 is the batch, the rest one sample
            (``[B, C]`` points, ``[B, N, C]`` N tokens: the divergence is the trace over all N·C coordinates).
        t: ``[K]`` strictly *increasing* time grid, normally ``linspace(0, 1, K)``: data at ``t[0]``, noise
            at ``t[-1]`` (the direction this function integrates; a decreasing grid, as used to *sample*
            with :func:`spherical.integrate`, is refused); adaptive methods use only its end points.
        sphere: the manifold.
        method: a fixed-grid method stepping with the exponential map (``euler``, ``midpoint``, ``heun``,
            ``rk4``) or an adaptive pair (``dopri5``, ``bosh3``, with ``rtol``/``atol``). The projected
            methods are rejected: they are not steps of a flow on the manifold in normal coordinates.
        divergence: ``exact``, ``hutchinson`` (Rademacher probes) or ``hutchinson-gaussian``.
        probes: number of Hutchinson probes averaged (fixed along the trajectory).
        base: ``x_1 [B, ..., C] -> [B]`` log-density at ``t[-1]``; ``None``: uniform on every token's sphere,
            ``Σ_tokens spherical.distributions.Uniform(C, R).log_prob``.
        generator: RNG for the probes.
        rtol: relative tolerance of the adaptive methods.
        atol: absolute tolerance of the adaptive methods.
        chunk: vector–Jacobian products per backward pass of the divergence (memory knob, see
            :func:`divergence`).

    Raises:
        ValueError: before any integration, for a bad argument, a decreasing grid, or ``x`` off the sphere
            (``|‖x‖ − R| > 1e-4·R`` for some point: the message names ``x`` and the worst point).
        FloatingPointError: the velocity returned NaN/Inf (raised at the first bad step).

    Returns:
        ``[B]`` log-densities, in ``x``'s dtype, without autograd history.
    """
    allowed = LIKELIHOOD_METHODS
    if method not in allowed:
        raise ValueError(f"log_likelihood: method {method!r} not supported; expected one of {allowed} "
                         f"(methods that step with the exponential map)")
    if divergence not in _DIVERGENCES:
        raise ValueError(f"log_likelihood: divergence must be one of {_DIVERGENCES}, got {divergence!r}")
    if not isinstance(probes, int) or probes < 1:
        raise ValueError(f"log_likelihood: probes must be a positive int, got {probes!r}")
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2 or x.shape[-1] < 2:
        raise ValueError(f"log_likelihood: x must be a floating [B, ..., C] tensor with C >= 2, got "
                         f"{getattr(x, 'shape', type(x))}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"log_likelihood: chunk must be a positive int (VJPs per backward pass), got {chunk!r}")
    t = _check_grid(t, "log_likelihood").to(device=x.device)
    if not bool(t[-1] > t[0]):
        raise ValueError(f"log_likelihood: t must increase from the data end to the noise end (e.g. "
                         f"torch.linspace(0, 1, K)), got t[0]={float(t[0]):g} > t[-1]={float(t[-1]):g}; a "
                         f"decreasing grid is for sampling with integrate")
    x = x.detach()
    _check_on_sphere(sphere, x)
    eps = None
    if divergence != "exact":
        shape = (probes,) + tuple(x.shape)
        dev = generator.device if generator is not None else x.device
        if divergence == "hutchinson":  # Rademacher ±1
            eps = (2 * torch.randint(0, 2, shape, generator=generator, device=dev) - 1).to(x.device, x.dtype)
        else:
            eps = torch.randn(shape, generator=generator, dtype=x.dtype, device=dev).to(x.device)
    kind = "exact" if divergence == "exact" else "hutchinson"

    def field(y: Tensor, tt: Tensor) -> Tuple[Tensor, Tensor]:
        return _divergence_fn(velocity, y, tt, sphere=sphere, method=kind, probe_vectors=eps, chunk=chunk)

    aux = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    if method in ADAPTIVE_METHODS:
        x1, a1, _ = solve_adaptive(field, sphere, x, t, method=method, rtol=rtol, atol=atol, aux=aux)
    else:
        a, b, c = _TABLEAUX[method]
        x1, a1 = x, aux
        for k in range(t.numel() - 1):
            tk = t[k].to(x.dtype)
            h = (t[k + 1] - t[k]).to(x.dtype)
            ks, gs, _ = rk_stages(field, sphere, x1, tk, h, a, c)
            x1, a1 = rk_combine(sphere, x1, a1, h, b, ks, gs)
            _check_finite(torch.cat([x1.reshape(-1), a1.reshape(-1)]), "log_likelihood", t, k)
    lp = _uniform_log_prob(sphere, x1) if base is None else base(x1)
    if not isinstance(lp, Tensor) or lp.shape != (x.shape[0],):
        raise ValueError(f"log_likelihood: base(x) must return [B] = [{x.shape[0]}] log-densities, got "
                         f"{tuple(getattr(lp, 'shape', ()))}")
    return (lp.to(x.dtype) + a1).detach()


_divergence_fn = divergence
