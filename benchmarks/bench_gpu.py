"""Training throughput and peak memory of the two training steps, one prepared script for a GPU session.

    python benchmarks/bench_gpu.py ae    # paper AE, stage 1, 256 px, random-init DINOv3-L, bf16, 50 steps
    python benchmarks/bench_gpu.py ae2   # paper AE, stage 2 (G + D steps, random-init DINO ViT-S/8 discriminator)
    python benchmarks/bench_gpu.py dit   # LightningDiT-XL/1, RFM on random [256 x 1024] latents: fp32, tf32, bf16
    python benchmarks/bench_gpu.py all --tiny --device cpu --steps 4 --warmup 1   # the same code, CPU-sized
    python benchmarks/bench_gpu.py sphere   # float32 accuracy of the sphere ops on the device with TF32 on
    python benchmarks/bench_gpu.py all --plan 141GB --steps 20 --warmup 5   # the planned micro-batches

The GPU check of docs/scale.md (~6 min on one H200, not yet run: no GPU was lent to this project's sessions):
``all --plan 141GB --steps 20 --warmup 5`` then ``sphere``.

Each step is the one the training scripts run, built from their own pieces:

* ``ae``: ``ae_steps.Stage1Net`` + ``ae_steps.stage1_losses`` (0.5·(1 − cos) + L1 + LPIPS), AdamW on stem +
  decoder, gradient clipping and EMA with ``in1k_ae.py``'s paper stage-1 settings. LPIPS runs a VGG16 with random weights (``--lpips random``: the same
  cost as the real one, which cannot be downloaded offline) or is left out (``--lpips off``).
* ``dit``: ``in1k_dit.flow_loss`` (uniform noise on the sphere, logit-normal t shifted by α = √(N·C/4096),
  ``geodesic_flow``, ``rfm_loss`` with λ_rad = 0.1, label dropout 0.1), AdamW, clipping (off) and EMA with
  ``in1k_dit.py``'s paper settings (lr 2e-4, β 0.9/0.95, EMA 0.9995), once per ``--dit-precisions`` entry:
  ``fp32`` (the paper's and ``in1k_dit.py``'s default), ``tf32`` (fp32 with TF32 matmuls, ``--tf32``) and
  ``bf16`` (autocast around the DiT, ``--precision bf16``), so the cost of training in FP32 is known.

The batch is the largest of ``--batch-sizes`` whose step fits in memory (tried from the largest down).
img/s counts the ``--steps`` − ``--warmup`` timed steps after warm-up (CUDA synchronised); peak memory is
``torch.cuda.max_memory_allocated`` over the timed steps. Writes ``benchmarks/results/gpu_{ae,dit}.json``
(``gpu_dit.json``: the first precision's figures at the top level and every precision under ``by_precision``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

if __package__ in (None, ""):  # `python benchmarks/bench_gpu.py` from anywhere
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from experiments.common.dit_cli import DEFAULTS as DIT_DEFAULTS  # noqa: E402  (light: argparse + presets)

RESULTS = Path(__file__).resolve().parent / "results"
StepFn = Callable[[], torch.Tensor]  # one optimiser step; returns the (detached) loss


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def largest_fitting_batch(make_step: Callable[[int], StepFn], candidates: Sequence[int], dev: torch.device,
                          log: Callable[[str], None] = print) -> tuple[int, StepFn]:
    """The largest batch in ``candidates`` whose step runs twice without running out of memory.

    ``make_step(b)`` builds the step for batch ``b`` (model and optimiser state are shared between
    tries). Raises ``RuntimeError`` naming the smallest candidate if none fits.
    """
    for b in sorted(set(candidates), reverse=True):
        try:
            step = make_step(b)
            for _ in range(2):
                step()
            _sync(dev)
            return b, step
        except torch.OutOfMemoryError:
            step = None  # drop the closure (and its batch tensor) before handing the cache back
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            log(f"bench_gpu: batch {b} does not fit; trying a smaller one")
    raise RuntimeError(f"no batch size fits, not even {min(candidates)}")


def measure(step: StepFn, batch: int, steps: int, warmup: int, dev: torch.device) -> dict:
    """Runs ``warmup`` untimed then ``steps − warmup`` timed steps: img/s, s/step, peak memory, losses."""
    if not 0 <= warmup < steps:
        raise ValueError(f"need 0 <= warmup < steps, got warmup={warmup}, steps={steps}")
    losses = [float(step()) for _ in range(warmup)]
    _sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    timed = []
    t0 = time.perf_counter()
    for _ in range(steps - warmup):
        timed.append(step())
    _sync(dev)
    dt = time.perf_counter() - t0
    losses += [float(v) for v in timed]
    n = steps - warmup
    return {"batch": batch, "timed_steps": n, "seconds": dt, "s_per_step": dt / n, "img_per_s": batch * n / dt,
            "peak_mem_gib": torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None,
            "loss_first": losses[0], "loss_last": losses[-1], "losses_finite": all(map(math.isfinite, losses))}


def _random_vgg_lpips(dev: torch.device):
    """LPIPS(VGG) whose VGG16 trunk has random weights: the real module's cost without its download."""
    import torchvision

    from models.losses import LPIPSLoss

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vgg16-random.pth"
        features = torchvision.models.vgg16().features.state_dict()
        torch.save({f"features.{k}": v for k, v in features.items()}, path)
        return LPIPSLoss(path).to(dev)


