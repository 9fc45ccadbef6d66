"""Speed and float32 accuracy of the sphere operations: `spherical` vs the same formulas on geoopt.

Usage: ``python benchmarks/bench_ops.py [--shape 64 256 1024] [--repeats 5] [--threads 2] [--no-compile]``

Timing: expmap, logmap, dist, geodesic on a float32 ``[64, 256, 1024]`` batch (unit sphere) on CPU, with
``x.clone()`` of the same tensor as the memory-bandwidth yardstick, eager and compiled
(``torch.compile(fn, fullgraph=True)``, the default inductor backend: rows ``spherical+inductor`` and
``geoopt+inductor``; their one-off compile time is recorded as ``compile_s``). "Fraction of clone bandwidth" is
(minimum bytes the op must move / its time) ÷ (bytes clone moves / clone's time): reading x and y or u
and writing the result is 3 tensors for expmap, logmap and geodesic, 2 for dist; clone moves 2.

Accuracy: float32 relative error of dist and logmap against float64 on the same float32 inputs, as a
function of θ (from 1e-7 up to π − 1e-7). geoopt's ``Sphere`` and the formulas built on it (geodesic as
``expmap(x, t·logmap(x, y))``) are the baseline; Meta's flow_matching joins if installed (it is not a dependency).
Writes benchmarks/results/ops.json, ops_speed.png and ops_error.png (``--prefix`` renames them).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import geoopt  # noqa: E402
from spherical import Hypersphere  # noqa: E402
from spherical._kernels import blocked_theta  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MOVED = {"expmap": 3, "logmap": 3, "geodesic": 3, "dist": 2}


def compiled_libraries(libs):
    """``name+inductor`` -> the same ops through ``torch.compile(fullgraph=True)`` (inductor)."""
    out = {}
    for name in ("spherical", "geoopt"):
        if name in libs:
            out[f"{name}+inductor"] = {op: torch.compile(fn, fullgraph=True) for op, fn in libs[name].items()}
    return out


def libraries():
    """name -> dict of op -> callable(x, y_or_u[, t]) on the unit sphere."""
    S, G = Hypersphere(1.0), geoopt.Sphere()
    libs = {
        "spherical": dict(expmap=S.expmap, logmap=S.logmap, dist=S.dist, geodesic=S.geodesic),
        "geoopt": dict(expmap=G.expmap, logmap=G.logmap, dist=G.dist,
                       geodesic=lambda x, y, t: G.expmap(x, t * G.logmap(x, y))),
    }
    if importlib.util.find_spec("flow_matching") is not None:  # optional, not a dependency
        from flow_matching.utils.manifolds import Sphere as FMSphere
        F = FMSphere()
        libs["flow_matching"] = dict(expmap=F.expmap, logmap=F.logmap, dist=lambda x, y: F.dist(x, y),
                                     geodesic=lambda x, y, t: F.expmap(x, t * F.logmap(x, y)))
    return libs


def timeit(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_speed(shape, repeats, compile_ops: bool = True):
    g = torch.Generator().manual_seed(0)
    S = Hypersphere(1.0)
    x = S.random_uniform(*shape, generator=g)
    y = S.random_uniform(*shape, generator=g)
    u = 0.5 * S.logmap(x, y)
    t = torch.full(shape[:-1] + (1,), 0.3)
    args = dict(expmap=(x, u), logmap=(x, y), dist=(x, y), geodesic=(x, y, t))
    clone = timeit(lambda: x.clone(), repeats)
    out = {"clone_ms": clone * 1e3, "ops": {}}
    libs = libraries()
    if compile_ops:
        libs.update(compiled_libraries(libs))
    for name, ops in libs.items():
        if ops is None:
            continue
        for op, fn in ops.items():
            row = {}
            with torch.no_grad():
                if name.endswith("+inductor"):
                    t0 = time.perf_counter()
                    fn(*args[op])  # compile (timed separately from the steady state)
                    row["compile_s"] = time.perf_counter() - t0
                sec = timeit(lambda: fn(*args[op]), repeats)
            row.update(ms=sec * 1e3, clone_fraction=(MOVED[op] / 2) * clone / sec)
            out["ops"].setdefault(op, {})[name] = row
    for op, rows in out["ops"].items():
        for name, row in rows.items():
            row["speedup_vs_geoopt"] = rows["geoopt"]["ms"] / row["ms"]
    return out


def pairs_at(theta: torch.Tensor, C: int, seed: int = 0):
    """float32 points x, y on the unit sphere at (float64-exact) angles θ: ``[len(θ), C]`` each."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(theta), C, generator=g, dtype=torch.float64)
    x = x / x.norm(dim=-1, keepdim=True)
    e = torch.randn(len(theta), C, generator=g, dtype=torch.float64)
    e = e - (e * x).sum(-1, keepdim=True) * x
    e = e / e.norm(dim=-1, keepdim=True)
    y = torch.cos(theta)[:, None] * x + torch.sin(theta)[:, None] * e
    return x.float(), y.float()


def reference(x32, y32):
    x, y = x32.double(), y32.double()
    yperp = y - (x * y).sum(-1, keepdim=True) / (x * x).sum(-1, keepdim=True) * x
    theta = torch.atan2(yperp.norm(dim=-1), (x * y).sum(-1) / x.norm(dim=-1))
    return theta, theta[:, None] * yperp / yperp.norm(dim=-1, keepdim=True)


