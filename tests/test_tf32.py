"""The sphere ops keep their float32 contract whatever the global TF32 / matmul-precision settings.

Training scripts turn TF32 on (``--tf32``, the DiT's default on CUDA) and users call
``torch.set_float32_matmul_precision("medium")``; both let float32 matmuls run with a 10-bit (TF32) or
7-bit (bf16) mantissa. ``spherical`` must not inherit that: its inner products take no reduced-precision
matmul (checked op by op with a dispatch recorder, so the test bites on any CPU), and dist/logmap/rfm_loss/
geodesic_flow stay within the float32 contract (1e-5 relative of float64 on the same inputs) on CPU and,
when one is present, on a GPU with TF32 on. The settings are restored afterwards (checked).
"""
from __future__ import annotations

import contextlib
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from spherical import Hypersphere, geodesic_flow, rfm_loss
from spherical import strategies as sst

BOUND = 1e-5
_MATMULS = {torch.ops.aten.mm.default, torch.ops.aten.bmm.default, torch.ops.aten.addmm.default,
            torch.ops.aten.baddbmm.default, torch.ops.aten.matmul.default, torch.ops.aten.dot.default}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _flags() -> tuple:
    b = torch.backends
    return (b.fp32_precision, b.cuda.matmul.fp32_precision, b.mkldnn.matmul.fp32_precision,
            b.cudnn.conv.fp32_precision)


@contextlib.contextmanager
def tf32_and_medium():
    """TF32 on and float32 matmul precision "medium" inside; every flag restored afterwards (checked)."""
    before, legacy = _flags(), (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32)
    torch.set_float32_matmul_precision("medium")
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(legacy[0])
        torch.backends.cuda.matmul.allow_tf32 = legacy[1]
        b = torch.backends
        b.fp32_precision, b.cuda.matmul.fp32_precision, b.mkldnn.matmul.fp32_precision = before[:3]
        b.cudnn.conv.fp32_precision = before[3]
    assert _flags() == before
    assert (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32) == legacy


@pytest.fixture
def reduced_precision():
    with tf32_and_medium():
        yield


class _MatmulRecorder(TorchDispatchMode):
    """Records the dtypes of every matmul-family aten op dispatched inside it."""

    def __init__(self):
        super().__init__()
        self.seen: list[torch.dtype] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in _MATMULS:
            self.seen.append(args[0].dtype)
        return func(*args, **(kwargs or {}))


def _run_ops(x, y, v):
    S = Hypersphere(float(x.norm(dim=-1).mean()))
    S.dist(x, y), S.logmap(x, y), S.inner(x, v, v), S.transp(x, y, S.proju(x, v)), S.expmap(x, S.proju(x, v))
    flow = geodesic_flow(x, y, torch.full(x.shape[:-1] + (1,), 0.3), sphere=S)
    return rfm_loss(v, flow.xt, flow.ut)


def test_matmul_exact_follows_the_global_flags(reduced_precision):
    from spherical._kernels import matmul_exact

    assert not matmul_exact(torch.float32)
    assert matmul_exact(torch.float64) and matmul_exact(torch.bfloat16)


def test_matmul_exact_holds_at_default_settings():
    from spherical._kernels import matmul_exact

    assert matmul_exact(torch.float32)


def test_no_reduced_precision_matmul_reaches_the_sphere_ops(reduced_precision):
    g = torch.Generator().manual_seed(0)
    x, y, v = (torch.randn(64, 256, generator=g) for _ in range(3))
    S = Hypersphere(2.0)
    x, y = S.projx(x), S.projx(y)
    with _MatmulRecorder() as rec:
        _run_ops(x, y, v)
    assert torch.float32 not in rec.seen, f"float32 matmuls under TF32/medium: {rec.seen}"
    with _MatmulRecorder() as rec64:  # float64 is unaffected and keeps the fast matmul path
        _run_ops(x.double(), y.double(), v.double())
    assert torch.float64 in rec64.seen


def _reference(x, y, r):
    x, y = x.double(), y.double()
    nx = x.norm(dim=-1, keepdim=True)
    yperp = y - (y * x).sum(-1, keepdim=True) / nx**2 * x
    theta = torch.atan2(yperp.norm(dim=-1, keepdim=True), (x * y).sum(-1, keepdim=True) / nx)
    return r * theta.squeeze(-1), r * theta * yperp / yperp.norm(dim=-1, keepdim=True)


pairs = sst.point_pairs(
    case=sst.sphere_cases(dtype=st.just(torch.float32), channel=st.sampled_from([3, 256, 1024]),
                          radius=sst.radii(1e-1, 1e2), batch=st.just((8,))),
    angle=st.one_of(st.floats(-5.0, 0.0).map(lambda e: 10.0**e), st.floats(1e-4, math.pi - 1e-3)))


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=25, deadline=None)
@given(pair=pairs)
def test_float32_contract_with_tf32_on(device, pair):
    r = pair.case.radius
    S = Hypersphere(r)
    x, y = pair.x.to(device), pair.y.to(device)
    d_ref, log_ref = _reference(pair.x, pair.y, r)
    with tf32_and_medium():
        d = S.dist(x, y).double().cpu()
        log = S.logmap(x, y).double().cpu()
    assert ((d - d_ref).abs() / d_ref).max().item() <= BOUND
    assert ((log - log_ref).norm(dim=-1) / log_ref.norm(dim=-1)).max().item() <= BOUND


@pytest.mark.parametrize("device", DEVICES)
def test_rfm_loss_float32_with_tf32_on(reduced_precision, device):
    """rfm_loss (radial split through an inner product) within 1e-5 of float64 at the paper's shape."""
    g = torch.Generator().manual_seed(1)
    R = 32.0
    S = Hypersphere(R)
    x0, x1 = S.projx(torch.randn(4, 256, 1024, generator=g)), S.projx(torch.randn(4, 256, 1024, generator=g))
    t = torch.rand(4, 1, 1, generator=g)
    v = torch.randn(4, 256, 1024, generator=g)
    ref_flow = geodesic_flow(x0.double(), x1.double(), t.double(), sphere=Hypersphere(R))
    ref = rfm_loss(v.double(), ref_flow.xt, ref_flow.ut)
    flow = geodesic_flow(x0.to(device), x1.to(device), t.to(device), sphere=S)
    got = rfm_loss(v.to(device), flow.xt, flow.ut)
    assert (flow.xt.double().cpu() - ref_flow.xt).norm() / ref_flow.xt.norm() <= BOUND
    assert (flow.ut.double().cpu() - ref_flow.ut).norm() / ref_flow.ut.norm() <= BOUND
    for a, b in ((got.tangent, ref.tangent), (got.radial, ref.radial)):
        assert abs(a.double().item() - b.item()) / b.item() <= BOUND
