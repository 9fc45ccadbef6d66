"""Riemannian flow matching density estimation on the earth-event datasets (S²), test NLL in nats/point.

    python experiments/earth_rfm.py --dataset fire                 # one dataset, seed 0, < 15 min on 2 CPUs
    python experiments/earth_rfm.py --dataset all                  # the table (seeds 0-4) -> benchmarks/results/
    python experiments/earth_rfm.py --preset paper --device cuda --dataset all

Data (``experiments.common.earth``): lat/lon events → unit vectors, the anchor's random 80/10/10 split of each
seed (``random_split`` with val = test = ⌊N/10⌋).
One step: x₀ = a batch of training points (data, t = 0; moved by a tangent Gaussian jitter of σ =
``--data-noise`` radians when > 0), x₁ = uniform on S² (noise, t = 1), t = u^p with u ~ U(0, 1) and
p = ``--time-power``, (x_t, u_t) = ``geodesic_flow(x₀, x₁, t)``, loss = ``rfm_loss(v(x_t, t), x_t, u_t)``;
AdamW with warm-up and cosine decay, EMA weights. The model is :class:`models.sphere_mlp.SphereVelocityMLP`
(tangent output). The preset's per-dataset changes are :data:`DATASET_OVERRIDES`.
Every ``--eval-every`` steps the EMA model's validation NLL (the whole split by default, or its first
``--val-points``) is measured by ``--val-method``: dopri5 at ``--val-tol``, or rk4 with ``--val-steps``
steps; the best EMA weights are kept and training stops after ``--patience`` evaluations without
improvement. The test
NLL of the best weights is then computed with ``spherical.log_likelihood`` (exact divergence) by the adaptive
dopri5 in float64 at rtol = atol = ``--test-tol`` (the anchor's 1e-7): the result; and, as a cross-check, by rk4
on the grid t_k = (k/K)², K = ``--test-steps``. Run folder ``--out/<dataset>/seed<k>/``: ``metrics.jsonl``,
``checkpoints/last.pt``, ``result.json`` and ``density.png`` (log-density on a lat/lon grid, test points
overlaid). Every finished run also writes a record ``--records/<dataset>/seed<k>.json`` (default
``<results>/earth_runs``, committed with the table). Re-running the same command resumes an interrupted run and
skips finished ones (by their run folder or their record, when its settings match), so the table can be built
over several sittings or machines; ``--dataset all`` then writes ``earth_nll.{json,md}`` and
``earth_density_<dataset>.png`` to ``--results``.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from experiments.common import checkpoint  # noqa: E402
from experiments.common.data import mix_seed  # noqa: E402
from experiments.common.earth import (FILES, EarthDataError, load_earth, points_sha256, split,  # noqa: E402
                                      xyz_to_latlon)
from experiments.common.earth_eval import (LOG_4PI, grid_mass, latlon_grid, log_density,  # noqa: E402
                                           log_density_tight, nll, plot_density, write_table)
from experiments.common.ema import EMA  # noqa: E402
from experiments.common.logging_utils import MetricsLogger, Progress, truncate_after  # noqa: E402
from experiments.common.trainer import (RESUME_LEGACY_DEFAULTS, NonFiniteError, NonFiniteGuard,  # noqa: E402
                                        OneLineParser, StepBookkeeper, UserError, abort_nonfinite, build_adamw,
                                        check_resume_args, cpu_threads,
                                        grads_finite_norm, lr_lambda, run_cli, seed_everything)
from models.sphere_mlp import SphereMLPConfig, SphereVelocityMLP  # noqa: E402
from spherical import Hypersphere, geodesic_flow, rfm_loss  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
_S2 = Hypersphere(1.0)
PRESETS = {
    # CPU default: ≈ 19 ms per step on one core, so 40 000 steps (cosine decay to 0, EMA 0.999) plus one
    # whole-validation-split NLL every 1000 steps fit one dataset and seed in ≈ 15 min (docs/earth.md: measured).
    "default": dict(width=256, depth=4, x_features=128, x_scale=64.0, time_power=3.0, steps=40_000, batch_size=512,
                    lr=2e-3, warmup_steps=100, weight_decay=0.0, data_noise=0.0, ema_decay=0.999, eval_every=1000,
                    patience=6, val_points=0, val_method="dopri5", val_steps=16, val_tol=1e-4, test_steps=64,
                    test_tol=1e-7, plot_lat=60, plot_steps=16, threads=0),
    # The published scale (Chen & Lipman: 512×6 MLP, long training) for a GPU.
    "paper": dict(width=512, depth=6, x_features=256, x_scale=64.0, time_power=3.0, steps=100_000, batch_size=2048,
                  lr=1e-3, warmup_steps=1000, weight_decay=0.0, data_noise=0.0, ema_decay=0.9995, eval_every=2000,
                  patience=10, val_points=0, val_method="dopri5", val_steps=32, val_tol=1e-4, test_steps=128,
                  test_tol=1e-7, plot_lat=180, plot_steps=64, threads=0),
    # Seconds: tests and smoke runs.
    "tiny": dict(width=32, depth=2, x_features=8, x_scale=4.0, time_power=1.0, steps=60, batch_size=128, lr=3e-3,
                 warmup_steps=5, weight_decay=0.0, data_noise=0.0, ema_decay=0.9, eval_every=20, patience=2,
                 val_points=64, val_method="rk4", val_steps=2, val_tol=1e-3, test_steps=2, test_tol=1e-4, plot_lat=8,
                 plot_steps=2, threads=1),
}
_HELP = {"data_noise": "σ (radians) of a Gaussian tangent jitter of the training points (0: none)",
         "val_method": "validation solver: dopri5 (adaptive, at --val-tol) or rk4 (--val-steps on the squared grid)",
         "val_tol": "rtol = atol of the dopri5 validation solver",
         "test_tol": "rtol = atol of the final test NLL (dopri5, float64)",
         "test_steps": "rk4 steps of the test NLL's cross-check",
         "weight_decay": "AdamW weight decay (matrices only)"}
# Per-dataset changes to the default preset (the anchor, too, tunes each dataset: configs/experiment/*.yaml),
# applied unless the option is given on the command line. Flood: its validation NLL is best at ≈ 5000 steps
# and rises after (3901 training points: the MLP fits the training events); a 0.01 rad (0.57°) jitter of the
# training points moved the best validation NLL from 0.596 to 0.558 and the test NLL of seed 0 from 0.621 to
# 0.487 (docs/earth.md). Fire: its whole-split validation (1280 points, dopri5 at 1e-4) costs ≈ 24 s of CPU,
# 1.3× the 1000 training steps it judges, and fire improves to the last step (no early stop), so it is
# validated every 2000 steps.
DATASET_OVERRIDES: dict[str, dict[str, dict]] = {"default": {"flood": dict(data_noise=0.01),
                                                             "fire": dict(eval_every=2000)}}
_RESUME_KEYS = ("preset", "width", "depth", "x_features", "x_scale", "time_power", "steps", "batch_size", "lr",
                "warmup_steps", "weight_decay", "ema_decay", "eval_every", "patience", "val_points", "val_method",
                "val_steps", "val_tol", "test_steps", "test_tol", "lambda_rad", "data_noise")
# What a result or checkpoint must match to stand for a run; the patience is compared on its own (a larger one
# continues a run or, when it never stopped early, leaves its result as it is).
_SETTING_KEYS = tuple(k for k in _RESUME_KEYS if k != "patience")
VAL_METHODS = ("rk4", "dopri5")
MEMBER_STRIDE = 100  # --member m trains split k with train seed MEMBER_STRIDE·m + k
_NOT_SETTINGS = ("out", "results", "records", "data_dir", "explicit", "jobs")  # paths and bookkeeping, not the recipe
PUBLISHED_SEEDS = [0, 1, 2, 3, 4]


def build_parser() -> OneLineParser:
    p = OneLineParser(prog="earth_rfm.py", description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="fire", choices=(*FILES, "all"), help="which dataset(s)")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="split/training seeds (default: 0-4, the published protocol, with --dataset all; else 0)")
    p.add_argument("--preset", default="default", choices=tuple(PRESETS), help="model/training scale")
    p.add_argument("--out", default=str(ROOT / "runs" / "earth"), help="run folders <out>/<dataset>/seed<k>")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"),
                   help="where --dataset all writes earth_nll.{json,md} and the density PNGs")
    p.add_argument("--records", default=None,
                   help="one JSON record per finished run, <records>/<dataset>/seed<k>.json (default: "
                        "<results>/earth_runs); a matching record counts as done")
    p.add_argument("--data-dir", default=None, help="folder of the CSVs (default: benchmarks/data/earth)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    for k, v in PRESETS["default"].items():
        choices = VAL_METHODS if k == "val_method" else None
        p.add_argument("--" + k.replace("_", "-"), type=type(v), default=None, choices=choices,
                       help=(_HELP[k] + " " if k in _HELP else "") + f"[preset: {v} by default]")
    p.add_argument("--lambda-rad", type=float, default=0.1, help="rfm_loss radial weight (0 effect: tangent output)")
    p.add_argument("--no-plot", action="store_true", help="skip the density plot")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints and results")
    p.add_argument("--table-only", action="store_true",
                   help="with --dataset all: train nothing, write the table of the runs finished so far")
    p.add_argument("--jobs", type=int, default=1,
                   help="train this many dataset × seed runs at once, each a child process on "
                        "max(1, threads // jobs) threads (threads: --threads, else all cores), largest dataset first; "
                        "their output goes to <out>/<dataset>/seed<k>/log.txt")
    p.add_argument("--train-seed", type=int, default=None,
                   help="seed of the initialisation and the batches (default: the split's seed); another value "
                        "trains another member of a mixture on the same split, in <out>/<dataset>/seed<k>-train<j> "
                        "(benchmarks/earth_mixture.py)")
    p.add_argument("--member", type=int, default=None,
                   help=f"train member m >= 1 of a mixture on each split k: train seed {MEMBER_STRIDE}·m + k (member 0 "
                        "is the table's run); benchmarks/earth_mixture.py --members M mixes members 0 … M−1")
    p.add_argument("--stop-after", type=int, default=None, help="(testing) stop like SIGTERM after this step")
    return p


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill preset defaults, validate, and pick the device."""
    args.explicit = sorted(k for k in PRESETS[args.preset] if getattr(args, k, None) is not None)
    for k, v in PRESETS[args.preset].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.x_features < 0 or args.x_scale <= 0 or args.time_power <= 0:
        raise UserError("expected --x-features >= 0, --x-scale > 0 and --time-power > 0")
    for k in ("width", "depth", "steps", "batch_size", "eval_every", "val_steps", "test_steps", "plot_lat",
              "plot_steps"):
        if getattr(args, k) < 1:
            raise UserError(f"--{k.replace('_', '-')} must be at least 1, got {getattr(args, k)}")
    if args.seeds is None:
        args.seeds = list(PUBLISHED_SEEDS) if args.dataset == "all" else [0]
    if args.lr <= 0 or not 0 <= args.ema_decay < 1 or args.patience < 1 or min(args.seeds) < 0:
        raise UserError("expected --lr > 0, 0 <= --ema-decay < 1, --patience >= 1 and seeds >= 0")
    if args.weight_decay < 0 or args.data_noise < 0 or not 0 < args.val_tol < 1 or not 0 < args.test_tol < 1:
        raise UserError("expected --weight-decay >= 0, --data-noise >= 0 and tolerances --val-tol, --test-tol "
                        "in (0, 1)")
    if args.train_seed is not None and args.train_seed < 0:
        raise UserError(f"expected --train-seed >= 0, got {args.train_seed}")
    if args.member is not None and (args.member < 1 or args.train_seed is not None):
        raise UserError(f"expected --member >= 1 and no --train-seed with it, got --member {args.member}")
    if args.jobs < 1 or (args.jobs > 1 and args.stop_after is not None):
        raise UserError(f"expected --jobs >= 1 (and no --stop-after with --jobs > 1), got --jobs {args.jobs}")
    if args.table_only and (args.dataset != "all" or args.no_resume):
        raise UserError("--table-only writes the table of finished runs: use it with --dataset all, without "
                        "--no-resume")
    if args.records is None:
        args.records = str(Path(args.results) / "earth_runs")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {args.device} asked but CUDA is not available; use --device cpu")
    args.seeds = list(dict.fromkeys(args.seeds))
    return args


