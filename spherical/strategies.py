"""Hypothesis strategies for testing code on spheres (importable by users: ``spherical.strategies``).

Tensors are built from a drawn integer seed through ``torch.Generator`` (fast, shrinkable by seed), in
float64 first and then cast, so a pair "at angle θ" is exact before rounding to the requested dtype.

>>> from hypothesis import given
>>> from spherical.strategies import sphere_cases, point_pairs
>>> @given(point_pairs())
... def test_dist_is_symmetric(pair): ...
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
from hypothesis import strategies as st
from torch import Tensor

__all__ = [
    "SphereCase", "PointPair", "dtypes", "radii", "channels", "batch_shapes", "angles", "sphere_cases",
    "points", "point_pairs", "tangent_vectors", "seeds",
]

seeds = st.integers(min_value=0, max_value=2**31 - 1)


def dtypes(choices: Sequence[torch.dtype] = (torch.float32, torch.float64)) -> st.SearchStrategy[torch.dtype]:
    """float32 and float64 (pass ``choices`` to add half types)."""
    return st.sampled_from(list(choices))


def radii(min_radius: float = 1e-2, max_radius: float = 1e3) -> st.SearchStrategy[float]:
    """Radii log-uniform in ``[min_radius, max_radius]``, with the endpoints and 1 as explicit examples."""
    lo, hi = math.log10(min_radius), math.log10(max_radius)
    special = [r for r in (min_radius, 1.0, max_radius) if min_radius <= r <= max_radius]
    return st.one_of(st.sampled_from(special), st.floats(lo, hi).map(lambda e: float(10.0**e)))


def channels(min_channels: int = 2, max_channels: int = 64) -> st.SearchStrategy[int]:
    """Ambient dimensions C (the sphere is S^{C−1}); small C (2, 3) are drawn often."""
    small = [c for c in (2, 3) if min_channels <= c <= max_channels]
    return st.one_of(st.sampled_from(small or [min_channels]), st.integers(min_channels, max_channels))


def batch_shapes(max_dims: int = 2, max_side: int = 3) -> st.SearchStrategy[Tuple[int, ...]]:
    """Leading batch shapes, from ``()`` to ``max_dims`` axes."""
    return st.lists(st.integers(1, max_side), max_size=max_dims).map(tuple)


def angles(min_angle: float = 0.0, max_angle: float = math.pi) -> st.SearchStrategy[float]:
    """Angles in ``[min_angle, max_angle]`` that deliberately reach θ → 0 and θ → π.

    Mixes log-uniform distances from 0 (1e-7 … 1e-1), log-uniform distances from π, uniform angles,
    and the endpoints themselves.
    """
    near0 = st.floats(-7.0, -1.0).map(lambda e: 10.0**e)
    nearpi = st.floats(-7.0, -1.0).map(lambda e: math.pi - 10.0**e)
    mid = st.floats(0.1, math.pi - 0.1)
    ends = st.sampled_from([0.0, math.pi])
    return st.one_of(ends, near0, nearpi, mid).filter(lambda a: min_angle <= a <= max_angle)


@dataclass(frozen=True)
class SphereCase:
    """One drawn setting: ambient dimension, radius, dtype and batch shape."""

    channels: int
    radius: float
    dtype: torch.dtype
    batch_shape: Tuple[int, ...]

    @property
    def shape(self) -> Tuple[int, ...]:
        return self.batch_shape + (self.channels,)


@st.composite
def sphere_cases(draw, dtype: Optional[st.SearchStrategy] = None, channel: Optional[st.SearchStrategy] = None,
                 radius: Optional[st.SearchStrategy] = None, batch: Optional[st.SearchStrategy] = None) -> SphereCase:
    """A :class:`SphereCase` from the given (or default) sub-strategies."""
    return SphereCase(
        channels=draw(channel if channel is not None else channels()),
        radius=draw(radius if radius is not None else radii()),
        dtype=draw(dtype if dtype is not None else dtypes()),
        batch_shape=draw(batch if batch is not None else batch_shapes()),
    )


def _unit(g: torch.Generator, shape: Tuple[int, ...]) -> Tensor:
    z = torch.randn(shape, generator=g, dtype=torch.float64)
    return z / z.norm(dim=-1, keepdim=True)


@st.composite
def points(draw, case: Optional[st.SearchStrategy] = None) -> Tuple[SphereCase, Tensor]:
    """``(case, x)`` with ``x: case.shape`` uniform on the sphere of radius ``case.radius``."""
    c = draw(case if case is not None else sphere_cases())
    g = torch.Generator().manual_seed(draw(seeds))
    return c, (c.radius * _unit(g, c.shape)).to(c.dtype)


@dataclass(frozen=True)
class PointPair:
    """Two points on one sphere at a prescribed angle (exact in float64 before the cast)."""

    case: SphereCase
    x: Tensor
    y: Tensor
    theta: float


@st.composite
def point_pairs(draw, case: Optional[st.SearchStrategy] = None, angle: Optional[st.SearchStrategy] = None) -> PointPair:
    """``x`` uniform and ``y = cos θ·x + R sin θ·e`` with ``e`` a uniform unit tangent at x."""
    c = draw(case if case is not None else sphere_cases())
    theta = draw(angle if angle is not None else angles())
    g = torch.Generator().manual_seed(draw(seeds))
    xh = _unit(g, c.shape)
    e = torch.randn(c.shape, generator=g, dtype=torch.float64)
    e = e - (e * xh).sum(-1, keepdim=True) * xh
    e = e / e.norm(dim=-1, keepdim=True)
    y = math.cos(theta) * xh + math.sin(theta) * e
    return PointPair(c, (c.radius * xh).to(c.dtype), (c.radius * y).to(c.dtype), theta)


@st.composite
def tangent_vectors(draw, x: Tensor, max_norm: float = 1.0, allow_zero: bool = True) -> Tensor:
    """A tangent vector at ``x`` (``[..., C]``) with norm in ``[0, max_norm]`` per point (0 included)."""
    g = torch.Generator().manual_seed(draw(seeds))
    x64 = x.to(torch.float64)
    v = torch.randn(x.shape, generator=g, dtype=torch.float64)
    v = v - (v * x64).sum(-1, keepdim=True) / (x64 * x64).sum(-1, keepdim=True) * x64
    v = v / v.norm(dim=-1, keepdim=True)
    frac = draw(st.one_of(st.just(0.0) if allow_zero else st.nothing(), st.floats(1e-6, 1.0)))
    return (frac * max_norm * v).to(x.dtype)
