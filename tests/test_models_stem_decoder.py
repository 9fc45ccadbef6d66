"""TRMS2d, the hierarchical conv stem, the decoder blocks and the decoder presets."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, strategies as st

from models.decoder import DECODER_CONFIGS, ConvDecoder, DecoderConfig, tokens_to_grid
from models.decoder_blocks import ChannelShortcut, ReLULinearAttention, UpsampleBlock
from models.stem import TRMS2d, HierarchicalConvPatchEmbed


@given(seed=st.integers(0, 10_000), scale=st.floats(1e-3, 1e3), c=st.integers(1, 8), hw=st.integers(1, 6))
def test_trms2d_normalises_over_chw_jointly(seed: int, scale: float, c: int, hw: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, c, hw, hw, generator=g, dtype=torch.float64) * scale
    norm = TRMS2d(c, eps=0.0).double()
    y = norm(x)
    rms = y.pow(2).mean(dim=(1, 2, 3)).sqrt()
    torch.testing.assert_close(rms, torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(norm(7.0 * x), y)  # scale invariant per sample
    # per-sample: changing one sample leaves the others untouched
    x2 = x.clone()
    x2[0] *= 100
    torch.testing.assert_close(norm(x2)[1:], y[1:])
    # the learned weight is per channel
    with torch.no_grad():
        norm.weight.copy_(torch.arange(1, c + 1, dtype=torch.float64))
    torch.testing.assert_close(norm(x), y * torch.arange(1, c + 1, dtype=torch.float64).view(1, c, 1, 1))


def test_trms2d_is_not_per_channel_rms() -> None:
    x = torch.ones(1, 2, 2, 2)
    x[:, 1] *= 3  # joint RMS over (C,H,W) = sqrt((1 + 9)/2) = sqrt(5)
    torch.testing.assert_close(TRMS2d(2, eps=0.0)(x)[0, :, 0, 0], torch.tensor([1.0, 3.0]) / 5 ** 0.5)


def test_stem_layers_follow_the_paper_table() -> None:
    stem = HierarchicalConvPatchEmbed(1024, 16)
    convs = [m for m in stem.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.kernel_size[0], c.stride[0], c.out_channels) for c in convs] == \
        [(7, 2, 64), (3, 2, 128), (3, 2, 256), (3, 2, 1024)]
    assert [any(isinstance(m, TRMS2d) for m in layer) for layer in stem.layers] == [True, True, True, False]
    assert [any(isinstance(m, torch.nn.SiLU) for m in layer) for layer in stem.layers] == [True] * 3 + [False]


@pytest.mark.parametrize("patch,size", [(16, 64), (16, 48), (14, 56), (14, 224), (14, 28)])
def test_stem_output_grid_matches_the_teacher_patch_grid(patch: int, size: int) -> None:
    stem = HierarchicalConvPatchEmbed(8, patch, widths=(4, 4, 4))
    out = stem(torch.randn(1, 3, size, size))
    assert out.shape == (1, 8, size // patch, size // patch)
    assert stem.forward_nhwc(torch.randn(1, 3, size, size)).shape == (1, size // patch, size // patch, 8)


def test_stem_patch14_rule_is_bilinear_resize_of_the_stride16_map() -> None:
    stem = HierarchicalConvPatchEmbed(8, 14, widths=(4, 4, 4))
    x = torch.randn(2, 3, 112, 112)
    ref = torch.nn.functional.interpolate(stem.layers(x), size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(stem(x), ref)
    with pytest.raises(ValueError):
        stem(torch.randn(1, 3, 64, 64))


def test_linear_attention_matches_the_explicit_formula() -> None:
    torch.manual_seed(0)
    attn = ReLULinearAttention(8, head_dim=4).double()
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64)
    qkv = attn.qkv(x).view(2, 3, 2, 4, 9)
    q, k, v = qkv[:, 0].relu(), qkv[:, 1].relu(), qkv[:, 2]
    sim = torch.einsum("bhdi,bhdj->bhij", q, k)  # k_j · q_i, O(N²)
    out = torch.einsum("bhij,bhej->bhei", sim, v) / (sim.sum(-1)[:, :, None, :] + attn.eps)
    ref = attn.norm(attn.proj(out.reshape(2, 8, 3, 3)))
    torch.testing.assert_close(attn(x), ref)


def test_channel_shortcut_duplicates_and_averages() -> None:
    x = torch.arange(4.0).view(1, 2, 1, 2)
    dup = ChannelShortcut(2, 4)(x)
    torch.testing.assert_close(dup[0, :, 0, 0], torch.tensor([0.0, 0.0, 2.0, 2.0]))
    avg = ChannelShortcut(4, 2)(dup)
    torch.testing.assert_close(avg, x)
    with pytest.raises(ValueError):
        ChannelShortcut(3, 4)


@pytest.mark.parametrize("mode", ["interpolate", "pixel_shuffle"])
def test_upsample_block_shortcut_is_channel_duplication_plus_pixel_shuffle(mode: str) -> None:
    up = UpsampleBlock(8, 4, mode)
    for p in up.conv.parameters():
        torch.nn.init.zeros_(p)  # kill the main path: only the parameter-free shortcut remains
    x = torch.randn(1, 8, 3, 3)
    y = up(x)
    assert y.shape == (1, 4, 6, 6)
    # 8 → 16 channels (each duplicated) → pixel shuffle: output pixel (2i+a, 2j+b) of channel c reads
    # duplicated channel 4c + 2a + b = original channel (4c + 2a + b) // 2
    for c in range(4):
        for a in range(2):
            for b in range(2):
                torch.testing.assert_close(y[0, c, a::2, b::2], x[0, (4 * c + 2 * a + b) // 2])


@pytest.mark.parametrize("name", ["tiny", "hae-code-small", "paper-small"])
@pytest.mark.parametrize("patch,grid", [(16, 2), (14, 2), (8, 3)])
def test_decoder_output_side_is_patch_times_grid(name: str, patch: int, grid: int) -> None:
    cfgs = {"tiny": DECODER_CONFIGS["tiny"],
            # the real presets' structure (stage count, block kinds, upsampling) at 1/32 width, depth 1
            "hae-code-small": DecoderConfig(widths=(16, 16, 8, 4), depths=(1,) * 4,
                                            block_types=DECODER_CONFIGS["hae-code"].block_types,
                                            upsample="pixel_shuffle", out_act="relu", attn_head_dim=8),
            "paper-small": DecoderConfig(widths=(32, 32, 16, 16, 8), depths=(1,) * 5,
                                         block_types=DECODER_CONFIGS["paper"].block_types, attn_head_dim=8)}
    dec = ConvDecoder(16, patch, cfgs[name])
    out = dec(torch.randn(2, grid * grid, 16))
    assert out.shape == (2, 3, patch * grid, patch * grid)
    out.mean().backward()
    assert dec.last_layer.grad is not None


def test_tokens_to_grid_is_row_major_and_rejects_non_square() -> None:
    z = torch.arange(12.0).view(1, 4, 3)  # 4 tokens × 3 channels
    g = tokens_to_grid(z)
    assert g.shape == (1, 3, 2, 2)
    torch.testing.assert_close(g[0, :, 0, 1], z[0, 1])
    torch.testing.assert_close(g[0, :, 1, 0], z[0, 2])
    with pytest.raises(ValueError):
        tokens_to_grid(torch.randn(1, 5, 3))


def test_decoder_config_validation() -> None:
    with pytest.raises(ValueError):
        DecoderConfig(widths=(8, 8), depths=(1,), block_types=("res", "res"))
    with pytest.raises(ValueError):
        DecoderConfig(widths=(8,), depths=(1,), block_types=("transformer",))
