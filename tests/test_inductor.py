"""The real compiled path: inductor (torch.compile's default backend) on CPU, fullgraph, one small shape.

One compiled function carries the training-path ops (expmap, logmap, geodesic_flow, rfm_loss) so the
suite pays for a single inductor compile (it runs in every profile, ``ci`` included); the remaining ops
(dist, transp, geodesic, projx, proju with a tensor radius) compile in a second test that runs only with
``--hypothesis-profile=thorough`` or ``SPHERICAL_SLOW_TESTS=1``. Compiles use one compile thread: on a
small shared box the worker pool inductor otherwise starts costs more than the few kernels it builds.
"""
from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

from spherical import Hypersphere, geodesic_flow, rfm_loss


def points(S: Hypersphere, B: int = 4, C: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = S.random_uniform(B, C, generator=g).as_subclass(torch.Tensor)
    y = S.random_uniform(B, C, generator=g).as_subclass(torch.Tensor)
    y = torch.cat([x[:1], -x[1:2], y[2:]])  # y = x and y = −x rows take the special branches
    u = 0.5 * S.proju(x, torch.randn(B, C, generator=g))
    return x, y, u


HEAVY = os.environ.get("SPHERICAL_SLOW_TESTS") == "1" or settings.default.max_examples > 100  # thorough


def compiled(fn):
    """``torch.compile(fn, fullgraph=True)`` with the default backend (inductor, C++ codegen on CPU)."""
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True)


@pytest.fixture(autouse=True)
def one_compile_thread():
    import torch._inductor.config as cfg

    with cfg.patch(compile_threads=1):
        yield


def test_training_path_through_inductor_matches_eager():
    S = Hypersphere(3.0)
    x, y, u = points(S)
    t = torch.tensor([[0.0], [0.3], [0.7], [1.0]])
    v = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))

    def step(x, y, u, t, v):
        xt, ut = geodesic_flow(x, y, t, sphere=S)
        loss = rfm_loss(v, xt, ut, lambda_rad=0.1)
        return S.expmap(x, u), S.logmap(x, y), xt, ut, loss.total

    got, want = compiled(step)(x, y, u, t, v), step(x, y, u, t, v)
    for name, a, b in zip(("expmap", "logmap", "xt", "ut", "loss"), got, want):
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-5 * 3.0, msg=name)


@pytest.mark.skipif(not HEAVY, reason="second inductor compile: thorough profile or SPHERICAL_SLOW_TESTS=1")
def test_other_ops_through_inductor_match_eager():
    S = Hypersphere(torch.tensor([[1.0], [2.0], [3.0], [0.5]]))
    x, y, u = points(S, seed=2)

    def ops(x, y, u):
        return S.dist(x, y), S.transp(x, y, u), S.geodesic(x, y, 0.25), S.projx(x + u), S.proju(x, y)

    for name, a, b in zip(("dist", "transp", "geodesic", "projx", "proju"), compiled(ops)(x, y, u), ops(x, y, u)):
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a, b, rtol=2e-5, atol=1e-5 * 3.0, msg=name)
