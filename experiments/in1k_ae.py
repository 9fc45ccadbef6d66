"""Train the DINO Spherical Autoencoder (PAPER.md "Autoencoder training (v2)").

    python experiments/in1k_ae.py                      # embedded photos, cpu preset, a few min on 2 CPUs
    torchrun --nproc_per_node=8 experiments/in1k_ae.py --data /imagenet --preset paper \
        --encoder-weights dinov3_vitl16.pth --grad-accum 4 --out runs/ae-paper-s1   # 4 x 16 per 80 GB GPU
    python experiments/in1k_ae.py --data /imagenet --preset paper --stage 2 --init-from runs/ae-paper-s1 ...

Outputs in ``--out DIR``: ``metrics.jsonl`` (one JSON object per event), ``recon.png`` (originals over
reconstructions at each evaluation), ``checkpoints/last.pt`` (everything needed to resume exactly),
``eval.json`` (``--eval-only``). Re-running the same command resumes from ``checkpoints/last.pt``.
Every checkpoint stores ``latent_norm``: the mean norm of the tokens the decoder reads (EMA weights) on the
held-out images, measured at each evaluation (or at the save when no evaluation ran at that step);
``sample.py`` decodes generated latents at that norm.
See ``--help`` for every option and its default.
"""
from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python experiments/in1k_ae.py` from anywhere
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from experiments.common import checkpoint, distributed as D  # noqa: E402
from experiments.common.ckpt_policy import SavePolicy, milestone_steps  # noqa: E402
from experiments.common.ae_cli import build_parser, resolve  # noqa: E402
from experiments.common.data import (DataError, EmbeddedPhotos, ImageFolderDataset, ResumableBatchSampler,  # noqa: E402
                              close_loader, collate, mix_seed, worker_init)
from experiments.common.ema import EMA, load_ema_weights  # noqa: E402
from experiments.common.logging_utils import MetricsLogger, Progress, Throughput, truncate_after  # noqa: E402
from experiments.common.rundir import run_folder  # noqa: E402
from experiments.common.trainer import (NonFiniteError, NonFiniteGuard, StepBookkeeper, UserError,  # noqa: E402
                                 abort_nonfinite, autocast, build_adamw, check_resume_args,
                                 grads_finite_norm, lr_lambda, run_cli, script_exit, seed_everything,
                                 training_session)

EMBEDDED_TRAIN_LEN = 4096
# Keys that must match between a checkpoint and the command resuming it.
_RESUME_KEYS = ("preset", "stem", "stage", "batch_size", "grad_accum", "image_size", "seed", "data",
                "decoder_input", "structure")
# A run's own files besides checkpoints/ and metrics.jsonl (moved aside on a fresh start, see rundir).
_ARTEFACTS = ("recon.png", "tb", "eval.json")


def banner(args, info, n_train: int) -> None:
    if not info.is_main:
        return
    if not args.embedded:
        print(f"in1k_ae: preset {args.preset}, stage {args.stage}, {n_train} training images in {args.data}, "
              f"{args.max_steps} steps of {args.batch_size} images on {info.world_size} process(es) "
              f"({info.device.type}, {args.precision}) -> {args.out}", flush=True)
    else:
        print(f"in1k_ae: no --data, so training the {args.preset.upper()} preset ({args.stem} stem, "
              f"random-init encoder) on random "
              f"{args.image_size}px crops of 8 scikit-image/scikit-learn photos, evaluating on held-out "
              f"chelsea+flower crops, {args.max_steps} steps, {args.precision}, LPIPS "
              f"{'on' if args.lpips_weight > 0 else 'off'} -> {args.out}. Real run: torchrun "
              f"--nproc_per_node=8 experiments/in1k_ae.py --data /imagenet --preset paper "
              f"--encoder-weights dinov3_vitl16.pth --grad-accum 4 (80 GB GPUs; docs/scale.md)", flush=True)


def build_model(args, resume_state):
    from models import EncoderWeightsError, build_autoencoder
    from models.autoencoder import AE_CONFIGS

    random_by_design = AE_CONFIGS[args.preset].random_encoder
    has_ckpt = resume_state is not None or args.init_from is not None
    if not (args.encoder_weights or args.random_encoder or args.pretrained or random_by_design or has_ckpt):
        raise UserError(f"preset {args.preset!r} needs DINO weights: pass --encoder-weights PATH (Meta or "
                        f"timm .pth/.safetensors), --pretrained (online) or --random-encoder")
    try:
        ae = build_autoencoder(args.preset, weights=args.encoder_weights, pretrained=args.pretrained,
                               random_init=args.random_encoder or (has_ckpt and not args.encoder_weights),
                               image_size=args.image_size, decoder_input=args.decoder_input, stem=args.stem,
                               structure=args.structure)
    except (EncoderWeightsError, ValueError) as e:  # missing / mismatched weights, bad image size
        raise UserError(str(e).splitlines()[0]) from e
    args.image_size = ae.image_size
    return ae


def make_datasets(args, info=None):
    """Training and held-out datasets (``--data`` trees scanned once, by rank 0, with a distributed ``info``)."""
    if args.embedded:
        train = EmbeddedPhotos("train", args.image_size, length=EMBEDDED_TRAIN_LEN, seed=args.seed)
        val = EmbeddedPhotos("eval", args.image_size, length=args.eval_images, seed=args.seed)
    else:
        train = ImageFolderDataset(Path(args.data) / "train", args.image_size, train=True, seed=args.seed,
                                   info=info)
        val = ImageFolderDataset(Path(args.data) / "val", args.image_size, train=False, info=info)
    return train, val


def load_init(ae, path: str) -> None:
    """Stage 2 init: the stage-1 checkpoint's full model, then its EMA weights on top."""
    from experiments.common.dit_io import ckpt_decoder_input

    state = checkpoint.load(checkpoint.in_run(path))
    if ckpt_decoder_input(state.get("args", {})) != ae.config.decoder_input:
        raise UserError(f"--init-from {path} was trained with --decoder-input "
                        f"{ckpt_decoder_input(state.get('args', {}))}; pass the same --decoder-input")
    ae.load_state_dict(state["model"])
    load_ema_weights(ae, state)


def _main(argv=None) -> int:
    args = resolve(build_parser().parse_args(argv))
    with training_session(args) as info:  # DDP set-up, CPU threads; undone on exit
        if args.eval_only:
            from experiments.eval_ae import evaluate_run

            evaluate_run(args, info)
            return 0
        with run_folder(args.out, info, prog="in1k_ae.py", no_resume=args.no_resume, artefacts=_ARTEFACTS):
            return train(args, info)


def train(args, info) -> int:
    from experiments.common import ae_steps  # imports models (timm): after the cheap argument checks

    out = Path(args.out)
    ckpts = checkpoint.CheckpointDir(out / "checkpoints", keep_every=args.keep_every)
    resume = None if args.no_resume else ckpts.load_latest()
    if args.image_size is None:
        from models.autoencoder import AE_CONFIGS

        args.image_size = AE_CONFIGS[args.preset].image_size
    if resume is not None:
        if args.grad_accum == "auto":  # a resumed run keeps its micro-batching (its data order depends on it)
            args.grad_accum = resume["args"].get("grad_accum", 1)
        check_resume_args(resume["args"], args, _RESUME_KEYS, ckpts.last)
    train_ds, val_ds = make_datasets(args, info)  # data problems surface before the (slow) model build
    seed_everything(args.seed)
    ae = build_model(args, resume)
    dev, world = info.device, info.world_size
    if args.grad_accum == "auto":
        from experiments.common.memory_plan import ae_auto_grad_accum

        args.grad_accum = ae_auto_grad_accum(args, info, ae)
    if args.batch_size % (args.grad_accum * world):
        raise UserError(f"--batch-size {args.batch_size} must divide by grad-accum x processes "
                        f"({args.grad_accum} x {world})")
    if args.init_from and resume is None:
        load_init(ae, args.init_from)
    micro = args.batch_size // args.grad_accum
    probe = ResumableBatchSampler(len(train_ds), micro, world=world, chunks_per_step=args.grad_accum)
    if args.max_steps is None:
        args.max_steps = max(1, round(args.epochs * probe.steps_per_epoch))
    banner(args, info, len(train_ds))
    params = ae.set_stage(args.stage)
    ae.set_grad_checkpointing(args.grad_checkpointing)
    ae.to(dev)
    lpips, lpips_note = ae_steps.build_lpips(args.lpips_weights, args.lpips_weight <= 0, dev)
    if info.is_main and args.lpips_weight > 0 and lpips is None:
        print(f"in1k_ae: LPIPS off: {lpips_note}", flush=True)
    from models.losses import LossWeights

    weights = LossWeights(cosine=args.cos_weight, l1=args.l1_weight, lpips=args.lpips_weight if lpips else 0.0,
                          gan=args.gan_weight)
    net = ae_steps.Stage1Net(ae) if args.stage == 1 else ae_steps.Stage2Net(ae)
    ema = EMA(ae, args.ema_decay, warmup=args.ema_warmup)
    opt = build_adamw(params, args.lr, (args.beta1, args.beta2), args.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lr_lambda(args.lr_schedule, args.warmup_steps, args.max_steps))
    disc = d_opt = None
    if args.stage == 2:
        disc = ae_steps.build_discriminator(args.preset, args.disc_weights, args.pretrained,
                                            args.random_encoder, dev)
        d_opt = build_adamw([p for p in disc.parameters() if p.requires_grad], args.lr,
                            (args.beta1, args.beta2), args.weight_decay)
    guard = NonFiniteGuard(args.max_nonfinite)
    bad_files: set[str] = set()
    step = 0
    logger = MetricsLogger(out, enabled=info.is_main, tensorboard=args.tensorboard)
    if resume is not None:
        step = _restore(resume, ae, ema, opt, sched, disc, d_opt, guard, bad_files, info)
        if info.is_main:
            truncate_after(logger.path, step)
            print(f"in1k_ae: resuming from {ckpts.last} at step {step}", flush=True)
    else:
        logger.log("start", 0, **{k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(args).items()},
                   world_size=world, lpips=lpips_note)
    net_d = D.wrap_ddp(net, info)
    disc_d = D.wrap_ddp(disc, info) if disc is not None else None
    if args.compile:
        net_d = torch.compile(net_d)
    sampler = ResumableBatchSampler(len(train_ds), micro, rank=info.rank, world=world, seed=args.seed,
                                    chunks_per_step=args.grad_accum, start_chunk=step * args.grad_accum)
    loader = torch.utils.data.DataLoader(train_ds, batch_sampler=sampler, num_workers=args.num_workers,
                                         collate_fn=collate, pin_memory=dev.type == "cuda",
                                         worker_init_fn=worker_init if args.num_workers > 0 else None)
    val_loader = _eval_loader(val_ds, args, info)
    ctx = dict(args=args, info=info, ae=ae, ema=ema, logger=logger, val_loader=val_loader, out=out,
               lpips=lpips)

    policy = SavePolicy(args.ckpt_every, args.ckpt_minutes,
                        milestone_steps(args.milestone_epochs, probe.steps_per_epoch, args.max_steps),
                        args.max_steps, is_main=info.is_main)

    def save(step_: int, why: str) -> None:
        rng = D.all_gather_object(checkpoint.capture_rng())
        latent_norm = _latent_norm(ctx, step_)
        if info.is_main:
            t = time.monotonic()
            ckpts.save({"step": step_, "data_chunk": step_ * args.grad_accum, "model": ae.state_dict(),
                        "latent_norm": latent_norm,
                        "ema": ema.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "disc": disc.state_dict() if disc is not None else None,
                        "disc_optimizer": d_opt.state_dict() if d_opt is not None else None,
                        "guard": guard.state_dict(), "bad_files": sorted(bad_files), "rng": rng,
                        "args": {k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(args).items()},
                        "world_size": world}, step_)
            secs, size = time.monotonic() - t, ckpts.last.stat().st_size
            policy.saved(size, secs)
            logger.log("checkpoint", step_, reason=why, seconds=round(secs, 3), gb=round(size / 1e9, 4))
        D.barrier()

    if step >= args.max_steps and info.is_main:
        print(f"in1k_ae: nothing to do: {ckpts.last} is already at step {step} of {args.max_steps} "
              f"(raise --max-steps to continue, or use --no-resume / another --out)", flush=True)
    if step == 0 and args.eval_every > 0:
        _evaluate(ctx, 0)
    progress = Progress(args.max_steps, step, enabled=info.is_main and not args.no_progress)
    meter, it, t_start = Throughput(), iter(loader), time.time()
    book = StepBookkeeper(guard, ema, ae, logger, sched)
    reported_bad = code = 0
    with checkpoint.StopSignals() as stop:
        try:
            while step < args.max_steps:
                epoch = sampler.epoch_of_chunk(step * args.grad_accum)
                parts, finite, gnorm = _train_step(ctx, net_d, disc_d, disc, opt, d_opt, it, step, epoch,
                                                   weights, params, bad_files, meter)
                book.record(step, parts, finite)  # guard, EMA, loss sums, sched.step()
                step += 1
                progress.update(1, loss=parts.get("loss", float("nan")), img_s=meter.rate(reset=False))
                if step % args.log_every == 0 or step == args.max_steps:
                    nbad = len(set().union(*D.all_gather_object(bad_files)))
                    logger.log("train", step, **book.pop_means(), lr=sched.get_last_lr()[0], grad_norm=gnorm,
                               img_per_s=meter.rate(), epoch=round(epoch, 4), skipped_files=nbad,
                               nonfinite_total=guard.total)
                    if nbad > reported_bad and info.is_main:
                        progress.write(f"in1k_ae: {nbad} unreadable image files skipped so far")
                    reported_bad = nbad
                if args.eval_every > 0 and (step % args.eval_every == 0 or step == args.max_steps):
                    _evaluate(ctx, step)
                stopping, by_signal, timed = policy.poll(stop.requested, step == args.stop_after, dev)
                if stopping:
                    close_loader(it)  # workers done before the last checkpoint (they may have a SIGTERM too)
                    write, why_not = policy.stop_write(args.stop_budget) if by_signal else (True, "")
                if (policy.due(step, timed) and guard.consecutive == 0 and not stopping) or (stopping and write):
                    save(step, "stop" if stopping else policy.reason(step, timed))
                if info.is_main and policy.milestone(step) and ckpts.exists():
                    ckpts.keep(policy.milestone(step))  # the newest good last.pt, as epoch_E.pt
                if stopping:
                    why = (signal.Signals(stop.signum).name if stop.signum else
                           "SIGTERM" if by_signal else "--stop-after")
                    logger.log("stopped", step, signal=why, **({"note": why_not} if why_not else {}))
                    if info.is_main:
                        progress.write(f"in1k_ae: stopped ({why}) at step {step}; " + (f"{why_not}; " if why_not
                                       else "") + f"checkpoint {ckpts.last}; re-run the same command to continue")
                    code = 128 + stop.signum if stop.signum else 0
                    break
        except NonFiniteError as e:
            return abort_nonfinite("in1k_ae", e, step, logger, progress, ckpts)
        finally:
            close_loader(it)  # an error never waits for (or orphans) the loader workers
    progress.close()
    if info.is_main and code == 0:
        print(f"in1k_ae: done at step {step} in {time.time() - t_start:.1f}s -> {out}", flush=True)
        if ctx.get("evals"):
            print(f"in1k_ae: {eval_summary(ctx['evals'])}", flush=True)
    logger.close()
    return code


def _train_step(ctx, net, disc_d, disc, opt, d_opt, it, step, epoch, w, params, bad_files, meter):
    """One optimizer step over ``grad_accum`` micro-batches. Returns (loss parts, finite, grad norm)."""
    from experiments.common import ae_steps

    args, info = ctx["args"], ctx["info"]
    dev, accum = info.device, args.grad_accum
    adversarial = args.stage == 2 and epoch >= args.disc_warmup_epochs
    train_g = args.stage == 1 or adversarial
    opt.zero_grad(set_to_none=True)
    if d_opt is not None:
        d_opt.zero_grad(set_to_none=True)
    totals: dict[str, torch.Tensor] = {}  # summed on the device: one host sync per step, not one per part
    for m in range(accum):
        batch = next(it)
        bad_files.update(batch["bad"])
        x = batch["image"].to(dev, non_blocking=True)
        meter.add(x.shape[0] * info.world_size)
        sync = m == accum - 1
        with (net.no_sync() if (not sync and hasattr(net, "no_sync")) else contextlib.nullcontext()):
            with autocast(dev, args.precision):
                if args.stage == 1:
                    recon, z, zt = net(x)
                    loss, parts = ae_steps.stage1_losses(x, recon, z, zt, ctx["lpips"], w)
                else:
                    gen = torch.Generator(dev).manual_seed(mix_seed(args.seed, step, m, info.rank))
                    with torch.set_grad_enabled(train_g):
                        recon = net(x, _tau(args, epoch), gen)
                    loss, parts = ae_steps.stage2_g_losses(x, recon, ctx["lpips"], disc, w, adversarial,
                                                           generator=gen)
            if step + 1 in args.inject_nan_steps:  # 1-based, as logged
                loss = loss * float("nan")
            if train_g:
                (loss / accum).backward()
        if disc_d is not None:
            with (disc_d.no_sync() if (not sync and hasattr(disc_d, "no_sync")) else contextlib.nullcontext()):
                with autocast(dev, args.precision):
                    d_loss, d_parts = ae_steps.stage2_d_loss(x, recon.detach(), disc_d, generator=gen)
                (d_loss / accum).backward()
            parts.update(d_parts)
        parts["loss"] = loss
        for k, v in parts.items():
            totals[k] = totals.get(k, 0.0) + v.detach().double() / accum
    vals = torch.stack(list(totals.values()))
    D.all_reduce_mean(vals)
    norms = [grads_finite_norm(params, args.grad_clip) if train_g else torch.tensor(0.0)]
    if disc is not None:
        norms.append(grads_finite_norm([p for p in disc.parameters() if p.requires_grad], args.grad_clip))
    host = torch.cat([vals] + [n.detach().double().reshape(1).to(dev) for n in norms]).tolist()  # one sync
    parts = dict(zip(totals, host[:len(totals)]))
    finite = all(math.isfinite(v) for v in host)
    if finite:
        if train_g:
            opt.step()
        if d_opt is not None:
            d_opt.step()
    return parts, finite, host[len(totals)]


def _tau(args, epoch: float) -> float:
    from models import smoothing_tau

    return smoothing_tau(epoch, start=args.tau_start, end=args.tau_end, ramp_epochs=args.tau_ramp_epochs)


def _eval_loader(val_ds, args, info):
    from experiments.common.data import ShardedEvalSampler

    n = min(len(val_ds), args.eval_images)
    sampler = ShardedEvalSampler(n, 32, rank=info.rank, world=info.world_size)
    return torch.utils.data.DataLoader(val_ds, batch_sampler=sampler, num_workers=args.num_workers,
                                       collate_fn=collate, worker_init_fn=worker_init if args.num_workers else None)


def _evaluate(ctx, step: int) -> dict:
    from experiments.eval_ae import evaluate

    ae, ema, args = ctx["ae"], ctx["ema"], ctx["args"]
    with ema.applied(ae):
        res = evaluate(ae, ctx["val_loader"], ctx["info"].device, precision=args.precision,
                       lpips=ctx["lpips"], fd="off", grid_path=ctx["out"] / "recon.png")
    ae.train()
    ctx["latent_norm"] = (step, res["latent_norm"])
    ctx.setdefault("evals", []).append(dict(res, step=step))
    return ctx["logger"].log("eval", step, **res)


def _latent_norm(ctx, step: int) -> float:
    """``latent_norm`` for the checkpoint of ``step``: the evaluation's at this step, else measured now
    (EMA weights, held-out images; every process takes part)."""
    if ctx.get("latent_norm", (None,))[0] == step:
        return ctx["latent_norm"][1]
    from experiments.eval_ae import mean_latent_norm

    ae, ema, args = ctx["ae"], ctx["ema"], ctx["args"]
    with ema.applied(ae):
        value = mean_latent_norm(ae, ctx["val_loader"], ctx["info"].device, precision=args.precision)
    ae.train()
    ctx["latent_norm"] = (step, value)
    return value


def eval_summary(evals: list[dict]) -> str:
    """One console line from the run's evaluations (first → last), e.g.
    ``held-out PSNR 10.70 → 19.40 dB, SSIM 0.120 → 0.480 (steps 0 → 600, 32 images), latent_norm 7.46``."""
    a, b = evals[0], evals[-1]
    line = (f"held-out PSNR {a['psnr']:.2f} → {b['psnr']:.2f} dB, SSIM {a['ssim']:.3f} → {b['ssim']:.3f}")
    if "lpips" in a and "lpips" in b:
        line += f", LPIPS {a['lpips']:.3f} → {b['lpips']:.3f}"
    return line + (f" (steps {a['step']} → {b['step']}, {b['n_images']} images), "
                   f"latent_norm {b['latent_norm']:.4g}")


def _restore(state, ae, ema, opt, sched, disc, d_opt, guard, bad_files, info) -> int:
    if disc is not None and state.get("disc") is not None:
        disc.load_state_dict(state["disc"])
        d_opt.load_state_dict(state["disc_optimizer"])
    bad_files.update(state.get("bad_files", []))
    return checkpoint.restore_training(state, info.rank, info.world_size, model=ae, ema=ema, optimizer=opt,
                                       scheduler=sched, guard=guard)


def main(argv=None) -> int:
    """Entry point; returns the exit code (0 ok, 2 user error, 3 non-finite stop, 128+sig on signal)."""
    return run_cli(_main, argv, prog="in1k_ae.py", one_line=(DataError,))


if __name__ == "__main__":
    import warnings as _w

    _w.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)  # geoopt import
    script_exit(main())