def build_model(args: dict) -> SphereVelocityMLP:
    """The velocity MLP of a run's arguments (``vars(args)``, or the ``args`` stored in its checkpoint)."""
    return SphereVelocityMLP(SphereMLPConfig(width=args["width"], depth=args["depth"],
                                             x_features=args["x_features"], x_scale=args["x_scale"]))


def batch_loss(model: torch.nn.Module, data: torch.Tensor, batch_size: int, gen: torch.Generator, *,
               time_power: float = 1.0, lambda_rad: float = 0.1, data_noise: float = 0.0):
    """RFM loss of one batch: x₀ drawn with replacement from ``data`` ``[n, 3]``, x₁ uniform on S²,
    ``t = u^time_power`` with u ~ U(0, 1) (a power > 1 puts more steps near the data end, where the
    flow of a peaked density is sharpest), ``(x_t, u_t) = geodesic_flow(x₀, x₁, t)``.
    ``data_noise`` σ > 0 (radians) first moves each x₀ to ``expmap(x₀, σ·P_x₀ ε)``, ε ~ N(0, I₃): the model
    then learns the data smoothed by a ≈ σ-wide kernel (a regulariser against fitting the training points).
    Returns :class:`spherical.RFMLoss`."""
    dev = data.device
    x0 = data[torch.randint(len(data), (batch_size,), generator=gen, device=dev)]
    x1 = _S2.random_uniform(batch_size, data.shape[-1], generator=gen, device=dev, dtype=data.dtype)
    t = torch.rand(batch_size, 1, generator=gen, device=dev, dtype=data.dtype) ** time_power
    if data_noise > 0:
        eps = torch.randn(x0.shape, generator=gen, device=dev, dtype=data.dtype)
        x0 = _S2.expmap(x0, data_noise * _S2.proju(x0, eps))
    xt, ut = geodesic_flow(x0, x1, t)
    return rfm_loss(model(xt, t.squeeze(-1)), xt, ut, lambda_rad=lambda_rad)


