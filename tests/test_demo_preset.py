"""The CPU demo preset (paper-ratio latent) and the --stem patchify baseline (paper Table 5)."""
from __future__ import annotations

import math

import pytest
import torch

from experiments.common.ae_cli import build_parser, resolve
from models import build_autoencoder
from models.stem import HierarchicalConvPatchEmbed, LinearPatchEmbed, TRMS2d, stem_depth


def _images(b: int, size: int) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1


@pytest.fixture(scope="module")
def cpu_ae():
    torch.manual_seed(0)
    return build_autoencoder("cpu")


def test_cpu_preset_latent_has_the_paper_ratio_of_numbers_to_pixel_values(cpu_ae) -> None:
    x = _images(2, cpu_ae.image_size)
    with torch.no_grad():
        z = cpu_ae.encode(x)
    ratio = z[0].numel() / x[0].numel()  # latent numbers per pixel value, measured on the built model
    assert 0.5 <= ratio <= 1.5, ratio
    assert ratio == pytest.approx(cpu_ae.latent_ratio)
    assert z.shape[1] == cpu_ae.num_tokens and z.shape[1] > 16  # more tokens than the tiny preset's 4×4
    # the paper's own latent, for comparison: 256 tokens × 1024 for 256² px
    paper_ratio = 256 * 1024 / (3 * 256 ** 2)  # 1.33
    assert 0.5 <= ratio / paper_ratio <= 1.5, (ratio, paper_ratio)


def test_cpu_preset_is_the_paper_design_at_small_scale(cpu_ae) -> None:
    vit = cpu_ae.backbone.vit
    assert type(vit).__name__ == "Eva" and vit.num_prefix_tokens == 5  # DINOv3 architecture: RoPE, 4 registers
    assert not any(p.requires_grad for p in vit.parameters())  # frozen
    assert isinstance(cpu_ae.stem, HierarchicalConvPatchEmbed)
    convs = [m for m in cpu_ae.stem.modules() if isinstance(m, torch.nn.Conv2d)]
    # patch 8 = 2³: three stride-2 layers, 7×7 first, the last maps to C without norm/act
    assert [(c.kernel_size[0], c.stride[0]) for c in convs] == [(7, 2), (3, 2), (3, 2)]
    assert convs[-1].out_channels == cpu_ae.latent_dim
    assert [any(isinstance(m, TRMS2d) for m in layer) for layer in cpu_ae.stem.layers] == [True, True, False]


@pytest.mark.parametrize("patch,layers", [(2, 1), (4, 2), (8, 3), (14, 4), (16, 4)])
def test_conv_stem_depth_is_ceil_log2_patch(patch: int, layers: int) -> None:
    assert stem_depth(patch) == layers
    stem = HierarchicalConvPatchEmbed(8, patch, widths=(4,) * (layers - 1))
    size = 4 * patch
    assert stem(torch.randn(1, 3, size, size)).shape == (1, 8, 4, 4)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in stem.modules()) == layers


def test_conv_stem_rejects_a_width_list_of_the_wrong_length() -> None:
    with pytest.raises(ValueError, match="2 hidden widths"):
        HierarchicalConvPatchEmbed(8, 8, widths=(4, 4, 4))
    with pytest.raises(ValueError, match="patch size >= 2"):
        stem_depth(1)


def test_stem_patchify_builds_a_single_linear_patchify_initialised_from_the_teacher(tmp_path) -> None:
    from experiments.in1k_ae import build_model

    args = resolve(build_parser().parse_args(["--stem", "patchify", "--out", str(tmp_path)]))
    torch.manual_seed(0)
    ae = build_model(args, None)
    assert args.preset == "cpu" and isinstance(ae.stem, LinearPatchEmbed)
    layers = [m for m in ae.stem.modules() if list(m.parameters(recurse=False))]
    assert len(layers) == 1 and isinstance(layers[0], torch.nn.Conv2d)
    conv, p = layers[0], ae.patch_size
    assert conv.kernel_size == (p, p) and conv.stride == (p, p) and conv.in_channels == 3
    # the same affine map of every flattened p×p×3 patch
    x = _images(2, ae.image_size)
    patches = torch.nn.functional.unfold(x, p, stride=p).transpose(1, 2)  # [B, N, 3p²]
    ref = patches @ conv.weight.reshape(conv.out_channels, -1).T + conv.bias
    torch.testing.assert_close(ae.stem.forward_nhwc(x).flatten(1, 2), ref, rtol=1e-4, atol=1e-4)
    # initialised from the teacher's patchify: student tokens == teacher tokens at step 0, cosine loss 0
    with torch.no_grad():
        torch.testing.assert_close(ae.student_tokens(x), ae.teacher_tokens(x), rtol=1e-5, atol=1e-5)
    assert ae.stem.proj.weight.requires_grad and ae.stem.proj.weight is not ae.backbone.vit.patch_embed.proj.weight
    assert args.out == str(tmp_path)
    assert resolve(build_parser().parse_args(["--stem", "patchify"])).out == "runs/ae-cpu-embedded-patchify-s1"


