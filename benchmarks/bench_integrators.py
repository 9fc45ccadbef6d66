"""Error vs number of velocity evaluations for every integrator in `spherical`, plus torchdiffeq's dopri5.

Usage: ``python benchmarks/bench_integrators.py``

Problems (float64, 16 points on S^7 of radius 1):
  * rotation: ``v(x, t) = (1 + t)·A·x`` with A skew-symmetric, ``‖A‖₂ = 1``; exact ``x(1) = expm(1.5A)·x0``.
  * ambient: ``v(x, t) = tanh(W x)·(1 + t) + 2x`` (not tangent: the integrators project it); reference:
    rk4 with 4096 steps.
Meta's flow_matching ``RiemannianODESolver`` joins if it is installed (it is not a dependency).
Writes benchmarks/results/integrators.png and integrators.json (observed orders, rk4 steps to 1e-6).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from spherical import METHODS, Hypersphere, integrate, odeint  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
STEPS = [4, 8, 16, 32, 64, 128]


def problems(C: int = 8, n: int = 16):
    g = torch.Generator().manual_seed(0)
    S = Hypersphere(1.0)
    x0 = S.random_uniform(n, C, dtype=torch.float64, generator=g)
    A = torch.randn(C, C, dtype=torch.float64, generator=g)
    A = A - A.T
    A = A / torch.linalg.matrix_norm(A, ord=2)
    W = torch.randn(C, C, dtype=torch.float64, generator=g)
    rot = lambda x, t: (1 + t) * (x @ A.T)  # noqa: E731
    amb = lambda x, t: torch.tanh(x @ W.T) * (1 + t) + 2 * x  # noqa: E731
    exact_rot = x0 @ torch.linalg.matrix_exp(1.5 * A).T
    exact_amb = integrate(amb, x0, torch.linspace(0, 1, 4097, dtype=torch.float64), sphere=S, method="rk4")
    return S, x0, {"rotation": (rot, exact_rot), "ambient": (amb, exact_amb)}


def run():
    S, x0, probs = problems()
    out = {}
    for pname, (v, exact) in probs.items():
        rows = {}
        for m in METHODS:
            pts = []
            for n in STEPS:
                x, nfe = integrate(v, x0, torch.linspace(0, 1, n + 1, dtype=torch.float64), sphere=S, method=m,
                                   return_nfe=True)
                pts.append({"steps": n, "nfe": nfe, "error": (x - exact).norm(dim=-1).max().item()})
            errs = [p["error"] for p in pts]
            orders = [math.log2(errs[i] / errs[i + 1]) for i in range(len(errs) - 1) if errs[i + 1] > 1e-13]
            rows[m] = {"points": pts, "observed_order": sum(orders[1:4]) / len(orders[1:4])}
        dp = []
        for tol in (1e-3, 1e-5, 1e-7, 1e-9):
            x, nfe = odeint(v, x0, torch.tensor([0.0, 1.0], dtype=torch.float64), sphere=S, rtol=tol, atol=tol,
                            return_nfe=True)
            dp.append({"tol": tol, "nfe": nfe, "error": (x - exact).norm(dim=-1).max().item()})
        rows["odeint(dopri5)"] = {"points": dp}
        if importlib.util.find_spec("flow_matching") is not None:  # optional comparison
            from flow_matching.solver import RiemannianODESolver
            from flow_matching.utils.manifolds import Sphere as FMSphere

            class _V(torch.nn.Module):
                def forward(self, x, t):
                    return v(x, t)
            pts = []
            for n in STEPS:
                solver = RiemannianODESolver(FMSphere(), _V())
                x = solver.sample(x0, step_size=1.0 / n, method="midpoint", time_grid=torch.tensor([0.0, 1.0], dtype=torch.float64))
                pts.append({"steps": n, "nfe": 2 * n, "error": (x - exact).norm(dim=-1).max().item()})
            rows["flow_matching RiemannianODESolver(midpoint)"] = {"points": pts}
        out[pname] = rows
    rk4 = out["rotation"]["rk4"]["points"]
    out["rk4_steps_to_1e-6_rotation"] = next((p["steps"] for p in rk4 if p["error"] < 1e-6), None)
    # the smallest grid that reaches 1e-6, searched step by step
    for n in range(2, 65):
        x = integrate(probs["rotation"][0], x0, torch.linspace(0, 1, n + 1, dtype=torch.float64), sphere=S,
                      method="rk4")
        if (x - probs["rotation"][1]).norm(dim=-1).max().item() < 1e-6:
            out["rk4_min_steps_to_1e-6_rotation"] = n
            break
    return out


def plot(res, path):
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, pname in zip(axes, ("rotation", "ambient")):
        for m, r in res[pname].items():
            pts = r["points"]
            style = "o--" if m.startswith("odeint") else ("s:" if m.startswith("projected") else "o-")
            label = m + (f" (p≈{r['observed_order']:.2f})" if "observed_order" in r else "")
            ax.loglog([p["nfe"] for p in pts], [max(p["error"], 1e-16) for p in pts], style, ms=3, label=label)
        ax.axhline(1e-6, color="k", lw=0.8, ls="--")
        ax.set_xlabel("velocity evaluations")
        ax.set_ylabel("max error at t = 1")
        ax.set_title({"rotation": "rotation flow (exact solution)", "ambient": "non-tangent ambient field"}[pname])
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    res = run()
    plot(res, args.out / "integrators.png")
    (args.out / "integrators.json").write_text(json.dumps(res, indent=1))
    print("| method | order (rotation) | order (ambient) | error @16 steps (rotation) |")
    print("|---|---|---|---|")
    for m in METHODS:
        r, a = res["rotation"][m], res["ambient"][m]
        e16 = next(p["error"] for p in r["points"] if p["steps"] == 16)
        print(f"| {m} | {r['observed_order']:.2f} | {a['observed_order']:.2f} | {e16:.2e} |")
    for p_ in res["rotation"]["odeint(dopri5)"]["points"]:
        print(f"odeint dopri5 tol={p_['tol']:.0e}: nfe={p_['nfe']}, error={p_['error']:.2e}")
    print(f"rk4 reaches 1e-6 on the rotation flow in {res.get('rk4_min_steps_to_1e-6_rotation')} steps")


if __name__ == "__main__":
    main()
