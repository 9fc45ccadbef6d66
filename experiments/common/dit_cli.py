"""Command line of ``experiments/in1k_dit.py``: options, per-preset defaults, validation.

Options whose default depends on the preset are ``None`` in argparse and filled in by :func:`resolve`
from :data:`DEFAULTS` (listed in ``--help``'s epilog).
"""
from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from experiments.common.ae_cli import default_out as ae_default_out
from experiments.common.cli_common import (PresetHelpFormatter, parse_epoch_list, parse_step_list, add_checkpoint_args, add_optimisation_args,
                                          add_run_control_args, validate_args)
from experiments.common.trainer import OneLineParser, UserError

# PAPER.md "Riemannian flow matching": LightningDiT-XL/1, AdamW lr 2e-4, β (0.9, 0.95), batch 1024,
# EMA 0.9995, 80 epochs, λ_rad 0.1, FP32. Not stated by the paper, taken from LightningDiT's configs: no
# gradient clipping (grad_clip 0 = off), no QK-norm, weight decay 0, constant lr; label dropout 0.1 (ours/DiT).
# Decoding generated latents: the paper's s_vae = 14 for DINOv3-L (App. C), i.e. its raw-token norm; the
# scripts read it from the AE checkpoint's latent_norm (--decode-norm 14 forces the paper's number).
_PAPER = dict(model="LightningDiT-XL/1", lr=2e-4, beta1=0.9, beta2=0.95, weight_decay=0.0, batch_size=1024,
              epochs=80.0, steps=None, ema_decay=0.9995, ema_warmup=0, warmup_steps=0, lr_schedule="constant",
              grad_clip=0.0, log_every=100, ckpt_every=5000, sample_every=0, milestone_epochs="80,550",
              sample_cfg=1.0, cache_latents=False)
# Embedded photos on a 2-core CPU in ~2 minutes: a 0.73 M-parameter DiT on 1 thread, larger lr with
# warm-up + cosine decay, short-memory EMA with warm-up.
# The toy run keeps clipping at 1.0 (our choice, a guard for its large lr on 2 CPU cores).
_TINY = dict(_PAPER, model="LightningDiT-T/1", lr=1e-3, batch_size=32, epochs=None, steps=1000,
             ema_decay=0.999, ema_warmup=50, warmup_steps=50, lr_schedule="cosine", log_every=25,
             ckpt_every=250, grad_clip=1.0, milestone_epochs="none")
# The embedded default (demo): the tiny recipe with a DiT as wide as the cpu autoencoder's 192 channels
# (LightningDiT-T/1's width 96 squeezes every token through 96 numbers), trained on a cached pool of the
# embedded photos' crops (encoded once instead of every step), sampled with classifier-free guidance, with
# training times shifted far towards the noise end (α = 6 instead of the auto 1.73: the class-defining coarse
# layout is decided there) and a larger lr over 750 steps (under 5 minutes on 2 cores).
# docs/dit.md "Demo on the embedded photos" measures what each change bought.
_CPU = dict(_TINY, model="LightningDiT-C/1", lr=3e-3, steps=750, alpha=6.0, cache_latents=True, sample_cfg=4.0)
DEFAULTS = {"paper": _PAPER, "cpu": _CPU, "tiny": _TINY}


def _small_dit(depth: int, hidden: int, heads: int) -> Callable[..., Any]:
    def build(**overrides: Any):
        from models.dit import DiTConfig, LightningDiT

        cfg = replace(DiTConfig(), depth=depth, hidden_size=hidden, num_heads=heads, mlp_ratio=4.0)
        return LightningDiT(replace(cfg, **overrides))
    build.__doc__ = f"LightningDiT with depth {depth}, width {hidden}, {heads} heads; kwargs override DiTConfig."
    return build


def dit_registry() -> dict[str, Callable[..., Any]]:
    """Model name → factory(**DiTConfig overrides): the paper's sizes, plus two CPU sizes:
    ``LightningDiT-T/1`` (depth 4, width 96, 4 heads: tests, ``--preset tiny``) and ``LightningDiT-C/1``
    (depth 4, width 192, 4 heads: ``--preset cpu``, the embedded demo)."""
    from models.dit import LightningDiT_models

    return {"LightningDiT-T/1": _small_dit(4, 96, 4), "LightningDiT-C/1": _small_dit(4, 192, 4),
            **LightningDiT_models}


def default_out(preset: str, embedded: bool, flow: str = "riemannian") -> str:
    """The default ``--out``: ``runs/dit-<preset>[-embedded][-euclidean]`` (``dit_io.DEFAULT_DIT_RUN`` for
    the embedded default, cpu)."""
    return f"runs/dit-{preset}{'-embedded' if embedded else ''}{'' if flow == 'riemannian' else '-' + flow}"


