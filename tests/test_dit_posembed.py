"""LightningDiT's fixed 2-D sin-cos absolute position embedding: formula, placement, default, old checkpoints."""
from __future__ import annotations

import math
from dataclasses import asdict, replace

import pytest
import torch

from experiments import in1k_dit
from experiments.common import checkpoint
from experiments.common.dit_cli import build_parser, dit_registry
from experiments.common.dit_io import load_dit
from models.dit import DiTConfig, LightningDiT, config_from_dict, sincos_pos_embed_2d

TINY = DiTConfig(in_channels=8, num_tokens=16, hidden_size=32, depth=2, num_heads=2, num_classes=5)


def _randomise(model: LightningDiT, seed: int = 0) -> LightningDiT:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


def _inputs(cfg: DiTConfig = TINY, b: int = 3):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(b, cfg.num_tokens, cfg.in_channels, generator=g), torch.rand(b, generator=g),
            torch.randint(0, cfg.num_classes, (b,), generator=g))


def test_embedding_is_the_sincos_formula_column_half_first() -> None:
    side, dim = 3, 8
    pe = sincos_pos_embed_2d(side * side, dim)
    assert pe.dtype == torch.float32 and pe.shape == (9, 8)
    for i in range(side):
        for j in range(side):
            want = []
            for p in (j, i):  # first half: the column, second half: the row (LightningDiT's grid order)
                w = [10000.0 ** (-k / 2) for k in range(2)]
                want += [math.sin(p * wk) for wk in w] + [math.cos(p * wk) for wk in w]
            torch.testing.assert_close(pe[i * side + j], torch.tensor(want, dtype=torch.float32), rtol=0, atol=0)
    with pytest.raises(ValueError, match="square token grid"):
        sincos_pos_embed_2d(12, 8)
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_pos_embed_2d(9, 6)


def test_embedding_is_added_to_the_embedded_tokens_and_is_a_fixed_buffer() -> None:
    cfg = replace(TINY, use_rope=False)
    on = _randomise(LightningDiT(cfg))
    off = LightningDiT(replace(cfg, abs_pos_embed=False)).eval()
    off.load_state_dict(on.state_dict())          # the buffer is not saved: same keys either way
    assert "pos_embed" not in on.state_dict() and all("pos_embed" not in n for n, _ in on.named_parameters())
    assert off.pos_embed is None and not on.pos_embed.requires_grad
    x, t, y = _inputs()
    pe = sincos_pos_embed_2d(cfg.num_tokens, cfg.hidden_size)
    off.x_embedder.register_forward_hook(lambda m, i, o: o + pe)
    torch.testing.assert_close(on(x, t, y), off(x, t, y), rtol=0, atol=0)
    # without RoPE the embedding alone breaks permutation equivariance
    perm = torch.randperm(cfg.num_tokens, generator=torch.Generator().manual_seed(3))
    assert not torch.allclose(on(x[:, perm], t, y), on(x, t, y)[:, perm], atol=1e-3)
    assert on.double().pos_embed.dtype == torch.float64
    with pytest.raises(ValueError, match="built for N=16 tokens, got N=9"):
        on(torch.randn(1, 9, cfg.in_channels, dtype=torch.float64), t[:1].double(), y[:1])


def test_on_by_default_in_every_preset_and_the_flag_turns_it_off() -> None:
    assert DiTConfig().abs_pos_embed
    with torch.device("meta"):
        for name, build in dit_registry().items():
            m = build(depth=1)
            assert m.config.abs_pos_embed and m.pos_embed.shape == (1, 256, m.config.hidden_size), name
    p = build_parser()
    assert p.parse_args([]).abs_pos_embed is True
    assert p.parse_args(["--no-abs-pos-embed"]).abs_pos_embed is False


def test_checkpoints_written_before_the_field_load_without_it(tmp_path) -> None:
    """An old checkpoint's dit_config lacks ``abs_pos_embed``: it was trained without the embedding,
    so it loads (and samples) without it and computes what it computed."""
    old = _randomise(LightningDiT(replace(TINY, abs_pos_embed=False)))
    cfg = asdict(old.config)
    del cfg["abs_pos_embed"]
    assert config_from_dict(cfg).abs_pos_embed is False and config_from_dict(asdict(TINY)).abs_pos_embed
    checkpoint.save_atomic({"step": 1, "model": old.state_dict(), "ema": None, "dit_config": cfg,
                            "latent": {"num_tokens": 16}, "args": {}}, tmp_path / "checkpoints" / "last.pt")
    loaded, _, _ = load_dit(tmp_path)
    assert loaded.pos_embed is None
    x, t, y = _inputs()
    torch.testing.assert_close(loaded(x, t, y), old(x, t, y), rtol=0, atol=0)


def _argv(out, ae, *extra: str) -> list[str]:
    return ["--preset", "tiny", "--ae-ckpt", str(ae), "--out", str(out), "--steps", "2", "--batch-size", "4", "--log-every", "1",
            "--ckpt-every", "100", "--sample-steps", "1", "--no-progress", *extra]


def test_resuming_an_old_run_needs_the_flag_it_was_trained_with(tmp_path, ae_ckpt, capsys) -> None:
    out = tmp_path / "run"
    assert in1k_dit.main(_argv(out, ae_ckpt, "--no-abs-pos-embed", "--stop-after", "1")) == 0
    last = out / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=False)
    assert state["dit_config"]["abs_pos_embed"] is False
    del state["dit_config"]["abs_pos_embed"]               # as written before the field existed
    checkpoint.save_atomic(state, last)
    capsys.readouterr()
    assert in1k_dit.main(_argv(out, ae_ckpt)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "without the absolute position embedding: add --no-abs-pos-embed" in err[0]
    assert in1k_dit.main(_argv(out, ae_ckpt, "--no-abs-pos-embed")) == 0
    assert load_dit(out)[0].pos_embed is None
