"""Argument groups shared by the training command lines (``ae_cli.py``, ``dit_cli.py``), and the one
argument validator of every command line (:func:`validate_args`, :func:`check_device`).

Options whose default depends on the preset are ``None`` here (help marked ``[preset]``) and filled in by
each script's ``resolve`` from its ``DEFAULTS`` table.
"""
from __future__ import annotations

import argparse
import math
from typing import Callable

from experiments.common.distributed import DEFAULT_TIMEOUT_MIN
from experiments.common.trainer import UserError

AddArgs = Callable[[argparse._ArgumentGroup], None]


class PresetHelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` that states every option's default: a help text marked ``[preset]`` says the default
    depends on the preset (listed in the epilog), an explicit ``(default: ...)`` is kept, ``None`` reads
    "none", anything else gets argparse's ``(default: X)``."""

    def _get_help_string(self, action: argparse.Action) -> str:
        h = action.help or ""
        if "[preset]" in h:
            return h.replace(" [preset]", "") + " (default: per preset, see the table below)"
        if "(default:" in h:
            return h
        if action.default is None and action.option_strings and action.nargs != 0:
            return h + " (default: none)"
        return super()._get_help_string(action) or h


def add_optimisation_args(parser: argparse.ArgumentParser, *, length: AddArgs, extra: AddArgs | None = None,
                          ema_decay_help: str = "EMA decay [preset]") -> argparse._ArgumentGroup:
    """Add the ``optimisation`` group: batch size, run length, AdamW, lr schedule, clipping, EMA, guard.

    ``length(group)`` adds the run-length options right after ``--batch-size`` (they differ between
    scripts); ``extra(group)`` adds script-specific options (loss weights, ...) before ``--max-nonfinite``.
    Returns the group.
    """
    g = parser.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, help="global batch size over all processes [preset]")
    length(g)
    g.add_argument("--lr", type=float, help="AdamW learning rate [preset]")
    g.add_argument("--beta1", type=float, help="AdamW β1 [preset]")
    g.add_argument("--beta2", type=float, help="AdamW β2 [preset]")
    g.add_argument("--weight-decay", type=float, help="AdamW weight decay [preset]")
    g.add_argument("--lr-schedule", choices=("constant", "cosine"), help="after warm-up [preset]")
    g.add_argument("--warmup-steps", type=int, help="linear lr warm-up steps [preset]")
    g.add_argument("--grad-clip", type=float, help="max global grad norm, 0 = off [preset]")
    g.add_argument("--ema-decay", type=float, help=ema_decay_help)
    g.add_argument("--ema-warmup", type=int, help="EMA decay min(d, (1+n)/(warmup+n)); 0 = off [preset]")
    if extra is not None:
        extra(g)
    g.add_argument("--max-nonfinite", type=int, default=5,
                   help="stop after this many non-finite steps in a row (0 = never)")
    return g




def add_run_control_args(g: argparse._ArgumentGroup, *, folder: str, tensorboard_help: str,
                         inject_nan_help: str, inject_nan_default: str | None = None) -> None:
    """The tail of the ``run`` group: TensorBoard, progress bar, resume, and the two testing hooks.

    ``folder`` is how the help names the run folder (``DIR`` / ``OUT``).
    """
    g.add_argument("--tensorboard", action="store_true", help=tensorboard_help)
    g.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    g.add_argument("--no-resume", action="store_true",
                   help=f"ignore {folder}/checkpoints/last.pt, start over")
    g.add_argument("--stop-after", type=int, help="(testing) stop like SIGTERM after this step")
    g.add_argument("--dist-timeout", type=float, default=DEFAULT_TIMEOUT_MIN,
                   help="minutes a process may wait for the others in a collective (or at start-up) before "
                        "the run fails instead of hanging")
    g.add_argument("--inject-nan-steps", default=inject_nan_default, help=inject_nan_help)


#: Default ``--ckpt-minutes``: a checkpoint at least this often whatever the step count (preemption).
DEFAULT_CKPT_MINUTES = 30.0


def add_checkpoint_args(g: argparse._ArgumentGroup) -> None:
    """``--ckpt-every`` [preset], ``--ckpt-minutes``, ``--stop-budget``, ``--keep-every`` and
    ``--milestone-epochs`` [preset] (see :mod:`experiments.common.ckpt_policy`)."""
    g.add_argument("--ckpt-every", type=int, help="steps between checkpoints [preset]")
    g.add_argument("--ckpt-minutes", type=float, default=DEFAULT_CKPT_MINUTES,
                   help="also write last.pt when this many minutes have passed since the last one (rank 0's "
                        "clock decides for all ranks; 0 = off)")
    g.add_argument("--stop-budget", type=float, default=20.0,
                   help="seconds a SIGTERM/SIGINT stop may spend writing last.pt: when the run's previous "
                        "write took longer, the stop writes nothing (torchrun kills its workers 30 s after a "
                        "SIGTERM; the last checkpoint is kept); 0 = always write")
    g.add_argument("--keep-every", type=int, default=0, help="also keep step_N.pt every N steps (0 = off; a "
                   "hard link of last.pt, no second write)")
    g.add_argument("--milestone-epochs", help="comma list of epochs whose checkpoint is kept as "
                   "checkpoints/epoch_E.pt (a hard link of last.pt written at that epoch) [preset]")


# --------------------------------------------------------------------------------------------------------
# One argument validator for every command line (training scripts, sample.py, cache_latents.py, ...).

Check = Callable[[object], bool]


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def at_least(lo: int) -> tuple[Check, str]:
    """An integer ``>= lo``."""
    return (lambda v: isinstance(v, int) and v >= lo), f"an integer >= {lo}"


def positive() -> tuple[Check, str]:
    """A finite number ``> 0``."""
    return (lambda v: _finite(v) and v > 0), "a finite number > 0"


def non_negative() -> tuple[Check, str]:
    """A finite number ``>= 0``."""
    return (lambda v: _finite(v) and v >= 0), "a finite number >= 0"


def finite() -> tuple[Check, str]:
    return _finite, "a finite number"


def interval(lo: float, hi: float, *, hi_open: bool = False) -> tuple[Check, str]:
    """A number in ``[lo, hi]`` (``[lo, hi)`` with ``hi_open``)."""
    return ((lambda v: _finite(v) and lo <= v and (v < hi if hi_open else v <= hi)),
            f"a number in [{lo}, {hi}{')' if hi_open else ']'}")


#: Largest accepted ``--image-size`` (the paper trains at 256; 4096 px images already need ~200 GB of
#: activations in the autoencoder).
MAX_IMAGE_SIZE = 4096

#: dest -> (check, what is expected). Options a script does not have, or left at ``None``, are skipped.
RULES: dict[str, tuple[Check, str]] = {
    "batch_size": at_least(1), "grad_accum": at_least(1), "max_steps": at_least(0), "steps": at_least(0),
    "epochs": positive(), "lr": positive(), "beta1": interval(0.0, 1.0, hi_open=True),
    "beta2": interval(0.0, 1.0, hi_open=True), "weight_decay": non_negative(), "warmup_steps": at_least(0),
    "grad_clip": non_negative(), "ema_decay": interval(0.0, 1.0), "ema_warmup": at_least(0),
    "max_nonfinite": at_least(0), "ckpt_every": at_least(1), "keep_every": at_least(0),
    "log_every": at_least(1), "eval_every": at_least(0), "eval_images": at_least(1), "threads": at_least(1),
    "num_workers": at_least(0), "stop_after": at_least(1), "ckpt_minutes": non_negative(),
    "stop_budget": non_negative(),
    "dist_timeout": positive(),
    "image_size": ((lambda v: isinstance(v, int) and 1 <= v <= MAX_IMAGE_SIZE),
                   f"an integer in [1, {MAX_IMAGE_SIZE}]"),
    "cos_weight": non_negative(), "l1_weight": non_negative(), "lpips_weight": non_negative(),
    "gan_weight": non_negative(), "disc_warmup_epochs": non_negative(), "tau_start": non_negative(),
    "tau_end": non_negative(), "tau_ramp_epochs": non_negative(), "lambda_rad": non_negative(),
    "alpha": positive(), "time_loc": finite(), "time_scale": positive(), "cfg_dropout": interval(0.0, 1.0, hi_open=True),
    "sample_every": at_least(0), "sample_steps": at_least(1), "num_classes": at_least(1),
    "num_samples": at_least(1), "shard_size": at_least(1), "num_images": at_least(1), "splits": at_least(1),
}


def check_device(spec: str) -> None:
    """``--device``: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, and the accelerator must exist.

    Raises:
        UserError: one line saying what was expected, or that no such GPU is visible.
    """
    import torch

    if spec == "auto":
        return
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError, TypeError):
        raise UserError(f"--device {spec!r}: expected auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise UserError(f"--device {spec}: no CUDA GPU is visible (torch.cuda.is_available() is False); "
                            f"use --device cpu or auto")
        if dev.index is not None and dev.index >= n:
            raise UserError(f"--device {spec}: only {n} CUDA GPU(s) visible (cuda:0 .. cuda:{n - 1})")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UserError(f"--device {spec}: MPS is not available here; use --device cpu or auto")
    elif dev.type != "cpu":
        raise UserError(f"--device {spec!r}: expected auto, cpu, cuda, cuda:N or mps")


def validate_args(args: argparse.Namespace, rules: dict[str, tuple[Check, str]] | None = None) -> None:
    """Check every option of ``args`` that has a rule (:data:`RULES`, updated by ``rules``) and
    ``--device``; the first bad one raises :class:`UserError`: ``--lr must be a finite number > 0, got nan``.
    """
    table = dict(RULES, **(rules or {}))
    for dest, (ok, expected) in table.items():
        v = getattr(args, dest, None)
        if v is None or (dest == "grad_accum" and v == "auto"):  # auto: resolved on the device
            continue
        if isinstance(v, bool) or not ok(v):
            raise UserError(f"--{dest.replace('_', '-')} must be {expected}, got {v}")
    if getattr(args, "device", None) is not None:
        check_device(args.device)


def parse_step_list(text: str | None) -> set[int]:
    """``"3,7"`` → ``{3, 7}`` (``--inject-nan-steps``); anything else is one :class:`UserError` line."""
    try:
        return {int(v) for v in str(text or "").split(",") if v.strip()}
    except ValueError:
        raise UserError(f"--inject-nan-steps expects comma-separated integers, got {text!r}") from None


def parse_epoch_list(text: str | None) -> list[float]:
    """``"80,550"`` → ``[80.0, 550.0]`` (``--milestone-epochs``; ``""``/``"none"`` → ``[]``); anything else
    (or an epoch <= 0) is one :class:`UserError` line."""
    if text is None or str(text).strip().lower() in ("", "none", "0"):
        return []
    try:
        vals = sorted({float(v) for v in str(text).split(",") if v.strip()})
    except ValueError:
        vals = [float("nan")]
    if not all(math.isfinite(v) and v > 0 for v in vals):
        raise UserError(f"--milestone-epochs expects comma-separated epochs > 0 (e.g. 80,550), got {text!r}")
    return vals


#: Rules of ``sample.py`` that differ from :data:`RULES` (its ``--steps`` are integration steps).
SAMPLE_RULES: dict[str, tuple[Check, str]] = {
    "steps": at_least(1), "decode_norm": positive(), "grid": at_least(1), "nrow": at_least(1),
    "cfg": finite(), "rtol": positive(), "atol": positive(),
}


def validate_sample_args(args: argparse.Namespace) -> None:
    """``sample.py``'s options: :func:`validate_args` with :data:`SAMPLE_RULES`, ``--cfg-interval LO HI``
    with ``0 <= LO <= HI <= 1``, and the solver of ``--method odeint:SOLVER`` known to torchdiffeq."""
    validate_args(args, SAMPLE_RULES)
    iv = getattr(args, "cfg_interval", None)
    if iv is not None and not (all(_finite(v) for v in iv) and 0.0 <= iv[0] <= iv[1] <= 1.0):
        raise UserError(f"--cfg-interval LO HI must satisfy 0 <= LO <= HI <= 1 (t runs from 1 = noise to "
                        f"0 = data), got {iv[0]} {iv[1]}")
    method = getattr(args, "method", "") or ""
    if method.startswith("odeint:"):
        from torchdiffeq._impl.odeint import SOLVERS

        solver = method.partition(":")[2]
        if solver not in SOLVERS:
            raise UserError(f"--method {method}: unknown torchdiffeq solver {solver!r}; expected odeint:SOLVER "
                            f"with SOLVER one of {', '.join(sorted(SOLVERS))}")


def require_finite(what: str, *, offset: int = 0, **tensors) -> None:
    """Raise :class:`experiments.common.trainer.NonFiniteError` (one line, exit 3 through ``run_cli``)
    naming ``what``, the first tensor among ``tensors`` (name → tensor, item on axis 0) holding NaN or
    ±Inf and its first bad item (``offset`` + index; :func:`experiments.common.finite.require_finite`)."""
    from experiments.common.finite import require_finite as check

    check(what, offset=offset, hint="nothing written (check --cfg and the other sampling settings, or the "
          "checkpoint)", **tensors)
