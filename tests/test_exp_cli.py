"""Command line of in1k_ae.py: documented options, one-line fast failures (no traceback)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import in1k_ae
from experiments.common.ae_cli import build_parser
from test_exp_support import make_image_folder

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = ["--data", "--preset", "--stage", "--image-size", "--batch-size", "--max-steps", "--epochs",
            "--out", "--encoder-weights", "--random-encoder", "--seed", "--compile", "--precision",
            "--grad-accum", "--num-workers", "--log-every", "--eval-every", "--ckpt-every", "--eval-only",
            "--tensorboard", "--init-from", "--no-lpips", "--lpips-weights", "--max-nonfinite"]


def test_help_lists_every_option_with_default(capsys):
    with pytest.raises(SystemExit) as e:
        in1k_ae.main(["--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for opt in REQUIRED:
        assert opt in text, opt
    parser = build_parser()
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, action.dest
    assert text.count("(default:") >= len([a for a in parser._actions if a.option_strings]) - 1
    assert "tiny" in text and "lr=1e-05/5e-05" in text  # per-preset table incl. PAPER.md's stage lrs


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("argv, needle", [
    (["--data", "/nonexistent"], "data folder not found: /nonexistent"),
    (["--batch-size", "6", "--grad-accum", "4"], "not divisible"),
    (["--preset", "paper"], "needs --data"),
    (["--stage", "3"], "invalid choice"),
    (["--encoder-weights", "/nope.pth"], "file not found"),
])
def test_bad_arguments_fail_fast_with_one_line(argv, needle, capsys, tmp_path):
    try:
        rc = in1k_ae.main(argv + ["--out", str(tmp_path / "o")])
    except SystemExit as e:  # argparse errors
        rc = e.code
    assert rc == 2
    assert needle in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "o").exists()


def test_paper_preset_without_weights_fails_fast(tmp_path, capsys):
    data = tmp_path / "data"
    make_image_folder(data, n_good=2, corrupt=False)
    rc = in1k_ae.main(["--preset", "paper", "--data", str(data), "--out", str(tmp_path / "o")])
    assert rc == 2
    line = _one_line(capsys.readouterr().err)
    assert "needs DINO weights" in line and "--encoder-weights" in line


def test_script_subprocess_one_line_and_exit_code():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "experiments/in1k_ae.py", "--data", "/nonexistent"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 2
    assert _one_line(p.stderr).startswith("in1k_ae.py: error: data folder not found")


@pytest.mark.parametrize("stage", [1, 2])
def test_paper_cli_defaults_match_the_paper_loss_weights(stage):
    """The CLI's paper-preset weights (kept import-light in ae_cli) equal models.losses.STAGE_LOSS_WEIGHTS."""
    from experiments.common.ae_cli import DEFAULTS
    from models.losses import STAGE_LOSS_WEIGHTS

    d, w = DEFAULTS[("paper", stage)], STAGE_LOSS_WEIGHTS[stage]
    assert (d["cos_weight"], d["l1_weight"], d["lpips_weight"], d["gan_weight"]) == (w.cosine, w.l1, w.lpips, w.gan)


def test_dit_help_shows_fp32_default_and_no_clipping_in_the_paper_presets(capsys):
    """PAPER.md: the DiT trains with FP32 weights and optimizer (TF32 matmuls on CUDA by default, decided by
    the FLOP count; --no-tf32 = true FP32); neither the paper nor LightningDiT clips gradients or uses
    QK-norm; the AE paper presets do not clip either (the paper states none)."""
    from experiments import in1k_dit
    from experiments.common import ae_cli, dit_cli

    with pytest.raises(SystemExit):
        in1k_dit.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--precision {fp32,bf16}" in text and "sphere arithmetic is always fp32 (default: fp32)" in text
    assert "paper batch_size=1024;" in text and "grad_clip=0 (off)" in text.split("paper batch_size=1024;")[1]
    args = dit_cli.resolve(dit_cli.build_parser().parse_args(["--preset", "paper", "--steps", "1"]))
    assert (args.precision, args.tf32, args.qk_norm, args.grad_clip) == ("fp32", True, False, 0.0)
    assert "--tf32, --no-tf32" in text
    off = dit_cli.resolve(dit_cli.build_parser().parse_args(["--preset", "paper", "--steps", "1", "--no-tf32"]))
    assert off.tf32 is False
    assert ae_cli.DEFAULTS[("paper", 1)]["grad_clip"] == ae_cli.DEFAULTS[("paper", 2)]["grad_clip"] == 0.0
    from models.dit import DiTConfig

    assert DiTConfig().qk_norm is False
