"""What one validation costs against the training steps it judges, per earth run: CPU seconds (one thread,
``time.process_time``, so other jobs on the box do not inflate it) of one whole-split validation NLL (dopri5 at
rtol = atol = 1e-4, the protocol's validation solver) with the run's best EMA weights, and of 1000 training
steps of the same MLP (timed over ``--steps``).

    python benchmarks/earth_val_cost.py fire/seed0 earthquake/seed0 volcano/seed0

Writes ``benchmarks/results/earth_val_cost.json``.
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

from benchmarks.earth_solver_check import best_model  # noqa: E402
from experiments.common.earth import load_earth, split  # noqa: E402
from experiments.common.earth_eval import nll  # noqa: E402
from experiments.earth_rfm import batch_loss  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="<dataset>/seed<k> folders under --root")
    p.add_argument("--root", default=str(ROOT / "runs" / "earth"))
    p.add_argument("--steps", type=int, default=200, help="training steps timed")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "earth_val_cost.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = {}
    for run in args.runs:
        ds, name = run.split("/")
        model = best_model(Path(args.root) / run)
        ckpt_args = json.loads((Path(args.root) / run / "result.json").read_text())["args"]
        data = split(load_earth(ds), int(name.removeprefix("seed").split("-")[0]))
        t0 = time.process_time()
        v = nll(model, data.val, steps=1, method="dopri5", rtol=1e-4, atol=1e-4)
        t_val = time.process_time() - t0
        opt = torch.optim.AdamW(model.parameters(), 1e-6)
        gen = torch.Generator().manual_seed(0)
        t0 = time.process_time()
        for _ in range(args.steps):
            opt.zero_grad(set_to_none=True)
            batch_loss(model, data.train, ckpt_args["batch_size"], gen, time_power=ckpt_args["time_power"]).total.backward()
            opt.step()
        step_ms = 1000 * (time.process_time() - t0) / args.steps
        out[run] = {"n_val": len(data.val), "val_nll": v, "val_cpu_s": round(t_val, 1), "step_cpu_ms": round(step_ms, 1),
                    "val_over_1000_steps": round(t_val / step_ms, 2)}
        print(f"earth_val_cost: {run}: validation ({len(data.val)} points) {t_val:.1f} s CPU, a training step "
              f"{step_ms:.1f} ms: one validation = {t_val / step_ms:.2f} x 1000 steps", flush=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
