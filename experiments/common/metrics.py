"""Image metrics shared by the evaluation scripts: PSNR / SSIM per image, Fréchet distance, grids.

Fréchet distance statistics are accumulated as float64 sums (``n``, ``Σx``, ``Σxxᵀ``) so the result does
not depend on how the images are split into batches or processes (all-reduce the sums). The distance is

    FD = ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2·tr (Σ₁^{½} Σ₂ Σ₁^{½})^{½}

computed with symmetric eigendecompositions in float64 (no complex ``sqrtm``).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"  # torch-fidelity's FID Inception weights


class FrechetStats:
    """Running float64 mean/covariance statistics of feature vectors ``[B, D]``."""

    def __init__(self, dim: int, device: torch.device | str = "cpu"):
        self.n = torch.zeros((), dtype=torch.float64, device=device)
        self.sum = torch.zeros(dim, dtype=torch.float64, device=device)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64, device=device)

    def update(self, feats: torch.Tensor) -> None:
        f = feats.detach().to(self.sum.device, torch.float64).reshape(feats.shape[0], self.sum.shape[0])
        if f.shape[0] == 0:
            return
        self.n += f.shape[0]
        self.sum += f.sum(0)
        self.outer += f.T @ f

    def all_reduce(self) -> "FrechetStats":
        from experiments.common.distributed import all_reduce_sum

        for t in (self.n, self.sum, self.outer):
            all_reduce_sum(t)
        return self

    def mean_cov(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.n.item()
        if n < 2:
            raise ValueError("Fréchet distance needs at least 2 feature vectors")
        mu = self.sum / n
        cov = (self.outer - n * torch.outer(mu, mu)) / (n - 1)
        return mu, 0.5 * (cov + cov.T)


def _sqrt_psd(m: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh(m)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance(mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor,
                     cov2: torch.Tensor) -> float:
    """Fréchet distance between two Gaussians (float64)."""
    mu1, cov1, mu2, cov2 = (t.double().cpu() for t in (mu1, cov1, mu2, cov2))
    s1 = _sqrt_psd(cov1)
    cross = s1 @ cov2 @ s1
    tr_cross = torch.linalg.eigvalsh(0.5 * (cross + cross.T)).clamp_min(0).sqrt().sum()
    fd = (mu1 - mu2).square().sum() + cov1.trace() + cov2.trace() - 2 * tr_cross
    return float(fd.clamp_min(0))


def fd_from_stats(real: FrechetStats, fake: FrechetStats) -> float:
    return frechet_distance(*real.mean_cov(), *fake.mean_cov())


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] → [0, 1], float32, clamped."""
    return ((x.float() + 1.0) * 0.5).clamp(0.0, 1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """``[..., 3, H, W]`` in [-1, 1] → uint8 of the same layout, rounded: ``round((x + 1)·127.5)`` (ADM's
    convention; ``experiments/sample.py`` writes its ``.npz`` samples with it). Exactly what a saved PNG or
    ``.npz`` holds, so FID features of originals, reconstructions and samples see the same quantisation
    (torchmetrics' ``normalize=True`` path truncates ``(x·255).byte()`` instead: −½ LSB on average)."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def psnr_per_image(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of each image pair (inputs in [-1, 1]; computed on [0, 1]). ``[B]``."""
    mse = (to_unit(recon) - to_unit(target)).square().flatten(1).mean(1)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(1e-10))


def ssim_per_image(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SSIM of each image pair through torchmetrics (Gaussian window 11, σ 1.5, data range 1). ``[B]``."""
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    a, b = to_unit(recon), to_unit(target)
    k = 11 if min(a.shape[-2:]) >= 11 else (min(a.shape[-2:]) // 2) * 2 - 1
    return ssim(a, b, data_range=1.0, kernel_size=k, reduction="none")


def find_inception_weights(path: str | os.PathLike | None = None) -> str | None:
    """Local FID Inception weights: ``path`` if given (must exist), else the torch hub cache, else None."""
    if path:
        if not Path(path).is_file():
            raise FileNotFoundError(f"Inception weights not found: {path}")
        return str(path)
    cache = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    return str(cache) if cache.is_file() else None


def make_fid(weights_path: str, device: torch.device):
    """torchmetrics ``FrechetInceptionDistance`` (2048-d pool features) from a local weights file; feed it
    uint8 images from :func:`to_uint8` (``normalize=False``: no truncating float → byte conversion)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    fid = FrechetInceptionDistance(feature=2048, normalize=False,
                                   feature_extractor_weights_path=weights_path)
    return fid.to(device)


def save_grid(images: list[torch.Tensor], path: str | os.PathLike, nrow: int = 8) -> None:
    """Save rows of images (each ``[B, 3, H, W]`` in [-1, 1]) as one PNG grid (atomic replace)."""
    from PIL import Image

    rows = []
    for batch in images:
        b = to_unit(batch[:nrow]).cpu()
        rows.append(torch.cat(list(b), dim=-1))  # [3, H, B*W]
    width = max(r.shape[-1] for r in rows)
    rows = [torch.nn.functional.pad(r, (0, width - r.shape[-1])) for r in rows]
    grid = (torch.cat(rows, dim=-2).permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    Image.fromarray(grid).save(tmp)
    os.replace(tmp, path)
