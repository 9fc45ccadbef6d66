"""models.convert_sae and structure='release': the released DINO-SAE code's stem, decoder and whole
autoencoder, against outputs the reference code computed (tests/data/README.md)."""
from __future__ import annotations

import pytest
import torch

from golden import load, unpack
from models import build_autoencoder
from models.convert_sae import (ReleaseFormatError, decoder_config_from_release, load_release_state,
                                ours_decoder_to_release, ours_stem_to_release, ours_to_release,
                                release_decoder_to_ours, release_stem_to_ours)
from models.decoder import DECODER_CONFIGS, ConvDecoder
from models.stem import HierarchicalConvPatchEmbed

# Meta's DINOv3 entries that are not learned weights of the released model's function (not produced)
META_ONLY = {"dino_model.mask_token", "dino_model.rope_embed.periods"}


@pytest.fixture(scope="module")
def parts() -> dict:
    return load("dino_sae_tiny.pt")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_stem_matches_the_released_cnn_patch_embed(parts) -> None:
    f = parts["stem"]
    sd = unpack(f["state_dict"])
    stem = HierarchicalConvPatchEmbed(32, 16, (64, 128, 256), bias=False).eval()
    stem.load_state_dict(release_stem_to_ours(sd))
    assert sum(p.numel() for p in stem.parameters()) == sum(v.numel() for v in sd.values())
    with torch.no_grad():
        assert _rel(stem.forward_nhwc(f["x"]), f["out_float32"]) <= 1e-5
        assert (stem.double().forward_nhwc(f["x"].double()) - f["out_float64"]).abs().max() <= 1e-10
    back = ours_stem_to_release(stem.float().state_dict())
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)
    # our default stem has biases: 1,472 more parameters for C = 1024 (64 + 128 + 256 + 1024)
    assert sum(p.numel() for p in HierarchicalConvPatchEmbed(1024).parameters()) - sum(
        p.numel() for p in HierarchicalConvPatchEmbed(1024, bias=False).parameters()) == 1472
    with pytest.raises(ReleaseFormatError, match="structure='release'"):
        ours_stem_to_release(HierarchicalConvPatchEmbed(32, 16, (64, 128, 256)).state_dict())


@pytest.mark.parametrize("name", ["decoder_pixel_shuffle", "decoder_interpolate"])
def test_decoder_matches_the_released_dcae_decoder(parts, name) -> None:
    f = parts[name]
    sd, cfg = unpack(f["state_dict"]), decoder_config_from_release(f["config"])
    dec = ConvDecoder(f["config"]["latent_channels"], 2 ** (len(cfg.widths) - 1), cfg, structure="release").eval()
    dec.load_state_dict(release_decoder_to_ours(sd, dec))
    z = f["x"].flatten(2).transpose(1, 2)                     # [B, C, h, w] -> our [B, N, C]
    with torch.no_grad():
        assert _rel(dec(z), f["out_float32"]) <= 1e-5
        assert (dec.double()(z.double()) - f["out_float64"]).abs().max() <= 1e-10
    back = ours_decoder_to_release(dec.float().state_dict(), dec)
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)
    # the same weights in the Table 8 structure are refused, naming the option
    t8 = ConvDecoder(f["config"]["latent_channels"], 2 ** (len(cfg.widths) - 1), cfg)
    with pytest.raises(ReleaseFormatError, match="structure='release'"):
        release_decoder_to_ours(sd, t8)


def _release_state(parts: dict) -> tuple[dict, dict]:
    f = load("dino_sae_ae_tiny.pt")
    stem = {"dino_model.patch_embed." + k: v for k, v in unpack(parts[f["stem_from"]]["state_dict"]).items()}
    return f, unpack(f["state_dict"]) | stem


def _tiny_release_ae(cfg):
    return build_autoencoder("tiny", structure="release", decoder=cfg, stem_widths=(64, 128, 256)).eval()


