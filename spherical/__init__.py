"""spherical: exact, batched geometry on products of hyperspheres for PyTorch.

>>> from spherical import Hypersphere, geodesic_flow
>>> S = Hypersphere(radius=32.0)
>>> x0, x1 = S.random_uniform(4, 256, 1024), S.random_uniform(4, 256, 1024)
>>> xt, ut = geodesic_flow(x0, x1, torch.rand(4, 1, 1), sphere=S)
"""
from .flow import FlowSample, RFMLoss, dimension_shift, geodesic_flow, rfm_loss, sample_time, time_shift
from .hypersphere import Hypersphere
from .adaptive import ADAPTIVE_METHODS, SolverStats
from .integrate import METHODS, integrate, odeint
from .likelihood import divergence, log_likelihood
from . import distributions  # noqa: E402  (spherical.distributions as an attribute)

__all__ = [
    "Hypersphere", "geodesic_flow", "FlowSample", "rfm_loss", "RFMLoss", "sample_time", "time_shift",
    "dimension_shift", "integrate", "odeint", "METHODS", "ADAPTIVE_METHODS", "SolverStats", "log_likelihood",
    "divergence",
]