def bench_error(C: int = 1024, n: int = 200):
    near0 = torch.logspace(-7, 0, n // 2, dtype=torch.float64)
    nearpi = math.pi - torch.logspace(-7, 0, n // 2, dtype=torch.float64).flip(0)
    theta = torch.cat([near0, nearpi])
    x, y = pairs_at(theta, C)
    d_ref, log_ref = reference(x, y)
    res = {"theta": theta.tolist(), "libs": {}}
    for name, ops in libraries().items():
        if ops is None:
            continue
        with torch.no_grad():
            d = ops["dist"](x, y).double()
            log = ops["logmap"](x, y).double()
        rel_d = ((d - d_ref).abs() / d_ref).nan_to_num(nan=float("inf"))
        rel_log = ((log - log_ref).norm(dim=-1) / log_ref.norm(dim=-1)).nan_to_num(nan=float("inf"))
        inside = (theta >= 1e-6) & (theta <= math.pi - 1e-4)
        res["libs"][name] = {
            "dist_rel_err": rel_d.tolist(), "logmap_rel_err": rel_log.tolist(),
            "worst_dist_rel_err_contract_range": rel_d[inside].max().item(),
            "worst_logmap_rel_err_contract_range": rel_log[inside].max().item(),
            "smallest_nonzero_dist_at_theta_1e-7": d[0].item(),
        }
        if name == "spherical":  # the cache-blocked eager dist that large batches take, on the same pairs
            db = blocked_theta(x, y, 1.0, block_elems=8 * C).squeeze(-1).double()
            rel_b = ((db - d_ref).abs() / d_ref).nan_to_num(nan=float("inf"))
            res["libs"][name]["worst_blocked_dist_rel_err_contract_range"] = rel_b[inside].max().item()
    return res


def plot(speed, error, path_speed, path_err):
    ops = list(speed["ops"])
    names = list(next(iter(speed["ops"].values())))
    fig, ax = plt.subplots(figsize=(7, 4))
    w = 0.8 / len(names)
    for i, name in enumerate(names):
        ax.bar([k + i * w for k in range(len(ops))], [speed["ops"][o][name]["ms"] for o in ops], w, label=name)
    ax.axhline(speed["clone_ms"], color="k", ls="--", lw=1, label="x.clone()")
    ax.set_xticks([k + w * (len(names) - 1) / 2 for k in range(len(ops))], ops)
    ax.set_ylabel("ms (best of repeats)")
    ax.set_title(f"float32 {tuple(speed['shape'])} on CPU ({speed['threads']} threads)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path_speed, dpi=120)
    plt.close(fig)

    theta = torch.tensor(error["theta"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    half = len(theta) // 2
    for name, r in error["libs"].items():
        for key, ls in (("dist_rel_err", "-"), ("logmap_rel_err", ":")):
            e = torch.tensor(r[key]).clamp(1e-17, 1e3)
            axes[0].loglog(theta[:half], e[:half], ls, label=f"{name} {key.split('_')[0]}")
            axes[1].loglog(math.pi - theta[half:], e[half:], ls, label=f"{name} {key.split('_')[0]}")
    for ax, xl in zip(axes, ("θ", "π − θ")):
        ax.axhline(1e-5, color="k", lw=0.8, ls="--")
        ax.set_xlabel(xl)
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel("float32 relative error vs float64")
    axes[0].legend(fontsize=7)
    fig.suptitle("float32 accuracy of dist and logmap (C = 1024, unit sphere)")
    fig.tight_layout()
    fig.savefig(path_err, dpi=120)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--no-compile", action="store_true", help="skip the inductor rows")
    p.add_argument("--prefix", default="ops", help="output names: PREFIX.json, PREFIX_speed.png, PREFIX_error.png")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    load_before = os.getloadavg()[0]
    speed = bench_speed(tuple(args.shape), args.repeats, compile_ops=not args.no_compile)
    speed.update(shape=args.shape, threads=args.threads, load_avg_1min=[load_before, os.getloadavg()[0]])
    error = bench_error()
    plot(speed, error, args.out / f"{args.prefix}_speed.png", args.out / f"{args.prefix}_error.png")
    summary = {
        "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
        "geoopt": geoopt.__version__, "speed": speed,
        "worst_float32_error": {n: {k: v for k, v in r.items() if k.startswith("worst") or k.startswith("smallest")}
                                for n, r in error["libs"].items()},
        "error_curves": error, "wall_s": time.perf_counter() - t0,
    }
    (args.out / f"{args.prefix}.json").write_text(json.dumps(summary, indent=1))
    print("| op | lib | ms | speed-up vs geoopt (eager) | fraction of clone bandwidth | compile s |")
    print("|---|---|---|---|---|---|")
    for op, rows in speed["ops"].items():
        for name, r in rows.items():
            comp = f"{r['compile_s']:.1f}" if "compile_s" in r else "–"
            print(f"| {op} | {name} | {r['ms']:.1f} | {r['speedup_vs_geoopt']:.2f}× | {r['clone_fraction']:.2f} | {comp} |")
    print(f"\nx.clone(): {speed['clone_ms']:.1f} ms; 1-min load average before/after: "
          f"{speed['load_avg_1min'][0]:.1f} / {speed['load_avg_1min'][1]:.1f} on {os.cpu_count()} cores")
    print("\n| lib | worst dist rel. err. | worst logmap rel. err. | dist at θ = 1e-7 |")
    print("|---|---|---|---|")
    for n, r in summary["worst_float32_error"].items():
        print(f"| {n} | {r['worst_dist_rel_err_contract_range']:.2e} | {r['worst_logmap_rel_err_contract_range']:.2e}"
              f" | {r['smallest_nonzero_dist_at_theta_1e-7']:.3g} |")
        if "worst_blocked_dist_rel_err_contract_range" in r:
            print(f"| {n} (blocked eager dist) | {r['worst_blocked_dist_rel_err_contract_range']:.2e} | – | – |")
    print(f"\nwall time {summary['wall_s']:.1f} s")


if __name__ == "__main__":
    main()
