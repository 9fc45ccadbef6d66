"""Contract of models.dit.LightningDiT: shapes, adaLN-Zero, CFG, null class, RoPE, parameter counts."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.dit import (DiTConfig, LightningDiT, LightningDiT_models, cfg_combine,
                        count_parameters, rope_2d)

TINY = DiTConfig(in_channels=8, num_tokens=16, hidden_size=32, depth=2, num_heads=2,
                 num_classes=5, class_dropout_prob=0.5)


def _randomise(model: LightningDiT, seed: int = 0) -> LightningDiT:
    """Overwrite every parameter with noise so zero-initialised paths become non-trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = 0.2 * torch.randn(p.shape, generator=g)
            is_norm = "norm" in name and "adaLN" not in name
            p.copy_(1 + noise if is_norm else noise)
    return model.eval()


def _inputs(b: int = 3, cfg: DiTConfig = TINY, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, cfg.num_tokens, cfg.in_channels, generator=g)
    t = torch.rand(b, generator=g)
    y = torch.randint(0, cfg.num_classes, (b,), generator=g)
    return x, t, y


@settings(max_examples=20)
@given(b=st.integers(1, 4), side=st.sampled_from([1, 2, 3, 4]), ddt=st.booleans())
def test_output_shape(b: int, side: int, ddt: bool) -> None:
    cfg = DiTConfig(in_channels=6, num_tokens=side * side, hidden_size=16, depth=1, num_heads=2,
                    num_classes=3, ddt_head=ddt, ddt_hidden=32, ddt_heads=2)
    model = _randomise(LightningDiT(cfg))
    x = torch.randn(b, side * side, 6)
    out = model(x, torch.rand(b), torch.randint(0, 4, (b,)))
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("ddt", [False, True])
def test_adaln_zero_init_outputs_zero(ddt: bool) -> None:
    model = LightningDiT(DiTConfig(**{**TINY.__dict__, "ddt_head": ddt, "ddt_hidden": 32,
                                      "ddt_heads": 2}))
    x, t, y = _inputs()
    assert torch.count_nonzero(model(x, t, y)) == 0
    final = model.head.final if ddt else model.final_layer
    assert torch.count_nonzero(final.linear.weight) == 0
    for block in model.blocks:
        assert torch.count_nonzero(block.adaLN_modulation[-1].weight) == 0
    # but gradients reach the output layer, so training can start
    (model(x, t, y) * torch.randn_like(x)).sum().backward()
    assert final.linear.bias.grad.abs().sum() > 0


@pytest.mark.parametrize("ddt", [False, True])
def test_every_parameter_is_used(ddt: bool) -> None:
    """No dead parameters (DDP without find_unused_parameters fails on any): each one gets a gradient."""
    model = _randomise(LightningDiT(DiTConfig(**{**TINY.__dict__, "ddt_head": ddt, "ddt_hidden": 32,
                                                 "ddt_heads": 2})))
    x, t, y = _inputs()
    (model(x, t, y) * torch.randn_like(x)).sum().backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert not unused, unused


