"""log I_ν(x) and A_ν(x) = I_{ν+1}/I_ν (``spherical._bessel``) against scipy and mpmath, and their gradients."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from spherical._bessel import bessel_ratio, log_iv, log_iv_scaled

# Half the selected profile's examples (ci: 30, dev: 10, thorough: 1500): each example draws C up to 4096.
HALF_PROFILE = settings(max_examples=max(10, settings.default.max_examples // 2))

# Orders ν = C/2 − 1 for C = 2, 3, 4, 5, 12, 59, 60, 61, 62, 100, 1024, 4096 (both sides of the Debye switch at 30).
NUS = [0.0, 0.5, 1.0, 1.5, 5.0, 28.5, 29.0, 29.5, 30.0, 49.0, 511.0, 2047.0]
XS = np.concatenate([[0.0], np.logspace(-8, 5, 40), [29.0, 30.0, 31.0, 2047.0, 2048.0]])


def _scipy():
    return pytest.importorskip("scipy.special")


def test_log_iv_matches_scipy_on_grid():
    """|log I_ν(x) − log(ive(ν, x)) − x| ≤ 1e-12·max(1, |log I|) wherever scipy's ive is finite and > 0.

    (The brief asks for 1e-6 relative; the scheme reaches round-off, so the test holds it to 1e-12.)
    """
    special = _scipy()
    checked = 0
    for nu in NUS:
        ref_e = special.ive(nu, XS)
        ok = np.isfinite(ref_e) & (ref_e > 0) & (ref_e < np.inf)
        ref = np.log(ref_e[ok]) + XS[ok]
        got = log_iv(nu, torch.tensor(XS[ok])).numpy()
        err = np.abs(got - ref) / np.maximum(1.0, np.abs(ref))
        assert err.max() <= 1e-12, (nu, XS[ok][err.argmax()], err.max())
        checked += ok.sum()
    assert checked > 400                                  # most of the 12 × 46 grid is inside scipy's range


def test_bessel_ratio_matches_scipy_on_grid():
    """A_ν(x) = ive(ν+1, x)/ive(ν, x) to 1e-10 relative where both are normal numbers; A_ν(0) = 0."""
    special = _scipy()
    for nu in NUS:
        num, den = special.ive(nu + 1, XS), special.ive(nu, XS)
        ok = (num > 1e-300) & (den > 1e-300) & np.isfinite(num) & np.isfinite(den)
        got = bessel_ratio(nu, torch.tensor(XS)).numpy()
        np.testing.assert_allclose(got[ok], num[ok] / den[ok], rtol=1e-10, atol=0)
        assert got[0] == 0.0 and np.all((got >= 0) & (got < 1))


@pytest.mark.parametrize("nu,x", [(2047.0, 1e-8), (2047.0, 1e-3), (2047.0, 1.0), (1000.0, 1e4),
                                  (511.0, 1e-8), (29.5, 1e-8), (0.5, 1e5), (0.0, 1e5), (1.0, 1e-8)])
def test_log_iv_matches_mpmath_at_extremes(nu, x):
    """Where scipy under- or overflows (I_2047(1e-8) ≈ e^{−52690}), mpmath at 40 digits decides: 1e-13 relative."""
    mpmath = pytest.importorskip("mpmath")
    with mpmath.workdps(40):
        ref = float(mpmath.log(mpmath.besseli(nu, x, maxterms=10**6)))
        ratio = float(mpmath.besseli(nu + 1, x, maxterms=10**6) / mpmath.besseli(nu, x, maxterms=10**6))
    got = float(log_iv(nu, torch.tensor([x], dtype=torch.float64)))
    assert got == pytest.approx(ref, rel=1e-13, abs=1e-13)
    assert float(bessel_ratio(nu, torch.tensor([x], dtype=torch.float64))) == pytest.approx(ratio, rel=1e-10)


def test_log_iv_at_zero_is_the_series_limit():
    """log I_ν(x) − ν log x → −ν log 2 − lgamma(ν+1) at x = 0 (exactly the value returned there)."""
    for nu in (0.0, 0.5, 3.0, 29.0, 2047.0):
        got = float(log_iv_scaled(nu, torch.zeros(1, dtype=torch.float64)))
        assert got == pytest.approx(-nu * math.log(2) - math.lgamma(nu + 1), rel=1e-13, abs=1e-13)
    assert abs(float(log_iv(0.0, torch.zeros(1)))) < 1e-13 and float(log_iv(2.0, torch.zeros(1))) == -math.inf


@HALF_PROFILE
@given(st.sampled_from(NUS + [3.5, 127.0]), st.floats(1e-6, 1e5), st.sampled_from([torch.float32, torch.float64]))
def test_gradients_are_the_recurrence_identities(nu, x, dtype):
    """d/dx log I_ν = A_ν + ν/x (finite-difference-free identity), and dA/dx = 1 − A² − (2ν+1)A/x ≥ 0."""
    xt = torch.tensor([x], dtype=dtype, requires_grad=True)
    (g,) = torch.autograd.grad(log_iv_scaled(nu, xt).sum(), xt)
    a = bessel_ratio(nu, xt.detach().double())
    assert g.dtype == dtype and torch.isfinite(g).all()
    torch.testing.assert_close(g.double(), a - 1.0, rtol=1e-6, atol=1e-7)
    (da,) = torch.autograd.grad(bessel_ratio(nu, xt).sum(), xt)
    assert torch.isfinite(da).all() and float(da) >= -1e-6
    ref = 1.0 - a * a - (2 * nu + 1) * a / x  # the recurrence identity itself
    torch.testing.assert_close(da.double(), ref, rtol=1e-4, atol=1e-6)


def test_gradcheck_float64():
    """Analytic gradients (and second derivatives of log I) agree with finite differences in float64."""
    x = torch.tensor([1e-3, 0.7, 3.0, 45.0, 900.0], dtype=torch.float64, requires_grad=True)
    for nu in (0.0, 1.5, 29.5, 511.0):
        assert torch.autograd.gradcheck(lambda t: log_iv_scaled(nu, t), (x,))
        assert torch.autograd.gradgradcheck(lambda t: log_iv_scaled(nu, t), (x,))
        assert torch.autograd.gradcheck(lambda t: bessel_ratio(nu, t), (x,))


def test_no_overflow_for_any_finite_argument():
    """Huge arguments (float32 max) and C = 4096 stay finite in both dtypes; bad orders raise."""
    for dtype in (torch.float32, torch.float64):
        x = torch.tensor([0.0, 1e-30, 1e5, 1e30, torch.finfo(torch.float32).max], dtype=dtype)
        for nu in (0.0, 2047.0):
            assert torch.isfinite(log_iv_scaled(nu, x)).all() and torch.isfinite(bessel_ratio(nu, x)).all()
    with pytest.raises(ValueError, match="order nu must be a finite float >= 0"):
        log_iv(-1.0, torch.ones(1))


# Mid-range arguments (x ~ ν, both sides of the Debye switch at ν = 30), where the truncation of the Debye
# series matters most: measured error ≤ 1.1e-14 with DEBYE_TERMS = 9 and 2.2e-13 with one term fewer
# (the module documents 3.6e-14 as the worst case over C = 2 … 4096), so 5e-14 separates the two.
MID_NUS = [0.0, 1.5, 5.0, 28.5, 29.5, 30.0, 31.0, 49.0]
MID_XS = [10.0, 20.0, 30.0, 40.0, 60.0]


def test_log_iv_holds_its_documented_accuracy_at_mid_range_arguments():
    mpmath = pytest.importorskip("mpmath")
    worst = 0.0
    for nu in MID_NUS:
        got = log_iv(nu, torch.tensor(MID_XS, dtype=torch.float64)).tolist()
        with mpmath.workdps(40):
            refs = [float(mpmath.log(mpmath.besseli(nu, x))) for x in MID_XS]
        worst = max(worst, max(abs(g - r) / max(1.0, abs(r)) for g, r in zip(got, refs)))
    assert worst <= 5e-14, worst