def for_dataset(args: argparse.Namespace, dataset: str) -> argparse.Namespace:
    """``args`` with the preset's :data:`DATASET_OVERRIDES` for ``dataset`` (options given explicitly win)."""
    out = argparse.Namespace(**vars(args))
    for k, v in DATASET_OVERRIDES.get(args.preset, {}).get(dataset, {}).items():
        if k not in args.explicit:
            setattr(out, k, v)
    return out


def finished(args, dataset: str, seed: int) -> Optional[dict]:
    """The result of a finished run with these settings (its run folder's ``result.json``, else its record), or
    ``None``. A setting a result predates counts as its ``RESUME_LEGACY_DEFAULTS`` value; a run that did not
    stop early also stands for any larger ``--patience``."""
    for path in (Path(args.out) / dataset / run_name(args, seed) / "result.json", record_path(args, dataset, seed)):
        if path.is_file():
            res = json.loads(path.read_text())
            same = all(res["args"].get(k, RESUME_LEGACY_DEFAULTS.get(k)) == getattr(args, k)
                       for k in _SETTING_KEYS)
            # a run that did not stop early ends the same under any larger patience
            patience_ok = res["args"]["patience"] == args.patience or (
                not res.get("stopped_early", True) and res["args"]["patience"] < args.patience)
            if same and patience_ok:
                print(f"earth_rfm: {dataset} seed {seed}: done before, test NLL {res['test_nll']:.4f} ({path})")
                return res
    return None