def test_cfg_scale_one_equals_conditional_and_zero_equals_null() -> None:
    model = _randomise(LightningDiT(TINY))
    x, t, y = _inputs()
    v_c = model(x, t, y)
    v_u = model(x, t, torch.full_like(y, model.null_class))
    torch.testing.assert_close(model.forward_with_cfg(x, t, y, 1.0), v_c, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(model.forward_with_cfg(x, t, y, 0.0), v_u, atol=1e-4, rtol=1e-4)
    w = 3.0
    torch.testing.assert_close(model.forward_with_cfg(x, t, y, w), v_u + w * (v_c - v_u),
                               atol=1e-4, rtol=1e-4)
    assert torch.equal(cfg_combine(v_c, v_u, 1.0), v_c)
    # the batched 2B path (tensor scale) at w = 1 agrees with the conditional pass numerically
    torch.testing.assert_close(model.forward_with_cfg(x, t, y, torch.tensor(1.0)), v_c,
                               atol=1e-4, rtol=1e-4)


def test_null_class_and_label_dropout() -> None:
    model = _randomise(LightningDiT(TINY))
    emb = model.y_embedder
    assert emb.embedding_table.num_embeddings == TINY.num_classes + 1
    y = torch.arange(TINY.num_classes).repeat(400)
    # random dropout at p = 0.5 in training mode
    dropped = emb.drop(y, generator=torch.Generator().manual_seed(0))
    frac = (dropped == model.null_class).float().mean().item()
    assert 0.45 < frac < 0.55
    assert torch.equal(dropped[dropped != model.null_class], y[dropped != model.null_class])
    # forced drop is exact
    force = torch.tensor([True, False, True])
    assert emb.drop(y[:3], force).tolist() == [TINY.num_classes, 1, TINY.num_classes]
    # eval mode never drops; force_drop reproduces the null-class output
    x, t, y3 = _inputs()
    out_forced = model(x, t, y3, force_drop=torch.ones(3, dtype=torch.bool))
    out_null = model(x, t, torch.full_like(y3, model.null_class))
    torch.testing.assert_close(out_forced, out_null)
    assert not torch.allclose(model(x, t, y3), out_null)
    # training mode drops some labels, so the output differs from eval for some samples
    model.train()
    torch.manual_seed(0)
    y_big = torch.zeros(64, dtype=torch.long)
    xb, tb = x[:1].expand(64, -1, -1), t[:1].expand(64)
    out_train = model(xb, tb, y_big)
    model.eval()
    diff = (out_train - model(xb, tb, y_big)).flatten(1).abs().amax(1) > 1e-6
    assert 0 < diff.sum() < 64


def test_rope_breaks_permutation_equivariance_as_designed() -> None:
    x, t, y = _inputs()
    perm = torch.randperm(TINY.num_tokens, generator=torch.Generator().manual_seed(3))
    no_pos = _randomise(LightningDiT(DiTConfig(**{**TINY.__dict__, "use_rope": False,
                                                 "abs_pos_embed": False})))
    # without positions the transformer is exactly permutation-equivariant
    torch.testing.assert_close(no_pos(x[:, perm], t, y), no_pos(x, t, y)[:, perm],
                               atol=1e-4, rtol=1e-4)
    # with 2-D RoPE, the token grid position matters
    rope = _randomise(LightningDiT(TINY))
    assert not torch.allclose(rope(x[:, perm], t, y), rope(x, t, y)[:, perm], atol=1e-3)
    # RoPE is relative: attention logits depend on position differences only
    cos, sin = rope_2d(16, 8)
    assert cos.shape == sin.shape == (16, 8)
    torch.testing.assert_close(cos[0], torch.ones(8))


def test_time_and_class_conditioning_matter() -> None:
    model = _randomise(LightningDiT(TINY))
    x, t, y = _inputs()
    assert not torch.allclose(model(x, t, y), model(x, 1 - t, y))
    assert not torch.allclose(model(x, t, y), model(x, t, (y + 1) % TINY.num_classes))
    # a scalar time broadcasts over the batch
    torch.testing.assert_close(model(x, torch.tensor(0.3), y), model(x, torch.full((3,), 0.3), y))


def test_parameter_counts_on_meta_device() -> None:
    with torch.device("meta"):
        xl = LightningDiT_models["LightningDiT-XL/1"](in_channels=1024, num_tokens=256,
                                                        num_classes=1000)
        n_xl = count_parameters(xl)
        assert abs(n_xl - 677e6) / 677e6 < 0.01, n_xl
        sizes = [count_parameters(LightningDiT_models[f"LightningDiT-{k}/1"]()) for k in "SBL"]
        dh = count_parameters(LightningDiT_models["LightningDiT-XL/1"](ddt_head=True))
    assert sizes[0] < sizes[1] < sizes[2] < n_xl < dh
    assert xl.config.depth == 28 and xl.config.hidden_size == 1152 and xl.config.num_heads == 16


def test_rejects_non_square_grid() -> None:
    model = LightningDiT(TINY)
    with pytest.raises(ValueError):
        model(torch.randn(1, 15, 8), torch.rand(1), torch.zeros(1, dtype=torch.long))
