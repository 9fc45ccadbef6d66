"""Mixtures of earth density models trained on the same split: is the average of M densities better?

    python experiments/earth_rfm.py --dataset flood --seeds 1 --train-seed 101     # another member of split 1
    python benchmarks/earth_mixture.py --dataset flood --seed 1 --train-seeds 1 101

Each member is a finished ``experiments/earth_rfm.py`` run on split ``--seed`` k (run folder
``<runs>/<dataset>/seed<k>`` for train seed k, ``seed<k>-train<j>`` otherwise). With ``log p_m(x)`` the exact-
divergence log-density of member m (best EMA weights, dopri5 in float64 at rtol = atol = ``--tol``), the
mixture of the first M members is the proper density

    p(x) = (1/M) Σ_m p_m(x),   log p(x) = logsumexp_m log p_m(x) − log M,

and by Jensen its NLL is at most the members' mean NLL; the gap is what averaging buys. Prints and writes
(``--out``) each member's test NLL and the mixture's for M = 1 … len(--train-seeds).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.earth_solver_check import best_model  # noqa: E402
from experiments.common.earth import FILES, load_earth, split  # noqa: E402
from experiments.common.earth_eval import log_density_tight  # noqa: E402
from experiments.earth_rfm import run_name  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def mixture_nll(logps: torch.Tensor) -> float:
    """NLL (nats/point) of the equal-weight mixture of the members' densities, ``logps`` ``[M, N]``:
    ``−mean_x (logsumexp_m log p_m(x) − log M)``."""
    if logps.dim() != 2 or logps.shape[0] < 1:
        raise ValueError(f"expected log-densities [M >= 1, N], got shape {tuple(logps.shape)}")
    return float(-(torch.logsumexp(logps.double(), 0) - math.log(logps.shape[0])).mean())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", default=str(ROOT / "runs" / "earth"))
    p.add_argument("--dataset", required=True, choices=tuple(FILES))
    p.add_argument("--seed", type=int, required=True, help="the split's seed")
    p.add_argument("--train-seeds", type=int, nargs="+", required=True, help="the members' train seeds")
    p.add_argument("--tol", type=float, default=1e-7, help="dopri5 rtol = atol, float64")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "earth_mixture.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    test = split(load_earth(args.dataset, args.data_dir), args.seed).test
    names = [run_name(argparse.Namespace(train_seed=j), args.seed) for j in args.train_seeds]
    logps, members = [], []
    for name in names:
        run = Path(args.runs) / args.dataset / name
        if not (run / "result.json").is_file():
            print(f"earth_mixture: {run} has no result.json: train it first with experiments/earth_rfm.py "
                  f"--dataset {args.dataset} --seeds {args.seed} --train-seed <j>", file=sys.stderr)
            return 2
        t0 = time.time()
        lp = log_density_tight(best_model(run), test, args.tol).detach()
        reported = json.loads((run / "result.json").read_text())["test_nll"]
        members.append({"run": name, "test_nll": float(-lp.mean()), "reported_test_nll": reported,
                        "s": round(time.time() - t0, 1)})
        logps.append(lp)
        print(f"earth_mixture: {args.dataset} {name}: test NLL {members[-1]['test_nll']:.4f} "
              f"(result.json: {reported:.4f})", flush=True)
    lps = torch.stack(logps)
    curve = [{"members": m, "test_nll": mixture_nll(lps[:m]),
              "members_mean_nll": float(-lps[:m].mean())} for m in range(1, len(names) + 1)]
    for c in curve:
        print(f"earth_mixture: mixture of {c['members']}: test NLL {c['test_nll']:.4f} "
              f"(members' mean {c['members_mean_nll']:.4f})")
    out = Path(args.out)
    doc = json.loads(out.read_text()) if out.is_file() else {}
    doc[f"{args.dataset}/seed{args.seed}"] = {"solver": f"dopri5 float64 rtol=atol={args.tol:g}",
                                             "n_test": len(test), "members": members, "mixtures": curve}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
