"""Train a LightningDiT with Riemannian flow matching on spherical autoencoder latents (PAPER.md).

    python experiments/in1k_dit.py                 # embedded photos, cpu AE + LightningDiT-C/1 (--preset cpu)
    torchrun --nproc_per_node=8 experiments/in1k_dit.py --preset paper --data /imagenet \
        --ae-ckpt runs/ae-paper-s2 --cache-latents --grad-accum 4 --out runs/dit-xl   # 4 x 32 per 80 GB GPU

One step, FP32 weights and optimizer as in the paper, with TF32 matmuls on CUDA by default (``--no-tf32``: true
FP32; the FLOP count behind the choice is in docs/recipe.md; ``--precision bf16``
puts bf16 autocast around the DiT only, on CUDA; the sphere arithmetic is fp32 always); no gradient
clipping in the paper preset (``--grad-clip G`` turns it on):
x₀ = latents of the AE (data, t = 0), x₁ = ``Hypersphere(R).random_uniform`` (noise, t = 1),
t = ``sample_time(B, alpha=α)`` with α = ``dimension_shift(N, C)`` unless ``--alpha``,
(x_t, u_t) = ``geodesic_flow(x₀, x₁, t)``, labels dropped to the null class with prob. ``--cfg-dropout``,
loss = ``rfm_loss(DiT(x_t, t, y), x_t, u_t, lambda_rad=λ_rad)``; AdamW + EMA.
Noise, times and label dropout of step s are pure functions of (seed, s, global sample index)
(:func:`experiments.common.flows.step_draws`), and the data order comes from
:class:`experiments.common.data.ResumableBatchSampler`, so a resumed run repeats an uninterrupted one exactly,
also on another number of processes (global batch fixed; equal up to float summation order). Outputs in ``--out``: ``metrics.jsonl``, ``checkpoints/last.pt`` (model, EMA, optimiser,
scheduler, RNG, data position, ``dit_config`` and ``latent`` metadata for ``sample.py``) and
``train-samples.png`` (EMA samples, one column per class). Re-running the same command resumes; the
checkpoint records the autoencoder's content identity, the class list and the data listing's digest, so a
resume with another autoencoder or class list stops with one line before any compute
(``--accept-changed-ae`` continues on purpose and logs it), and the resume line states every changed
option and whether the data order is still exact (:mod:`experiments.common.dit_checks`).
"""
from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path

warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from experiments.common import checkpoint, distributed as D, dit_checks, provenance  # noqa: E402
from experiments.common.ckpt_policy import SavePolicy, milestone_steps  # noqa: E402
from experiments.common.data import (EMBEDDED_TRAIN_LEN, DataError, EmbeddedPhotos, ImageFolderDataset,  # noqa: E402
                              ResumableBatchSampler, close_loader, collate, worker_init)
from experiments.common.dit_cli import build_parser, resolve  # noqa: E402
from experiments.common.ema import EMA  # noqa: E402
from experiments.common.logging_utils import MetricsLogger, Progress, Throughput, truncate_after  # noqa: E402
from experiments.common.microbatch import maybe_no_sync, sample_positions  # noqa: E402
from experiments.common.rundir import run_folder  # noqa: E402
from experiments.common.trainer import (NonFiniteError, NonFiniteGuard, StepBookkeeper, UserError,  # noqa: E402
                                 abort_nonfinite, autocast, build_adamw, check_resume_args, grads_finite_norm,
                                 lr_lambda, run_cli, script_exit, seed_everything, training_session)
from models.dit import config_from_dict  # noqa: E402
from spherical import Hypersphere, dimension_shift, geodesic_flow, rfm_loss, sample_time  # noqa: E402

_RESUME_KEYS = ("preset", "model", "batch_size", "seed", "data", "latents", "lambda_rad", "cfg_dropout", "flow")
# A run's own files besides checkpoints/ and metrics.jsonl (moved aside on a fresh start, see rundir);
# OUT/latents (a reusable cache) and OUT/ae-random-init.pt stay.
_ARTEFACTS = ("train-samples*.png", "tb")


def _main(argv=None) -> int:
    """Parse, set up (DDP, threads), train."""
    args = resolve(build_parser().parse_args(argv))
    with training_session(args) as info, tf32_allowed(args.tf32):
        with run_folder(args.out, info, prog="in1k_dit.py", no_resume=args.no_resume, artefacts=_ARTEFACTS):
            return train(args, info)


