"""Probability distributions on the sphere ``S^{C−1}_R = {x ∈ R^C : ‖x‖ = R}``.

Every distribution here is a :class:`torch.distributions.Distribution` with ``event_shape = (C,)``;
densities are with respect to the surface measure of ``S^{C−1}_R`` (area ``R^{C−1}·|S^{C−1}|`` with
``|S^{C−1}| = 2π^{C/2}/Γ(C/2)``), so every ``log_prob`` carries the ``−(C−1)·log R`` term.

>>> import torch
>>> from spherical.distributions import Uniform, VonMisesFisher
>>> u = Uniform(1024, radius=32.0)
>>> x = u.sample((8,))            # [8, 1024], ‖x‖ = 32
>>> u.log_prob(x).shape
torch.Size([8])
>>> vmf = VonMisesFisher(torch.randn(4, 1024), torch.tensor(100.0), radius=32.0)   # batch of 4 modes
>>> vmf.sample((8,)).shape, vmf.log_prob(vmf.sample()).shape
(torch.Size([8, 4, 1024]), torch.Size([4]))
>>> kl = torch.distributions.kl_divergence(vmf, Uniform(1024, radius=32.0))          # closed form, [4]

Shared pieces: the argument checks, the Householder reflection that carries ``e_1`` to the mean
direction ``μ`` (both samplers draw the component ``w = ⟨x, μ⟩/R`` and a uniform tangent direction),
and the Bessel functions of :mod:`spherical._bessel`.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints
from torch.distributions.kl import register_kl

from ._bessel import bessel_ratio, log_iv_scaled
from ._directional import (RadiusLike, as_float_tensor, beta_pair, check_channels, check_concentration,
                           check_radius, normalise_loc, place_on_sphere, wood_component)
from ._series import safe_sqrt

__all__ = ["Uniform", "VonMisesFisher", "PowerSpherical", "log_sphere_area"]


def log_sphere_area(channels: int, radius: RadiusLike = 1.0) -> Tensor:
    """``log |S^{C−1}_R| = log 2 + (C/2)·log π − lgamma(C/2) + (C−1)·log R``, computed in float64."""
    c = check_channels(channels)
    r = torch.as_tensor(radius, dtype=torch.float64)
    return math.log(2.0) + 0.5 * c * math.log(math.pi) - math.lgamma(0.5 * c) + (c - 1) * torch.log(r)


class Uniform(Distribution):
    r"""The uniform distribution on ``S^{C−1}_R``.

    ``log p(x) = lgamma(C/2) − log 2 − (C/2)·log π − (C−1)·log R`` for every ``x`` on the sphere;
    samples are ``R·ε/‖ε‖`` with ``ε ~ N(0, I_C)``.

    Args:
        channels: ambient dimension ``C ≥ 2``.
        radius: ``R > 0``: a float (batch shape ``()``) or a tensor (its shape is the batch shape, its
            dtype and device are those of samples). As in ``torch.distributions``, the batch shape has no
            channel axis: a :class:`spherical.Hypersphere`-style ``[..., 1]`` radius is passed as ``R[..., 0]``.
        validate_args: as in :class:`torch.distributions.Distribution`.
    """

    arg_constraints = {"radius": constraints.positive}
    has_rsample = True

    def __init__(self, channels: int, radius: RadiusLike = 1.0, validate_args: Optional[bool] = None):
        self.channels = check_channels(channels)
        self.radius = check_radius(as_float_tensor(radius))
        super().__init__(batch_shape=self.radius.shape, event_shape=torch.Size((self.channels,)),
                         validate_args=validate_args)

    @property
    def support(self) -> constraints.Constraint:
        return _SphereConstraint(self.radius)

    def expand(self, batch_shape, _instance=None) -> "Uniform":
        new = self._get_checked_instance(Uniform, _instance)
        new.channels = self.channels
        new.radius = self.radius.expand(torch.Size(batch_shape))
        super(Uniform, new).__init__(torch.Size(batch_shape), self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def sample(self, sample_shape: torch.Size = torch.Size(), generator: Optional[torch.Generator] = None) -> Tensor:
        """``x: sample_shape + batch_shape + (C,)`` with ``‖x‖ = R`` (``generator`` optional)."""
        with torch.no_grad():
            return self.rsample(sample_shape, generator)

    def rsample(self, sample_shape: torch.Size = torch.Size(), generator: Optional[torch.Generator] = None) -> Tensor:
        """As :meth:`sample`, differentiable in ``radius`` (``x = R·ε/‖ε‖``)."""
        shape = self._extended_shape(torch.Size(sample_shape))
        eps = torch.randn(shape, dtype=self.radius.dtype, device=self.radius.device, generator=generator)
        return self.radius.unsqueeze(-1) * eps / eps.norm(dim=-1, keepdim=True)

    def log_prob(self, value: Tensor) -> Tensor:
        """Constant ``−log |S^{C−1}_R|``, shape ``broadcast(value[..., 0], batch_shape)``, ``value``'s dtype."""
        if self._validate_args:
            self._validate_sample(value)
        dtype = value.dtype if value.dtype.is_floating_point else self.radius.dtype
        lp = -log_sphere_area(self.channels, self.radius).to(dtype=dtype, device=value.device)
        return lp.expand(torch.broadcast_shapes(value.shape[:-1], self.batch_shape))

    def entropy(self) -> Tensor:
        """``log |S^{C−1}_R|`` (the largest entropy of any density on the sphere), shape ``batch_shape``."""
        return log_sphere_area(self.channels, self.radius).to(self.radius.dtype)

    @property
    def mean(self) -> Tensor:
        """The zero vector (the sphere is symmetric), ``batch_shape + (C,)``."""
        return torch.zeros(self.batch_shape + self.event_shape, dtype=self.radius.dtype, device=self.radius.device)


