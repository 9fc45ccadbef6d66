"""Solver convergence of the earth test NLLs: re-evaluate the best EMA weights of finished
``experiments/earth_rfm.py`` runs on finer rk4 grids.

    python benchmarks/earth_solver_check.py                       # volcano seeds 0-2 and fire seed 0
    python benchmarks/earth_solver_check.py --runs runs/earth --dataset flood --seeds 0 1 --steps 32 64 128

For each run folder ``<runs>/<dataset>/seed<k>/`` it rebuilds the MLP from the checkpoint's arguments, loads
the best EMA weights kept for early stopping, and prints the test NLL (nats/point, exact divergence, rk4 on
the squared grid of ``experiments.common.earth_eval``) for every ``--steps`` K and with the adaptive dopri5
in float64 at every ``--tols`` (rtol = atol; the test protocol's reference is 1e-7), each with its wall time;
with ``--val`` also the validation NLL. Writes ``benchmarks/results/earth_solver_check.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from experiments.common import checkpoint  # noqa: E402
from experiments.common.earth import load_earth, split  # noqa: E402
from experiments.common.earth_eval import nll, nll_tight  # noqa: E402
from experiments.common.ema import load_ema_weights  # noqa: E402
from experiments.earth_rfm import build_model  # noqa: E402
from models.sphere_mlp import SphereVelocityMLP  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def best_model(run: Path) -> SphereVelocityMLP:
    """The run's MLP with the best EMA weights (those the test NLL of ``result.json`` used)."""
    ckpt = checkpoint.load(run / "checkpoints" / "last.pt", hint="re-run experiments/earth_rfm.py")
    model = build_model(ckpt["args"])
    model.load_state_dict(ckpt["model"])
    best = ckpt["state"]["best_ema"]  # None when no evaluation ran: then the final EMA, as earth_rfm.finish
    load_ema_weights(model, {"ema": {"shadow": best}} if best is not None else ckpt)
    return model.eval()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", default=str(ROOT / "runs" / "earth"))
    p.add_argument("--dataset", nargs="+", default=["volcano", "fire"])
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 2 for volcano, 0 otherwise")
    p.add_argument("--steps", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    p.add_argument("--tols", type=float, nargs="*", default=[1e-5, 1e-7],
                   help="dopri5 tolerances (rtol = atol), evaluated in float64")
    p.add_argument("--val", action="store_true", help="also the validation NLL")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "earth_solver_check.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out: dict[str, dict] = {}
    for ds in args.dataset:
        for seed in args.seeds if args.seeds is not None else ([0, 1, 2] if ds == "volcano" else [0]):
            run = Path(args.runs) / ds / f"seed{seed}"
            if not (run / "checkpoints" / "last.pt").is_file():
                print(f"earth_solver_check: no checkpoint in {run}; run experiments/earth_rfm.py first")
                return 2
            model, data = best_model(run), split(load_earth(ds), seed)
            row: dict[str, float] = {}
            for part in ("test", "val") if args.val else ("test",):
                x = getattr(data, part)
                for k in args.steps:
                    t0 = time.perf_counter()
                    row[f"{part}_K{k}"] = nll(model, x, steps=k)
                    row[f"{part}_K{k}_s"] = round(time.perf_counter() - t0, 2)
                for tol in args.tols:
                    t0 = time.perf_counter()
                    row[f"{part}_dopri5_{tol:g}"] = nll_tight(model, x, tol)
                    row[f"{part}_dopri5_{tol:g}_s"] = round(time.perf_counter() - t0, 2)
            out[f"{ds}/seed{seed}"] = row
            print(f"{ds} seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items() if not k.endswith("_s")),
                  flush=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
