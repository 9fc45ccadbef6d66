"""Figures of a class-conditional sample set against the embedded photos (no pretrained network needed).

On the embedded default every class is one photo and every training image a random crop of it, so "does a
sample show its class" has a direct test:

* **nearest-crop class consistency**: for each sample, the nearest crop of a bank of training crops; the
  fraction of samples whose nearest crop is of the sample's own class (chance: 1 / number of classes).
  In the autoencoder's *latent directions* (:func:`nearest_by_directions`: the crop maximising the mean
  over grid positions n of cos∠(u_n, v_n), u, v the per-token unit directions z/‖z‖, i.e. minimising the
  summed squared chord distance Σ_n ‖u_n − v_n‖² = 2N − 2 Σ_n ⟨u_n, v_n⟩), or in *pixels*
  (:func:`nearest_by_pixels`: the crop with the least ‖x − c‖² over the decoded RGB values).
* **FD of latent directions** (:func:`fd_directions`): Fréchet distance between Gaussian fits of the
  per-token unit directions, every token of every sample pooled (points in R^C), generated against
  held-out crops (the ``fd_dir`` of ``benchmarks/latent_ablation.py``):
  ``FD = ‖μ_g − μ_r‖² + tr Σ_g + tr Σ_r − 2·tr (Σ_g^{½} Σ_r Σ_g^{½})^{½}``.

:func:`embedded_demo_figures` computes all three for an ``in1k_dit.py`` run trained on the embedded photos;
``experiments/sample.py`` prints them at the end of such a run's sampling.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from experiments.common.metrics import FrechetStats, fd_from_stats

#: crop seed of the held-out reference crops (the training crops use the run's --seed, 0 by default)
HELD_OUT_SEED = 1_000_003


def directions(z: Tensor) -> Tensor:
    """Per-token unit directions ``z / ‖z‖`` of ``[..., C]`` tokens, float32 (a zero token raises)."""
    z = z.float()
    norm = z.norm(dim=-1, keepdim=True)
    if bool((norm == 0).any()):
        raise ValueError("directions: a token has norm 0 (no direction)")
    return z / norm


def nearest_by_directions(z: Tensor, bank: Tensor, chunk: int = 256) -> tuple[Tensor, Tensor]:
    """Nearest bank entry of each query in latent directions.

    Args:
        z: ``[B, N, C]`` query tokens (any norm); bank: ``[M, N, C]`` reference tokens (any norm).

    Returns:
        ``(index [B] int64, mean cosine [B])``: the bank entry maximising ``mean_n ⟨u_n, v_n⟩`` and that mean.
    """
    if z.dim() != 3 or bank.dim() != 3 or z.shape[1:] != bank.shape[1:]:
        raise ValueError(f"expected [B, N, C] queries and an [M, N, C] bank, got {tuple(z.shape)} and "
                         f"{tuple(bank.shape)}")
    u, v = directions(z).flatten(1), directions(bank).flatten(1)
    sims = torch.cat([u[i:i + chunk] @ v.T for i in range(0, u.shape[0], chunk)]) / z.shape[1]
    best, idx = sims.max(dim=1)
    return idx, best


def nearest_by_pixels(images: Tensor, bank: Tensor, chunk: int = 256) -> tuple[Tensor, Tensor]:
    """Nearest bank image of each query image in pixels (least squared L2 over all values).

    Args:
        images: ``[B, 3, H, W]``; bank: ``[M, 3, H, W]`` (same range, e.g. [-1, 1]).

    Returns:
        ``(index [B] int64, mean squared difference per value [B])``.
    """
    if images.shape[1:] != bank.shape[1:]:
        raise ValueError(f"query images {tuple(images.shape)} and bank {tuple(bank.shape)} differ in shape")
    q, b = images.float().flatten(1), bank.float().flatten(1)
    d = torch.cat([torch.cdist(q[i:i + chunk], b).square() for i in range(0, q.shape[0], chunk)])
    best, idx = d.min(dim=1)
    return idx, best / q.shape[1]


def class_consistency(nearest_labels: Tensor, labels: Tensor) -> float:
    """Fraction of samples whose nearest crop's class equals the sample's own class, in [0, 1]."""
    if nearest_labels.shape != labels.shape or labels.numel() == 0:
        raise ValueError(f"expected two equal non-empty label vectors, got {tuple(nearest_labels.shape)} and "
                         f"{tuple(labels.shape)}")
    return float((nearest_labels.cpu() == labels.cpu()).double().mean())


def fd_directions(z: Tensor, ref: Tensor) -> float:
    """Fréchet distance of the pooled per-token unit directions of ``z [B, N, C]`` vs ``ref [M, N, C]``."""
    c = z.shape[-1]
    if ref.shape[-1] != c:
        raise ValueError(f"channel counts differ: {c} vs {ref.shape[-1]}")
    a, b = FrechetStats(c), FrechetStats(c)
    a.update(directions(z).reshape(-1, c))
    b.update(directions(ref).reshape(-1, c))
    return fd_from_stats(b, a)


@dataclass
class DemoFigures:
    """What :func:`embedded_demo_figures` measured (fractions in [0, 1]).

    The ``*_held_out`` consistencies score real held-out crops the same way: the ceiling of the measure at
    this bank (a held-out crop's nearest training crop is not always of its photo: flat sky, dark space).
    """

    num_samples: int
    num_classes: int
    bank_crops: int
    held_out_crops: int
    consistency_latent: float           # nearest training crop in latent directions has the sample's class
    consistency_pixels: float           # the same, nearest in pixels
    consistency_latent_held_out: float  # held-out crops, nearest in latent directions (the ceiling)
    consistency_pixels_held_out: float  # held-out crops, nearest in pixels
    fd_directions: float                # generated vs held-out crops
    fd_directions_floor: float          # as many further held-out crops as samples vs the same reference

    def line(self) -> str:
        return (f"class consistency (nearest of {self.bank_crops} training crops has the sample's class; chance "
                f"{1 / self.num_classes:.1%}; held-out crops {self.consistency_latent_held_out:.1%} / "
                f"{self.consistency_pixels_held_out:.1%}): {self.consistency_latent:.1%} in latent directions, "
                f"{self.consistency_pixels:.1%} in pixels; FD of latent directions vs {self.held_out_crops} "
                f"held-out crops {self.fd_directions:.4f} (held-out vs held-out {self.fd_directions_floor:.4f})")

    def as_dict(self) -> dict:
        return asdict(self)


def embedded_crops(image_size: int, n: int, seed: int) -> tuple[Tensor, Tensor]:
    """Crops ``0..n-1`` of epoch 0 of ``EmbeddedPhotos("train", image_size, length=n, seed=seed)`` (the
    crops ``cache_latents.py`` / ``in1k_dit.py --cache-latents`` encode): ``(images [n, 3, H, W] in [-1, 1],
    labels [n])`` (labels cycle over the photos)."""
    from experiments.common.data import EmbeddedPhotos

    ds = EmbeddedPhotos("train", image_size, length=n, seed=seed)
    items = [ds[i] for i in range(n)]
    return torch.stack([it["image"] for it in items]), torch.tensor([it["label"] for it in items])


@torch.no_grad()
def encode_directions(ae, images: Tensor, batch: int = 128) -> Tensor:
    """The autoencoder's per-token latent directions of ``images [B, 3, H, W]``: ``[B, N, C]`` unit."""
    dev = next(ae.parameters()).device
    out = [directions(ae.student_tokens(images[i:i + batch].to(dev)).float()).cpu()
           for i in range(0, images.shape[0], batch)]
    return torch.cat(out)


@torch.no_grad()
def embedded_demo_figures(z: Tensor, images: Tensor, labels: Tensor, ae, *, image_size: int, train_seed: int,
                          bank: int, num_classes: int, bank_latents: Tensor | None = None, held_out: int = 256
                          ) -> DemoFigures:
    """Class consistency and FD of samples of a DiT trained on the embedded photos.

    Args:
        z: ``[B, N, C]`` generated latents (any token norm); images: ``[B, 3, H, W]`` their decodings in
            [-1, 1]; labels: ``[B]`` their classes.
        ae: the autoencoder the DiT was trained on (its encoder gives the crops' directions).
        image_size, train_seed, bank: the bank is crops ``0..bank-1`` of epoch 0 of
            ``EmbeddedPhotos("train", image_size, length=bank, seed=train_seed)``: with ``bank`` = the
            training length, the crops a cached run trained on (``bank_latents``: their cached latents, in
            that order; else they are encoded here).
        held_out: the FD reference is ``held_out`` crops of another crop seed (:data:`HELD_OUT_SEED`); the
            floor compares ``B`` further crops of that seed with it (the FD of real data at the same count).
    """
    bank_img, bank_lab = embedded_crops(image_size, bank, train_seed)
    if bank_latents is not None and bank_latents.shape[0] != bank:
        raise ValueError(f"bank_latents holds {bank_latents.shape[0]} crops, expected {bank}")
    bank_dir = directions(bank_latents) if bank_latents is not None else encode_directions(ae, bank_img)
    n_ref = held_out + labels.numel()
    ref_img, ref_lab = embedded_crops(image_size, n_ref, HELD_OUT_SEED)
    ref_dir = encode_directions(ae, ref_img)
    labels = labels.cpu()

    def consistency(zq: Tensor, img: Tensor, lab: Tensor) -> tuple[float, float]:
        i_lat, _ = nearest_by_directions(zq, bank_dir)
        i_pix, _ = nearest_by_pixels(img, bank_img)
        return class_consistency(bank_lab[i_lat], lab), class_consistency(bank_lab[i_pix], lab)

    lat, pix = consistency(z.cpu(), images.cpu(), labels)
    lat_ref, pix_ref = consistency(ref_dir[:held_out], ref_img[:held_out], ref_lab[:held_out])
    return DemoFigures(
        num_samples=int(labels.numel()), num_classes=num_classes, bank_crops=bank, held_out_crops=held_out,
        consistency_latent=lat, consistency_pixels=pix, consistency_latent_held_out=lat_ref,
        consistency_pixels_held_out=pix_ref, fd_directions=fd_directions(z.cpu(), ref_dir[:held_out]),
        fd_directions_floor=fd_directions(ref_dir[held_out:], ref_dir[:held_out]))
