"""The DiT's cpu demo preset (the embedded default) is its own; the paper and tiny presets stay as they were;
sample.py prints the demo figures for a run trained on the embedded photos."""
from __future__ import annotations

import json

import pytest

from experiments.common.dit_cli import DEFAULTS, build_parser, dit_registry, resolve


def _resolve(*argv: str):
    return resolve(build_parser().parse_args(list(argv)))


# PAPER.md "Riemannian flow matching" (+ LightningDiT where the paper is silent), as before the demo preset.
PAPER = dict(model="LightningDiT-XL/1", lr=2e-4, beta1=0.9, beta2=0.95, weight_decay=0.0, batch_size=1024,
             epochs=80.0, steps=None, ema_decay=0.9995, ema_warmup=0, warmup_steps=0, lr_schedule="constant",
             grad_clip=0.0, log_every=100, ckpt_every=5000, sample_every=0, milestone_epochs="80,550",
             sample_cfg=1.0, cache_latents=False)
# the toy preset of the tests and of benchmarks/latent_ablation.py, as before the demo preset
TINY = dict(PAPER, model="LightningDiT-T/1", lr=1e-3, batch_size=32, epochs=None, steps=1000, ema_decay=0.999,
            ema_warmup=50, warmup_steps=50, lr_schedule="cosine", log_every=25, ckpt_every=250, grad_clip=1.0,
            milestone_epochs="none")


def test_paper_and_tiny_presets_are_unchanged(tmp_path) -> None:
    assert DEFAULTS["paper"] == PAPER and DEFAULTS["tiny"] == TINY
    (tmp_path / "train").mkdir()
    paper = _resolve("--data", str(tmp_path), "--ae-ckpt", "x", "--out", str(tmp_path / "o"))
    assert paper.preset == "paper"
    assert all(getattr(paper, k) == v for k, v in PAPER.items() if k != "milestone_epochs")  # parsed by resolve
    assert (paper.time_loc, paper.time_scale, paper.alpha, paper.lambda_rad, paper.cfg_dropout) == (0.0, 1.0, None,
                                                                                                   0.1, 0.1)
    import torch

    with torch.device("meta"):  # 677 M parameters: shapes only
        c = dit_registry()["LightningDiT-XL/1"](in_channels=1024, num_tokens=256, num_classes=1000).config
    assert (c.depth, c.hidden_size, c.num_heads, c.mlp_ratio, c.qk_norm, c.abs_pos_embed) == (28, 1152, 16, 4.0,
                                                                                              False, True)
    t1 = dit_registry()["LightningDiT-T/1"](in_channels=32, num_tokens=16, num_classes=8).config
    assert (t1.depth, t1.hidden_size, t1.num_heads) == (4, 96, 4)


def test_embedded_default_is_the_cpu_preset_and_flags_win(tmp_path) -> None:
    args = _resolve()
    assert args.preset == "cpu" and args.out == "runs/dit-cpu-embedded" and args.cache_latents is True
    assert DEFAULTS["cpu"] != DEFAULTS["tiny"]
    for k, v in DEFAULTS["cpu"].items():
        assert k == "milestone_epochs" or getattr(args, k) == v, k
    flags = _resolve("--no-cache-latents", "--sample-cfg", "1", "--lr", "5e-4", "--out", str(tmp_path / "o"))
    assert (flags.cache_latents, flags.sample_cfg, flags.lr) == (False, 1.0, 5e-4)
    assert _resolve("--preset", "tiny").out == "runs/dit-tiny-embedded"
    # the demo DiT is as wide as the cpu autoencoder's 192-channel tokens (T/1's width 96 squeezed them)
    c = dit_registry()[args.model](in_channels=192, num_tokens=64, num_classes=8).config
    assert c.hidden_size >= 192


def test_cache_latents_refuses_cached_input(tmp_path) -> None:
    from experiments.common.trainer import UserError

    (tmp_path / "index.json").write_text("{}")
    with pytest.raises(UserError, match="cached already"):
        _resolve("--latents", str(tmp_path), "--cache-latents")


def test_sample_py_prints_the_demo_figures_of_an_embedded_run(tmp_path, ae_ckpt, capsys) -> None:
    """A 2-step tiny DiT on the embedded photos (the 32-px test AE): sample.py ends with the class
    consistency (fractions in [0, 1]) and the FD of latent directions, and writes them next to the grid;
    ``--no-figures`` and a non-embedded run print none."""
    from experiments import in1k_dit, sample

    out = tmp_path / "dit"
    assert in1k_dit.main(["--preset", "tiny", "--ae-ckpt", str(ae_ckpt), "--out", str(out), "--steps", "2",
                          "--batch-size", "4", "--sample-steps", "1", "--no-progress", "--sample-cfg", "2"]) == 0
    capsys.readouterr()
    assert sample.main(["--ckpt", str(out), "--num-samples", "16", "--steps", "2", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "cfg 2.0" in text  # the run's --sample-cfg is sample.py's default guidance
    line = next(ln for ln in text.splitlines() if "class consistency" in ln)
    assert "in latent directions" in line and "in pixels" in line and "FD of latent directions" in line
    figs = json.loads((out / "samples.figures.json").read_text())
    assert figs["num_samples"] == 16 and figs["num_classes"] == 8 and figs["settings"]["cfg"] == 2.0
    assert 0.0 <= figs["consistency_latent"] <= 1.0 and 0.0 <= figs["consistency_pixels"] <= 1.0
    assert figs["fd_directions"] > 0.0 and figs["fd_directions_floor"] >= 0.0
    (out / "samples.figures.json").unlink()
    assert sample.main(["--ckpt", str(out), "--num-samples", "8", "--steps", "1", "--no-figures"]) == 0
    assert "class consistency" not in capsys.readouterr().out and not (out / "samples.figures.json").exists()