def train_one(args, dataset: str, seed: int) -> dict:
    """Train (or resume) one dataset × seed; returns its ``result.json`` content."""
    dev = torch.device(args.device)
    run = Path(args.out) / dataset / run_name(args, seed)
    res_path, ckpts = run / "result.json", checkpoint.CheckpointDir(run / "checkpoints")
    res = None if args.no_resume else finished(args, dataset, seed)
    if res is not None:
        return res
    data = split(load_earth(dataset, args.data_dir), seed)
    train_x, val_x, test_x = (d.to(dev) for d in data)
    val_sub = val_x[:args.val_points] if args.val_points > 0 else val_x
    tseed = train_seed_of(args, seed)
    seed_everything(tseed)
    model = build_model(vars(args)).to(dev)
    ema = EMA(model, args.ema_decay)
    opt = build_adamw(model.parameters(), args.lr, (0.9, 0.999), args.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda("cosine", args.warmup_steps, args.steps))
    guard, logger = NonFiniteGuard(5), MetricsLogger(run)
    state = {"step": 0, "best_nll": math.inf, "best_step": 0, "best_ema": None, "bad_evals": 0,
             "wall_s": 0.0, "stopped_early": False}
    resume = None if args.no_resume else ckpts.load_latest()
    if resume is not None:
        check_resume_args(resume["args"], args, _SETTING_KEYS, ckpts.last)
        old_patience = resume["args"]["patience"]
        if args.patience < old_patience:
            raise UserError(f"{ckpts.last} was written with --patience {old_patience}; a smaller patience could "
                            f"have stopped it earlier: use --patience >= {old_patience}, another --out, or "
                            "--no-resume")
        checkpoint.restore_training(resume, 0, 1, model=model, ema=ema, optimizer=opt, scheduler=sched, guard=guard)
        state = resume["state"]
        # A larger patience continues a run that stopped early exactly where it stopped: nothing before the
        # stop depends on the patience (the batches are a function of seed and step).
        state["stopped_early"] = state["bad_evals"] >= args.patience
        truncate_after(logger.path, state["step"])
        print(f"earth_rfm: {dataset} seed {seed}: resuming from {ckpts.last} at step {state['step']}")
    else:
        logger.log("start", 0, **{k: v for k, v in vars(args).items() if k not in ("seeds", "dataset")},
                   dataset=dataset, seed=seed, n_train=len(train_x), n_val=len(val_x), n_test=len(test_x))
    n_par = sum(p.numel() for p in model.parameters())
    print(f"earth_rfm: {dataset} seed {seed}: {len(train_x)}/{len(val_x)}/{len(test_x)} points, MLP "
          f"{args.width}x{args.depth} ({n_par / 1e3:.0f} k params), up to {args.steps} steps of {args.batch_size}, "
          f"{dev.type} -> {run}", flush=True)

    def save() -> None:
        ckpts.save({"model": model.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(), "guard": guard.state_dict(), "rng": [checkpoint.capture_rng()],
                    "step": state["step"], "state": state, "args": vars(args)})

    book, code, stopped = StepBookkeeper(guard, ema, model, logger, sched), 0, False
    progress = Progress(args.steps, state["step"], enabled=not args.no_progress, desc=f"{dataset}/s{seed}")
    t_start = time.time() - state["wall_s"]
    with checkpoint.StopSignals() as stop:
        try:
            while state["step"] < args.steps and not state["stopped_early"]:
                step = state["step"]
                gen = torch.Generator(dev).manual_seed(mix_seed(tseed, step))
                opt.zero_grad(set_to_none=True)
                loss = batch_loss(model, train_x, args.batch_size, gen, time_power=args.time_power,
                                  lambda_rad=args.lambda_rad, data_noise=args.data_noise)
                loss.total.backward()
                gnorm_t = grads_finite_norm(list(model.parameters()), 0.0)
                lval, gnorm = torch.stack([loss.total.detach().double(), gnorm_t.double()]).tolist()  # one sync
                finite = math.isfinite(lval) and math.isfinite(gnorm)
                if finite:
                    opt.step()
                book.record(step, {"loss": lval}, finite)
                state["step"] = step = step + 1
                progress.update(1, loss=lval, best=state["best_nll"])
                if step % args.eval_every == 0 or step == args.steps:
                    with ema.applied(model):
                        v_nll = nll(model, val_sub, steps=args.val_steps, method=args.val_method,
                                    rtol=args.val_tol, atol=args.val_tol)
                    if v_nll < state["best_nll"] - 1e-3:
                        state.update(best_nll=v_nll, best_step=step, bad_evals=0,
                                     best_ema={k: t.clone() for k, t in ema.shadow.items()})
                    else:
                        state["bad_evals"] += 1
                        state["stopped_early"] = state["bad_evals"] >= args.patience
                    logger.log("train", step, **book.pop_means(), lr=sched.get_last_lr()[0], grad_norm=gnorm)
                    logger.log("eval", step, val_nll=v_nll, best_val_nll=state["best_nll"],
                               best_step=state["best_step"], bad_evals=state["bad_evals"])
                    state["wall_s"] = time.time() - t_start
                    save()
                if stop.requested or step == args.stop_after:
                    state["wall_s"] = time.time() - t_start
                    save()
                    sig = stop.signum or signal.SIGTERM
                    logger.log("stopped", step, signal=signal.Signals(sig).name)
                    progress.write(f"earth_rfm: stopped at step {step}; re-run the same command to continue")
                    code, stopped = (0 if stop.signum is None else 128 + sig), True
                    break
        except NonFiniteError as e:
            abort_nonfinite("earth_rfm", e, state["step"], logger, progress, ckpts)
            raise UserError(f"{dataset} seed {seed}: training diverged ({e})") from None
    progress.close()
    if stopped:
        return {"stopped": True, "code": code}
    return finish(args, dataset, seed, run, model, ema, state, data, logger, t_start)