def test_released_autoencoder_state_reproduces_its_reconstruction(parts) -> None:
    """The released DINOSphericalAutoencoder (Meta's DINOv3 trunk at toy size, CnnPatchEmbed, DCAE_Decoder)
    → our autoencoder with structure='release': same tokens and reconstruction; round trip exact."""
    f, sd = _release_state(parts)
    ae = _tiny_release_ae(decoder_config_from_release(f["decoder_config"]))
    load_release_state(ae, sd)
    with torch.no_grad():  # the release normalises images outside the model: start from its input
        tokens = ae.backbone.from_patch_grid(ae.stem.forward_nhwc(f["x"]))
        recon = ae.decode(tokens)
    assert _rel(tokens, f["tokens_float32"]) <= 1e-5 and _rel(recon, f["recon_float32"]) <= 1e-5
    back = ours_to_release(ae)
    assert set(sd) - set(back) == META_ONLY | {k for k in sd if k.endswith("bias_mask")}
    assert set(back) <= set(sd) and all(torch.equal(back[k], sd[k]) for k in back)


def test_released_state_into_the_table8_structure_fails_with_one_line(parts) -> None:
    f, sd = _release_state(parts)
    cfg = decoder_config_from_release(f["decoder_config"])
    ae = build_autoencoder("tiny", decoder=cfg, stem_widths=(64, 128, 256))
    with pytest.raises(ReleaseFormatError, match=r"structure='release'") as e:
        load_release_state(ae, sd)
    assert "\n" not in str(e.value)


def test_release_structure_builds_what_the_release_builds() -> None:
    """No stem biases, no norms in the EfficientViT blocks (eps 1e-15 in both); what the release cannot build is
    refused with one line (its assert), e.g. the Table 8 widths behind a latent it cannot duplicate to."""
    t8 = build_autoencoder("tiny")
    rel = build_autoencoder("tiny", structure="release", decoder=DECODER_CONFIGS["tiny"].__class__(
        widths=(32, 32, 16, 16, 8), depths=(1, 1, 1, 1, 1), block_types=("evit_glu",) + ("res",) * 4,
        upsample="pixel_shuffle", out_act="relu"))
    assert all(m.bias is not None for m in t8.stem.modules() if isinstance(m, torch.nn.Conv2d))
    assert all(m.bias is None for m in rel.stem.modules() if isinstance(m, torch.nn.Conv2d))
    blk = rel.decoder.stages[0][0]
    assert blk.attn.eps == 1e-15 and isinstance(blk.attn.norm, torch.nn.Identity)
    assert isinstance(blk.local.norm, torch.nn.Identity)
    assert t8.decoder.stages[0][0].attn.eps == 1e-15 and t8.decoder.stages[0][0].attn.norm.weight.numel() == 32
    with pytest.raises(ValueError, match="multiple of the latent width 1024"):
        ConvDecoder(1024, 16, DECODER_CONFIGS["hae-code"].__class__(
            widths=(512, 512, 256, 128, 128), depths=(2,) * 5, block_types=("res",) * 5), structure="release")
    with pytest.raises(ValueError, match="x8, the patch size is 16"):
        ConvDecoder(512, 16, DECODER_CONFIGS["hae-code"], structure="release")


def test_paper_decoder_in_the_release_structure_loses_exactly_its_twelve_block_norms() -> None:
    with torch.device("meta"):
        t8 = ConvDecoder(1024, 16, DECODER_CONFIGS["paper"])
        rel = ConvDecoder(1024, 16, DECODER_CONFIGS["paper"], structure="release")
    norms = [n for n, _ in t8.named_parameters() if ".attn.norm." in n or ".local.norm." in n]
    assert len(norms) == 12
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(t8) - count(rel) == 12 * 1024
    assert {n for n, _ in t8.named_parameters()} - {n for n, _ in rel.named_parameters()} == set(norms)


def test_in1k_ae_structure_flag_refuses_what_the_release_cannot_build(tmp_path, capsys) -> None:
    from experiments import in1k_ae

    assert in1k_ae.main(["--preset", "cpu", "--structure", "release", "--out", str(tmp_path / "r"),
                         "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "structure='release' needs blocks in every stage" in err[0]