def ae_step_factory(args, dev: torch.device) -> tuple[Callable[[int], StepFn], dict]:
    """The stage-1 step of ``in1k_ae.py`` for the preset; returns ``make_step(batch)`` and a description."""
    from experiments.common import ae_steps
    from experiments.common.ae_cli import DEFAULTS
    from experiments.common.ema import EMA
    from experiments.common.trainer import autocast, build_adamw, grads_finite_norm
    from models import build_autoencoder
    from models.losses import STAGE_LOSS_WEIGHTS

    preset = "tiny" if args.tiny else args.preset
    size = args.image_size or (64 if args.tiny else 256)
    ae = build_autoencoder(preset, random_init=not args.tiny, image_size=size)
    params = ae.set_stage(1)
    ae.to(dev)
    if args.grad_checkpointing:
        ae.set_grad_checkpointing(True)
    lpips = None
    if args.lpips == "random":
        try:
            lpips = _random_vgg_lpips(dev)
        except ImportError as e:  # the `lpips` package is not installed there
            print(f"bench_gpu: LPIPS left out ({e})", flush=True)
    w = STAGE_LOSS_WEIGHTS[1] if lpips is not None else dataclasses.replace(STAGE_LOSS_WEIGHTS[1], lpips=0.0)
    net = torch.compile(ae_steps.Stage1Net(ae)) if args.compile else ae_steps.Stage1Net(ae)
    hp = DEFAULTS[("paper", 1)]
    opt = build_adamw(params, hp["lr"], (hp["beta1"], hp["beta2"]), hp["weight_decay"])
    ema = EMA(ae, hp["ema_decay"])
    gen = torch.Generator(dev).manual_seed(0)

    def make_step(b: int) -> StepFn:
        x = torch.rand(b, 3, size, size, generator=gen, device=dev) * 2 - 1

        def step() -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            with autocast(dev, args.precision):
                recon, z, zt = net(x)
                loss, _ = ae_steps.stage1_losses(x, recon, z, zt, lpips, w)
            loss.backward()
            grads_finite_norm(params, hp["grad_clip"])
            opt.step()
            ema.update(ae)
            return loss.detach()

        return step

    n_train = sum(p.numel() for p in params)
    return make_step, {"what": f"AE stage 1, preset {preset}, {size} px, random-init encoder",
                       "trainable_params_m": n_train / 1e6, "lpips": "random VGG16" if lpips else "off",
                       "tokens": ae.num_tokens, "channels": ae.latent_dim}