def open_data(args, info, ae_path: Path, ae, resumed: dict | None = None):
    """Training dataset (images encoded on the fly, or cached latents), its collate fn and metadata.

    The class list is checked against the resumed run's ``latent`` record (``resumed``) before any image
    is encoded (:func:`dit_checks.check_classes`)."""
    from experiments.cache_latents import LatentShards, cache_latents, collate_latents, complete_cache, open_source

    if args.cache_latents:
        src = Path(args.out) / "latents"
        expect = dict(source=(str(Path(args.data).resolve()) if args.data is not None else
                              f"embedded:{EMBEDDED_TRAIN_LEN}:{args.seed}"), flip=args.flip,
                      image_size=args.image_size or ae.image_size, dtype=args.cache_dtype)
        done = complete_cache(src, expect) and provenance.same_latent_space(
            json.loads((src / "index.json").read_text()).get("ae_identity") or {}, provenance.ae_identity(ae))
        if done:  # resuming: the cache is done (same data, same autoencoder), the train tree is not walked again
            if info.is_main:
                print(f"in1k_dit: using the complete latent cache {src}", flush=True)
        else:  # --data, or the embedded photos' EMBEDDED_TRAIN_LEN crops of epoch 0 (a fixed pool)
            ds, meta = open_source(args.data, args.image_size or ae.image_size, EMBEDDED_TRAIN_LEN, args.seed,
                                   info=info)
            dit_checks.check_classes(resumed, meta["classes"], meta["num_classes"], args,
                                     args.data or "the embedded photos")
            cache_latents(ae, ds, src, meta=dict(meta, ae_ckpt=str(ae_path), image_size=args.image_size or
                                                 ae.image_size), flip=args.flip, dtype=args.cache_dtype,
                          info=info, num_workers=args.num_workers, log=print if info.is_main else (lambda *_: None))
    else:
        src = args.latents
    if src is not None:
        index = json.loads((Path(src) / "index.json").read_text())
        dit_checks.check_classes(resumed, index.get("classes"), index.get("num_classes") or 1, args, src)
        ds = LatentShards(src, seed=args.seed, project=False)  # as stored; cast + projected on the device
        shape = (ds.index["num_tokens"], ds.index["channels"])
        if shape != (ae.num_tokens, ae.latent_dim):
            raise UserError(f"{src} holds {shape[0]}x{shape[1]} latents but the autoencoder {ae_path} gives "
                            f"{ae.num_tokens}x{ae.latent_dim}; pass the --ae-ckpt that wrote the cache")
        return ds, collate_latents, {"num_classes": ds.num_classes, "classes": ds.index.get("classes"),
                                     "source": f"cached latents {src}"}
    size = args.image_size or ae.image_size
    if args.embedded:
        ds = EmbeddedPhotos("train", size, length=EMBEDDED_TRAIN_LEN, seed=args.seed)
    else:
        # the latent cache's crop policy: centre crops, flipped with probability 1/2 only with --flip
        ds = ImageFolderDataset(Path(args.data) / "train", size, train=True, seed=args.seed,
                                augment="flip" if args.flip else "none", info=info)
    dit_checks.check_classes(resumed, list(ds.classes), len(ds.classes), args, args.data or "the embedded photos")
    return ds, collate, {"num_classes": len(ds.classes), "classes": list(ds.classes),
                         "source": "embedded photos encoded on the fly" if args.embedded else
                         f"{args.data} encoded on the fly"}


def build_dit(args, latent: dict) -> torch.nn.Module:
    """The ``--model`` DiT for ``[B, N, C]`` tokens and ``num_classes`` (+1 null) labels."""
    from experiments.common.dit_io import dit_registry

    reg = dit_registry()
    if args.model not in reg:
        raise UserError(f"unknown --model {args.model!r}; choose from {', '.join(reg)}")
    side = int(round(latent["num_tokens"] ** 0.5))
    if side * side != latent["num_tokens"]:
        raise UserError(f"the DiT needs a square token grid; the autoencoder gives N={latent['num_tokens']}")
    return reg[args.model](in_channels=latent["channels"], num_tokens=latent["num_tokens"],
                           num_classes=latent["num_classes"], class_dropout_prob=args.cfg_dropout,
                           ddt_head=args.ddt_head, qk_norm=args.qk_norm, abs_pos_embed=args.abs_pos_embed)


