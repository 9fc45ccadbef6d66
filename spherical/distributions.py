"""Probability distributions on the sphere ``S^{C−1}_R = {x ∈ R^C : ‖x‖ = R}``.

Every distribution here is a :class:`torch.distributions.Distribution` with ``event_shape = (C,)``;
densities are with respect to the surface measure of ``S^{C−1}_R`` (area ``R^{C−1}·|S^{C−1}|`` with
``|S^{C−1}| = 2π^{C/2}/Γ(C/2)``), so every ``log_prob`` carries the ``−(C−1)·log R`` term.

>>> from spherical.distributions import Uniform
>>> u = Uniform(1024, radius=32.0)
>>> x = u.sample((8,))            # [8, 1024], ‖x‖ = 32
>>> u.log_prob(x).shape
torch.Size([8])
"""
from __future__ import annotations

import math
from numbers import Number
from typing import Optional, Union

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

__all__ = ["Uniform", "log_sphere_area"]

RadiusLike = Union[float, Tensor]


def _check_channels(channels: int) -> int:
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 2:
        raise ValueError(f"channels must be an int >= 2 (the sphere S^(C-1) in R^C), got {channels!r}")
    return channels


def _check_radius(radius: RadiusLike) -> Tensor:
    r = torch.as_tensor(radius, dtype=radius.dtype if isinstance(radius, Tensor) else torch.get_default_dtype())
    if not r.dtype.is_floating_point:
        r = r.to(torch.get_default_dtype())
    if not bool(torch.isfinite(r).all()) or not bool((r > 0).all()):
        raise ValueError(f"radius must be finite and > 0, got {radius!r}")
    return r


def log_sphere_area(channels: int, radius: RadiusLike = 1.0) -> Tensor:
    """``log |S^{C−1}_R| = log 2 + (C/2)·log π − lgamma(C/2) + (C−1)·log R``, computed in float64."""
    c = _check_channels(channels)
    r = torch.as_tensor(radius, dtype=torch.float64)
    return math.log(2.0) + 0.5 * c * math.log(math.pi) - math.lgamma(0.5 * c) + (c - 1) * torch.log(r)


class Uniform(Distribution):
    r"""The uniform distribution on ``S^{C−1}_R``.

    ``log p(x) = lgamma(C/2) − log 2 − (C/2)·log π − (C−1)·log R`` for every ``x`` on the sphere;
    samples are ``R·ε/‖ε‖`` with ``ε ~ N(0, I_C)``.

    Args:
        channels: ambient dimension ``C ≥ 2``.
        radius: ``R > 0``: a float (batch shape ``()``) or a tensor (its shape is the batch shape, its
            dtype and device are those of samples and log-densities).
        validate_args: as in :class:`torch.distributions.Distribution`.
    """

    arg_constraints = {"radius": constraints.positive}
    has_rsample = False

    def __init__(self, channels: int, radius: RadiusLike = 1.0, validate_args: Optional[bool] = None):
        self.channels = _check_channels(channels)
        self.radius = _check_radius(radius)
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
        shape = self._extended_shape(torch.Size(sample_shape))
        eps = torch.randn(shape, dtype=self.radius.dtype, device=self.radius.device, generator=generator)
        return self.radius.unsqueeze(-1) * eps / eps.norm(dim=-1, keepdim=True)

    def log_prob(self, value: Tensor) -> Tensor:
        """Constant ``−log |S^{C−1}_R|`` of shape ``broadcast(value[..., 0], batch_shape)``, in ``value``'s dtype."""
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