_EPILOG = "per-preset defaults of the options marked [preset]:\n" + "\n".join(
    f"  {p:6s} " + "; ".join(f"{k}={'0 (off)' if k == 'grad_clip' and not v else v}" for k, v in sorted(d.items()))
    for p, d in DEFAULTS.items()) + (
    "\n\nData sources (one of):\n"
    "  (none)           embedded scikit-image/scikit-learn photos, encoded on the fly by the cpu AE of\n"
    f"                   {ae_default_out('cpu', True, 1)} (or a fresh random-init cpu AE if that run does "
    "not exist)\n"
    "  --data DIR       ImageNet-style DIR/train/<class>/<img>, encoded on the fly by --ae-ckpt\n"
    "  --data DIR --cache-latents   encode once to OUT/latents (safetensors shards, resumable), train on them\n"
    "                   (also without --data: the embedded photos' crops, the cpu preset's default)\n"
    "  --latents DIR    shards written by experiments/cache_latents.py\n"
    "Decode norm: generated tokens are rescaled to the autoencoder checkpoint's latent_norm before decoding\n"
    "  (--decode-norm overrides). The paper's s_vae for DINOv3-L is 14 (App. C sweep over 8..20).\n"
    "Real run: torchrun --nproc_per_node=8 experiments/in1k_dit.py --preset paper --data /imagenet \\\n"
    "          --ae-ckpt runs/ae-paper-s2 --cache-latents --grad-accum 4 --out runs/dit-xl\n"
    "  (--grad-accum 4: 4 micro-batches of 32 per 80 GB GPU; other GPUs and node counts: docs/scale.md)")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="in1k_dit.py", formatter_class=PresetHelpFormatter, epilog=_EPILOG, description=(
        "Train a class-conditional LightningDiT with Riemannian flow matching on the spherical latents of a "
        "trained DINO Spherical Autoencoder (t = 0 data, t = 1 uniform noise on the sphere)."))
    g = p.add_argument_group("data and model")
    g.add_argument("--data", help="ImageNet-style folder with train/<class>/ images (omitted: embedded photos)")
    g.add_argument("--latents", help="folder of cached latent shards (experiments/cache_latents.py)")
    g.add_argument("--cache-latents", action=argparse.BooleanOptionalAction, default=None,
                   help="encode the training set (--data, or the embedded photos' fixed crops of epoch 0) once "
                   "to OUT/latents, then train on it [preset]")
    g.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="horizontal flips with probability 1/2: on the fly, or with --cache-latents a cached "
                        "flipped copy (2x the size); both paths use centre crops (default: on with --data for "
                        "the paper preset, as LightningDiT's latent extraction; off otherwise)")
    g.add_argument("--cache-dtype", choices=("float16", "bfloat16", "float32"), default="float16",
                   help="storage dtype of --cache-latents (rounding per token: float16 ~2e-4 rad, bfloat16 "
                        "~1.7e-3 rad; read back in float32 and re-projected)")
    g.add_argument("--ae-ckpt", help="in1k_ae.py run folder or checkpoint (EMA weights are used)")
    g.add_argument("--accept-changed-ae", action="store_true", help="resume (or train on --latents) with an "
                   "autoencoder whose encoder weights differ from the recorded one, on purpose (the change is "
                   "printed and logged as a 'resume' record; the latent shape must still agree)")
    g.add_argument("--preset", choices=tuple(DEFAULTS), default=None,
                   help="hyper-parameter preset (default: cpu without --data/--latents, else paper)")
    g.add_argument("--model", help="DiT name (LightningDiT-T/1, -S/1, -B/1, -L/1, -XL/1) [preset]")
    g.add_argument("--ddt-head", action="store_true", help="add the wide DDT head (DiT^DH)")
    g.add_argument("--qk-norm", action="store_true", help="RMS-normalise queries and keys (off by default, "
                   "as in LightningDiT's configs)")
    g.add_argument("--no-abs-pos-embed", dest="abs_pos_embed", action="store_false",
                   help="drop LightningDiT's fixed 2-D sin-cos absolute position embedding (on by default, "
                   "added to the tokens on top of RoPE; runs written before it existed had none)")
    g.add_argument("--num-classes", type=int, help="number of classes (default: from the data)")
    g.add_argument("--image-size", type=int, help="on-the-fly encoding: image side (default: the AE's)")
    g = p.add_argument_group("flow matching")
    g.add_argument("--flow", choices=("riemannian", "euclidean"), default="riemannian",
                   help="riemannian: uniform noise on the sphere, slerp, rfm_loss, Riemannian Euler (paper); "
                   "euclidean: flat flow matching on the same latents (Gaussian noise, straight path, "
                   "ambient Euler; paper Table 4's ablation); stored in the checkpoint for sample.py")
    g.add_argument("--lambda-rad", type=float, default=0.1, help="weight of the radial penalty λ_rad "
                   "(riemannian only)")
    g.add_argument("--alpha", type=float, help="time shift α (default: 6 for the cpu preset, else auto = "
                   "sqrt(N·C/4096))")
    g.add_argument("--time-loc", type=float, default=0.0, help="logit-normal location of t")
    g.add_argument("--time-scale", type=float, default=1.0, help="logit-normal scale of t")
    g.add_argument("--cfg-dropout", type=float, default=0.1, help="label dropout to the null class")
    add_optimisation_args(p, length=_length_args, ema_decay_help="EMA decay [preset]")
    g = p.add_argument_group("run")
    g.add_argument("--out", help="run folder (default: runs/dit-<preset>[-embedded][-euclidean])")
    g.add_argument("--seed", type=int, default=0, help="global seed (init, data order, noise, times)")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda")
    g.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="fp32 (the paper trains the DiT in FP32 and reports BF16 as unstable) or bf16 "
                        "autocast around the DiT only, on CUDA; sphere arithmetic is always fp32")
    g.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=True,
                   help="FP32 weights and optimizer with TF32 tensor-core matmuls/convolutions on CUDA (default: "
                   "0.715 TFLOP per training image caps true FP32 at 94 img/s per H100 at 100%% of its 67 "
                   "TFLOP/s vs 693 with TF32; docs/recipe.md); --no-tf32 = true FP32. The spherical ops stay "
                   "exact float32 either way")
    g.add_argument("--compile", action="store_true", help="torch.compile the DiT")
    g.add_argument("--threads", type=int, help="CPU intra-op threads (default: 1 for the tiny preset on "
                   "CPU, where more threads are slower; else torch's)")
    g.add_argument("--num-workers", type=int, help="data-loader workers (default: 0 embedded, else 8)")
    g.add_argument("--log-every", type=int, help="steps between train log lines [preset]")
    add_checkpoint_args(g)
    g.add_argument("--sample-every", type=int, help="steps between EMA sample grids, 0 = only at the "
                   "end [preset]")
    g.add_argument("--sample-steps", type=int, default=50, help="Euler steps of those sample grids")
    g.add_argument("--sample-cfg", type=float, help="guidance scale w of those grids, stored in the checkpoint "
                   "as sample.py's default --cfg [preset]")
    g.add_argument("--decode-norm", type=float, help="token norm before decoding those grids (default: "
                   "the autoencoder checkpoint's latent_norm; the paper's s_vae for DINOv3-L is 14)")
    add_run_control_args(g, folder="OUT", tensorboard_help="also log to OUT/tb",
                         inject_nan_help="(testing) comma list of steps with NaN loss", inject_nan_default="")
    return p


