"""Accuracy and speed of ``spherical.distributions`` (and its log I_ν) against scipy.

Usage: ``python benchmarks/bench_distributions.py``

* log I_ν(κ) for ν = C/2 − 1, C ∈ {2, 3, 4, 8, …, 4096} and κ ∈ logspace(−8, 5, 66), against
  ``log(scipy.special.ive(ν, κ)) + κ`` wherever scipy's value is finite and > 0: max error relative to
  ``max(1, |log I|)``;
* ``VonMisesFisher.log_prob`` (float64) against ``scipy.stats.vonmises_fisher.logpdf`` on the same C and
  κ ∈ logspace(−4, 5, 19), 64 random points each: max relative error where scipy is finite;
* float32 against float64 log_prob (vMF and power spherical), C = 4096, κ up to 1e5: max relative error;
* wall time of ``sample`` and ``log_prob`` for 4096 points on S^1023 (κ = 100), best of 3, CPU.
Writes benchmarks/results/distributions.json.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy import special, stats

from spherical._bessel import log_iv
from spherical.distributions import PowerSpherical, VonMisesFisher

RESULTS = Path(__file__).resolve().parent / "results"
CHANNELS = [2, 3, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]


def bessel_error() -> dict:
    xs = np.logspace(-8, 5, 66)
    worst, n = 0.0, 0
    for c in CHANNELS:
        nu = c / 2 - 1
        with np.errstate(divide="ignore"):
            ref_e = special.ive(nu, xs)
        ok = np.isfinite(ref_e) & (ref_e > 0)
        ref = np.log(ref_e[ok]) + xs[ok]
        got = log_iv(nu, torch.tensor(xs[ok])).numpy()
        worst = max(worst, float((np.abs(got - ref) / np.maximum(1.0, np.abs(ref))).max()))
        n += int(ok.sum())
    return {"max_rel_error": worst, "points": n}


def vmf_error() -> dict:
    g = np.random.default_rng(0)
    worst, n = 0.0, 0
    for c in CHANNELS:
        mu = g.standard_normal(c)
        mu /= np.linalg.norm(mu)
        x = g.standard_normal((64, c))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        for kappa in np.logspace(-4, 5, 19):
            with np.errstate(divide="ignore", over="ignore"):
                ref = stats.vonmises_fisher(mu, kappa).logpdf(x)
            ok = np.isfinite(ref)
            if not ok.any():
                continue
            got = VonMisesFisher(torch.tensor(mu), float(kappa)).log_prob(torch.tensor(x)).numpy()
            worst = max(worst, float((np.abs(got[ok] - ref[ok]) / np.maximum(1.0, np.abs(ref[ok]))).max()))
            n += int(ok.sum())
    return {"max_rel_error": worst, "points": n}


def float32_error() -> dict:
    """Same points (sampled in float64, then rounded) scored in float32 and float64: relative to max(1, |lp|)."""
    torch.manual_seed(0)
    out = {}
    for name, cls in (("vmf", VonMisesFisher), ("power_spherical", PowerSpherical)):
        worst = 0.0
        for kappa in (0.0, 1e-8, 1.0, 1e3, 1e5):
            mu = torch.randn(4096, dtype=torch.float64)
            x = cls(mu, kappa).sample((256,)).float()
            lp64 = cls(mu, kappa).log_prob(x.double())
            lp32 = cls(mu.float(), kappa).log_prob(x).double()
            worst = max(worst, float(((lp32 - lp64).abs() / lp64.abs().clamp_min(1.0)).max()))
        out[name] = worst
    return {"max_rel_error_f32_vs_f64_C4096": out}


def timing() -> dict:
    torch.manual_seed(0)
    out = {}
    mu = torch.randn(1024)
    for name, law in (("vmf", VonMisesFisher(mu, 100.0)), ("power_spherical", PowerSpherical(mu, 100.0))):
        best_s, best_l = float("inf"), float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            x = law.sample((4096,))
            t1 = time.perf_counter()
            law.log_prob(x)
            t2 = time.perf_counter()
            best_s, best_l = min(best_s, t1 - t0), min(best_l, t2 - t1)
        out[name] = {"sample_ms": 1e3 * best_s, "log_prob_ms": 1e3 * best_l}
    return out


def main() -> None:
    res = {"log_iv_vs_scipy": bessel_error(), "vmf_log_prob_vs_scipy": vmf_error(), **float32_error(),
           "timing_4096x1024_cpu": timing(), "threads": torch.get_num_threads()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "distributions.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
