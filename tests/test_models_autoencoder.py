"""DinoSphericalAutoencoder: shapes, sphere, radius, frozen/shared trunk, stages, decode(norm=...)."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from models import (AE_CONFIGS, DECODER_CONFIGS, AutoencoderOutput, DinoSphericalAutoencoder,
                    build_autoencoder, gaussian_norm_radius)


@pytest.fixture(scope="module")
def ae16() -> DinoSphericalAutoencoder:
    torch.manual_seed(0)
    return build_autoencoder("tiny")


@pytest.fixture(scope="module")
def ae14() -> DinoSphericalAutoencoder:
    torch.manual_seed(0)
    return build_autoencoder("tiny-dinov2")


def _images(b: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g) * 2 - 1


@pytest.mark.parametrize("preset,patch,size", [("tiny", 16, 64), ("tiny", 16, 32), ("tiny-dinov2", 14, 56),
                                               ("tiny-dinov2", 14, 28)])
def test_shapes_for_patch_16_and_14(preset: str, patch: int, size: int) -> None:
    ae = build_autoencoder(preset, image_size=size)
    n = (size // patch) ** 2
    assert (ae.patch_size, ae.num_tokens, ae.latent_dim, ae.image_size) == (patch, n, 32, size)
    out = ae(_images(2, size))
    assert isinstance(out, AutoencoderOutput)
    assert out.recon.shape == (2, 3, size, size)
    assert out.z.shape == out.z_teacher.shape == (2, n, 32)
    assert ae.teacher_tokens(_images(2, size)).shape == (2, n, 32)


def test_image_size_must_be_a_multiple_of_the_patch(ae14) -> None:
    with pytest.raises(ValueError, match="multiple of the patch"):
        ae14.encode(_images(1, 64))
    with pytest.raises(ValueError, match="multiple"):
        build_autoencoder("tiny", image_size=40)


@pytest.fixture(scope="module")
def ae16_sphere() -> DinoSphericalAutoencoder:
    torch.manual_seed(0)
    return build_autoencoder("tiny", decoder_input="sphere")


@settings(max_examples=10)  # each example is two full (tiny) encoder passes
@given(seed=st.integers(0, 2**16), scale=st.floats(1e-3, 1e3))
def test_encode_is_raw_by_default_and_sphere_latent_has_norm_R(ae16, ae16_sphere, seed: int,
                                                               scale: float) -> None:
    """Default: encode gives the raw student tokens (norms differ token to token; the decoder reads them).
    ``decoder_input="sphere"``: encode gives R·z/‖z‖. The DiT's sphere_latent is R·z/‖z‖ in both."""
    x = (_images(2, 64, seed) * scale).clamp(-1, 1)
    with torch.no_grad():
        raw, sph = ae16.encode(x), ae16_sphere.encode(x)
        lat = ae16.sphere_latent(x)
    torch.testing.assert_close(raw, ae16.student_tokens(x))  # same weights (seed 0) → same tokens
    norms = raw.norm(dim=-1)
    assert (norms.max() - norms.min()).item() > 1e-2 * norms.mean().item()  # not one common norm
    assert (norms - ae16.radius).abs().max().item() > 1e-2  # and not projected to R
    for z in (sph, lat):
        assert z.dtype == torch.float32
        torch.testing.assert_close(z.norm(dim=-1), torch.full_like(norms, ae16.radius), rtol=1e-5, atol=1e-5)
    # the sphere latent is the raw tokens' direction, scaled to R
    torch.testing.assert_close(lat, raw / norms.unsqueeze(-1) * ae16.radius, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sph, lat, rtol=1e-5, atol=1e-5)


def test_decoder_input_is_validated_and_reaches_the_decoder(ae16, ae16_sphere) -> None:
    with pytest.raises(ValueError, match="decoder_input"):
        build_autoencoder("tiny", decoder_input="cube")
    assert ae16.config.decoder_input == "raw" and ae16_sphere.config.decoder_input == "sphere"
    x = _images(1, 64)
    with torch.no_grad():
        tokens = ae16.student_tokens(x)
        torch.testing.assert_close(ae16(x, with_teacher=False).recon, ae16.decode(tokens))
        sph_tokens = ae16_sphere.student_tokens(x)
        torch.testing.assert_close(ae16_sphere(x, with_teacher=False).recon,
                                   ae16_sphere.decode(ae16_sphere.to_sphere(sph_tokens)), rtol=1e-5, atol=1e-5)


