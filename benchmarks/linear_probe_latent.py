"""How much of the image the cpu preset's *teacher* tokens carry: a per-token linear read-out.

    python benchmarks/linear_probe_latent.py                    # σ = 0 (timm's bias), 1, 2
    python benchmarks/linear_probe_latent.py --sigmas 0 0.5 --train 300

For each patch-embedding bias std σ (``AutoencoderConfig.random_embed_bias``; 0 keeps timm's init) the
random cpu-preset ViT (seed 0) encodes ``--train`` random crops of the embedded training photos; an affine
map token (C = 192) → its p×p×3 patch pixels is fitted by least squares (float64),

    P ≈ [T, 1] · A,   A = argmin ‖[T, 1]·A − P‖²,

and applied to the 32 held-out crops (chelsea, flower; the training script's evaluation crops). Printed:
held-out PSNR of the read-out (clamped to [-1, 1], peak-to-peak 2, mean over images), the PSNR of the
image of true per-patch means (what a decoder gets from brightness/colour alone), and the cosine between
the teacher tokens of two flat grey images, 0.6 and 0.9 in [0, 1] (LayerNorm's scale invariance makes it
≈ 1 when the bias is small).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from experiments.common.data import EmbeddedPhotos  # noqa: E402
from models import build_autoencoder  # noqa: E402


def patches(x: torch.Tensor, p: int) -> torch.Tensor:
    """``[B, 3, H, W]`` → ``[B·(H/p)·(W/p), 3p²]``, row-major tokens, (c, y, x) inside a patch."""
    b, c, h, w = x.shape
    return x.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 1, 4, 5).reshape(-1, c * p * p)


def unpatch(rows: torch.Tensor, b: int, h: int, w: int, p: int) -> torch.Tensor:
    """Inverse of :func:`patches`."""
    return rows.reshape(b, h // p, w // p, 3, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, 3, h, w)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean per-image PSNR for images in [-1, 1] (peak-to-peak 2)."""
    mse = (a - b).pow(2).flatten(1).mean(1)
    return float((10 * torch.log10(4.0 / mse)).mean())


def probe(sigma: float, train: torch.Tensor, held: torch.Tensor) -> dict[str, float]:
    """Linear read-out PSNR, patch-mean PSNR and the flat-grey cosine for one bias std ``sigma``."""
    torch.manual_seed(0)
    ae = build_autoencoder("cpu", random_embed_bias=sigma)
    p, (b, _, h, w) = ae.patch_size, held.shape
    with torch.no_grad():
        t_train = ae.teacher_tokens(train).reshape(-1, ae.latent_dim)
        t_held = ae.teacher_tokens(held).reshape(-1, ae.latent_dim)
        grey = [ae.teacher_tokens(torch.full((1, 3, h, w), v))[0, 0] for v in (0.2, 0.8)]
    ones = lambda t: torch.cat([t, torch.ones(len(t), 1)], 1).double()  # noqa: E731
    a = torch.linalg.lstsq(ones(t_train), patches(train, p).double()).solution
    recon = unpatch((ones(t_held) @ a).float(), b, h, w, p).clamp(-1, 1)
    means = patches(held, p).reshape(-1, 3, p * p).mean(-1, keepdim=True).expand(-1, 3, p * p)
    return {"sigma": sigma, "linear_readout_psnr": psnr(recon, held),
            "patch_mean_psnr": psnr(unpatch(means.reshape(-1, 3 * p * p), b, h, w, p), held),
            "cos_flat_grey": float(torch.nn.functional.cosine_similarity(*grey, dim=0))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 1.0, 2.0])
    ap.add_argument("--train", type=int, default=600, help="training crops for the fit (≥ 4 per token dim)")
    args = ap.parse_args(argv)
    if args.train < 50 or any(not (s >= 0 and s < float("inf")) for s in args.sigmas):
        ap.error("--train must be >= 50 and every --sigmas value a finite number >= 0")
    torch.set_num_threads(1)
    train = torch.stack([EmbeddedPhotos("train", 64, length=args.train, seed=0)[i]["image"]
                         for i in range(args.train)])
    held = torch.stack([EmbeddedPhotos("eval", 64, length=32, seed=0)[i]["image"] for i in range(32)])
    for sigma in args.sigmas:
        r = probe(sigma, train, held)
        print(f"sigma {r['sigma']:g}: linear read-out {r['linear_readout_psnr']:.2f} dB, patch means "
              f"{r['patch_mean_psnr']:.2f} dB, cos(flat grey 0.6, 0.9) {r['cos_flat_grey']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