def ae2_step_factory(args, dev: torch.device) -> tuple[Callable[[int], StepFn], dict]:
    """The stage-2 step of ``in1k_ae.py`` (after the D-only warm-up): decoder on smoothed raw tokens with
    L1 + LPIPS + 0.5·hinge G through the DINO discriminator, then the D step; both AdamW, EMA of the AE."""
    from experiments.common import ae_steps
    from experiments.common.ae_cli import DEFAULTS
    from experiments.common.ema import EMA
    from experiments.common.trainer import autocast, build_adamw, grads_finite_norm
    from models import build_autoencoder
    from models.losses import STAGE_LOSS_WEIGHTS

    preset = "tiny" if args.tiny else args.preset
    size = args.image_size or (64 if args.tiny else 256)
    ae = build_autoencoder(preset, random_init=not args.tiny, image_size=size)
    params = ae.set_stage(2)
    ae.to(dev)
    if args.grad_checkpointing:
        ae.set_grad_checkpointing(True)
    lpips = _random_vgg_lpips(dev) if args.lpips == "random" else None
    w = STAGE_LOSS_WEIGHTS[2] if lpips is not None else dataclasses.replace(STAGE_LOSS_WEIGHTS[2], lpips=0.0)
    disc = ae_steps.build_discriminator(preset, None, False, not args.tiny, dev)
    d_params = [p for p in disc.parameters() if p.requires_grad]
    net = ae_steps.Stage2Net(ae)
    hp = DEFAULTS[("paper", 2)]
    opt = build_adamw(params, hp["lr"], (hp["beta1"], hp["beta2"]), hp["weight_decay"])
    d_opt = build_adamw(d_params, hp["lr"], (hp["beta1"], hp["beta2"]), hp["weight_decay"])
    ema = EMA(ae, hp["ema_decay"])
    gen = torch.Generator(dev).manual_seed(0)

    def make_step(b: int) -> StepFn:
        x = torch.rand(b, 3, size, size, generator=gen, device=dev) * 2 - 1

        def step() -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            d_opt.zero_grad(set_to_none=True)
            with autocast(dev, args.precision):
                recon = net(x, 1.2, gen)
                loss, _ = ae_steps.stage2_g_losses(x, recon, lpips, disc, w, True, generator=gen)
            loss.backward()
            with autocast(dev, args.precision):
                d_loss, _ = ae_steps.stage2_d_loss(x, recon.detach(), disc, generator=gen)
            d_loss.backward()
            grads_finite_norm(params, hp["grad_clip"])
            opt.step()
            d_opt.step()
            ema.update(ae)
            return loss.detach()

        return step

    return make_step, {"what": f"AE stage 2, preset {preset}, {size} px, random-init encoder and discriminator",
                       "trainable_params_m": sum(p.numel() for p in params) / 1e6,
                       "disc_trainable_params_m": sum(p.numel() for p in d_params) / 1e6,
                       "lpips": "random VGG16" if lpips else "off"}


def dit_step_factory(args, dev: torch.device) -> tuple[Callable[[int], StepFn], dict]:
    """The RFM step of ``in1k_dit.py`` on random latents; returns ``make_step(batch)`` and a description."""
    from experiments.common.dit_cli import build_parser
    from experiments.common.dit_io import dit_registry
    from experiments.common.ema import EMA
    from experiments.in1k_dit import flow_loss
    from experiments.common.trainer import build_adamw, grads_finite_norm
    from models.latent import gaussian_norm_radius
    from spherical import Hypersphere, dimension_shift

    name = "LightningDiT-T/1" if args.tiny else args.model
    n_tok, ch = (16, 32) if args.tiny else (args.tokens, args.channels)
    flow_args, hp = build_parser().parse_args([]), DIT_DEFAULTS["paper"]  # λ_rad, t law, label dropout; AdamW, EMA
    model = dit_registry()[name](in_channels=ch, num_tokens=n_tok, num_classes=1000,
                                 class_dropout_prob=flow_args.cfg_dropout)
    model.to(dev)
    net = torch.compile(model) if args.compile else model
    params = list(model.parameters())
    opt = build_adamw(params, hp["lr"], (hp["beta1"], hp["beta2"]), hp["weight_decay"])
    ema = EMA(model, hp["ema_decay"])
    sphere = Hypersphere(gaussian_norm_radius(ch))
    ctx = {"args": flow_args, "sphere": sphere, "alpha": dimension_shift(n_tok, ch),
           "precision": "bf16" if args.precision == "bf16" else "fp32"}
    gen = torch.Generator(dev).manual_seed(0)

    def make_step(b: int) -> StepFn:
        x0 = sphere.random_uniform(b, n_tok, ch, generator=gen, device=dev)  # stand-in data latents
        y = torch.randint(0, 1000, (b,), generator=gen, device=dev)

        def step() -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            loss = flow_loss(ctx, net, x0, y, gen).total
            loss.backward()
            grads_finite_norm(params, hp["grad_clip"])
            opt.step()
            ema.update(model)
            return loss.detach()

        return step

    return make_step, {"what": f"{name} RFM, random latents [{n_tok} x {ch}] on S^{ch - 1}_R",
                       "params_m": sum(p.numel() for p in params) / 1e6}


