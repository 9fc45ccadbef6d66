"""spherical: exact, batched geometry on products of hyperspheres for PyTorch.

>>> from spherical import Hypersphere, geodesic_flow
"""
from .hypersphere import Hypersphere

__all__ = ["Hypersphere"]
