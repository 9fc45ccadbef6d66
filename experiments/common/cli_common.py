"""Argument groups shared by the training command lines (``ae_cli.py``, ``dit_cli.py``).

Options whose default depends on the preset are ``None`` here (help marked ``[preset]``) and filled in by
each script's ``resolve`` from its ``DEFAULTS`` table.
"""
from __future__ import annotations

import argparse
from typing import Callable

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
    g.add_argument("--inject-nan-steps", default=inject_nan_default, help=inject_nan_help)


def add_checkpoint_args(g: argparse._ArgumentGroup) -> None:
    """``--ckpt-every`` [preset] and ``--keep-every``."""
    g.add_argument("--ckpt-every", type=int, help="steps between checkpoints [preset]")
    g.add_argument("--keep-every", type=int, default=0, help="also keep step_N.pt every N steps (0 = off)")
