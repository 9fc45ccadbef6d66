"""An outside client's sharp edges (issue 23): samplers at ±e₁ and −loc, ``generator=`` everywhere, errors
that say what to use instead, one meaning per argument name, inputs checked before any integration."""
from __future__ import annotations

import math

import pytest
import torch

from spherical import Hypersphere, integrate, log_likelihood
from spherical.distributions import PowerSpherical, Uniform, VonMisesFisher
from spherical.likelihood import divergence

F64 = torch.float64
LAWS = [VonMisesFisher, PowerSpherical]


def _draw(law, n, gen):
    return law.sample((n,), generator=gen)


@pytest.mark.parametrize("cls", LAWS)
@pytest.mark.parametrize("where", ["+e1", "-e1", "-loc"])
def test_samplers_at_plus_minus_e1_and_minus_loc(cls, where):
    """The Householder reflection that carries e₁ to μ degenerates at μ = ±e₁ if done naively: samples must
    still be on the sphere, have ⟨x̂, μ⟩ with the law's mean resultant length, and an isotropic rest."""
    C, n, kappa, R = 5, 20000, 4.0, 1.5
    g = torch.Generator().manual_seed(3)
    e1 = torch.zeros(C, dtype=F64)
    e1[0] = 1.0
    loc = {"+e1": e1, "-e1": -e1, "-loc": -torch.nn.functional.normalize(torch.randn(C, dtype=F64, generator=g),
                                                                            dim=0)}[where]
    law = cls(loc, torch.tensor(kappa, dtype=F64), radius=R)
    x = _draw(law, n, g) / R
    assert torch.isfinite(x).all()
    torch.testing.assert_close(x.norm(dim=-1), torch.ones(n, dtype=F64), rtol=1e-12, atol=0)
    w = x @ loc
    A = float(law.resultant_length)
    assert abs(w.mean().item() - A) < 4 * w.std().item() / math.sqrt(n), (w.mean().item(), A)
    rest = x - w[:, None] * loc                      # orthogonal part: mean 0, covariance ∝ (I − μμᵀ)
    assert (rest @ loc).abs().max().item() < 1e-12
    assert rest.mean(0).abs().max().item() < 0.03
    cov = rest.T @ rest / n
    P = torch.eye(C, dtype=F64) - torch.outer(loc, loc)
    want = (1 - (w * w).mean()) / (C - 1) * P
    assert (cov - want).abs().max().item() < 0.015, cov


@pytest.mark.parametrize("make", [lambda: Uniform(4, 2.0), lambda: VonMisesFisher(torch.ones(4), 3.0),
                                  lambda: PowerSpherical(torch.ones(4), 3.0)])
def test_every_sampler_takes_a_generator(make):
    law = make()
    a = law.sample((6,), generator=torch.Generator().manual_seed(7))
    torch.manual_seed(123)  # the global generator must not matter
    b = law.sample((6,), generator=torch.Generator().manual_seed(7))
    c = law.sample((6,), generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    if law.has_rsample:
        r = law.rsample((6,), generator=torch.Generator().manual_seed(7))
        assert torch.equal(r, a)


def test_power_spherical_rsample_still_reaches_the_parameters():
    loc = torch.tensor([1.0, 2.0, 0.5], requires_grad=True)
    k = torch.tensor(5.0, requires_grad=True)
    x = PowerSpherical(loc, k).rsample((64,), generator=torch.Generator().manual_seed(0))
    x[:, 0].mean().backward()
    assert loc.grad is not None and k.grad is not None and k.grad.abs().item() > 0


def test_vmf_rsample_says_what_to_use_instead():
    with pytest.raises(NotImplementedError, match=r"use \.sample\(\) for draws, or PowerSpherical"):
        VonMisesFisher(torch.ones(3), 2.0).rsample()


@pytest.mark.parametrize("cls", LAWS)
def test_mean_and_resultant_length_are_both_properties_and_the_method_spelling_agrees(cls):
    law = cls(torch.tensor([[0.0, 3.0, 4.0]]), torch.tensor([2.5]), radius=2.0)
    assert isinstance(law.resultant_length, torch.Tensor) and law.resultant_length.shape == (1,)
    torch.testing.assert_close(law.mean.norm(dim=-1), 2.0 * law.resultant_length)
    torch.testing.assert_close(law.mean_resultant_length(), law.resultant_length)
