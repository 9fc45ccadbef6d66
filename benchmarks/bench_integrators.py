"""Error vs number of velocity evaluations for every integrator in `spherical`, plus torchdiffeq's dopri5.

Usage: ``python benchmarks/bench_integrators.py`` (``--dit-steps`` sets the toy DiT's training steps)

Problems (float64):
  * rotation: 16 points on S^7 of radius 1, ``v(x, t) = (1 + t)·A·x`` with A skew-symmetric, ``‖A‖₂ = 1``;
    exact ``x(1) = expm(1.5A)·x0``.
  * ambient: same points, ``v(x, t) = tanh(W x)·(1 + t) + 2x`` (not tangent: the integrators project it);
    reference: rk4 with 4096 steps.
  * dit, dit_smooth: the field of a tiny LightningDiT trained with Riemannian flow matching
    (``experiments/toy_rfm_vs_fm.py``'s toy target: 16 tokens on S^7_R, 4 joint modes) for ``--dit-steps`` steps,
    with time-embedding scale 1000 (the paper's) and 1; 16 samples integrated from uniform noise at t = 1 to
    t = 0 in float64; reference: rk4 with 1000 steps.
Fixed grids (4…128 steps) for every ``METHODS`` entry; tolerance sweeps (1e-2…1e-10) for the adaptive pairs
``dopri5``/``bosh3`` of ``integrate`` and for ``odeint`` (torchdiffeq dopri5 on the projected field).
Error = max over points of ‖x − x_ref‖/R at the end. The NFE ratio ours/odeint at equal error is read off
the two error-vs-NFE curves (log-log linear interpolation) at every error level both sweeps reach.
Meta's flow_matching ``RiemannianODESolver`` joins if it is installed (it is not a dependency).
Writes benchmarks/results/integrators.png and integrators.json (observed orders, rk4 steps to 1e-6,
adaptive sweeps, NFE ratios).
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

from spherical import ADAPTIVE_METHODS, METHODS, Hypersphere, integrate, odeint  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
STEPS = [4, 8, 16, 32, 64, 128]
TOLS = [10.0 ** (-k / 2) for k in range(4, 21)]  # 1e-2 … 1e-10


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


def dit_problem(train_steps: int = 300, n: int = 16, ref_steps: int = 1000, time_scale: float = 1000.0):
    """A tiny RFM-trained LightningDiT's field (float64), noise x(1) and the ``ref_steps``-step rk4 solution at t = 0.

    Training is ``experiments/toy_rfm_vs_fm.py``'s (toy target, AdamW, λ_rad = 0.1); ``time_scale`` is the
    DiT's time-embedding scale (1000: the paper's, the field then oscillates in t at periods ~0.01; 1: smooth).
    """
    import sys
    from unittest import mock

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from experiments import toy_rfm_vs_fm as toy
    from models.dit import DiTConfig, LightningDiT

    cfg = toy.ToyConfig(train_steps=train_steps)
    dist = toy.ToyDistribution(cfg)

    def build(c):
        return LightningDiT(DiTConfig(in_channels=c.channels, num_tokens=c.tokens, hidden_size=c.hidden,
                                      depth=c.depth, num_heads=c.heads, num_classes=1, class_dropout_prob=0.0,
                                      time_scale=time_scale))

    with mock.patch.object(toy, "build_model", build):
        model, hist = toy.train("rfm", 0.1, cfg, dist, seed=0)
    model = model.double().eval()
    S = Hypersphere(cfg.R)
    x1 = S.random_uniform(n, cfg.tokens, cfg.channels, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    y = torch.zeros(n, dtype=torch.long)

    def v(x, t):
        return model(x, t.reshape(1).expand(x.shape[0]), y)

    with torch.no_grad():
        ref = integrate(v, x1, torch.linspace(1, 0, ref_steps + 1, dtype=torch.float64), sphere=S, method="rk4")
        half = integrate(v, x1, torch.linspace(1, 0, ref_steps // 2 + 1, dtype=torch.float64), sphere=S, method="rk4")
    info = {"train_steps": train_steps, "time_scale": time_scale, "final_loss": sum(hist[-50:]) / len(hist[-50:]),
            "samples": n, "tokens": cfg.tokens, "channels": cfg.channels, "radius": cfg.R,
            "reference": f"rk4, {ref_steps} steps",
            "reference_vs_half_steps": (ref - half).norm(dim=-1).max().item() / cfg.R}
    return S, x1, v, ref, info


@torch.no_grad()
def adaptive_rows(v, x0, exact, S, t_span, R: float, fixed=("rk4", "projected_rk4"), min_tol: float = 1e-10,
                  bosh3_min_tol: float = 1e-8, steps=(4, 8, 16, 32, 64, 128, 256)):
    """Error-vs-NFE sweeps: tolerances for dopri5/bosh3/odeint, grids for the fixed methods."""
    err = lambda x: (x - exact).norm(dim=-1).max().item() / R  # noqa: E731
    tols = [tol for tol in TOLS if tol >= min_tol * 0.99]
    rows = {}
    for m in ADAPTIVE_METHODS:
        pts = []
        for tol in tols:
            if m == "bosh3" and tol < bosh3_min_tol * 0.99:
                continue  # third order: thousands of evaluations
            x, st = integrate(v, x0, t_span, sphere=S, method=m, rtol=tol, atol=tol, return_stats=True)
            pts.append({"tol": tol, "nfe": st.nfe, "rejected": st.rejected, "error": err(x)})
        rows[m] = {"points": pts}
    pts = []
    for tol in tols:
        x, nfe = odeint(v, x0, t_span, sphere=S, rtol=tol, atol=tol, return_nfe=True)
        pts.append({"tol": tol, "nfe": nfe, "error": err(x)})
    rows["odeint(dopri5)"] = {"points": pts}
    for m in fixed:
        pts = []
        for n in steps:
            grid = torch.linspace(float(t_span[0]), float(t_span[-1]), n + 1, dtype=torch.float64)
            x, nfe = integrate(v, x0, grid, sphere=S, method=m, return_nfe=True)
            pts.append({"steps": n, "nfe": nfe, "error": err(x)})
        rows[m] = {"points": pts}
    return rows


def nfe_at_error(points, target: float):
    """NFE at which a sweep reaches ``target`` error: log-log interpolation on its lower envelope."""
    pts = sorted((p["nfe"], p["error"]) for p in points)
    env, best = [], float("inf")
    for nfe, e in pts:  # keep the points that improve on every cheaper one
        if e < best:
            env.append((nfe, e))
            best = e
    for (n0, e0), (n1, e1) in zip(env, env[1:]):
        if e1 <= target <= e0:
            if e0 == e1:
                return float(n0)
            w = (math.log(target) - math.log(e0)) / (math.log(e1) - math.log(e0))
            return math.exp(math.log(n0) + w * (math.log(n1) - math.log(n0)))
    return None


def nfe_ratios(rows, ours: str = "dopri5", theirs: str = "odeint(dopri5)", lowest: float = 1e-9):
    """``NFE_ours/NFE_theirs`` at errors 1e-2, 10^-2.5, … ``lowest`` that both sweeps reach."""
    out = {}
    for k in range(4, 19):
        level = 10.0 ** (-k / 2)
        if level < lowest * 0.99:
            break
        a, b = nfe_at_error(rows[ours]["points"], level), nfe_at_error(rows[theirs]["points"], level)
        if a is not None and b is not None:
            out[f"{level:.0e}"] = {"nfe_ours": round(a, 1), "nfe_odeint": round(b, 1), "ratio": a / b}
    if out:
        out["geometric_mean"] = math.exp(sum(math.log(r["ratio"]) for r in out.values()) / len(out))
    return out


def run(dit_steps: int = 300):
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
    one = torch.tensor([0.0, 1.0], dtype=torch.float64)
    adaptive = {"rotation": adaptive_rows(probs["rotation"][0], x0, probs["rotation"][1], S, one, 1.0)}
    back = torch.tensor([1.0, 0.0], dtype=torch.float64)
    # errors below 1e-6 are not resolved on the DiTs: their time embedding runs in float32 (floor ≈ 1.5e-7)
    for name, scale, min_tol in (("dit", 1000.0, 1e-7), ("dit_smooth", 1.0, 1e-8)):
        Sd, x1, vd, ref, info = dit_problem(dit_steps, time_scale=scale)
        adaptive[name] = adaptive_rows(vd, x1, ref, Sd, back, info["radius"], min_tol=min_tol, bosh3_min_tol=1e-5,
                                       steps=(8, 16, 32, 64, 128, 256))
        adaptive[name]["info"] = info
    out["adaptive"] = adaptive
    out["nfe_ratio_dopri5_vs_odeint"] = {"rotation": nfe_ratios(adaptive["rotation"]),
                                         **{p: nfe_ratios(adaptive[p], lowest=1e-6) for p in ("dit", "dit_smooth")}}
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
    fig, axes = plt.subplots(2, 3, figsize=(17, 9))
    axes[0, 2].axis("off")
    for ax, pname in zip(axes[0], ("rotation", "ambient")):
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
    styles = {"dopri5": "o-", "bosh3": "^-", "odeint(dopri5)": "o--", "rk4": "s-", "projected_rk4": "s:"}
    titles = {"rotation": "adaptive vs fixed, rotation flow",
              "dit": "trained toy DiT, time_scale 1000 (t: 1 → 0)", "dit_smooth": "trained toy DiT, time_scale 1"}
    for ax, pname in zip(axes[1], ("rotation", "dit", "dit_smooth")):
        rows = res["adaptive"][pname]
        ratio = res["nfe_ratio_dopri5_vs_odeint"][pname].get("geometric_mean")
        for m, style in styles.items():
            pts = rows[m]["points"]
            label = m + (f" (NFE ×{ratio:.2f} of odeint at equal error)" if m == "dopri5" and ratio else "")
            ax.loglog([p["nfe"] for p in pts], [max(p["error"], 1e-16) for p in pts], style, ms=3, label=label)
        ax.set_xlabel("velocity evaluations")
        ax.set_ylabel("max error / R")
        ax.set_title(titles[pname])
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--dit-steps", type=int, default=300, help="training steps of the toy DiT")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # tiny problems: one thread is fastest on a shared box
    res = run(args.dit_steps)
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
    for name in ("dit", "dit_smooth"):
        print(f"toy DiT {name}: {res['adaptive'][name]['info']}")
    for pname, ratios in res["nfe_ratio_dopri5_vs_odeint"].items():
        print(f"| {pname} | " + " | ".join(f"{k}: {r['nfe_ours']:.0f}/{r['nfe_odeint']:.0f} = {r['ratio']:.2f}"
                                           for k, r in ratios.items() if k != "geometric_mean")
              + f" | geometric mean {ratios.get('geometric_mean', float('nan')):.2f} |")


if __name__ == "__main__":
    main()
