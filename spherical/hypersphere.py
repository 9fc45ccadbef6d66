"""The product of hyperspheres S^{C−1}_R over the last axis, exact in float32.

A tensor ``x`` of shape ``[..., C]`` is a batch of points on the sphere of radius ``R`` in ``R^C``
(``‖x‖ = R``); every leading axis is a batch axis, so ``[B, N, C]`` latents are ``B·N`` independent points.

How the formulas stay exact in float32
--------------------------------------
Everything that needs the angle θ between ``x`` and ``y`` goes through one helper, :func:`_frame`:

* ``w = y − σx`` with ``σ = sign⟨x, y⟩``: an exact subtraction of nearby numbers (``y ≈ x`` when θ is
  small, ``y ≈ −x`` when θ is near π), so ``w`` is accurate to a few ulp *relative to its own size*.
* the radial part of ``w`` is removed with a small coefficient ``c = ⟨w, x⟩/R²``:
  ``y_⊥ = w − c·x`` is the component of ``y`` orthogonal to ``x`` and ``n = ‖y_⊥‖ = ‖y‖ sin θ`` is
  obtained as ``√(‖w‖² − ⟨w, x⟩²/R²)`` without cancellation (the radial part is at most half of ‖w‖²).
* ``θ = atan2(n, ⟨x, y⟩/R)``: no ``arccos``, no clamp, no floor under distances.

Factors such as θ/sin θ and sin(tθ)/sin θ are evaluated through the series helpers of
:mod:`spherical._series` near 0 and through ``n`` directly near π, so values and gradients are finite at
``y = x``, ``u = 0`` and ``y = −x``. No method reads a tensor value into Python, so all of them run
under ``torch.compile(fullgraph=True)`` (inductor included) and under ``torch.func`` transforms (vmap,
grad, jacrev, jacfwd, jvp) with batching rules only: in plain eager mode the kernels update their fresh
outputs in place, under a transform or compile they are purely functional (:func:`_kernels.eager_mode`).
In eager mode on CPU, ``dist`` of large same-shape batches takes θ from two fused reductions where it is
well conditioned and recomputes the other rows with the exact difference over cache-sized row blocks
(:func:`_kernels.split_theta`, :func:`_kernels.blocked_theta`), so no batch-sized temporary is written.

Non-finite input coordinates give NaN results (never a plausible 0 or π).

Antipodes
---------
For ``y = −x`` exactly the minimising geodesic is not unique. ``logmap(x, −x)`` then returns the
tangent vector of length πR along the unit vector ``f̂(x) = normalise(e_j − (x_j/R²)·x)`` with
``j = 0`` if ``x_0² ≤ R²/2`` and ``j = 1`` otherwise (so ``‖e_j − (x_j/R²) x‖² ≥ 1/2``); ``geodesic``,
``transp`` and :func:`spherical.geodesic_flow` use the same great circle. Hence ``C ≥ 2`` is required.

Points are assumed to lie on the sphere (``‖x‖ = R`` to round-off); use :meth:`Hypersphere.projx` first.
"""
from __future__ import annotations

import math
import numbers
import warnings
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

with warnings.catch_warnings():  # geoopt 0.5 calls torch.jit.script at import: deprecated from torch 2.10 on
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning)
    import geoopt

from ._kernels import (BLOCK_ELEMS, Radius, _add_first_two, _addcmul_fresh, _angle, _combine, _dot, _fallback,
                       _fold_fallback, _frame, _Frame, _norm, eager_mode, split_theta)
from ._series import cos_sinc_sq, safe_div, sinc, theta_over_sin

__all__ = ["Hypersphere"]

_HALF_PI = math.pi / 2
# R and 4R² (the largest ‖y − σx‖²) stay normal float32 numbers: 2^-60 ≈ 8.7e-19, 2^60 ≈ 1.2e18.
_RADIUS_RANGE = (2.0**-60, 2.0**60)


