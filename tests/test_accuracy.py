"""The float32 accuracy contract: dist and logmap within 1e-5 relative of float64 on the same inputs.

Range: θ from 1e-6 to π − 1e-4, C from 2 to 1024, R from 1e-2 to 1e3. The reference is the float64
evaluation of the textbook formulas on the *same float32 inputs* (so input rounding is not counted).
"""
from __future__ import annotations

import math

import torch
from hypothesis import given, strategies as st

from spherical import Hypersphere
from spherical import strategies as sst
from spherical._kernels import blocked_theta

BOUND = 1e-5


def reference(x32: torch.Tensor, y32: torch.Tensor, r: float):
    """float64 angle and log between the float32 vectors, textbook formulas."""
    x, y = x32.double(), y32.double()
    nx = x.norm(dim=-1, keepdim=True)
    yperp = y - (y * x).sum(-1, keepdim=True) / nx**2 * x
    theta = torch.atan2(yperp.norm(dim=-1, keepdim=True), (x * y).sum(-1, keepdim=True) / nx)
    log = r * theta * yperp / yperp.norm(dim=-1, keepdim=True)
    return r * theta.squeeze(-1), log


contract_pairs = sst.point_pairs(
    case=sst.sphere_cases(
        dtype=st.just(torch.float32),
        channel=st.one_of(st.sampled_from([2, 3, 1024]), st.integers(2, 1024)),
        radius=sst.radii(1e-2, 1e3),
        batch=st.just((8,)),
    ),
    angle=st.one_of(
        st.sampled_from([1e-6, math.pi - 1e-4]),
        st.floats(-6.0, 0.0).map(lambda e: 10.0**e),
        st.floats(-4.0, 0.0).map(lambda e: math.pi - 10.0**e),
        st.floats(1e-6, math.pi - 1e-4),
    ),
)


@given(contract_pairs)
def test_float32_dist_and_logmap_relative_error(pair):
    r = pair.case.radius
    S = Hypersphere(r)
    d_ref, log_ref = reference(pair.x, pair.y, r)
    d = S.dist(pair.x, pair.y).double()
    log = S.logmap(pair.x, pair.y).double()
    rel_d = ((d - d_ref).abs() / d_ref).max().item()
    rel_log = ((log - log_ref).norm(dim=-1) / log_ref.norm(dim=-1)).max().item()
    assert rel_d <= BOUND, f"dist rel. error {rel_d:.2e} at θ={pair.theta:.3g}, C={pair.case.channels}, R={r:.3g}"
    assert rel_log <= BOUND, f"logmap rel. error {rel_log:.2e} at θ={pair.theta:.3g}, C={pair.case.channels}"
    # the cache-blocked eager dist large batches take (blocks of 3 rows here) keeps the same contract
    d_blocked = r * blocked_theta(pair.x, pair.y, r, block_elems=3 * pair.case.channels).squeeze(-1).double()
    rel_b = ((d_blocked - d_ref).abs() / d_ref).max().item()
    assert rel_b <= BOUND, f"blocked dist rel. error {rel_b:.2e} at θ={pair.theta:.3g}, C={pair.case.channels}"


def test_float32_smallest_distances_are_resolved():
    """No floor under distances: geoopt's clamp would return ≥ 0.014 rad at θ = 1e-6."""
    S = Hypersphere(1.0)
    pair_x = torch.tensor([1.0, 0.0, 0.0])
    for theta in (1e-6, 1e-5, 1e-4):
        y = torch.tensor([math.cos(theta), math.sin(theta), 0.0], dtype=torch.float64).float()
        d_ref, _ = reference(pair_x, y, 1.0)
        assert abs(S.dist(pair_x, y).double() - d_ref) / d_ref < BOUND