def test_embedded_default_is_the_cpu_preset_and_tiny_stays_available() -> None:
    args = resolve(build_parser().parse_args([]))
    assert args.preset == "cpu" and args.stem == "conv" and args.out == "runs/ae-cpu-embedded-s1"
    tiny = resolve(build_parser().parse_args(["--preset", "tiny"]))
    assert tiny.out == "runs/ae-tiny-embedded-s1" and tiny.max_steps == 600
    assert math.isclose(build_autoencoder("tiny").latent_ratio, 16 * 32 / (3 * 64 * 64))


def test_biased_stand_in_keeps_patch_brightness_and_the_stem_starts_from_its_bias(cpu_ae) -> None:
    """``random_embed_bias=1`` (the size of W·x) gives the cpu ViT's patch embedding a N(0, 1) bias, so its
    LayerNorm no longer maps a flat patch and a brighter one to nearly one direction; with
    ``stem_bias_from_teacher`` the conv stem's last conv starts from that bias. The preset keeps timm's."""
    import dataclasses
    import json

    assert cpu_ae.config.random_embed_bias == 0.0 and not cpu_ae.config.stem_bias_from_teacher
    torch.manual_seed(0)
    biased = build_autoencoder("cpu", random_embed_bias=1.0, stem_bias_from_teacher=True)
    cfg = biased.config
    assert type(cfg)(**json.loads(json.dumps(dataclasses.asdict(cfg)))) == cfg
    bias = biased.backbone.vit.patch_embed.proj.bias
    torch.testing.assert_close(biased.stem.layers[-1][0].bias, bias, rtol=0, atol=0)
    assert 0.75 < float(bias.std()) < 1.25  # 192 draws of N(0, 1)

    def cos_grey(ae) -> float:  # flat grey 0.6 vs 0.9 (in [0, 1]), both above the ImageNet mean
        with torch.no_grad():
            a = ae.teacher_tokens(torch.full((1, 3, 64, 64), 0.2))[0, 0]
            b = ae.teacher_tokens(torch.full((1, 3, 64, 64), 0.8))[0, 0]
        return float(torch.nn.functional.cosine_similarity(a, b, dim=0))

    assert cos_grey(cpu_ae) > 0.98 and cos_grey(biased) < 0.95


def test_linear_probe_patch_layout_round_trips_and_an_exact_readout_scores_high() -> None:
    """benchmarks/linear_probe_latent.py: unpatch(patches(x)) == x, and patch k is token k's pixels."""
    from benchmarks.linear_probe_latent import patches, psnr, unpatch

    x = _images(2, 16)
    rows = patches(x, 8)
    assert rows.shape == (2 * 2 * 2, 3 * 64)
    torch.testing.assert_close(unpatch(rows, 2, 16, 16, 8), x, rtol=0, atol=0)
    torch.testing.assert_close(rows[3].reshape(3, 8, 8), x[0, :, 8:, 8:], rtol=0, atol=0)  # token (1, 1)
    noisy = x + 0.01
    assert psnr(noisy, x) == pytest.approx(10 * math.log10(4 / 1e-4), rel=1e-4)


def test_precision_and_cosine_weight_are_per_preset(tmp_path) -> None:
    """The cpu demo's cosine weight 0.1 (README: measured) does not leak into the paper presets; the paper
    preset trains in bf16 as the paper's stage 1, the tiny one in fp32; an explicit flag still wins."""
    cpu = resolve(build_parser().parse_args(["--out", str(tmp_path / "a")]))
    from experiments.common.ae_cli import native_bf16

    expect = "bf16" if native_bf16("auto") else "fp32"  # bf16 only where the processor computes it natively
    assert (cpu.preset, cpu.precision, cpu.cos_weight, cpu.max_steps) == ("cpu", expect, 0.1, 1250)
    for split in ("train", "val"):  # resolve checks that an ImageNet-style folder exists
        (tmp_path / split).mkdir()
    paper = resolve(build_parser().parse_args(["--preset", "paper", "--data", str(tmp_path), "--out",
                                               str(tmp_path / "b")]))
    assert (paper.precision, paper.cos_weight) == ("bf16", 0.5)
    tiny = resolve(build_parser().parse_args(["--preset", "tiny", "--out", str(tmp_path / "c")]))
    assert (tiny.precision, tiny.cos_weight) == ("fp32", 0.5)
    flags = resolve(build_parser().parse_args(["--precision", "fp32", "--cos-weight", "0.5", "--out",
                                               str(tmp_path / "d")]))
    assert (flags.precision, flags.cos_weight) == ("fp32", 0.5)


def test_native_bf16_reads_the_processor_flags(monkeypatch) -> None:
    """--precision auto: bf16 on CUDA or a CPU with AVX512-BF16 / AMX, else fp32 (emulated bf16 measured 14x
    slower than fp32 on an AMD EPYC without them)."""
    import experiments.common.ae_cli as cli

    class FakePath:
        text = ""

        def __init__(self, *_):
            pass

        def read_text(self):
            return FakePath.text

    monkeypatch.setattr(cli, "Path", FakePath)
    assert cli.native_bf16("cuda:0") is True
    FakePath.text = "flags\t\t: fpu sse2 avx2 avx512f\n"
    assert cli.native_bf16("cpu") is False
    FakePath.text = "flags\t\t: fpu sse2 avx512f avx512_bf16\n"
    assert cli.native_bf16("cpu") is True
    FakePath.text = "flags\t\t: fpu amx_bf16 amx_tile\n"
    assert cli.native_bf16("cpu") is True