# ----------------------------------------------------------------------------------------------------
# The manifold.
# ----------------------------------------------------------------------------------------------------
class Hypersphere(geoopt.Manifold):
    r"""Product of spheres ``S^{C−1}_R = {x ∈ R^C : ‖x‖ = R}`` over the last axis.

    Args:
        radius: ``R > 0``; a float, or a tensor broadcastable to ``x[..., :1]`` (per-sample or
            per-token radii, e.g. ``[B, 1, 1]`` or ``[B, N, 1]`` for ``x: [B, N, C]``).

    Raises:
        ValueError: if the radius is not positive and finite within ``[2⁻⁶⁰, 2⁶⁰]`` (so that ``R²`` and
            ``4R²`` are normal float32 numbers: ``Hypersphere(1e20)`` would overflow ``R²`` in float32).
            The same check runs when ``radius`` is assigned and when it is loaded by ``load_state_dict``;
            a tensor radius changed in place to a value outside the range makes every op return NaN
            (checked where it is used, without reading it into Python).

    float16/bfloat16 inputs are computed in float32 and returned in the input dtype.
    """

    name = "Hypersphere"
    ndim = 1
    reversible = False

    def __init__(self, radius: Radius = 1.0) -> None:
        super().__init__()
        radius = self._checked_radius(radius)
        if isinstance(radius, Tensor):  # a radius that requires grad is kept (d/dR flows to it), else a copy
            self.register_buffer("radius", radius if radius.requires_grad else radius.detach().clone())
        else:
            self.radius = radius

    @staticmethod
    def _checked_radius(radius: Radius) -> Radius:
        """The radius as a float or floating tensor, or ValueError unless every entry is in the range."""
        lo, hi = _RADIUS_RANGE
        if isinstance(radius, Tensor):
            if radius.dtype == torch.bool or radius.is_complex():
                raise ValueError(f"Hypersphere: radius must be a real number or a real tensor, got a {radius.dtype} "
                                 f"tensor")
            if not radius.is_floating_point():
                radius = radius.to(torch.get_default_dtype())
            ok = radius.numel() > 0 and bool(((radius >= lo) & (radius <= hi)).all())
            if not ok:
                raise ValueError(f"Hypersphere: radius must be positive and finite, within [2^-60, 2^60] "
                                 f"everywhere, got {radius}")
            return radius
        if isinstance(radius, bool) or not isinstance(radius, numbers.Real):  # "2", True, None, arrays
            raise ValueError(f"Hypersphere: radius must be a real number (float) or a floating tensor, got "
                             f"{type(radius).__name__} {radius!r}")
        value = float(radius)
        if not lo <= value <= hi:  # also rejects NaN
            raise ValueError(f"Hypersphere: radius must be positive and finite, within [2^-60, 2^60], got {radius!r}")
        return value

    def __setattr__(self, name: str, value) -> None:
        if name == "radius":  # S.radius = -1.0 is validated like the constructor argument
            value = self._checked_radius(value)
        super().__setattr__(name, value)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        key = prefix + "radius"
        if key in state_dict:
            self._checked_radius(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    # --- plumbing --------------------------------------------------------------------------------
    def extra_repr(self) -> str:
        r = self.radius
        return f"radius={r:g}" if isinstance(r, float) else f"radius=tensor{tuple(r.shape)}"

    @staticmethod
    def _prep(*tensors: Tensor) -> Tuple[Tuple[Tensor, ...], torch.dtype]:
        """Validates shapes and dtypes; returns the tensors in the compute dtype and the output dtype."""
        for t in tensors:
            if not isinstance(t, Tensor):
                raise ValueError(f"Hypersphere: expected a tensor, got {type(t).__name__}")
            if not t.is_floating_point():
                raise ValueError(f"Hypersphere: expected a floating-point tensor, got {t.dtype}")
            if t.dim() == 0 or t.shape[-1] < 2:
                raise ValueError(
                    f"Hypersphere: expected points/vectors of shape [..., C] with C >= 2, got {tuple(t.shape)}"
                )
        out_dtype = tensors[0].dtype
        for t in tensors[1:]:
            out_dtype = torch.promote_types(out_dtype, t.dtype)
        if len(tensors) > 1:
            try:
                torch.broadcast_shapes(*(t.shape for t in tensors))
            except RuntimeError:
                shapes = ", ".join(str(tuple(t.shape)) for t in tensors)
                raise ValueError(f"Hypersphere: shapes {shapes} do not broadcast") from None
        compute = torch.float32 if out_dtype in (torch.float16, torch.bfloat16) else out_dtype
        return tuple(t.to(compute) for t in tensors), out_dtype

    def _rad(self, x: Tensor) -> Radius:
        """The radius in ``x``'s dtype/device, checked to broadcast to ``x[..., :1]``."""
        r = self.radius
        if isinstance(r, float):
            return r
        target = x.shape[:-1] + (1,)
        ok = r.dim() <= len(target)
        if ok:
            try:
                ok = torch.broadcast_shapes(r.shape, target) == target
            except RuntimeError:
                ok = False
        if not ok:
            raise ValueError(
                f"Hypersphere: radius of shape {tuple(r.shape)} does not broadcast to x[..., :1] of shape {tuple(target)}"
            )
        r = r.to(dtype=x.dtype, device=x.device)
        lo, hi = _RADIUS_RANGE  # an in-place edit to a bad value poisons the result instead of being used
        return torch.where((r >= lo) & (r <= hi), r, torch.full_like(r, math.nan))

    @staticmethod
    def _time(t: Union[float, Tensor], like: Tensor) -> Union[float, Tensor]:
        """``t`` as a float or a tensor in ``like``'s dtype; a tensor must broadcast with ``like[..., :1]``."""
        if isinstance(t, Tensor):
            target = like.shape[:-1] + (1,)
            ok = t.dim() == 0 or t.shape[-1] == 1
            if ok:
                try:
                    torch.broadcast_shapes(t.shape, target)
                except RuntimeError:
                    ok = False
            if not ok:
                raise ValueError(f"Hypersphere: t of shape {tuple(t.shape)} must broadcast with x[..., :1] of shape "
                                 f"{tuple(target)} (one time per point is {tuple(target)}, e.g. [B, 1] for x [B, C])")
            return t.to(dtype=like.dtype, device=like.device)
        return float(t)

    # --- projections and metric -----------------------------------------------------------------
    def projx(self, x: Tensor) -> Tensor:
        """``R·x/‖x‖`` for ``x: [..., C]``; ``x = 0`` maps to ``R·e_0``."""
        (x,), dt = self._prep(x)
        r = self._rad(x)
        nx = _norm(x)
        zero = nx == 0
        out = x * (r / torch.where(zero, torch.ones_like(nx), nx))
        rr = torch.ones_like(nx) * r
        out = _add_first_two(out, torch.where(zero, rr, 0.0), torch.zeros_like(nx))
        return out.to(dt)

    def proju(self, x: Tensor, u: Tensor) -> Tensor:
        """Tangent projection ``u − (⟨x, u⟩/‖x‖²)·x``; ``x, u: [..., C]``."""
        (x, u), dt = self._prep(x, u)
        coef = safe_div(_dot(x, u), _dot(x, x))
        return torch.addcmul(u, x, -coef).to(dt)

    def egrad2rgrad(self, x: Tensor, u: Tensor) -> Tensor:
        """Riemannian gradient of the induced metric: the tangent projection of the Euclidean one."""
        return self.proju(x, u)

    def inner(self, x: Tensor, u: Tensor, v: Optional[Tensor] = None, *, keepdim: bool = False) -> Tensor:
        """``⟨u, v⟩`` (the metric induced by R^C), ``[..., C] -> [...]`` (``[..., 1]`` if keepdim)."""
        v = u if v is None else v
        (x, u, v), dt = self._prep(x, u, v)
        out = _dot(u, v)
        if not keepdim:
            out = out.squeeze(-1)
        shape = torch.broadcast_shapes(x.shape[:-1], out.shape[:-1] if keepdim else out.shape)
        return out.expand(shape + ((1,) if keepdim else ())).to(dt)

    def norm(self, x: Tensor, u: Tensor, *, keepdim: bool = False) -> Tensor:
        """``‖u‖``, ``[..., C] -> [...]``."""
        (x, u), dt = self._prep(x, u)
        out = _norm(u)
        return (out if keepdim else out.squeeze(-1)).to(dt)

    # --- exponential and logarithm --------------------------------------------------------------
    def expmap(self, x: Tensor, u: Tensor) -> Tensor:
        """``exp_x(u) = cos(‖u‖/R)·x + sinc(‖u‖/R)·u`` for ``x, u: [..., C]`` (u tangent at x)."""
        (x, u), dt = self._prep(x, u)
        r = self._rad(x)
        # θ² = ‖u‖²/R² as a polynomial in u wherever derivatives are recorded (exact 2nd derivative at u = 0);
        # an eager pass without autograd takes the (faster) norm, squared
        if eager_mode() and not (torch.is_grad_enabled() and u.requires_grad):
            s = _norm(u).square()
        else:
            s = _dot(u, u)
        cos_t, sinc_t = cos_sinc_sq(s / (r * r))
        return _combine(x, cos_t, u, sinc_t).to(dt)

    def retr(self, x: Tensor, u: Tensor) -> Tensor:
        """Projective retraction ``projx(x + u)`` (first-order agreement with expmap)."""
        return self.projx(x + u)

    def logmap(self, x: Tensor, y: Tensor) -> Tensor:
        """``log_x(y) = Rθ·y_⊥/‖y_⊥‖``, the tangent vector at x of length dist(x, y) pointing to y.

        ``x, y: [..., C] -> [..., C]``. ``logmap(x, x) = 0``; ``logmap(x, −x)`` is πR·f̂(x) (module doc).
        """
        (x, y), dt = self._prep(x, y)
        r = self._rad(x)
        f = _frame(x, y, r)
        a = self._log_coef(f, r)
        g = torch.where(f.antipodal, r * f.theta, 0.0)  # πR along f̂ at the antipode, else 0
        return self._assemble(x, f, a, -a * f.c, g, r).to(dt)

    @staticmethod
    def _log_coef(f: _Frame, r: Radius) -> Tensor:
        """``a = Rθ/n`` (coefficient of ``y_⊥`` in the log), smooth in θ near 0 via θ/sin θ."""
        small = f.theta < _HALF_PI
        near0 = (r / f.ynorm) * theta_over_sin(torch.clamp(f.theta, max=_HALF_PI))
        return torch.where(small, near0, r * f.theta / f.n_safe)

    @staticmethod
    def _assemble(x: Tensor, f: _Frame, wc: Tensor, xc: Tensor, g: Tensor, r: Radius) -> Tensor:
        """``wc·w + xc·x + g·f̂(x)``."""
        r2 = r * r
        fb = _fallback(x, r2)
        xc, gs = _fold_fallback(xc, g, fb, r2)
        out = _combine(f.w, wc, x, xc)
        return _add_first_two(out, gs * fb.first, gs * (1.0 - fb.first))

    def dist(self, x: Tensor, y: Tensor, *, keepdim: bool = False) -> Tensor:
        """Geodesic distance ``R·θ``, ``θ = atan2(‖y_⊥‖, ⟨x, y⟩/R)``; ``[..., C] -> [...]``."""
        (x, y), dt = self._prep(x, y)
        r = self._rad(x)
        if x.shape == y.shape and x.device.type == "cpu" and x.numel() >= 4 * BLOCK_ELEMS and eager_mode() \
                and not (torch.is_grad_enabled() and (x.requires_grad or y.requires_grad)):
            theta = split_theta(x, y, r)  # two fused reductions; ill-conditioned rows exactly (see _kernels)
        else:
            theta = _angle(x, y, r).theta
        out = r * theta
        return (out if keepdim else out.squeeze(-1)).to(dt)

    # --- geodesics and transport ----------------------------------------------------------------
    def geodesic(self, x: Tensor, y: Tensor, t: Union[float, Tensor]) -> Tensor:
        """The point ``exp_x(t·log_x(y))`` at fraction ``t`` of the way from x to y.

        ``x, y: [..., C]``; ``t`` a float or a tensor broadcastable with ``x[..., :1]`` (``t: [T, 1]``
        against ``x, y: [1, C]`` gives ``[T, C]``). Formula: ``cos(tθ)·x + R sin(tθ)·y_⊥/‖y_⊥‖``.
        """
        (x, y), dt = self._prep(x, y)
        return self._geodesic(x, y, self._time(t, x), velocity=False)[0].to(dt)

    def geodesic_with_velocity(self, x: Tensor, y: Tensor, t: Union[float, Tensor]) -> Tuple[Tensor, Tensor]:
        """``(γ(t), γ'(t))`` of :meth:`geodesic`; ``γ'(t) = −θ sin(tθ)·x + Rθ cos(tθ)·y_⊥/‖y_⊥‖``."""
        (x, y), dt = self._prep(x, y)
        xt, ut = self._geodesic(x, y, self._time(t, x), velocity=True)
        return xt.to(dt), ut.to(dt)

    def _geodesic(self, x: Tensor, y: Tensor, t: Union[float, Tensor], velocity: bool):
        r = self._rad(x)
        f = _frame(x, y, r)
        tt = t * f.theta
        cos_t, sin_t = torch.cos(tt), torch.sin(tt)
        small = f.theta < _HALF_PI
        th_c = torch.clamp(f.theta, max=_HALF_PI)
        # coefficient of y_⊥: R sin(tθ)/n = (R/‖y‖)·t·sinc(tθ)/sinc(θ) near θ = 0
        near0 = (r / f.ynorm) * t * sinc(torch.where(small, tt, 0.0)) / sinc(th_c)
        beta = torch.where(small, near0, r * sin_t / f.n_safe)
        g = torch.where(f.antipodal, r * sin_t, 0.0)
        xt = self._assemble(x, f, beta, cos_t - beta * f.c, g, r)
        if not velocity:
            return xt, None
        gamma = self._log_coef(f, r) * cos_t  # Rθ cos(tθ)/n
        gv = torch.where(f.antipodal, r * f.theta * cos_t, 0.0)
        ut = self._assemble(x, f, gamma, -f.theta * sin_t - gamma * f.c, gv, r)
        return xt, ut

    def transp(self, x: Tensor, y: Tensor, v: Tensor) -> Tensor:
        """Parallel transport of ``v ∈ T_xS`` along the minimising geodesic from x to y.

        ``P(v) = v + ⟨ê, v⟩·[(cos θ − 1)·ê − sin θ·x/R]`` with ``ê = y_⊥/‖y_⊥‖`` (f̂ at the antipode);
        ``x, y, v: [..., C] -> [..., C]``. An isometry from T_xS onto T_yS.
        """
        (x, y, v), dt = self._prep(x, y, v)
        r = self._rad(x)
        r2 = r * r
        f = _frame(x, y, r)
        xv = _dot(x, v)
        q = _dot(f.w, v) - f.c * xv  # ⟨y_⊥, v⟩
        cos_t = f.cos_part / f.ynorm
        small = f.theta < _HALF_PI
        a_small = -1.0 / (f.ynorm.square() * (1.0 + torch.where(small, cos_t, 0.0)))
        a = torch.where(small, a_small, (cos_t - 1.0) / f.n_safe.square())
        qa = q * a
        xc = -qa * f.c - q / (f.ynorm * r)
        fb = _fallback(x, r2)
        vj = torch.where(fb.first > 0, v[..., 0:1], v[..., 1:2])
        k = torch.where(f.antipodal, -2.0 * (vj - fb.xj * xv / r2) / fb.s, 0.0)  # reflect f̂-component
        xc, ks = _fold_fallback(xc, k, fb, r2)
        out = _addcmul_fresh(torch.addcmul(v, f.w, qa), x, xc)
        return _add_first_two(out, ks * fb.first, ks * (1.0 - fb.first)).to(dt)

    def transp_follow_expmap(self, x: Tensor, u: Tensor, v: Tensor) -> Tensor:
        """Transport ``v`` from x to ``expmap(x, u)`` (along the minimising geodesic)."""
        return self.transp(x, self.expmap(x, u), v)

    def transp_follow_retr(self, x: Tensor, u: Tensor, v: Tensor) -> Tensor:
        """Transport ``v`` from x to ``retr(x, u)``."""
        return self.transp(x, self.retr(x, u), v)

    def expmap_transp(self, x: Tensor, u: Tensor, v: Tensor) -> Tuple[Tensor, Tensor]:
        """``(y, P_{x→y} v)`` with ``y = expmap(x, u)``."""
        y = self.expmap(x, u)
        return y, self.transp(x, y, v)

    def retr_transp(self, x: Tensor, u: Tensor, v: Tensor) -> Tuple[Tensor, Tensor]:
        """``(y, P_{x→y} v)`` with ``y = retr(x, u)`` (used by geoopt's Riemannian optimisers)."""
        y = self.retr(x, u)
        return y, self.transp(x, y, v)

    # --- sampling ---------------------------------------------------------------------------------
    @staticmethod
    def _size(size: Tuple, what: str) -> Tuple[int, ...]:
        """``size`` as a tuple ``(..., C)`` with ``C >= 2`` and no negative entry, else ValueError."""
        if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)):
            size = tuple(size[0])
        try:
            shape = tuple(int(s) for s in size)
        except (TypeError, ValueError):
            raise ValueError(f"Hypersphere.{what}: expected integer sizes (..., C), got {size!r}") from None
        if len(shape) == 0 or shape[-1] < 2 or min(shape) < 0:
            raise ValueError(f"Hypersphere.{what}: expected a size (..., C) with C >= 2 and no negative entry, "
                             f"got {shape}")
        return shape

    def _bind(self, x: Tensor) -> "geoopt.ManifoldTensor":
        """``x`` as a :class:`geoopt.ManifoldTensor` bound to this manifold (no copy)."""
        return geoopt.ManifoldTensor(x, manifold=self)

    def random_uniform(
        self,
        *size: Union[int, Sequence[int]],
        dtype: Optional[torch.dtype] = None,
        device: Optional[Union[str, torch.device]] = None,
        generator: Optional[torch.Generator] = None,
    ) -> "geoopt.ManifoldTensor":
        """Uniform samples ``R·ε/‖ε‖``, ``ε ~ N(0, I_C)``, of shape ``size = (..., C)``.

        Returns a :class:`geoopt.ManifoldTensor` bound to this manifold (``out.manifold is self``), as
        geoopt's own manifolds do. It is a ``torch.Tensor`` subclass whose torch function is disabled:
        any torch op on it (``x + 0``, a network layer, every ``Hypersphere`` method) returns a plain
        tensor, so it can be fed to models unchanged; ``out.as_subclass(torch.Tensor)`` unwraps it.
        """
        shape = self._size(size, "random_uniform")
        if device is None and isinstance(self.radius, Tensor):
            device = self.radius.device
        eps = torch.randn(shape, dtype=dtype, device=device, generator=generator)
        return self._bind(self.projx(eps))

    random = random_uniform

    def origin(self, *size, dtype=None, device=None, seed: int = 42) -> "geoopt.ManifoldTensor":
        """The fixed point ``R·e_0`` of shape ``size = (..., C)``, as a :class:`geoopt.ManifoldTensor`."""
        shape = self._size(size, "origin")
        out = torch.zeros(shape, dtype=dtype, device=device)
        return self._bind(self.projx(out))  # projx maps 0 to R·e_0

    # --- geoopt checks --------------------------------------------------------------------------
    def _check_shape(self, shape: Tuple[int, ...], name: str) -> Union[Tuple[bool, Optional[str]], bool]:
        ok = len(shape) >= 1 and shape[-1] >= 2
        return (True, None) if ok else (False, f"`{name}` must have shape [..., C] with C >= 2, got {tuple(shape)}")

    def _check_point_on_manifold(self, x: Tensor, *, atol: float = 1e-5, rtol: float = 1e-5):
        r = self._rad(x)
        nx = _norm(x)
        target = torch.ones_like(nx) * r
        ok = bool(torch.allclose(nx, target, atol=atol, rtol=rtol))
        if ok:
            return True, None
        worst = (nx - target).abs().max().item()
        return False, f"‖x‖ should equal the radius R; the largest |‖x‖ − R| is {worst:.3g} (atol={atol}, rtol={rtol})"

    def _check_vector_on_tangent(self, x: Tensor, u: Tensor, *, atol: float = 1e-5, rtol: float = 1e-5):
        xu = _dot(x, u).abs()
        scale = _norm(x) * _norm(u)
        ok = bool((xu <= atol + rtol * scale).all())
        if ok:
            return True, None
        worst = (xu / torch.clamp(scale, min=1e-30)).max().item()
        return False, f"u should be orthogonal to x (⟨x, u⟩ = 0); the largest |⟨x, u⟩|/(‖x‖‖u‖) is {worst:.3g}"
