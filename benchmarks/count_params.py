"""Parameter and FLOP table of the DINO Spherical Autoencoder (default: the ``paper`` preset).

Everything is built on the meta device (no memory, no weights, seconds on a CPU) and FLOPs are counted
with ``torch.utils.flop_counter.FlopCounterMode`` for one image (FLOPs = 2 × multiply-accumulates, as
PyTorch counts them; matmuls, convolutions and attention only; norms/activations are not counted).

Usage::

    python benchmarks/count_params.py                       # paper preset → benchmarks/results/params_ae.{json,md}
    python benchmarks/count_params.py --preset hae-code --out /tmp
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from models import AE_CONFIGS, build_autoencoder
from models.discriminator import build_discriminator

RESULTS = Path(__file__).resolve().parent / "results"


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _flops(fn: Callable[[], object]) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        fn()
    return int(counter.get_total_flops())


def measure(preset: str = "paper", disc_preset: str = "paper") -> dict:
    """Returns the table rows and totals for one autoencoder preset and discriminator preset."""
    t0 = time.perf_counter()
    with torch.device("meta"):
        ae = build_autoencoder(preset, random_init=True)
        disc = build_discriminator(disc_preset, random_init=True)
    size = ae.image_size
    img = torch.zeros(1, 3, size, size, device="meta")
    x = ae.backbone.normalize(img)
    grid = ae.stem.forward_nhwc(x)
    z = torch.zeros(1, ae.num_tokens, ae.latent_dim, device="meta")
    vit = ae.backbone.vit
    d_img = torch.zeros(1, 3, disc.config.input_size, disc.config.input_size, device="meta")
    feats = disc.backbone.intermediate_grids(d_img, disc.config.taps)
    patch_embed = _params(vit.patch_embed)
    rows = [
        dict(component="conv stem (HierarchicalConvPatchEmbed)", trainable="stage 1",
             params=_params(ae.stem), flops=_flops(lambda: ae.stem(x))),
        dict(component=f"frozen DINO trunk ({ae.config.encoder}, student path)", trainable="frozen",
             params=_params(vit) - patch_embed, flops=_flops(lambda: ae.backbone.from_patch_grid(grid))),
        dict(component="teacher patch_embed (frozen; teacher pass = trunk + this)", trainable="frozen",
             params=patch_embed, flops=_flops(lambda: ae.backbone.patch_grid(x))),
        dict(component=f"decoder ({_decoder_name(ae)})", trainable="stages 1, 2",
             params=_params(ae.decoder), flops=_flops(lambda: ae.decoder(z))),
        dict(component=f"discriminator heads ({len(disc.config.taps)} taps, spectral norm)",
             trainable="stage 2", params=sum(p.numel() for p in disc.head_parameters()),
             flops=_flops(lambda: [head(f) for head, f in zip(disc.heads, feats)])),
        dict(component=f"discriminator trunk ({disc.config.backbone}, blocks 0-{max(disc.config.taps)})",
             trainable="frozen", params=_params(disc.backbone.vit),
             flops=_flops(lambda: disc.backbone.intermediate_grids(d_img, disc.config.taps))),
    ]
    totals = dict(
        autoencoder_params=_params(ae),
        trainable_stage1=sum(p.numel() for p in ae.stage_parameters(1)),
        trainable_stage2=sum(p.numel() for p in ae.stage_parameters(2)) + rows[4]["params"],
        encode_flops=_flops(lambda: ae.encode(img)),
        decode_flops=_flops(lambda: ae.decode(z)),
        teacher_flops=_flops(lambda: ae.teacher_tokens(img)),
    )
    return dict(preset=preset, discriminator=disc_preset, image_size=size, num_tokens=ae.num_tokens,
                latent_dim=ae.latent_dim, radius=ae.radius, rows=rows, totals=totals,
                seconds=time.perf_counter() - t0, torch=torch.__version__)


def _decoder_name(ae) -> str:
    d = ae.config.decoder
    return f"widths {'/'.join(map(str, d.widths))}, depths {'/'.join(map(str, d.depths))}, {d.upsample}"


def to_markdown(result: dict) -> str:
    """Renders the table (params in millions, forward GFLOPs per image)."""
    lines = [f"Preset `{result['preset']}`: {result['image_size']}² px → {result['num_tokens']} tokens × "
             f"{result['latent_dim']} on the sphere of radius R = {result['radius']:.4f}; FLOPs per image, "
             "forward (2·MAC).", "",
             "| component | trainable | params (M) | forward GFLOPs |", "|---|---|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['component']} | {r['trainable']} | {r['params'] / 1e6:.2f} | {r['flops'] / 1e9:.2f} |")
    t = result["totals"]
    lines += ["", f"Autoencoder total {t['autoencoder_params'] / 1e6:.2f} M params; trainable "
                  f"{t['trainable_stage1'] / 1e6:.2f} M in stage 1 (stem + decoder), "
                  f"{t['trainable_stage2'] / 1e6:.2f} M in stage 2 (decoder + discriminator heads). "
                  f"encode {t['encode_flops'] / 1e9:.1f} GFLOPs, decode {t['decode_flops'] / 1e9:.1f} GFLOPs, "
                  f"teacher {t['teacher_flops'] / 1e9:.1f} GFLOPs per image."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper", choices=sorted(AE_CONFIGS))
    parser.add_argument("--discriminator", default="paper")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = measure(args.preset, args.discriminator)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "params_ae.json").write_text(json.dumps(result, indent=2) + "\n")
    md = to_markdown(result)
    (args.out / "params_ae.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