def test_radius_lgamma_formula_known_values_and_monte_carlo() -> None:
    assert gaussian_norm_radius(1024) == pytest.approx(31.9922, abs=1e-4)
    assert gaussian_norm_radius(1) == pytest.approx(math.sqrt(2 / math.pi), rel=1e-12)  # E|N(0,1)|
    assert gaussian_norm_radius(2) == pytest.approx(math.sqrt(math.pi / 2), rel=1e-12)  # Rayleigh mean
    assert gaussian_norm_radius(100_000) == pytest.approx(math.sqrt(100_000 - 0.5), rel=1e-9)  # no overflow
    g = torch.Generator().manual_seed(0)
    for c in (32, 1024):
        mc = torch.randn(5_000, c, generator=g, dtype=torch.float64).norm(dim=-1)
        assert abs(mc.mean().item() - gaussian_norm_radius(c)) < 4 * mc.std().item() / math.sqrt(5_000)


def test_frozen_trunk_gets_no_gradient_stem_and_decoder_do() -> None:
    ae = build_autoencoder("tiny")
    out = ae(_images(2, 64))
    loss = out.recon.square().mean() + (1 - torch.cosine_similarity(out.z, out.z_teacher, dim=-1)).mean()
    loss.backward()
    assert all(not p.requires_grad and p.grad is None for p in ae.backbone.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ae.stem.parameters())
    assert all(p.grad is not None for p in ae.decoder.parameters())
    assert out.z_teacher.grad_fn is None  # the teacher path is built without autograd


def test_teacher_path_is_not_duplicated(ae16) -> None:
    vit = ae16.backbone.vit
    ptrs = [p.data_ptr() for p in ae16.parameters()]
    assert len(ptrs) == len(set(ptrs))  # one copy of every tensor in the whole model
    n_vit = sum(p.numel() for p in vit.parameters())
    n_all = sum(p.numel() for p in ae16.parameters())
    n_trainable = sum(p.numel() for p in ae16.stem.parameters()) + sum(
        p.numel() for p in ae16.decoder.parameters())
    assert n_all == n_vit + n_trainable


def test_student_and_teacher_run_through_the_same_trunk() -> None:
    """Editing one trunk tensor in place changes both paths (there is no second copy)."""
    ae = build_autoencoder("tiny")
    x = _images(1, 64)
    with torch.no_grad():
        s0, t0 = ae.encode(x), ae.teacher_tokens(x)
        ae.backbone.vit.norm.bias.add_(3.0)
        s1, t1 = ae.encode(x), ae.teacher_tokens(x)
    assert not torch.allclose(s0, s1, atol=1e-3) and not torch.allclose(t0, t1, atol=1e-3)


def test_stage_parameters(ae16) -> None:
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    stem, dec = ids(ae16.stem.parameters()), ids(ae16.decoder.parameters())
    assert ids(ae16.stage_parameters(1)) == stem | dec
    assert ids(ae16.stage_parameters(2)) == dec
    assert not ids(ae16.stage_parameters(1)) & ids(ae16.backbone.parameters())
    with pytest.raises(ValueError):
        ae16.stage_parameters(3)


def test_set_stage_freezes_the_stem_in_stage_2() -> None:
    ae = build_autoencoder("tiny")
    ae.set_stage(2)
    assert not any(p.requires_grad for p in ae.stem.parameters())
    assert all(p.requires_grad for p in ae.decoder.parameters())
    ae.set_stage(1)
    assert all(p.requires_grad for p in ae.stem.parameters())


