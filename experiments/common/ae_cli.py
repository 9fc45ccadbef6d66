"""Command line of ``experiments/in1k_ae.py``: options, per-preset defaults, validation.

Options whose default depends on the preset/stage are ``None`` in argparse and filled in by
:func:`resolve` from :data:`DEFAULTS` (printed in ``--help``'s epilog).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from experiments.common.cli_common import (PresetHelpFormatter, parse_epoch_list, parse_step_list, add_checkpoint_args, add_optimisation_args,
                                          add_run_control_args, validate_args)
from experiments.common.trainer import OneLineParser, UserError

# PAPER.md "Autoencoder training (v2)". Gradient clipping is not stated by the paper: off (grad_clip 0);
# ``--grad-clip G`` turns it on. Warm-up 0 and a constant lr are ours (not stated either). bf16 autocast: the
# paper trains stage 1 in bf16; stage 2's precision is not stated and follows stage 1.
_PAPER_1 = dict(lr=1e-5, beta1=0.9, beta2=0.999, weight_decay=0.0, ema_decay=0.9999, ema_warmup=0,
                batch_size=512, epochs=20, warmup_steps=0, lr_schedule="constant", grad_clip=0.0,
                cos_weight=0.5, l1_weight=1.0, lpips_weight=1.0, gan_weight=0.0, disc_warmup_epochs=0.0,
                log_every=50, eval_every=2000, ckpt_every=1000, eval_images=1000, precision="bf16",
                milestone_epochs="20")
_PAPER_2 = dict(_PAPER_1, lr=5e-5, beta1=0.5, beta2=0.9, ema_decay=0.9975, epochs=40, cos_weight=0.0,
                gan_weight=0.5, disc_warmup_epochs=2.0, milestone_epochs="40")
# Tiny / embedded photos: a few thousand decoder parameters on 2 CPU cores in ~3 minutes: a large
# learning rate with warm-up + cosine decay, a short-memory EMA with warm-up, small batches, clipping at 1.
_TINY_1 = dict(_PAPER_1, lr=4e-3, beta2=0.99, ema_decay=0.98, ema_warmup=10, batch_size=24, grad_clip=1.0,
               epochs=None, max_steps=600, warmup_steps=20, lr_schedule="cosine", lpips_weight=0.0,
               log_every=10, eval_every=100, ckpt_every=200, eval_images=32, precision="fp32",
               milestone_epochs="none")
_TINY_2 = dict(_TINY_1, lr=1e-3, beta1=0.5, beta2=0.9, cos_weight=0.0, gan_weight=0.5,
               disc_warmup_epochs=0.1)
# CPU demo (the embedded default): 8×8 tokens × 192 channels, a 2 M-parameter decoder, 2 threads, 1250 steps.
# Precision "auto": bf16 autocast (the paper's stage-1 precision) where the processor computes bf16 natively
# (CUDA, or x86 with AVX512-BF16 / AMX: ≈ 1.25× the fp32 step rate on such a box), else fp32 (measured on an
# AMD EPYC without those: bf16 autocast 4.7 s per step against 0.33 s in fp32, 14× slower).
# Cosine weight 0.1 instead of the paper's 0.5: the random teacher's token directions discard each patch's
# contrast, so aligning to them costs reconstruction (README: 0.5 / 0.1 / 0 measured).
_CPU_1 = dict(_TINY_1, lr=3e-3, batch_size=16, max_steps=1250, warmup_steps=20, eval_every=125, ckpt_every=250,
              log_every=10, cos_weight=0.1, precision="auto")
_CPU_2 = dict(_CPU_1, lr=1e-3, beta1=0.5, beta2=0.9, cos_weight=0.0, gan_weight=0.5, disc_warmup_epochs=0.1)
DEFAULTS = {("paper", 1): _PAPER_1, ("paper", 2): _PAPER_2, ("hae-code", 1): _PAPER_1,
            ("hae-code", 2): _PAPER_2, ("tiny", 1): _TINY_1, ("tiny", 2): _TINY_2,
            ("cpu", 1): _CPU_1, ("cpu", 2): _CPU_2}
PRESETS = ("cpu", "tiny", "hae-code", "paper")
#: Presets whose random-init encoder is by design, so they can train on the embedded photos.
EMBEDDED_PRESETS = ("cpu", "tiny")


def default_out(preset: str, embedded: bool, stage: int, stem: str = "conv") -> str:
    """The default ``--out``, ``runs/ae-<preset>[-embedded][-patchify]-s<stage>`` (also
    ``dit_io.DEFAULT_AE_RUN``)."""
    return f"runs/ae-{preset}{'-embedded' if embedded else ''}{'' if stem == 'conv' else '-' + stem}-s{stage}"


_EPILOG = "per-preset defaults (stage 1 / stage 2) of the options marked [preset]:\n" + "\n".join(
    f"  {p:8s} " + "; ".join(
        f"{k}={DEFAULTS[(p, 1)][k]}/{DEFAULTS[(p, 2)][k]}" if DEFAULTS[(p, 1)][k] != DEFAULTS[(p, 2)][k]
        else f"{k}={DEFAULTS[(p, 1)][k]}" for k in sorted(DEFAULTS[(p, 1)]))
    for p in ("cpu", "tiny", "paper")) + "\n  hae-code: as paper.\n" + (
    "\nWithout --data: trains the cpu preset (8x8 tokens x 192 channels at 64 px) on random crops of the\n"
    "photos bundled in scikit-image and scikit-learn (chelsea and flower held out for evaluation),\n"
    "random-init encoder, a few minutes on 2 cores.\n"
    "Real run: torchrun --nproc_per_node=8 experiments/in1k_ae.py --data /imagenet --preset paper \\\n"
    "           --encoder-weights dinov3_vitl16.pth --grad-accum 4 --out runs/ae-paper-s1\n"
    "  (--grad-accum 4: 4 micro-batches of 16 per 80 GB GPU; other GPUs and node counts: docs/scale.md)")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="in1k_ae.py", description=(
        "Train the DINO Spherical Autoencoder (stage 1: stem + decoder alignment; stage 2: decoder + "
        "discriminator with latent smoothing) on an ImageNet-style folder, or on embedded photos."),
        epilog=_EPILOG, formatter_class=PresetHelpFormatter)
    g = p.add_argument_group("data and model")
    g.add_argument("--data", help="ImageNet-style folder with train/ and val/ class sub-folders; "
                   "omitted: embedded scikit-image/scikit-learn photos (cpu or tiny preset)")
    g.add_argument("--preset", choices=PRESETS, default="cpu", help="autoencoder preset")
    g.add_argument("--stem", choices=("conv", "patchify"), default="conv",
                   help="student stem: the hierarchical conv stem (paper) or the ViT's linear patchify "
                   "(initialised from the teacher's; paper Table 5)")
    g.add_argument("--structure", choices=("table8", "release"), default="table8",
                   help="table8: this project's reading of the paper (stem biases, norms in the EfficientViT "
                   "blocks); release: exactly what the released DINO-SAE code builds (no stem biases, no "
                   "block norms, duplicating shortcuts only), e.g. to fine-tune a released checkpoint")
    g.add_argument("--stage", type=int, choices=(1, 2), default=1, help="training stage")
    g.add_argument("--image-size", type=int, help="input side in pixels (default: the preset's)")
    g.add_argument("--decoder-input", choices=("raw", "sphere"), default="raw",
                   help="what the decoder reads: the raw student tokens (paper) or R*z/|z| (ablation)")
    g.add_argument("--encoder-weights", help="local DINO checkpoint (.pth / .safetensors)")
    g.add_argument("--random-encoder", action="store_true", help="explicitly use a random-init DINO encoder")
    g.add_argument("--pretrained", action="store_true", help="download the DINO weights via timm (online)")
    g.add_argument("--init-from", help="stage 2: stage-1 checkpoint file or run folder (EMA weights used)")
    g.add_argument("--disc-weights", help="stage 2: DINO ViT-S/8 weights of the discriminator")
    g.add_argument("--lpips-weights", help="local VGG16 weights for LPIPS (default: torch cache)")
    g.add_argument("--no-lpips", action="store_true", help="train and evaluate without LPIPS")
    g.add_argument("--inception-weights", help="torch-fidelity FID Inception weights (eval; else FD_dino)")
    add_optimisation_args(p, length=_length_args, extra=_loss_args,
                          ema_decay_help="EMA decay of the trained weights [preset]")
    g = p.add_argument_group("run")
    g.add_argument("--out", help="run folder; re-running with the same folder resumes "
                   "(default: runs/ae-<preset>[-embedded][-patchify]-s<stage>)")
    g.add_argument("--seed", type=int, default=0, help="global seed (model init, data order, crops)")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda")
    g.add_argument("--precision", choices=("fp32", "bf16", "auto"),
                   help="bf16 autocast (sphere arithmetic stays fp32); auto: bf16 where the device computes it "
                        "natively (CUDA, or a CPU with AVX512-BF16/AMX), else fp32 [preset]")
    g.add_argument("--compile", action="store_true", help="torch.compile the training forward")
    g.add_argument("--threads", type=int, help="CPU intra-op threads (default on CPU: 1 for the tiny preset - "
                   "its small convolutions only lose to OpenMP sync - 2 for the cpu preset, else torch's default)")
    g.add_argument("--num-workers", type=int, help="data-loader workers per process "
                   "(default: 0 embedded, min(8, CPUs) for --data)")
    g.add_argument("--log-every", type=int, help="steps between train log lines [preset]")
    g.add_argument("--eval-every", type=int, help="steps between evaluations, 0 = off [preset]")
    g.add_argument("--eval-images", type=int, help="held-out images per evaluation [preset]")
    add_checkpoint_args(g)
    g.add_argument("--eval-only", action="store_true", help="evaluate the run's checkpoint and exit")
    add_run_control_args(g, folder="DIR", tensorboard_help="also log to DIR/tb (needs tensorboard)",
                         inject_nan_help="(testing) comma-separated steps whose loss is made NaN")
    return p


def _length_args(g) -> None:
    from experiments.common.microbatch import grad_accum_arg

    g.add_argument("--grad-accum", type=grad_accum_arg, default=1, help="micro-batches per optimizer step; "
                   "auto = the fewest that fit the GPU's free memory by the memory plan (CUDA only; 1 elsewhere; "
                   "a resumed run keeps its own)")
    g.add_argument("--grad-checkpointing", action="store_true", help="recompute the student ViT blocks and the "
                   "decoder stages in backward (activations ~1/6 in bf16; same losses and gradients)")
    g.add_argument("--max-steps", type=int, help="optimizer steps (overrides --epochs) [preset]")
    g.add_argument("--epochs", type=float, help="epochs of the training set [preset]")


def _loss_args(g) -> None:
    g.add_argument("--cos-weight", type=float, help="weight of 1 - cos(z, z_teacher) [preset]")
    g.add_argument("--l1-weight", type=float, help="weight of the L1 loss [preset]")
    g.add_argument("--lpips-weight", type=float, help="weight of LPIPS [preset]")
    g.add_argument("--gan-weight", type=float, help="weight of the hinge GAN loss (stage 2) [preset]")
    g.add_argument("--disc-warmup-epochs", type=float, help="stage 2: discriminator-only epochs [preset]")
    g.add_argument("--tau-start", type=float, default=0.8, help="stage 2: latent smoothing tau at epoch 0")
    g.add_argument("--tau-end", type=float, default=1.2, help="stage 2: tau after the ramp")
    g.add_argument("--tau-ramp-epochs", type=float, default=20.0, help="stage 2: epochs of the tau ramp")


def native_bf16(device: str = "auto") -> bool:
    """Whether ``device`` ("auto", "cpu", "cuda[:k]") computes bf16 matmuls and convolutions natively: CUDA,
    or an x86 CPU whose flags list ``avx512_bf16`` or ``amx_bf16`` (Linux ``/proc/cpuinfo``). Elsewhere
    torch emulates bf16 on the CPU, many times slower than fp32."""
    import torch

    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill preset defaults, derive paths, validate; raises :class:`UserError` on bad input."""
    args.embedded = args.data is None
    if args.embedded and args.preset not in EMBEDDED_PRESETS:
        raise UserError(f"--preset {args.preset} needs --data PATH (the embedded photos are for "
                        f"{' and '.join(EMBEDDED_PRESETS)})")
    defaults = DEFAULTS[(args.preset, args.stage)]
    for k, v in defaults.items():
        if k not in ("epochs", "max_steps") and getattr(args, k, None) is None:
            setattr(args, k, v)
    if args.max_steps is None and args.epochs is None:  # neither given: the preset's length
        args.max_steps, args.epochs = defaults.get("max_steps"), defaults.get("epochs")
    # --max-steps wins over --epochs; max_steps None = computed from --epochs and the dataset length
    validate_args(args)  # ranges of every numeric option, --device
    if args.precision == "auto":
        args.precision = "bf16" if native_bf16(args.device) else "fp32"
    if args.no_lpips:
        args.lpips_weight = 0.0
    if args.num_workers is None:
        import os

        args.num_workers = 0 if args.embedded else min(8, os.cpu_count() or 1)
    if args.out is None:
        args.out = default_out(args.preset, args.embedded, args.stage, args.stem)
    if args.grad_accum != "auto" and args.batch_size % args.grad_accum:
        raise UserError(f"--batch-size {args.batch_size} not divisible by --grad-accum {args.grad_accum}")
    if args.data is not None:
        root = Path(args.data)
        if not root.is_dir():
            raise UserError(f"data folder not found: {root} (expected an ImageNet-style folder with "
                            f"train/ and val/ class sub-folders)")
        for split in ("train", "val"):
            if not (root / split).is_dir():
                raise UserError(f"{root} has no {split}/ sub-folder (expected {root}/{split}/<class>/<image>)")
    for name in ("encoder_weights", "init_from", "disc_weights", "lpips_weights", "inception_weights"):
        path = getattr(args, name)
        if path is not None and not Path(path).exists():
            raise UserError(f"--{name.replace('_', '-')} file not found: {path}")
    if args.stage == 2 and args.init_from is None and not args.eval_only:
        print("note: stage 2 without --init-from starts from untrained stem/decoder weights")
    args.inject_nan_steps = parse_step_list(args.inject_nan_steps)
    args.milestone_epochs = parse_epoch_list(args.milestone_epochs)
    return args