def train_seed_of(args, seed: int) -> int:
    """The seed of the initialisation and batches of split ``seed``'s run: ``--train-seed j``, else
    ``MEMBER_STRIDE·m + seed`` for ``--member m``, else the split's own seed."""
    if getattr(args, "member", None) is not None:
        return MEMBER_STRIDE * args.member + seed
    return seed if args.train_seed is None else args.train_seed


def run_name(args, seed: int) -> str:
    """``seed<k>``, or ``seed<k>-train<j>`` for a run on split ``k`` whose initialisation and batches come from
    train seed j ≠ k (:func:`train_seed_of`): another member of a mixture on the same split."""
    j = train_seed_of(args, seed)
    return f"seed{seed}" if j == seed else f"seed{seed}-train{j}"


def record_path(args, dataset: str, seed: int) -> Path:
    """Where a finished run's record lives: ``<records>/<dataset>/<run_name>.json``."""
    return Path(args.records) / dataset / f"{run_name(args, seed)}.json"


def _write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, allow_nan=False) + "\n")
    tmp.replace(path)


def finish(args, dataset, seed, run, model, ema, state, data, logger, t_start) -> dict:
    """Test NLL of the best EMA weights (dopri5 in float64 at ``--test-tol``; rk4 with ``--test-steps`` as a
    cross-check), the density plot, ``result.json`` and the run's record."""
    if state["best_ema"] is not None:
        ema.shadow = {k: t.clone() for k, t in state["best_ema"].items()}
    dev = next(model.parameters()).device
    t0 = time.time()
    with ema.applied(model):
        coarse = nll(model, data.test.to(dev), steps=args.test_steps)
        t1 = time.time()
        test_logp = log_density_tight(model, data.test.to(dev), args.test_tol).cpu()
        exact = float(-test_logp.mean())
        t_adaptive = time.time() - t1
        mass, plot = None, None
        if not args.no_plot:
            lat, lon, grid = latlon_grid(args.plot_lat)
            logp = log_density(model, grid.reshape(-1, 3).to(data.test), steps=args.plot_steps).cpu()
            logp = logp.reshape(grid.shape[:-1])
            mass = grid_mass(logp, lat)
            plot = plot_density(run / "density.png", lat, lon, logp, xyz_to_latlon(data.test.cpu().double()),
                                f"{dataset} (seed {seed}): test NLL {exact:.3f} nats, best step {state['best_step']}")
    res = {"dataset": dataset, "seed": seed, "test_nll": exact,
           "test_solver": f"dopri5 float64 rtol=atol={args.test_tol:g}",
           "test_nll_coarse": coarse, "coarse_steps": args.test_steps, "test_adaptive_s": round(t_adaptive, 1),
           "n_train": len(data.train), "n_val": len(data.val), "n_test": len(data.test),
           "best_val_nll": state["best_nll"], "best_step": state["best_step"], "steps_run": state["step"],
           "stopped_early": state["stopped_early"], "train_s": round(state["wall_s"], 1),
           "eval_s": round(time.time() - t0, 1), "wall_s": round(time.time() - t_start, 1),
           "threads": torch.get_num_threads(), "grid_mass": mass, "uniform_nll": LOG_4PI,
           "args": {k: v for k, v in vars(args).items() if k not in _NOT_SETTINGS + ("seeds",)},
           # per test point, and the test set by content: benchmarks/earth_mixture.py mixes records without re-solving
           "test_logp": [float(v) for v in test_logp], "test_sha256": points_sha256(data.test)}
    logger.log("test", state["step"], **{k: v for k, v in res.items() if k not in ("args", "test_logp")})
    _write_json(run / "result.json", {**res, "density_png": str(plot) if plot else None})
    _write_json(record_path(args, dataset, seed), res)
    print(f"earth_rfm: {dataset} seed {seed}: test NLL {exact:.4f} nats/point (dopri5 float64, tol "
          f"{args.test_tol:g}, {t_adaptive:.0f} s; rk4 {args.test_steps} steps: {coarse:.4f}), best val "
          f"{state['best_nll']:.4f} at step {state['best_step']}, {res['wall_s']:.0f} s"
          + (f", grid mass {mass:.3f}" if mass is not None else ""), flush=True)
    return res