@settings(max_examples=20)  # each example is two decoder passes
@given(norm=st.floats(0.5, 64.0), seed=st.integers(0, 1000))
def test_decode_with_norm_rescales_tokens(ae16, norm: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(1, 16, 32, generator=g) * torch.rand(1, 16, 1, generator=g) * 10
    ref_tokens = z / z.norm(dim=-1, keepdim=True) * norm  # test-side reference only
    with torch.no_grad():
        torch.testing.assert_close(ae16.decode(z, norm=norm), ae16.decode(ref_tokens), rtol=1e-4, atol=1e-4)
        # rescaling is the identity on tokens that already have that norm
        torch.testing.assert_close(ae16.decode(ref_tokens, norm=norm), ae16.decode(ref_tokens),
                                   rtol=1e-4, atol=1e-4)


def test_forward_smoothing_tau_zero_is_clean_and_positive_tau_changes_recon(ae16) -> None:
    x = _images(2, 64)
    with torch.no_grad():
        clean = ae16(x, with_teacher=False)
        again = ae16(x, smoothing_tau=0.0, with_teacher=False)
        noisy = ae16(x, smoothing_tau=1.0, generator=torch.Generator().manual_seed(0), with_teacher=False)
    assert clean.z_teacher is None
    torch.testing.assert_close(clean.recon, again.recon)
    torch.testing.assert_close(noisy.z, clean.z)  # z is the clean latent; only the decoder input is noisy
    assert not torch.allclose(noisy.recon, clean.recon)


def test_images_are_normalised_inside(ae16) -> None:
    """encode takes [-1, 1] images: the backbone receives ((x+1)/2 − mean)/std."""
    x = torch.zeros(1, 3, 64, 64)
    y = ae16.backbone.normalize(x)
    expect = (0.5 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(y[0, :, 0, 0], expect)


def test_tiny_forward_backward_is_fast() -> None:
    import time
    ae = build_autoencoder("tiny")
    x = _images(4, 64)
    ae(x).recon.mean().backward()  # warm-up
    t = time.perf_counter()
    out = ae(x)
    (out.recon.abs().mean() + out.z.sum() * 0).backward()
    assert time.perf_counter() - t < 1.0


def test_presets_match_the_paper() -> None:
    paper = AE_CONFIGS["paper"]
    assert paper.encoder == "vit_large_patch16_dinov3.lvd1689m" and paper.image_size == 256
    assert paper.stem_widths == (64, 128, 256)
    assert paper.decoder == DECODER_CONFIGS["paper"]
    assert paper.decoder.widths == (1024, 1024, 512, 512, 256)
    assert paper.decoder.depths == (3, 3, 3, 5, 5)
    assert paper.decoder.block_types[:2] == ("evit_glu", "evit_glu")
    assert set(paper.decoder.block_types[2:]) == {"res"}
    code = DECODER_CONFIGS["hae-code"]
    assert sorted(code.widths) == [128, 256, 512, 512] and code.depths == (2, 2, 2, 2)
    assert code.upsample == "pixel_shuffle"
    assert not paper.random_encoder and AE_CONFIGS["tiny"].random_encoder


def test_unknown_preset_and_override() -> None:
    with pytest.raises(KeyError):
        build_autoencoder("huge")
    with pytest.raises(TypeError):
        build_autoencoder("tiny", nonsense=1)
    ae = build_autoencoder("tiny", decoder="tiny", stem_widths=(4, 8, 8))
    assert ae.stem.layers[0][0].out_channels == 4


@pytest.mark.parametrize("preset", ["tiny", "tiny-dinov2"])
def test_grad_checkpointing_gives_identical_outputs_and_gradients(preset: str) -> None:
    torch.manual_seed(0)
    ae = build_autoencoder(preset)
    x = _images(2, ae.image_size)

    def run():
        ae.zero_grad()
        out = ae(x, with_teacher=False)
        out.recon.square().mean().backward()
        return out.recon.detach(), [p.grad.clone() for p in ae.stage_parameters(1)]

    r0, g0 = run()
    ae.set_grad_checkpointing(True)
    r1, g1 = run()
    torch.testing.assert_close(r1, r0)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("preset", sorted(AE_CONFIGS))
def test_config_survives_a_json_round_trip(preset: str) -> None:
    import dataclasses
    import json

    from models import AutoencoderConfig

    cfg = AE_CONFIGS[preset]
    assert AutoencoderConfig(**json.loads(json.dumps(dataclasses.asdict(cfg)))) == cfg
