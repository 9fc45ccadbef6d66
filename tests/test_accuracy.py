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
from spherical._kernels import blocked_theta, split_theta

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
    # ... and so does the split path (two fused reductions where θ is well conditioned, exact rows elsewhere)
    d_split = r * split_theta(pair.x, pair.y, r, block_elems=3 * pair.case.channels).squeeze(-1).double()
    rel_s = ((d_split - d_ref).abs() / d_ref).max().item()
    assert rel_s <= BOUND, f"split dist rel. error {rel_s:.2e} at θ={pair.theta:.3g}, C={pair.case.channels}"


def test_split_dist_takes_the_reductions_only_where_well_conditioned(monkeypatch):
    """Rows at θ ∈ [π/3, 2π/3] come from ⟨x, y⟩ and ‖y‖² alone, the rest from the exact difference; both
    agree with float64 to the contract, non-finite rows are NaN, and y = 0 rows equal the exact path's."""
    torch.manual_seed(0)
    S = Hypersphere(3.0)
    x = S.projx(torch.randn(6, 257, 64, dtype=torch.float64))
    theta = torch.linspace(1e-6, math.pi - 1e-4, 6 * 257, dtype=torch.float64).view(6, 257, 1)
    y = S.expmap(x, _unit_tangent(S, x) * theta * 3.0)
    xf, yf = x.float(), y.float()
    ref = S.dist(xf.double(), yf.double())  # float64 on the very float32 inputs
    import spherical._kernels as K

    rows, real = [], K.blocked_theta
    monkeypatch.setattr(K, "blocked_theta", lambda a, b, r, be=None: rows.append(a.shape[0]) or real(a, b, r, be))
    got = 3.0 * split_theta(xf, yf, 3.0).squeeze(-1).double()
    monkeypatch.setattr(K, "blocked_theta", real)
    ill = int(((theta < math.pi / 3 - 1e-3) | (theta > 2 * math.pi / 3 + 1e-3)).sum())
    assert ill <= rows[0] <= ill + 4 and len(rows) == 1  # only the ill-conditioned rows take the exact pass
    assert ((got - ref).abs() / ref).max().item() <= BOUND
    yf[0, 0, 5] = float("inf")
    yf[1, 0] = 0.0
    out = split_theta(xf, yf, 3.0)
    assert torch.isnan(out[0, 0]).all() and out[1, 0].item() == blocked_theta(xf[1, :1], yf[1, :1], 3.0).item()
    assert torch.isfinite(out[2:]).all()
    # every row ill-conditioned (near-identical points): one exact pass over the whole batch, same values
    near = S.projx(xf + 1e-4 * torch.randn_like(xf))
    rows.clear()
    monkeypatch.setattr(K, "blocked_theta", lambda a, b, r, be=None: rows.append(a.shape[0]) or real(a, b, r, be))
    got = split_theta(xf, near, 3.0)
    monkeypatch.setattr(K, "blocked_theta", real)
    assert rows == [6 * 257] and torch.equal(got, real(xf, near, 3.0))


def _unit_tangent(S, x):
    v = S.proju(x, torch.randn_like(x))
    return v / v.norm(dim=-1, keepdim=True)


def test_float32_smallest_distances_are_resolved():
    """No floor under distances: geoopt's clamp would return ≥ 0.014 rad at θ = 1e-6."""
    S = Hypersphere(1.0)
    pair_x = torch.tensor([1.0, 0.0, 0.0])
    for theta in (1e-6, 1e-5, 1e-4):
        y = torch.tensor([math.cos(theta), math.sin(theta), 0.0], dtype=torch.float64).float()
        d_ref, _ = reference(pair_x, y, 1.0)
        assert abs(S.dist(pair_x, y).double() - d_ref) / d_ref < BOUND
