"""Mixtures of earth density models trained on the same split: is the average of M densities better?

    python experiments/earth_rfm.py --dataset earthquake --seeds 0 1 2 3 4 --member 1   # and --member 2, …
    python benchmarks/earth_mixture.py --dataset earthquake --seeds 0 1 2 3 4 --members 2

Each member is a finished ``experiments/earth_rfm.py`` run on split k: ``--members M`` takes train seeds
k, 100 + k, …, 100·(M − 1) + k (member 0 is the table's run; train member m ≥ 1 with ``--member m``, run
folder ``<runs>/<dataset>/seed<k>-train<100m+k>``); ``--train-seeds`` names them for one split. A member's per-point test
log-densities come from its record (``<records>/<dataset>/<run>.json``, written by earth_rfm.py with
``test_logp`` and the test set's SHA-256, which must match the split recomputed here); a record without them
is re-evaluated from the run folder's best EMA weights (dopri5 in float64 at rtol = atol = ``--tol``, as
earth_rfm.py does). With ``log p_m(x)`` the members' log-densities, the mixture of the first M is the proper
density

    p(x) = (1/M) Σ_m p_m(x),   log p(x) = logsumexp_m log p_m(x) − log M,

and by Jensen its NLL is at most the members' mean NLL; the gap is what averaging buys. Writes (``--out``)
each split's members and the mixtures for M = 1 … M, and with several splits the mean ± std (sample std) of
the M-member mixture over them, beside Riemannian flow matching's published row; the ``.md`` beside ``--out``
holds one table row per mixture size measured over several splits.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.earth_solver_check import best_model  # noqa: E402
from experiments.common.earth import FILES, load_earth, points_sha256, split  # noqa: E402
from experiments.common.earth_eval import ANCHOR, PUBLISHED, log_density_tight  # noqa: E402
from experiments.common.finite import write_json_strict  # noqa: E402
from experiments.earth_rfm import run_name, train_seed_of  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def mixture_nll(logps: torch.Tensor) -> float:
    """NLL (nats/point) of the equal-weight mixture of the members' densities, ``logps`` ``[M, N]``:
    ``−mean_x (logsumexp_m log p_m(x) − log M)``."""
    if logps.dim() != 2 or logps.shape[0] < 1:
        raise ValueError(f"expected log-densities [M >= 1, N], got shape {tuple(logps.shape)}")
    return float(-(torch.logsumexp(logps.double(), 0) - math.log(logps.shape[0])).mean())


def member_train_seeds(seed: int, members: int) -> list[int]:
    """Train seeds of the ``members`` members of split ``seed``: ``seed, 100 + seed, …``."""
    if members < 1:
        raise ValueError(f"--members must be >= 1, got {members}")
    return [train_seed_of(argparse.Namespace(member=m, train_seed=None), seed) for m in range(members)]


def recorded_logp(record: Path, n_test: int, sha: str) -> Optional[torch.Tensor]:
    """The per-point test log-densities ``[N]`` stored in ``record``, or None when it has none. Raises
    ``ValueError`` when they are not of this test set (``n_test`` points whose :func:`points_sha256` is
    ``sha``)."""
    if not record.is_file():
        return None
    rec = json.loads(record.read_text())
    if "test_logp" not in rec:
        return None
    lp = torch.tensor(rec["test_logp"], dtype=torch.float64)
    if lp.shape != (n_test,) or rec.get("test_sha256") not in (None, sha):
        raise ValueError(f"{record}: its test_logp is not of this split's test set ({lp.numel()} values, "
                         f"sha256 {rec.get('test_sha256')}; expected {n_test} points, {sha})")
    return lp


def mixture_rows(doc: dict) -> list[str]:
    """Markdown rows ``| ours: mixture of M per split | … |`` (datasets in the table's order) from the
    ``<dataset>/mixture<M>`` summaries of ``doc``, the content of ``earth_mixture.json``."""
    summ = {(k.split("/")[0], v["members"]): v for k, v in doc.items() if "/mixture" in k}
    rows = ["| method | " + " | ".join(d.capitalize() for d in FILES) + " |", "|---" * (len(FILES) + 1) + "|"]
    for m in sorted({m for _, m in summ}):
        cells = [f"{summ[d, m]['mean']:.3f} ± {summ[d, m]['std']:.3f} (n={len(summ[d, m]['seeds'])})".replace("-", "−")
                 if (d, m) in summ else "—" for d in FILES]
        rows.append(f"| ours: mixture of {m} per split (earth_mixture.py) | " + " | ".join(cells) + " |")
        means = [f"{summ[d, m]['members_mean']:.3f}".replace("-", "−") if (d, m) in summ else "—" for d in FILES]
        rows.append("| its members' mean NLL | " + " | ".join(means) + " |")
    return rows


def split_mixture(args, seed: int, train_seeds: list[int]) -> dict:
    """Members' test NLLs and the mixtures of the first 1 … M members on split ``seed``; raises
    ``FileNotFoundError`` naming the command for a member that is neither recorded nor in a run folder."""
    test = split(load_earth(args.dataset, args.data_dir), seed).test
    sha = points_sha256(test)
    logps, members = [], []
    for j in train_seeds:
        name = run_name(argparse.Namespace(train_seed=j), seed)
        run, t0 = Path(args.runs) / args.dataset / name, time.time()
        lp, source = recorded_logp(Path(args.records) / args.dataset / f"{name}.json", len(test), sha), "record"
        if lp is None:
            if not (run / "result.json").is_file():
                raise FileNotFoundError(
                    f"{args.dataset} {name}: no record with test_logp and no finished run in {run}: train it with "
                    f"python experiments/earth_rfm.py --dataset {args.dataset} --seeds {seed} --train-seed {j}")
            lp, source = log_density_tight(best_model(run), test, args.tol).detach(), "run"
        members.append({"run": name, "test_nll": float(-lp.mean()), "source": source, "s": round(time.time() - t0, 1)})
        logps.append(lp)
        print(f"earth_mixture: {args.dataset} {name}: test NLL {members[-1]['test_nll']:.4f} (from its {source})",
              flush=True)
    lps = torch.stack(logps)
    curve = [{"members": m, "test_nll": mixture_nll(lps[:m]), "members_mean_nll": float(-lps[:m].mean())}
             for m in range(1, len(train_seeds) + 1)]
    for c in curve:
        print(f"earth_mixture: {args.dataset} seed {seed}: mixture of {c['members']}: test NLL {c['test_nll']:.4f} "
              f"(members' mean {c['members_mean_nll']:.4f})")
    return {"solver": f"dopri5 float64 rtol=atol={args.tol:g}", "n_test": len(test), "test_sha256": sha,
            "members": members, "mixtures": curve}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", default=str(ROOT / "runs" / "earth"))
    p.add_argument("--records", default=str(ROOT / "benchmarks" / "results" / "earth_runs"))
    p.add_argument("--dataset", required=True, choices=tuple(FILES))
    p.add_argument("--seeds", "--seed", type=int, nargs="+", required=True, help="the splits' seeds")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--members", type=int, help="M members per split: train seeds k, 100 + k, …, 100·(M − 1) + k")
    who.add_argument("--train-seeds", type=int, nargs="+", help="the members' train seeds (one split)")
    p.add_argument("--tol", type=float, default=1e-7, help="dopri5 rtol = atol, float64 (members without a record)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "earth_mixture.json"))
    args = p.parse_args(argv)
    if args.train_seeds is not None and len(args.seeds) != 1:
        p.error("--train-seeds names the members of one split: give one --seeds")
    torch.set_num_threads(1)
    out = Path(args.out)
    doc = json.loads(out.read_text()) if out.is_file() else {}
    per_split = []
    try:
        for k in args.seeds:
            seeds = args.train_seeds if args.train_seeds is not None else member_train_seeds(k, args.members)
            doc[f"{args.dataset}/seed{k}"] = res = split_mixture(args, k, seeds)
            per_split.append(res["mixtures"][-1])
    except (FileNotFoundError, ValueError) as e:
        print(f"earth_mixture: {e}", file=sys.stderr)
        return 2
    if len(args.seeds) > 1:
        nll, mean_members = [c["test_nll"] for c in per_split], [c["members_mean_nll"] for c in per_split]
        anchor = PUBLISHED[ANCHOR][args.dataset]
        summ = {"members": args.members, "seeds": args.seeds, "test_nll": nll, "mean": statistics.fmean(nll),
                "std": statistics.stdev(nll), "members_mean": statistics.fmean(mean_members),
                "anchor": ANCHOR, "anchor_nll": anchor[0] if anchor else None}
        doc[f"{args.dataset}/mixture{args.members}"] = summ
        print(f"earth_mixture: {args.dataset}: mixture of {args.members} over seeds {args.seeds}: "
              f"{summ['mean']:.3f} ± {summ['std']:.3f} (members' mean {summ['members_mean']:.3f}"
              + (f"; {ANCHOR} {anchor[0]:.2f}" if anchor else "") + ")")
    write_json_strict(out, doc, "earth_mixture.json")
    md = out.with_suffix(".md")
    md.write_text("\n".join(mixture_rows(doc)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