def run(kind: str, args) -> dict:
    """One measurement of ``kind`` at ``args.precision`` (``tf32`` = fp32 with TF32 matmuls allowed)."""
    from experiments.in1k_dit import tf32_allowed

    dev = torch.device(args.device)
    factory = {"ae": ae_step_factory, "ae2": ae2_step_factory, "dit": dit_step_factory}[kind]
    with tf32_allowed(args.precision == "tf32"):
        make_step, info = factory(args, dev)
        sizes = args.batch_sizes or (planned_batches(kind, args.plan, args.precision) if args.plan else None) or (
            [8, 4] if args.tiny else ([64, 32, 16] if kind != "dit" else [512, 256, 128, 64]))
        batch, step = largest_fitting_batch(make_step, sizes, dev)
        res = measure(step, batch, args.steps, args.warmup, dev)
    del make_step, step
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    res.update(info, kind=kind, precision=args.precision, compile=args.compile, device=str(dev),
               device_name=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
               torch=torch.__version__)
    mem = f", peak {res['peak_mem_gib']:.1f} GiB" if res["peak_mem_gib"] is not None else ""
    print(f"bench_gpu {kind} ({args.precision}): {info['what']}: batch {batch}, {res['img_per_s']:.1f} img/s, "
          f"{res['s_per_step'] * 1e3:.0f} ms/step{mem}; loss {res['loss_first']:.4f} -> {res['loss_last']:.4f}",
          flush=True)
    return res