@contextlib.contextmanager
def tf32_allowed(enabled: bool):
    """Sets ``torch.backends.cuda.matmul.allow_tf32`` and ``torch.backends.cudnn.allow_tf32`` to
    ``enabled`` (so plain fp32 is really fp32: cuDNN allows TF32 by default) and restores what it found."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(enabled)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def train(args, info) -> int:
    """The training loop: resume or start, step until ``--steps``, checkpoint, sample a grid.

    Returns the exit code (0 done or stopped by ``--stop-after``, 3 non-finite stop, 128+sig on a signal).
    """
    from experiments.common.dit_io import decode_norm, default_autoencoder, load_autoencoder

    out, dev, world = Path(args.out), info.device, info.world_size
    ckpts = checkpoint.CheckpointDir(out / "checkpoints", keep_every=args.keep_every)
    resume = None if args.no_resume else ckpts.load_latest()
    if resume is not None:
        check_resume_args(resume["args"], args, _RESUME_KEYS, ckpts.last)
        old_qk = resume["dit_config"].get("qk_norm", True)  # QK-norm was always on before the flag existed
        if old_qk != args.qk_norm:
            raise UserError(f"{ckpts.last} was trained {'with' if old_qk else 'without'} QK-norm: "
                            f"{'add' if old_qk else 'drop'} --qk-norm to resume it")
        old_pe = config_from_dict(resume["dit_config"]).abs_pos_embed  # absent: written before it existed
        if old_pe != args.abs_pos_embed:
            raise UserError(f"{ckpts.last} was trained {'with' if old_pe else 'without'} the absolute position "
                            f"embedding: {'drop' if old_pe else 'add'} --no-abs-pos-embed to resume it")
        if args.ae_ckpt is None:
            args.ae_ckpt = resume["latent"]["ae_ckpt"]
    if args.grad_accum == "auto":
        from experiments.common.memory_plan import dit_auto_grad_accum

        args.grad_accum = dit_auto_grad_accum(args, info)
    if args.batch_size % (world * args.grad_accum):
        raise UserError(f"--batch-size {args.batch_size} must divide by grad-accum x processes "
                        f"({args.grad_accum} x {world})")
    if args.latents is not None and args.ae_ckpt is None:  # the autoencoder that wrote the cache
        args.ae_ckpt = json.loads((Path(args.latents) / "index.json").read_text())["ae_ckpt"]
    ae_path, note = default_autoencoder(args.ae_ckpt, out, args.seed, is_main=info.is_main)
    ae = load_autoencoder(ae_path, dev)
    ae_changes = dit_checks.check_autoencoder(args, resume, ae, ckpts.last)  # before any compute
    s_vae, s_src = decode_norm(ae, args.decode_norm)
    train_ds, collate_fn, data_meta = open_data(args, info, ae_path, ae, resume and resume.get("latent"))
    n_tok, chans = ae.num_tokens, ae.latent_dim
    alpha = args.alpha if args.alpha is not None else dimension_shift(n_tok, chans)
    latent = dict(num_tokens=n_tok, channels=chans, radius=float(ae.radius), alpha=float(alpha),
                  num_classes=args.num_classes or data_meta["num_classes"], ae_ckpt=str(ae_path),
                  classes=data_meta["classes"], image_size=args.image_size or ae.image_size, flow=args.flow,
                  ae_identity=provenance.ae_identity(ae), data_listing=provenance.listing_digest(train_ds))
    chunk = args.batch_size // args.grad_accum  # global micro-batch
    sampler_probe = ResumableBatchSampler(len(train_ds), chunk, world=world, chunks_per_step=args.grad_accum)
    if args.steps is None:
        args.steps = max(1, round(args.epochs * sampler_probe.steps_per_epoch))
    seed_everything(args.seed)
    model = build_dit(args, latent).to(dev)
    model.set_grad_checkpointing(args.grad_checkpointing)
    ema = EMA(model, args.ema_decay, warmup=args.ema_warmup)
    opt = build_adamw(model.parameters(), args.lr, (args.beta1, args.beta2), args.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(args.lr_schedule, args.warmup_steps, args.steps))
    guard = NonFiniteGuard(args.max_nonfinite)
    precision = "bf16" if args.precision == "bf16" and dev.type == "cuda" else "fp32"
    if args.precision == "bf16" and precision == "fp32" and info.is_main:
        print("in1k_dit: --precision bf16 applies on CUDA only; training in fp32 on CPU", flush=True)
    mode = precision + ("+tf32" if args.tf32 and dev.type == "cuda" and precision == "fp32" else "")
    logger = MetricsLogger(out, enabled=info.is_main, tensorboard=args.tensorboard)
    step = 0
    if info.is_main:
        n_par = sum(p.numel() for p in model.parameters())
        print(f"in1k_dit: {args.model} ({n_par / 1e6:.2f} M params) on {data_meta['source']}: {n_tok} tokens x {chans} ch on "
              f"the sphere R={ae.radius:.3f}, alpha={alpha:.3f}, {latent['num_classes']} classes, "
              f"{args.steps} steps of batch {args.batch_size}{_micro(args, world)}, {mode}, grad clip "
              f"{args.grad_clip if args.grad_clip > 0 else 'off'} -> {out}; sample grids decoded at "
              f"token norm {s_vae:.6g} from {s_src}", flush=True)
        if note:
            print(f"in1k_dit: {note}", flush=True)
    if resume is not None:
        step = checkpoint.restore_training(resume, info.rank, world, model=model, ema=ema, optimizer=opt,
                                           scheduler=sched, guard=guard)
        line, record = dit_checks.resume_report(resume, args, latent["data_listing"], ae_changes, step, ckpts.last)
        if info.is_main:
            truncate_after(logger.path, step)
            print(line, flush=True)
        logger.log("resume", step, **record)
    else:
        logger.log("start", 0, **vars(args), latent=latent, world_size=world, precision_used=mode,
                   ae_changes=ae_changes)
        if ae_changes and info.is_main:
            print(f"in1k_dit: note: --accept-changed-ae: training on {ae_changes[0]['what']} with "
                  f"{provenance.describe(ae_changes[0]['to'])} (it was made with "
                  f"{provenance.describe(ae_changes[0]['from'])})", flush=True)
    net = D.wrap_ddp(model, info)
    if args.compile:
        net = torch.compile(net)
    sampler = ResumableBatchSampler(len(train_ds), chunk, rank=info.rank, world=world, seed=args.seed,
                                    chunks_per_step=args.grad_accum, start_chunk=step * args.grad_accum)
    loader = torch.utils.data.DataLoader(train_ds, batch_sampler=sampler, num_workers=args.num_workers,
                                         collate_fn=collate_fn, pin_memory=dev.type == "cuda",
                                         worker_init_fn=worker_init if args.num_workers > 0 else None)
    ctx = dict(args=args, info=info, ae=ae, sphere=Hypersphere(float(ae.radius)), alpha=alpha,
               precision=precision, bad_files=set(), decode_norm=s_vae)

    policy = SavePolicy(args.ckpt_every, args.ckpt_minutes,
                        milestone_steps(args.milestone_epochs, sampler.steps_per_epoch, args.steps), args.steps,
                        is_main=info.is_main)

    def save(step_: int, why: str) -> None:
        rng = D.all_gather_object(checkpoint.capture_rng())
        if info.is_main:
            t = time.monotonic()
            ckpts.save({"step": step_, "data_chunk": step_ * args.grad_accum, "model": model.state_dict(), "ema": ema.state_dict(),
                        "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "guard": guard.state_dict(), "rng": rng, "args": vars(args), "world_size": world,
                        "dit_config": asdict(model.config), "latent": latent}, step_)
            secs, size = time.monotonic() - t, ckpts.last.stat().st_size
            policy.saved(size, secs)
            logger.log("checkpoint", step_, reason=why, seconds=round(secs, 3), gb=round(size / 1e9, 4))
        D.barrier()

    progress = Progress(args.steps, step, enabled=info.is_main and not args.no_progress)
    meter, it, t0 = Throughput(), iter(loader), time.time()
    book, code = StepBookkeeper(guard, ema, model, logger, sched), 0
    with checkpoint.StopSignals() as stop:
        try:
            while step < args.steps:
                parts, finite, gnorm = train_step(ctx, net, model, opt, it, step, meter)
                book.record(step, parts, finite)  # guard, EMA, loss sums, sched.step()
                step += 1
                progress.update(1, loss=parts["loss"], lat_s=meter.rate(reset=False))
                if step % args.log_every == 0 or step == args.steps:
                    nbad = len(set().union(*D.all_gather_object(ctx["bad_files"])))
                    logger.log("train", step, skipped_files=nbad, **book.pop_means(), lr=sched.get_last_lr()[0],
                               grad_norm=gnorm, latents_per_s=meter.rate(),
                               epoch=round(sampler.epoch_of_chunk(step * args.grad_accum), 4), nonfinite_total=guard.total)
                if args.sample_every > 0 and step % args.sample_every == 0 and step < args.steps:
                    sample_grid(ctx, model, ema, latent, out / f"train-samples-{step:07d}.png")
                stopping, by_signal, timed = policy.poll(stop.requested, step == args.stop_after, dev)
                if stopping:
                    close_loader(it)  # workers done before the last checkpoint
                    write, why_not = policy.stop_write(args.stop_budget) if by_signal else (True, "")
                if (policy.due(step, timed) and guard.consecutive == 0 and not stopping) or (stopping and write):
                    save(step, "stop" if stopping else policy.reason(step, timed))
                if info.is_main and policy.milestone(step) and ckpts.exists():
                    ckpts.keep(policy.milestone(step))  # the newest good last.pt, as epoch_E.pt
                if stopping:
                    sig = stop.signum or signal.SIGTERM
                    logger.log("stopped", step, signal=signal.Signals(sig).name, **({"note": why_not} if why_not else {}))
                    if info.is_main:
                        progress.write(f"in1k_dit: stopped ({signal.Signals(sig).name}) at step {step}; "
                                       + (f"{why_not}; " if why_not else "")
                                       + f"checkpoint {ckpts.last}; re-run the same command to continue")
                    code = 0 if stop.signum is None else 128 + sig
                    break
        except NonFiniteError as e:
            return abort_nonfinite("in1k_dit", e, step, logger, progress, ckpts)
        finally:
            close_loader(it)  # an error never waits for (or orphans) the loader workers
    progress.close()
    if code == 0 and step >= args.steps:
        path = sample_grid(ctx, model, ema, latent, out / "train-samples.png")
        if info.is_main:
            print(f"in1k_dit: done at step {step} in {time.time() - t0:.1f}s; EMA samples {path}", flush=True)
    logger.close()
    return code


def _micro(args, world: int) -> str:
    """Banner note on micro-batching / checkpointing ("" when neither is on)."""
    note = f" ({args.grad_accum} micro-batches of {args.batch_size // (args.grad_accum * world)} per process)" \
        if args.grad_accum > 1 else ""
    return note + (" with activation checkpointing" if args.grad_checkpointing else "")


def latents_of(ctx, batch: dict) -> torch.Tensor:
    """The batch's data latents x₀ ``[B, N, C]`` in float32 on the sphere: cached latents arrive as stored
    (float16 by default) and are cast and projected here, on the device; images are encoded now."""
    from experiments.cache_latents import encode_batch

    dev = ctx["info"].device
    if "latent" in batch:
        return ctx["sphere"].projx(batch["latent"].to(dev, non_blocking=True).float())
    return encode_batch(ctx["ae"], batch["image"].to(dev, non_blocking=True), ctx["precision"])


def flow_loss(ctx, net, x0: torch.Tensor, y: torch.Tensor, draw: int | torch.Generator, offset: int | None = None):
    """Flow-matching loss of one batch (``--flow``: Riemannian, or flat on the same latents); returns
    :class:`spherical.RFMLoss` (fp32).

    ``draw``: the training step, and ``offset`` the position of ``x0[0]`` in that step's global batch (default
    ``rank·b``): noise, times and label dropout are then those of :func:`experiments.common.flows.step_draws`,
    a pure function of (seed, step, global sample index), so neither the number of processes nor of
    micro-batches changes them. Or a generator the three are drawn from in turn (benchmarks, tests).
    """
    from experiments.common.flows import euclidean_fm_loss, euclidean_path, flow_noise, step_draws

    args, sphere, b = ctx["args"], ctx["sphere"], x0.shape[0]
    if isinstance(draw, torch.Generator):
        x1 = flow_noise(args.flow, tuple(x0.shape), float(sphere.radius), generator=draw, device=x0.device)
        t = sample_time(b, alpha=ctx["alpha"], loc=args.time_loc, scale=args.time_scale, generator=draw,
                        device=x0.device)
        drop = torch.rand(b, generator=draw, device=x0.device) < args.cfg_dropout
    else:
        start = ctx["info"].rank * b if offset is None else offset
        x1, t, drop = step_draws(args.flow, args.seed, draw, start, b, args.batch_size,
                                 tuple(x0.shape[1:]), float(sphere.radius), alpha=ctx["alpha"], loc=args.time_loc,
                                 scale=args.time_scale, drop_prob=args.cfg_dropout, device=x0.device)
    if args.flow == "euclidean":
        xt, ut = euclidean_path(x0, x1, t.view(b, 1, 1))
    else:
        xt, ut = geodesic_flow(x0, x1, t.view(b, 1, 1), sphere=sphere)
    with autocast(x0.device, ctx["precision"], cuda_only=True):
        v = net(xt, t, y, force_drop=drop)
    if args.flow == "euclidean":
        return euclidean_fm_loss(v.float(), xt, ut)
    return rfm_loss(v.float(), xt, ut, lambda_rad=args.lambda_rad)


def train_step(ctx, net, model, opt, it, step: int, meter):
    """One optimizer step over ``--grad-accum`` micro-batches read from ``it`` (DDP all-reduces only on the
    last). Sample j of the step's global batch gets its noise, time and label dropout as a function of
    (seed, step, j) (``flows.step_draws``), so the update does not depend on how the batch is split. Returns (loss parts,
    finite, pre-clip grad norm)."""
    args, info = ctx["args"], ctx["info"]
    dev, accum = info.device, args.grad_accum
    chunk = args.batch_size // accum
    opt.zero_grad(set_to_none=True)
    vals = torch.zeros(3, dtype=torch.float64, device=dev)
    for m in range(accum):
        batch = next(it)
        ctx["bad_files"].update(batch["bad"])  # unreadable images replaced by the next readable file
        x0 = latents_of(ctx, batch)
        y = batch["label"].to(dev)
        meter.add(x0.shape[0] * info.world_size)
        pos = sample_positions(m, chunk, info.rank, info.world_size)
        with maybe_no_sync(net, m == accum - 1):
            loss = flow_loss(ctx, net, x0, y, step, offset=pos.start)
            total = loss.total
            if step + 1 in args.inject_nan_steps:  # 1-based, as logged
                total = total * float("nan")
            (total / accum).backward()
        vals += torch.stack([total.detach(), loss.tangent.detach(), loss.radial.detach()]).double() / accum
    D.all_reduce_mean(vals)
    gnorm = grads_finite_norm(list(model.parameters()), args.grad_clip)
    host = torch.cat([vals, gnorm.detach().double().reshape(1).to(vals.device)]).tolist()  # one sync a step
    finite = all(math.isfinite(v) for v in host)
    if finite:
        opt.step()
    return dict(zip(("loss", "tangent", "radial"), host[:3])), finite, host[3]


@torch.no_grad()
def sample_grid(ctx, model, ema, latent: dict, path: Path, per_class: int = 4) -> Path:
    """EMA samples (Euler, ``--sample-steps``), ``per_class`` rows × one column per class (≤ 8), as PNG;
    not written (one warning line) when they are not finite."""
    from experiments.common.metrics import save_grid
    from experiments.sample import generate, sample_noise

    args, info = ctx["args"], ctx["info"]
    if info.is_main:
        k = min(8, latent["num_classes"])
        labels = (torch.arange(k * per_class) % k).to(info.device)
        noise = sample_noise(range(labels.numel()), latent["num_tokens"], latent["channels"], latent["radius"],
                             args.seed, info.device, flow=args.flow)
        was = model.training
        model.eval()
        with ema.applied(model):
            _, img = generate(model, ctx["ae"], labels, latent, noise=noise, steps=args.sample_steps,
                              cfg_scale=args.sample_cfg,
                              precision=ctx["precision"], decode_norm=ctx["decode_norm"])
        model.train(was)
        from experiments.common.finite import first_bad

        bad = first_bad(img)
        if bad is None:
            save_grid(list(img.cpu().split(k)), path, nrow=k)
        else:  # finite or nothing: no black grid (the run itself goes on; its losses are guarded)
            print(f"in1k_dit: warning: EMA samples hold {bad[0]} NaN/Inf values (first in image {bad[1][0]}); "
                  f"{path} not written", file=sys.stderr, flush=True)
    D.barrier()
    return path


def main(argv=None) -> int:
    """Entry point; returns the exit code (0 ok, 2 user error, 3 non-finite stop, 128+sig on signal)."""
    return run_cli(_main, argv, prog="in1k_dit.py", one_line=(DataError,))


if __name__ == "__main__":
    script_exit(main())
