"""Autoencoder-specific pieces of ``in1k_ae.py``: model/loss construction and the two stages' losses.

Stage 1 (alignment), trains stem + decoder::

    L = w_cos·mean(1 − cos(z, z_teacher)) + w_l1·|x̂ − x|₁ + w_lpips·LPIPS(x̂, x)

Stage 2 (adversarial + latent smoothing), trains decoder + discriminator; the encoder runs without grad and
the decoder sees z' = z + σε, σ ~ U(0, τ(epoch))::

    L_G = w_l1·|x̂ − x|₁ + w_lpips·LPIPS(x̂, x) + w_gan·(−D(x̂))          (after the D-only warm-up)
    L_D = mean relu(1 − D(x)) + mean relu(1 + D(x̂.detach()))

The sphere arithmetic (projection, cosine, smoothing) runs in fp32 even under bf16 autocast.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from experiments.trainer import UserError


def cosine_alignment(z: torch.Tensor, z_teacher: torch.Tensor) -> torch.Tensor:
    """mean over tokens of 1 − cos(z, z_teacher), in fp32. ``[B, N, C]`` → scalar."""
    return (1.0 - F.cosine_similarity(z.float(), z_teacher.float(), dim=-1, eps=1e-8)).mean()


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return F.relu(1.0 - real_logits.float()).mean() + F.relu(1.0 + fake_logits.float()).mean()


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.float().mean()


def _losses_module():
    try:
        import models.losses as ml
    except ImportError:
        return None
    return ml


def build_lpips(weights: str | None, disabled: bool, device: torch.device) -> tuple[nn.Module | None, str]:
    """LPIPS(VGG) module (frozen, eval) or None with the reason. Never downloads silently into a crash."""
    if disabled:
        return None, "disabled by --no-lpips / weight 0"
    ml = _losses_module()
    cls = getattr(ml, "LPIPS", None) if ml is not None else None
    if cls is None:
        return None, "models.losses.LPIPS not available"
    try:
        mod = cls(weights=weights) if weights else cls()
    except Exception as e:  # noqa: BLE001 - offline: VGG weights cannot be downloaded
        if weights:
            raise UserError(f"cannot load LPIPS weights {weights}: {type(e).__name__}: {e}") from e
        return None, f"VGG weights unavailable offline ({type(e).__name__}); pass --lpips-weights PATH"
    mod.requires_grad_(False)
    return mod.eval().to(device), "on"


def build_discriminator(weights: str | None, random_init: bool, device: torch.device,
                        tiny: bool) -> nn.Module:
    """The DINO-feature discriminator of models.losses (frozen DINO ViT-S/8 + trainable heads)."""
    ml = _losses_module()
    cls = None
    for name in ("DinoDiscriminator", "DINODiscriminator", "DinoFeatureDiscriminator"):
        cls = cls or (getattr(ml, name, None) if ml is not None else None)
    build = getattr(ml, "build_discriminator", None) if ml is not None else None
    try:
        if build is not None:
            disc = build("tiny" if tiny else "paper", weights=weights,
                         random_init=random_init or (tiny and weights is None))
        elif cls is not None:
            disc = cls(weights=weights, random_init=random_init or (tiny and weights is None))
        else:
            raise UserError("stage 2 needs models.losses' DINO discriminator, which is not available")
    except RuntimeError as e:
        raise UserError(str(e).splitlines()[0]) from e
    return disc.to(device)


class Stage1Net(nn.Module):
    """DDP-able stage-1 forward: images → (recon, z, z_teacher)."""

    def __init__(self, ae: nn.Module):
        super().__init__()
        self.ae = ae

    def forward(self, x: torch.Tensor):
        out = self.ae(x, with_teacher=True)
        return out.recon, out.z, out.z_teacher


class Stage2Net(nn.Module):
    """DDP-able stage-2 forward: images → decoder(z + σε) with the encoder frozen (no grad)."""

    def __init__(self, ae: nn.Module):
        super().__init__()
        self.ae = ae

    def forward(self, x: torch.Tensor, tau: float, generator: torch.Generator | None = None):
        with torch.no_grad():
            z = self.ae.encode(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            from models import smooth_latent

            z = smooth_latent(z.float(), tau, generator)
        return self.ae.decode(z)


def stage1_losses(x, recon, z, z_teacher, lpips, w: dict) -> tuple[torch.Tensor, dict]:
    """Total stage-1 loss and its parts (fp32 scalars)."""
    parts = {"cos": cosine_alignment(z, z_teacher), "l1": (recon.float() - x.float()).abs().mean()}
    if lpips is not None and w["lpips"] > 0:
        parts["lpips"] = lpips(recon.float(), x.float()).mean()
    total = w["cos"] * parts["cos"] + w["l1"] * parts["l1"] + w["lpips"] * parts.get("lpips", 0.0)
    return total, parts


def stage2_g_losses(x, recon, lpips, disc, w: dict, adversarial: bool) -> tuple[torch.Tensor, dict]:
    """Generator (decoder) loss of stage 2; the discriminator's parameters get no gradient here."""
    parts = {"l1": (recon.float() - x.float()).abs().mean()}
    if lpips is not None and w["lpips"] > 0:
        parts["lpips"] = lpips(recon.float(), x.float()).mean()
    total = w["l1"] * parts["l1"] + w["lpips"] * parts.get("lpips", 0.0)
    if adversarial and w["gan"] > 0:
        core = disc.module if hasattr(disc, "module") else disc
        flags = [p.requires_grad for p in core.parameters()]
        core.requires_grad_(False)
        try:
            parts["g_gan"] = hinge_g_loss(core(recon))
        finally:
            for p, f in zip(core.parameters(), flags):
                p.requires_grad_(f)
        total = total + w["gan"] * parts["g_gan"]
    return total, parts


def stage2_d_loss(x, recon, disc) -> tuple[torch.Tensor, dict]:
    """Hinge discriminator loss on real vs detached reconstructions (one forward: DDP-friendly)."""
    logits = disc(torch.cat([x, recon.detach()], 0))
    real, fake = logits[: x.shape[0]], logits[x.shape[0]:]
    loss = hinge_d_loss(real, fake)
    return loss, {"d_loss": loss, "d_real": real.float().mean(), "d_fake": fake.float().mean()}