def _length_args(g) -> None:
    from experiments.common.microbatch import grad_accum_arg

    g.add_argument("--grad-accum", type=grad_accum_arg, default=1, help="micro-batches per optimizer step "
                   "(same update as one batch: per-sample noise, DDP syncs once); auto = the fewest that fit "
                   "the GPU's free memory by the memory plan (CUDA only; 1 elsewhere)")
    g.add_argument("--grad-checkpointing", action="store_true", help="recompute each DiT block in backward "
                   "(activations ~1/20, ~1/3 more compute; same losses and gradients)")
    g.add_argument("--steps", "--max-steps", dest="steps", type=int, help="optimizer steps [preset]")
    g.add_argument("--epochs", type=float, help="epochs of the training set (if --steps is not set) [preset]")


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill preset defaults, derive paths, validate; raises :class:`UserError` on bad input."""
    args.embedded = args.data is None and args.latents is None
    if args.preset is None:
        args.preset = "cpu" if args.embedded else "paper"
    if args.flip is None:  # LightningDiT caches each image and its mirror image; the paper does not say
        args.flip = args.preset == "paper" and args.data is not None
    for k, v in DEFAULTS[args.preset].items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    validate_args(args)  # ranges of every numeric option, --device
    if args.model not in dit_registry():
        raise UserError(f"unknown --model {args.model!r}; choose from {', '.join(dit_registry())}")
    if args.steps is None and args.epochs is None:
        raise UserError("give --steps or --epochs")
    if args.data is not None and args.latents is not None:
        raise UserError("--data and --latents are exclusive (cached latents already hold the data)")
    if args.cache_latents and args.latents is not None:
        raise UserError("--cache-latents encodes --data or the embedded photos; --latents are cached already")
    if args.flip and args.embedded:
        raise UserError("--flip is for --data (the embedded photos are random crops, flipped already)")
    if args.data is not None:
        if not (Path(args.data) / "train").is_dir():
            raise UserError(f"{args.data} has no train/ sub-folder (expected {args.data}/train/<class>/<image>)")
        if args.ae_ckpt is None:
            raise UserError("--data needs --ae-ckpt (an in1k_ae.py run folder or checkpoint)")
    if args.latents is not None and not (Path(args.latents) / "index.json").is_file():
        raise UserError(f"{args.latents}/index.json not found: write it with experiments/cache_latents.py")
    if args.num_workers is None:
        args.num_workers = 0 if args.embedded else min(8, os.cpu_count() or 1)
    if args.out is None:
        args.out = default_out(args.preset, args.embedded, args.flow)
    args.inject_nan_steps = sorted(parse_step_list(args.inject_nan_steps))
    args.milestone_epochs = parse_epoch_list(args.milestone_epochs)
    return args