class _SphereConstraint(constraints.Constraint):
    """``‖x‖ = R`` to a relative tolerance of ``1e-3`` (float32 round-off of a normalisation is ~1e-6)."""

    event_dim = 1

    def __init__(self, radius: Tensor, rtol: float = 1e-3):
        self.radius, self.rtol = radius, rtol
        super().__init__()

    def check(self, value: Tensor) -> Tensor:
        r = self.radius.to(value.dtype)
        return ((value.norm(dim=-1) - r).abs() <= self.rtol * r) & torch.isfinite(value).all(-1)


# ----------------------------------------------------------------------------------------------------
# Directional laws: a mean direction μ, a concentration κ ≥ 0 and a radius R.
# ----------------------------------------------------------------------------------------------------
class _Directional(Distribution):
    """Common parameters, shapes, validation and ``expand`` of :class:`VonMisesFisher` and
    :class:`PowerSpherical`.

    ``loc: [..., C]`` (normalised to ``μ``), ``concentration`` and ``radius`` broadcastable to
    ``loc[..., 0]``; ``batch_shape`` is the broadcast of the three, ``event_shape = (C,)``. Computations
    run in ``loc``'s dtype (float32 for half types; constants in float64, then cast).
    """

    arg_constraints = {"loc": constraints.real_vector, "concentration": constraints.nonnegative,
                       "radius": constraints.positive}

    def __init__(self, loc: Tensor, concentration: Tensor | float, radius: RadiusLike = 1.0,
                 validate_args: Optional[bool] = None):
        loc = as_float_tensor(loc)
        if loc.dtype in (torch.float16, torch.bfloat16):                 # half types: computed in float32
            loc = loc.float()
        check = validate_args is not False
        mu = normalise_loc(loc, validate=check)
        kappa = check_concentration(as_float_tensor(concentration, like=mu), validate=check)
        r = check_radius(as_float_tensor(radius, like=mu), validate=check)
        batch = torch.broadcast_shapes(mu.shape[:-1], kappa.shape, r.shape)
        self.channels = mu.shape[-1]
        self.loc = mu.expand(batch + mu.shape[-1:])
        self.concentration = kappa.expand(batch)
        self.radius = r.expand(batch)
        super().__init__(batch_shape=batch, event_shape=mu.shape[-1:], validate_args=validate_args)

    @property
    def support(self) -> constraints.Constraint:
        return _SphereConstraint(self.radius)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(type(self), _instance)
        batch_shape = torch.Size(batch_shape)
        new.channels = self.channels
        new.loc = self.loc.expand(batch_shape + self.event_shape)
        new.concentration = self.concentration.expand(batch_shape)
        new.radius = self.radius.expand(batch_shape)
        Distribution.__init__(new, batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def mode(self) -> Tensor:
        """``R·μ`` (for κ > 0), ``batch_shape + (C,)``."""
        return self.radius.unsqueeze(-1) * self.loc

    def _checked(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return value

    def _log_radius_term(self) -> Tensor:
        """``(C−1)·log R`` (the surface element of the radius-R sphere), ``batch_shape``."""
        return (self.channels - 1) * torch.log(self.radius)

    def _unit_entropy64(self) -> Tensor:  # pragma: no cover - every subclass defines it
        raise NotImplementedError(f"{type(self).__name__}: a directional law must define _unit_entropy64 "
                                  f"(see VonMisesFisher, PowerSpherical)")

    def mean_resultant_length(self) -> Tensor:
        """The method spelling of :attr:`resultant_length` (kept for existing callers): ``‖E[x]‖/R``."""
        return self.resultant_length

    def entropy(self) -> Tensor:
        """``H(p) = −E[log p(x)] = H_unit(κ) + (C−1)·log R``, ``batch_shape`` (closed forms per subclass)."""
        return self._unit_entropy64().to(self.loc.dtype) + self._log_radius_term()

    def kl_to_uniform(self) -> Tensor:
        """``KL(p ‖ Uniform(C, R)) = log |S^{C−1}| − H_unit(κ) ≥ 0`` (radius-free), ``batch_shape``."""
        kl = log_sphere_area(self.channels) - self._unit_entropy64()
        return kl.clamp_min(0.0).to(self.loc.dtype)                     # round-off at κ = 0 is ~1e-15


class VonMisesFisher(_Directional):
    r"""von Mises–Fisher law ``p(x) = C_C(κ)·exp(κ⟨μ, x/R⟩)/R^{C−1}`` on ``S^{C−1}_R``.

    ``C_C(κ) = κ^ν / ((2π)^{C/2} I_ν(κ))`` with ``ν = C/2 − 1``; evaluated as
    ``log p = −(C/2)·log 2π − h_ν(κ) − κ·‖x/R − μ‖²/2 − (C−1)·log R`` where
    ``h_ν(κ) = log I_ν(κ) − ν log κ − κ`` (:func:`spherical._bessel.log_iv_scaled`, finite at κ = 0 and
    free of the ``e^κ`` overflow) and ``1 − ⟨μ, x̂⟩ = ‖x̂ − μ‖²/2`` (no cancellation near the mode).
    κ = 0 is the uniform law exactly.

    Args:
        loc: ``[..., C]`` mean directions (finite, nonzero; normalised), ``C ≥ 2``.
        concentration: ``κ ≥ 0`` finite, broadcastable to ``loc[..., 0]``.
        radius: ``R > 0``, broadcastable to ``loc[..., 0]``.
    """

    has_rsample = False

    @property
    def _nu(self) -> float:
        return 0.5 * self.channels - 1.0

    def _log_normaliser64(self) -> Tensor:
        """``−(C/2)·log 2π − h_ν(κ)`` in float64 (equal to ``log C_C(κ) + κ``), ``batch_shape``."""
        k64 = self.concentration.to(torch.float64)
        return -0.5 * self.channels * math.log(2 * math.pi) - log_iv_scaled(self._nu, k64)

    def _one_minus_ratio64(self) -> Tensor:
        """``1 − A_C(κ) = E[1 − ⟨μ, x̂⟩]`` in float64, with ``A_C = I_{C/2}/I_{C/2−1}``."""
        return 1.0 - bessel_ratio(self._nu, self.concentration.to(torch.float64))

    def log_prob(self, value: Tensor) -> Tensor:
        """``value: [..., C]`` on the sphere → log-density ``broadcast(value[..., 0], batch_shape)``."""
        value = self._checked(value)
        r = self.radius
        gap = torch.linalg.vector_norm(value - r.unsqueeze(-1) * self.loc, dim=-1) / r   # ‖x̂ − μ‖
        half_sq = 0.5 * gap.square()                                    # 1 − ⟨μ, x̂⟩
        const = self._log_normaliser64().to(value.dtype)
        return const - self.concentration * half_sq - self._log_radius_term()

    def sample(self, sample_shape: torch.Size = torch.Size(), generator: Optional[torch.Generator] = None) -> Tensor:
        """``sample_shape + batch_shape + (C,)`` points with ``‖x‖ = R`` (Wood's sampler, no gradient)."""
        with torch.no_grad():
            w, r = wood_component(self.concentration, self.channels, torch.Size(sample_shape), generator)
            return place_on_sphere(w, r, self.loc, self.radius, generator)

    def rsample(self, sample_shape: torch.Size = torch.Size(), generator: Optional[torch.Generator] = None) -> Tensor:
        """Not available: raises ``NotImplementedError`` saying what to use instead."""
        raise NotImplementedError(
            "VonMisesFisher has no reparameterised sampler (Wood's rejection sampler is not differentiable): "
            "use .sample() for draws, or PowerSpherical(loc, concentration).rsample() for gradients through "
            "samples")

    @property
    def mean(self) -> Tensor:
        """``E[x] = A_C(κ)·R·μ``, ``A_C(κ) = I_{C/2}(κ)/I_{C/2−1}(κ)`` (mean resultant length)."""
        return (self.resultant_length * self.radius).unsqueeze(-1) * self.loc

    @property
    def resultant_length(self) -> Tensor:
        """``A_C(κ) = ‖E[x]‖/R ∈ [0, 1)``, ``batch_shape`` (a property, like ``mean``)."""
        return bessel_ratio(self._nu, self.concentration)

    def _unit_entropy64(self) -> Tensor:
        """Entropy on the unit sphere in float64: ``(C/2)·log 2π + h_ν(κ) + κ·(1 − A_C(κ))``."""
        return -self._log_normaliser64() + self.concentration.to(torch.float64) * self._one_minus_ratio64()


class PowerSpherical(_Directional):
    r"""Power spherical law (De Cao & Aziz 2020) ``p(x) ∝ (1 + ⟨μ, x/R⟩)^κ`` on ``S^{C−1}_R``.

    With ``β = (C−1)/2`` and ``α = β + κ``: ``⟨μ, x̂⟩ = 2z − 1`` with ``z ~ Beta(α, β)``, and
    ``log p = κ·log(1 + ⟨μ, x̂⟩) − log N − (C−1)·log R``,
    ``log N = (α+β)·log 2 + β·log π + lgamma(α) − lgamma(α+β)``. Sampling is reparameterised
    (``rsample``: ``z = X/(X+Y)`` from two reparameterised Gamma draws, then a Householder reflection), so
    gradients reach ``loc`` and ``concentration``. κ = 0 is the uniform law exactly.

    Args: as :class:`VonMisesFisher`.
    """

    has_rsample = True

    def _ab64(self) -> Tuple[Tensor, float]:
        beta = 0.5 * (self.channels - 1)
        return self.concentration.to(torch.float64) + beta, beta

    def _log_normaliser64(self) -> Tensor:
        """``log N(κ, C)`` in float64, ``batch_shape``."""
        a, b = self._ab64()
        return (a + b) * math.log(2.0) + b * math.log(math.pi) + torch.lgamma(a) - torch.lgamma(a + b)

    def log_prob(self, value: Tensor) -> Tensor:
        """``value: [..., C]`` on the sphere → log-density ``broadcast(value[..., 0], batch_shape)``.

        Evaluated as ``κ·log((1 + ⟨μ, x̂⟩)/2) + [κ log 2 − log N]``: the bracket is formed in float64
        (at κ = 1e5 both terms are ~7e4 and cancel), and the first term is ~0 near the mode and comes
        from :func:`_log_half_one_plus_cos` without cancellation at the mode or the antipode."""
        value = self._checked(value)
        k = self.concentration
        log_half = _log_half_one_plus_cos(value, self.loc, self.radius)
        power = torch.where(k == 0, torch.zeros_like(log_half), k * log_half)   # 0·log 0 = 0 at κ = 0
        const = k.to(torch.float64) * math.log(2.0) - self._log_normaliser64()
        return power + const.to(value.dtype) - self._log_radius_term()

    def rsample(self, sample_shape: torch.Size = torch.Size(), generator: Optional[torch.Generator] = None) -> Tensor:
        """Reparameterised ``sample_shape + batch_shape + (C,)`` points with ``‖x‖ = R``."""
        a, b = self._ab64()
        z, one_m_z = beta_pair(a, torch.full_like(a, b), torch.Size(sample_shape), generator)
        return place_on_sphere(z - one_m_z, 2.0 * safe_sqrt(z * one_m_z), self.loc, self.radius, generator)

    def sample(self, sample_shape: torch.Size = torch.Size(), generator: Optional[torch.Generator] = None) -> Tensor:
        """:meth:`rsample` without gradients."""
        with torch.no_grad():
            return self.rsample(sample_shape, generator)

    @property
    def mean(self) -> Tensor:
        """``E[x] = R·μ·(α−β)/(α+β) = R·μ·κ/(κ + C − 1)``."""
        return (self.radius * self.resultant_length).unsqueeze(-1) * self.loc

    @property
    def resultant_length(self) -> Tensor:
        """``‖E[x]‖/R = κ/(κ + C − 1)``, ``batch_shape`` (a property, like ``mean``)."""
        k = self.concentration
        return k / (k + self.channels - 1)

    def _unit_entropy64(self) -> Tensor:
        """Entropy on the unit sphere in float64: ``log N − κ·(log 2 + ψ(α) − ψ(α+β))``."""
        a, b = self._ab64()
        k = self.concentration.to(torch.float64)
        return self._log_normaliser64() - k * (math.log(2.0) + torch.digamma(a) - torch.digamma(a + b))


def _log_half_one_plus_cos(value: Tensor, loc: Tensor, radius: Tensor) -> Tensor:
    """``log((1 + ⟨μ, x/R⟩)/2) ≤ 0`` for ``value: [..., C]`` on the sphere, ``μ = loc: batch + (C,)``.

    With ``d∓ = ‖x/R ∓ μ‖²`` (exact differences): ``log1p(−d₋/4)`` where ``⟨μ, x̂⟩ ≥ 0`` (``d₋ ≤ 2``;
    accurate to the round-off of ``d₋`` itself, which is 0 at the mode) and ``log(d₊/4)``
    elsewhere (exact near the antipode, ``−inf`` at it). Each branch sees a safe argument where it is
    not selected, so gradients are finite.
    """
    r = radius.unsqueeze(-1)
    d_minus = (torch.linalg.vector_norm(value - r * loc, dim=-1) / radius).square()
    d_plus = (torch.linalg.vector_norm(value + r * loc, dim=-1) / radius).square()
    near = d_minus <= 2.0
    near_mode = torch.log1p(-0.25 * torch.where(near, d_minus, torch.zeros_like(d_minus)))
    far = torch.log(0.25 * torch.where(near, torch.full_like(d_plus, 4.0), d_plus))
    return torch.where(near, near_mode, far)


def _kl_to_uniform(p: _Directional, q: Uniform) -> Tensor:
    """``KL(p ‖ Uniform) = log |S^{C−1}_R| − H(p)`` (same C and R; ``inf`` where the radii differ).

    Radii count as equal to float32 round-off (relative 1e-6), so a float64 law and a float32
    ``Uniform`` built from the same Python float agree."""
    if p.channels != q.channels:
        raise ValueError(f"KL between laws on different spheres: C = {p.channels} vs {q.channels}")
    kl = p.kl_to_uniform()
    same = torch.isclose(p.radius.double(), q.radius.to(device=p.radius.device, dtype=torch.float64),
                         rtol=1e-6, atol=0.0)
    return torch.where(same, kl, torch.full_like(kl, math.inf))


@register_kl(VonMisesFisher, Uniform)
def _kl_vmf_uniform(p: VonMisesFisher, q: Uniform) -> Tensor:
    """``KL = κ·A_C(κ) + log C_C(κ) + log |S^{C−1}|`` (closed form; radius-free)."""
    return _kl_to_uniform(p, q)


@register_kl(PowerSpherical, Uniform)
def _kl_ps_uniform(p: PowerSpherical, q: Uniform) -> Tensor:
    """``KL = log |S^{C−1}| − log N + κ·(log 2 + ψ(α) − ψ(α+β))`` (closed form; radius-free)."""
    return _kl_to_uniform(p, q)