def planned_batches(kind: str, gpu: str, precision: str, path: Path = RESULTS / "memory_plan.json") -> list[int]:
    """Micro-batch of the memory plan for ``kind`` on ``gpu`` (1 node, the recommended flags), and half of it."""
    plan = json.loads(path.read_text())["configs"][{"ae": "ae_s1", "ae2": "ae_s2", "dit": "dit"}[kind]]["by_precision"]
    rec = plan["fp32" if precision == "tf32" else precision]["plans"][gpu][0]["recommended"]
    return [rec["micro_batch"], max(1, rec["micro_batch"] // 2)]


def sphere_accuracy(dev: torch.device, n: int = 4096, channels: int = 1024) -> dict:
    """Max relative error of float32 dist / logmap / rfm_loss vs float64 on the same inputs, with TF32 and
    matmul precision "medium" on (restored afterwards): the float32 contract is 1e-5."""
    from spherical import Hypersphere, geodesic_flow, rfm_loss

    g = torch.Generator().manual_seed(0)
    S = Hypersphere(32.0)
    x = S.projx(torch.randn(n, channels, generator=g, dtype=torch.float64))
    angles = torch.logspace(-5, 0.49, n, dtype=torch.float64).unsqueeze(-1)  # 1e-5 .. ~3.1 rad
    u = S.proju(x, torch.randn(n, channels, generator=g, dtype=torch.float64))
    y = S.expmap(x, 32.0 * angles * u / u.norm(dim=-1, keepdim=True))
    v = torch.randn(n, channels, generator=g, dtype=torch.float64)
    x32, y32, v32 = (t.float() for t in (x, y, v))
    ref_d = S.dist(x32.double(), y32.double())
    ref_l = S.logmap(x32.double(), y32.double())
    f64 = geodesic_flow(x32.double(), y32.double(), torch.full((n, 1), 0.3, dtype=torch.float64), sphere=S)
    ref_loss = rfm_loss(v32.double(), f64.xt, f64.ut)
    legacy = torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32
    torch.set_float32_matmul_precision("medium")
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        xd, yd, vd = x32.to(dev), y32.to(dev), v32.to(dev)
        d = S.dist(xd, yd).double().cpu()
        lg = S.logmap(xd, yd).double().cpu()
        fl = geodesic_flow(xd, yd, torch.full((n, 1), 0.3, device=dev), sphere=S)
        loss = rfm_loss(vd, fl.xt, fl.ut)
    finally:
        torch.set_float32_matmul_precision(legacy[0])
        torch.backends.cuda.matmul.allow_tf32 = legacy[1]
    res = {"device": str(dev), "n": n, "channels": channels, "tf32": True, "matmul_precision": "medium",
           "dist_max_rel_err": float(((d - ref_d).abs() / ref_d).max()),
           "logmap_max_rel_err": float(((lg - ref_l).norm(dim=-1) / ref_l.norm(dim=-1)).max()),
           "rfm_tangent_rel_err": abs(float(loss.tangent) - float(ref_loss.tangent)) / float(ref_loss.tangent),
           "contract": 1e-5}
    res["within_contract"] = all(res[k] <= 1e-5 for k in ("dist_max_rel_err", "logmap_max_rel_err",
                                                            "rfm_tangent_rel_err"))
    print(f"bench_gpu sphere ({dev}, TF32 on): dist {res['dist_max_rel_err']:.1e}, logmap "
          f"{res['logmap_max_rel_err']:.1e}, rfm_loss {res['rfm_tangent_rel_err']:.1e} (contract 1e-5)", flush=True)
    return res


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("kind", choices=("ae", "ae2", "dit", "all", "sphere"))
    p.add_argument("--plan", choices=("80GB", "141GB"), help="batch candidates = the memory plan's micro-batch "
                   "for this GPU (benchmarks/results/memory_plan.json) and half of it")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=("fp32", "bf16"), help="AE step; default: bf16 on CUDA (the paper's "
                   "AE recipe), fp32 on CPU")
    p.add_argument("--dit-precisions", nargs="+", choices=("fp32", "tf32", "bf16"),
                   help="DiT step, measured once each; default: fp32 tf32 bf16 on CUDA, fp32 on CPU")
    p.add_argument("--steps", type=int, default=50, help="steps in all, warm-up included")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    p.add_argument("--batch-sizes", type=int, nargs="+", help="candidates (default: ae 64 32 16; dit 512..64)")
    p.add_argument("--tiny", action="store_true", help="tiny AE / LightningDiT-T/1 (a CPU check of this script)")
    p.add_argument("--preset", default="paper", help="AE preset")
    p.add_argument("--image-size", type=int, help="AE image size (default 256; 64 with --tiny)")
    p.add_argument("--lpips", choices=("random", "off"), default="random", help="LPIPS term in the AE step")
    p.add_argument("--grad-checkpointing", action="store_true", help="AE activation checkpointing")
    p.add_argument("--model", default=DIT_DEFAULTS["paper"]["model"], help="DiT name")
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--channels", type=int, default=1024)
    p.add_argument("--compile", action="store_true", help="torch.compile the trained network")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder of gpu_{ae,dit}.json")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device here; pass --device cpu (with --tiny for a quick check)", file=sys.stderr)
        return 2
    args.precision = args.precision or ("bf16" if args.device.startswith("cuda") else "fp32")
    args.out.mkdir(parents=True, exist_ok=True)
    ae_precision = args.precision
    dit_precisions = args.dit_precisions or (["fp32", "tf32", "bf16"] if args.device.startswith("cuda")
                                             else ["fp32"])
    if args.kind == "sphere":
        res = sphere_accuracy(torch.device(args.device))
        path = args.out / f"gpu_sphere{'_cpu' if not args.device.startswith('cuda') else ''}.json"
        path.write_text(json.dumps(res, indent=1) + "\n")
        print(f"bench_gpu: wrote {path}", flush=True)
        return 0 if res["within_contract"] else 1
    for kind in (("ae", "ae2", "dit") if args.kind == "all" else (args.kind,)):
        if kind in ("ae", "ae2"):
            res = run(kind, _with(args, precision=ae_precision))
        else:
            runs = [run(kind, _with(args, precision=p)) for p in dit_precisions]
            res = dict(runs[0], by_precision={r["precision"]: r for r in runs})
        path = args.out / f"gpu_{kind}{'_tiny' if args.tiny else ''}.json"
        path.write_text(json.dumps(res, indent=1) + "\n")
        print(f"bench_gpu: wrote {path}", flush=True)
    return 0


def _with(args: argparse.Namespace, **changes) -> argparse.Namespace:
    """A copy of ``args`` with ``changes``."""
    return argparse.Namespace(**{**vars(args), **changes})


if __name__ == "__main__":
    sys.exit(main())