_CHILD_DROPS = ("help", "dataset", "seeds", "jobs", "threads", "no_progress", "table_only")


def child_argv(parser: argparse.ArgumentParser, given: argparse.Namespace, dataset: str, seed: int,
               threads: int) -> list[str]:
    """The command line of one ``--jobs`` child: the options given to the parent (``given``: parsed, before
    :func:`resolve`; unset preset options stay unset, so the child applies the same per-dataset overrides),
    for one dataset and seed, on ``threads`` threads, without a progress bar."""
    out = ["--dataset", dataset, "--seeds", str(seed), "--threads", str(threads), "--no-progress"]
    for a in parser._actions:
        v = getattr(given, a.dest, None)
        if a.dest in _CHILD_DROPS or v is None or v is False:
            continue
        out += [a.option_strings[0]] if v is True else [a.option_strings[0], str(v)]
    return out


def run_jobs(parser: argparse.ArgumentParser, given: argparse.Namespace, args: argparse.Namespace,
             datasets: list[str]) -> int:
    """Train the unfinished dataset × seed runs as ``--jobs`` child processes at a time (largest dataset
    first, so the longest runs do not come last). Each child is this script for one run, its output in
    ``<out>/<dataset>/seed<k>/log.txt``. SIGTERM / SIGINT are passed on to the children, which checkpoint and
    stop; re-running the same command resumes them. Returns 0 when every run finished, else the first
    failing child's exit code."""
    import os
    import subprocess

    sizes = {d: len(load_earth(d, args.data_dir)) for d in datasets}
    todo = [(d, s) for d in sorted(datasets, key=lambda d: -sizes[d]) for s in args.seeds
            if args.no_resume or finished(for_dataset(args, d), d, s) is None]
    threads = max(1, (args.threads or os.cpu_count() or 1) // args.jobs)
    running: list[tuple[str, int, subprocess.Popen, object]] = []
    failed: list[tuple[str, int, int, Path]] = []
    t0 = time.time()
    print(f"earth_rfm: {len(todo)} run(s) to train, {args.jobs} at a time on {threads} thread(s) each", flush=True)
    with checkpoint.StopSignals() as stop:
        try:
            while (todo or running) and not stop.requested:
                while todo and len(running) < args.jobs:
                    d, s = todo.pop(0)
                    log_path = Path(args.out) / d / run_name(args, s) / "log.txt"
                    log_path.parent.mkdir(parents=True, exist_ok=True)
                    log = open(log_path, "a")
                    cmd = [sys.executable, str(Path(__file__).resolve()), *child_argv(parser, given, d, s, threads)]
                    running.append((d, s, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log))
                    print(f"earth_rfm: {d} seed {s}: started ({log_path})", flush=True)
                time.sleep(0.2)
                for item in [r for r in running if r[2].poll() is not None]:
                    d, s, proc, log = item
                    running.remove(item)
                    log.close()
                    log_path = Path(log.name)
                    last = (log_path.read_text().strip().splitlines() or [""])[-1]
                    print(f"{last}  [{(time.time() - t0) / 60:.1f} min]" if proc.returncode == 0 else
                          f"earth_rfm: {d} seed {s}: failed with exit code {proc.returncode}, see {log_path}",
                          flush=True)
                    if proc.returncode != 0:
                        failed.append((d, s, proc.returncode, log_path))
        finally:
            for _, _, proc, log in running:  # a stop (or an error here): the children checkpoint and stop
                proc.send_signal(signal.SIGTERM)
            for _, _, proc, log in running:
                proc.wait()
                log.close()
    if stop.requested:
        print("earth_rfm: stopped; re-run the same command to continue", flush=True)
        return 128 + stop.signum
    return failed[0][2] if failed else 0


def _main(argv=None) -> int:
    parser = build_parser()
    given = parser.parse_args(argv)
    args = resolve(argparse.Namespace(**vars(given)))
    datasets = list(FILES) if args.dataset == "all" else [args.dataset]
    if args.jobs > 1 and not args.table_only:
        code = run_jobs(parser, given, args, datasets)
        if code != 0:
            return code
        args.table_only = True  # every run is finished: collect them
    results: dict[str, list[dict]] = {d: [] for d in datasets}
    with cpu_threads(args.threads or None):
        for d in datasets:
            for s in args.seeds:
                if args.table_only:
                    res = finished(for_dataset(args, d), d, s)
                    if res is None:
                        print(f"earth_rfm: {d} seed {s}: not run yet with these settings (left out of the table)")
                        continue
                else:
                    res = train_one(for_dataset(args, d), d, s)
                if res.get("stopped"):
                    return res["code"]
                results[d].append(res)
    if args.dataset == "all" and any(train_seed_of(args, s) != s for s in args.seeds):
        print("earth_rfm: these are other members of a mixture, not the table's runs: the table is left as it is; "
              "mix them with benchmarks/earth_mixture.py --members M")
    elif args.dataset == "all":
        out = Path(args.results)
        settings = {k: v for k, v in vars(args).items() if k not in _NOT_SETTINGS}
        settings["dataset_overrides"] = {d: {k: v for k, v in o.items() if k not in args.explicit}
                                         for d, o in DATASET_OVERRIDES.get(args.preset, {}).items()}
        summ = write_table(results, settings, out / "earth_nll.json", out / "earth_nll.md")
        for d in datasets:  # the first seed whose run folder (here) holds its plot
            pngs = [Path(args.out) / d / run_name(args, r["seed"]) / "density.png" for r in results[d]]
            png = next((p for p in pngs if p.is_file()), None)
            if png is not None:
                shutil.copyfile(png, out / f"earth_density_{d}.png")
        print((out / "earth_nll.md").read_text())
        for d, s in summ.items():
            print(f"earth_rfm: {d}: {s['mean']:.3f} ± {s['std']:.3f} over seeds {s['seeds']}; beats "
                  + (", ".join(f"{m} by {g:.2f}" for m, g in s["beats"].items()) or "no published row"))
    return 0


def main(argv=None) -> int:
    """Entry point; returns the exit code (0 ok, 2 user error, 128+sig when stopped by a signal)."""
    return run_cli(_main, argv, prog="earth_rfm.py", one_line=(EarthDataError,))


if __name__ == "__main__":
    sys.exit(main())
