"""DINO encoder: timm paths, weight loading in Meta's and timm's formats, the missing-weights error."""
from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from models import build_autoencoder
from models.encoder import DinoBackbone, EncoderWeightsError, create_dino_vit

TINY = dict(embed_dim=32, depth=2, num_heads=2)
V3, V2 = "vit_small_patch16_dinov3", "vit_small_patch14_reg4_dinov2"


def _vit(name: str, seed: int, size: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    vit = create_dino_vit(name, random_init=True, img_size=size, **TINY)
    with torch.no_grad():  # move every parameter away from its init so that loading is visible
        for p in vit.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return vit


def _to_meta_dinov3(state: dict[str, torch.Tensor], dim: int, depth: int) -> dict[str, torch.Tensor]:
    """timm Eva keys → Meta's DINOv3 checkpoint keys (storage_tokens, ls1/ls2.gamma, qkv bias + mask)."""
    out = {}
    for k, v in state.items():
        k = k.replace("reg_token", "storage_tokens").replace("gamma_1", "ls1.gamma")
        out[k.replace("gamma_2", "ls2.gamma")] = v.clone()
    out["mask_token"] = torch.zeros(1, dim)
    out["rope_embed.periods"] = torch.ones(dim // TINY["num_heads"] // 4)
    for i in range(depth):  # the ViT-S/B/L distilled checkpoints carry an all-zero, masked qkv bias
        out[f"blocks.{i}.attn.qkv.bias"] = torch.zeros(3 * dim)
        out[f"blocks.{i}.attn.qkv.bias_mask"] = torch.ones(3 * dim)
    return out


def _to_meta_dinov2(state: dict[str, torch.Tensor], dim: int) -> dict[str, torch.Tensor]:
    """timm no_embed_class ViT keys → Meta's DINOv2-reg checkpoint (cls pos-embed row, register_tokens)."""
    out = {k: v.clone() for k, v in state.items() if k not in ("reg_token", "cls_token", "pos_embed")}
    cls_pos = 0.1 * torch.randn(1, 1, dim)
    out["pos_embed"] = torch.cat([cls_pos, state["pos_embed"]], dim=1)
    out["cls_token"] = state["cls_token"] - cls_pos  # timm folds the cls row of pos_embed into cls_token
    out["register_tokens"] = state["reg_token"].clone()
    out["mask_token"] = torch.zeros(1, dim)
    return out


@pytest.mark.parametrize("name,size", [(V3, 64), (V2, 56)])
def test_teacher_is_timm_forward_features_without_prefix_tokens(name: str, size: int) -> None:
    vit = _vit(name, 0, size)
    bb = DinoBackbone(vit)
    x = torch.randn(2, 3, size, size)
    ref = vit.forward_features(x)
    out = bb.teacher(x)
    assert out.shape == (2, (size // bb.patch_size) ** 2, 32)
    torch.testing.assert_close(out, ref[:, vit.num_prefix_tokens:])
    assert bb.num_prefix_tokens == 5  # class + 4 registers dropped


@pytest.mark.parametrize("name,size", [(V3, 64), (V2, 56)])
def test_student_trunk_reproduces_teacher_from_timm_patchify(name: str, size: int) -> None:
    """from_patch_grid (RoPE for Eva / abs pos-embed for ViT via timm internals) == forward_features."""
    bb = DinoBackbone(_vit(name, 1, size))
    x = torch.randn(2, 3, size, size)
    torch.testing.assert_close(bb.from_patch_grid(bb.patch_grid(x)), bb.teacher(x))


@pytest.mark.parametrize("name,size,fmt", [(V3, 64, "meta"), (V3, 64, "timm"), (V3, 64, "safetensors"),
                                           (V2, 56, "meta"), (V2, 56, "timm")])
def test_loading_meta_and_timm_checkpoints_reproduces_features(tmp_path, name, size, fmt) -> None:
    src = _vit(name, 2, size)
    state = {k: v for k, v in src.state_dict().items() if "rope" not in k}
    if fmt == "meta":
        state = _to_meta_dinov3(state, 32, 2) if name == V3 else _to_meta_dinov2(state, 32)
        path = tmp_path / "dino_meta.pth"
        torch.save(state, path)
    elif fmt == "timm":
        path = tmp_path / "dino_timm.pth"
        torch.save({"model": state}, path)
    else:
        path = tmp_path / "dino.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    torch.manual_seed(99)
    loaded = create_dino_vit(name, weights=path, img_size=size, **TINY)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward_features(x), src.forward_features(x), rtol=1e-5, atol=1e-5)
    assert not any(p.requires_grad for p in loaded.parameters())


def test_no_weights_is_one_clear_error() -> None:
    with pytest.raises(EncoderWeightsError) as info:
        create_dino_vit("vit_large_patch16_dinov3.lvd1689m")
    msg = str(info.value)
    assert isinstance(info.value, RuntimeError)
    for option in ("--encoder-weights PATH", "weights=", "--random-encoder", "random_init=True"):
        assert option in msg


def test_offline_pretrained_download_raises_the_same_error(monkeypatch) -> None:
    real = timm.create_model

    def offline(name, pretrained=False, **kw):
        if pretrained:
            raise OSError("Network is unreachable")
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(EncoderWeightsError, match="random-encoder"):
        create_dino_vit(V3, pretrained=True, **TINY)


def test_missing_file_and_mismatched_checkpoint_raise(tmp_path) -> None:
    with pytest.raises(EncoderWeightsError, match="not found"):
        create_dino_vit(V3, weights=tmp_path / "nope.pth", **TINY)
    torch.save({"blocks.0.norm1.weight": torch.ones(32)}, tmp_path / "partial.pth")
    with pytest.raises(EncoderWeightsError, match="missing"):
        create_dino_vit(V3, weights=tmp_path / "partial.pth", **TINY)


def test_construction_only_autoencoder_refuses_to_encode_until_weights_load(tmp_path) -> None:
    src = _vit(V3, 3, 64)
    path = tmp_path / "w.pth"
    torch.save(src.state_dict(), path)
    ae = build_autoencoder("tiny", random_encoder=False)  # a "real" preset built without weights
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with pytest.raises(EncoderWeightsError, match="construction only"):
        ae.encode(x)
    with pytest.raises(EncoderWeightsError):
        ae.teacher_tokens(x)
    ae.decode(torch.randn(1, 16, 32))  # the decoder is usable without the encoder
    ae.load_encoder_weights(path)
    torch.testing.assert_close(ae.teacher_tokens(x), src.forward_features(ae.backbone.normalize(x))[:, 5:])
    # a full autoencoder checkpoint carries the "weights loaded" flag
    fresh = build_autoencoder("tiny", random_encoder=False)
    fresh.load_state_dict(ae.state_dict())
    torch.testing.assert_close(fresh.encode(x), ae.encode(x))
    # and build_autoencoder(weights=...) loads directly
    direct = build_autoencoder("tiny", weights=path, random_encoder=False)
    torch.testing.assert_close(direct.teacher_tokens(x), ae.teacher_tokens(x))


# ---------------------------------------------------------------- random patch-embedding bias (cpu preset)
def _flat_pair_cos(vit: torch.nn.Module, size: int) -> float:
    """Cosine between the teacher tokens of δ and 2·δ (normalised input, a smooth colour pattern δ)."""
    bb = DinoBackbone(vit)
    g = torch.Generator().manual_seed(3)
    delta = torch.nn.functional.interpolate(torch.randn(1, 3, 2, 2, generator=g), size=(size, size),
                                            mode="bilinear", align_corners=False)
    with torch.no_grad():
        a, b = bb.teacher(delta), bb.teacher(2.0 * delta)
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1).min())


def test_layernorm_erases_patch_scale_without_bias_and_the_random_bias_restores_it() -> None:
    """Token t = W·x + b feeds blocks ≈ identity (layer scale 1e-5) and LayerNorm, which is invariant to
    t ↦ α·t: with b = 0 the tokens of x and 2·x are parallel; with b ~ N(0, 0.5²), of the size of W·x here, they are not."""
    from models.encoder import create_dino_vit_for_build

    torch.manual_seed(0)
    vit, ready = create_dino_vit_for_build(V3, weights=None, pretrained=False, random_init=True,
                                           random_by_design=False, img_size=64, **TINY)
    with torch.no_grad():
        vit.patch_embed.proj.bias.zero_()
    assert ready and _flat_pair_cos(vit, 64) > 0.999
    torch.manual_seed(0)
    biased, _ = create_dino_vit_for_build(V3, weights=None, pretrained=False, random_init=True,
                                          random_by_design=False, img_size=64, random_embed_bias=0.5, **TINY)
    assert _flat_pair_cos(biased, 64) < 0.99


@pytest.mark.parametrize("std", [0.5, 2.0])
def test_random_embed_bias_has_the_requested_spread(std: float) -> None:
    from models.encoder import randomize_patch_embed_bias

    torch.manual_seed(1)
    vit = create_dino_vit(V3, random_init=True, img_size=64, embed_dim=192, depth=1, num_heads=3)
    randomize_patch_embed_bias(vit, std)
    bias = vit.patch_embed.proj.bias
    # sample std of 192 N(0, std²) draws: relative spread ≈ 1/√384 = 5 %, so ±25 % is a 5σ band
    assert abs(float(bias.std()) / std - 1.0) < 0.25 and abs(float(bias.mean())) < 5 * std / 192 ** 0.5


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_random_embed_bias_rejects_non_positive_or_non_finite_std(bad: float) -> None:
    from models.encoder import randomize_patch_embed_bias

    vit = create_dino_vit(V3, random_init=True, img_size=64, **TINY)
    with pytest.raises(ValueError, match="finite number > 0"):
        randomize_patch_embed_bias(vit, bad)
    if bad != 0.0:
        with pytest.raises(ValueError, match="random_embed_bias must be a finite number >= 0"):
            build_autoencoder("tiny", random_embed_bias=bad)


def test_random_embed_bias_never_touches_loaded_weights_nor_the_tiny_preset(tmp_path) -> None:
    from models.autoencoder import AE_CONFIGS

    src = _vit(V3, 4, 64)
    path = tmp_path / "dino_timm.pth"
    torch.save({"model": {k: v for k, v in src.state_dict().items() if "rope" not in k}}, path)
    torch.manual_seed(5)
    ae = build_autoencoder("tiny", weights=path, random_embed_bias=3.0)
    torch.testing.assert_close(ae.backbone.vit.patch_embed.proj.bias, src.patch_embed.proj.bias, rtol=0, atol=0)
    # the tiny preset (tests) keeps timm's bias: same weights as before the option existed
    assert AE_CONFIGS["tiny"].random_embed_bias == 0.0 == AE_CONFIGS["cpu"].random_embed_bias
    torch.manual_seed(6)
    tiny = build_autoencoder("tiny")
    torch.manual_seed(6)
    ref = create_dino_vit(V3, random_init=True, img_size=64, **TINY)
    torch.testing.assert_close(tiny.backbone.vit.patch_embed.proj.bias, ref.patch_embed.proj.bias, rtol=0, atol=0)


def test_patchify_stem_starts_from_the_weights_loaded_after_construction(tmp_path) -> None:
    """--stem patchify promises student == teacher at step 0; that must hold for the weights loaded by
    load_encoder_weights, not for the random ViT the model was constructed with."""
    src = _vit(V3, 3, 64)
    path = tmp_path / "w.pth"
    torch.save(src.state_dict(), path)
    ae = build_autoencoder("tiny", random_encoder=False, stem="patchify")
    ae.load_encoder_weights(path)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    torch.testing.assert_close(ae.stem.proj.weight, src.patch_embed.proj.weight)
    with torch.no_grad():
        torch.testing.assert_close(ae.encode(x), ae.teacher_tokens(x))
