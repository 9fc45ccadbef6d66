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
    torch.manual_seed(1)
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


# ---------------------------------------------------------------------------------------------- likelihoods
def _counted(v):
    calls = []

    def f(x, t):
        calls.append(float(t))
        return v(x, t)

    return f, calls


def test_off_sphere_input_fails_before_any_integration_naming_the_input():
    S = Hypersphere(2.0)
    x = S.random_uniform(3, 4, dtype=F64, generator=torch.Generator().manual_seed(0)).as_subclass(torch.Tensor)
    x = x.clone()
    x[1] *= 1.01
    f, calls = _counted(lambda y, t: torch.roll(y, 1, -1))
    with pytest.raises(ValueError, match=r"x must lie on the sphere .* x\[1\] has ‖x‖ = 2\.02 against R = 2") as e:
        log_likelihood(f, x, torch.linspace(0, 1, 5, dtype=F64), sphere=S, method="dopri5")
    assert calls == [] and "\n" not in str(e.value)


def test_a_decreasing_grid_is_refused_before_any_integration():
    """log_likelihood integrates data (t[0]) → noise (t[-1]); the sampling grid linspace(1, 0) of integrate
    would silently compute another quantity."""
    S = Hypersphere(1.0)
    x = S.random_uniform(2, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    f, calls = _counted(lambda y, t: torch.roll(y, 1, -1))
    with pytest.raises(ValueError, match=r"t must increase from the data end to the noise end .* t\[0\]=1 > t\[-1\]=0"):
        log_likelihood(f, x, torch.linspace(1, 0, 5, dtype=F64), sphere=S)
    assert calls == []
    integrate(f, x, torch.linspace(1, 0, 5, dtype=F64), sphere=S)  # sampling direction stays valid for integrate
    assert len(calls) == 4


def test_probes_has_one_meaning_per_function():
    """log_likelihood(probes=int) counts probes; divergence takes the vectors as probe_vectors= (its old
    spelling probes=tensor still works, with a FutureWarning; an int there is a one-line error)."""
    S = Hypersphere(1.5)
    g = torch.Generator().manual_seed(2)
    x = S.random_uniform(3, 4, dtype=F64, generator=g)
    W = torch.randn(4, 4, dtype=F64, generator=g)
    v = lambda y, t: torch.tanh(y @ W.T)  # noqa: E731
    eps = torch.randn(5, 3, 4, dtype=F64, generator=g)
    _, d_new = divergence(v, x, torch.tensor(0.0), sphere=S, method="hutchinson", probe_vectors=eps)
    with pytest.warns(FutureWarning, match="probe_vectors"):
        _, d_old = divergence(v, x, torch.tensor(0.0), sphere=S, method="hutchinson", probes=eps)
    assert torch.equal(d_new, d_old)
    with pytest.raises(ValueError, match="probes=4 is log_likelihood's probe count"):
        divergence(v, x, torch.tensor(0.0), sphere=S, method="hutchinson", probes=4)
    with pytest.raises(ValueError, match="probes must be a positive int"):
        log_likelihood(v, x, torch.linspace(0, 1, 3, dtype=F64), sphere=S, divergence="hutchinson", probes=eps)


def test_divergence_chunk_is_a_memory_knob_only():
    """tr(P J P) is the same whatever the number of VJPs per backward pass; the Jacobian is in x."""
    S = Hypersphere(1.5)
    g = torch.Generator().manual_seed(3)
    x = S.random_uniform(2, 3, 5, dtype=F64, generator=g)
    W = torch.randn(5, 5, dtype=F64, generator=g)
    v = lambda y, t: torch.tanh(y @ W.T) * (1 + t)  # noqa: E731
    divs = [divergence(v, x, torch.tensor(0.5, dtype=F64), sphere=S, chunk=c)[1] for c in (1, 4, 256)]
    torch.testing.assert_close(divs[0], divs[1], rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(divs[0], divs[2], rtol=1e-13, atol=1e-13)
    # by hand: tr(P J P) with J the Jacobian of P_y v(y) in y, per token, summed over the sample's tokens
    def proj_field(y):
        return S.proju(y, v(y, torch.tensor(0.5, dtype=F64)))
    want = []
    for b in range(2):
        J = torch.autograd.functional.jacobian(proj_field, x[b].as_subclass(torch.Tensor)).reshape(15, 15)
        P = torch.block_diag(*[torch.eye(5, dtype=F64) - torch.outer(p, p) / 1.5**2 for p in x[b]])
        want.append(torch.trace(P @ J @ P))
    torch.testing.assert_close(divs[0], torch.stack(want), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="chunk must be a positive int"):
        divergence(v, x, torch.tensor(0.0), sphere=S, chunk=0)
