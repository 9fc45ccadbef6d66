"""DINO-feature discriminator and DiffAugment."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, strategies as st

from models.discriminator import DISCRIMINATOR_CONFIGS, DinoDiscriminator, build_discriminator, diff_augment
from models.encoder import EncoderWeightsError
from models.losses import hinge_d_loss, hinge_g_loss


@pytest.fixture(scope="module")
def disc() -> DinoDiscriminator:
    torch.manual_seed(0)
    return build_discriminator("tiny")


def test_paper_config() -> None:
    cfg = DISCRIMINATOR_CONFIGS["paper"]
    assert cfg.backbone == "vit_small_patch8_224.dino" and cfg.taps == (2, 5, 8, 11)
    assert set(cfg.augment.split(",")) == {"color", "translation", "cutout"}


def test_logits_shape_and_only_heads_train(disc) -> None:
    x = (torch.rand(2, 3, 64, 64) * 2 - 1).requires_grad_()
    logits = disc(x, generator=torch.Generator().manual_seed(0))
    grid = 32 // 8  # input resized to 32 px, patch 8
    assert logits.shape == (2, len(disc.config.taps) * grid * grid)
    disc.zero_grad()
    (hinge_d_loss(logits, -logits) + hinge_g_loss(logits)).backward()
    assert all(p.grad is None for p in disc.backbone.parameters())
    assert all(p.grad is not None for p in disc.head_parameters())
    assert x.grad is not None and x.grad.abs().sum() > 0  # the generator gets a signal through D
    ids = {id(p) for p in disc.head_parameters()}
    trainable = {id(p) for p in disc.parameters() if p.requires_grad}
    assert ids == trainable


def test_heads_are_spectrally_normalised(disc) -> None:
    disc.train()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    for _ in range(30):  # power iterations converge
        disc(x, augment=False)
    for head in disc.heads:
        for conv in [m for m in head.modules() if isinstance(m, torch.nn.Conv2d)]:
            sigma = torch.linalg.matrix_norm(conv.weight.flatten(1), ord=2)
            assert sigma.item() == pytest.approx(1.0, rel=0.05)


def test_no_augmentation_is_deterministic_and_taps_use_the_frozen_trunk(disc) -> None:
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    disc.eval()
    a, b = disc(x, augment=False), disc(x, augment=False)
    torch.testing.assert_close(a, b)
    feats = disc.backbone.intermediate_grids(disc.backbone.normalize(x), disc.config.taps)
    _, inter = disc.backbone.vit.forward_intermediates(disc.backbone.normalize(x), indices=list(disc.config.taps))
    for f, g in zip(feats, inter):
        torch.testing.assert_close(f, g)
    disc.train()


def test_construction_only_discriminator_raises() -> None:
    d = build_discriminator("tiny", random_backbone=False)
    with pytest.raises(EncoderWeightsError):
        d(torch.zeros(1, 3, 32, 32))
    d.load_state_dict(build_discriminator("tiny").state_dict())  # a checkpoint that had weights
    assert d(torch.zeros(1, 3, 32, 32), augment=False).shape == (1, 2 * 16)


@given(seed=st.integers(0, 10_000))
def test_translation_is_an_integer_shift_with_zero_fill(seed: int) -> None:
    x = torch.arange(1.0, 1 + 16 * 16).view(1, 1, 16, 16).repeat(2, 1, 1, 1)
    y = diff_augment(x, "translation", torch.Generator().manual_seed(seed))
    for b in range(2):
        kept = y[b, 0][y[b, 0] > 0]
        # the surviving pixels are a contiguous block of the original, shifted by ≤ 2 = 0.125·16
        r0, c0 = divmod(int(kept.min().item()) - 1, 16)
        r1, c1 = divmod(int(kept.max().item()) - 1, 16)
        assert torch.equal(kept.view(r1 - r0 + 1, c1 - c0 + 1), x[b, 0, r0:r1 + 1, c0:c1 + 1])
        assert min(r0, c0, 15 - r1, 15 - c1) >= 0 and max(r0 + (15 - r1), c0 + (15 - c1)) <= 2


@given(seed=st.integers(0, 10_000))
def test_cutout_zeroes_at_most_a_half_side_square(seed: int) -> None:
    x = torch.ones(4, 3, 16, 16)
    y = diff_augment(x, "cutout", torch.Generator().manual_seed(seed))
    zero = (y == 0).all(dim=1)  # all channels cut together
    for b in range(4):
        rows, cols = zero[b].any(dim=1).nonzero(), zero[b].any(dim=0).nonzero()
        assert zero[b].sum() == rows.numel() * cols.numel()  # a rectangle
        assert rows.numel() <= 8 and cols.numel() <= 8
    assert torch.all((y == 0) | (y == 1))


def test_color_ops_are_per_sample_affine_and_differentiable() -> None:
    x = torch.zeros(2, 3, 4, 4, requires_grad=True)
    y = diff_augment(x, "color", torch.Generator().manual_seed(0))
    # a constant image stays constant per sample (saturation/contrast act around means)
    assert torch.allclose(y, y[:, :1, :1, :1].expand_as(y))
    assert not torch.allclose(y[0], y[1])
    y.sum().backward()
    assert x.grad is not None
    assert torch.equal(diff_augment(x, ""), x)
    with pytest.raises(ValueError):
        diff_augment(x, "rotate")
