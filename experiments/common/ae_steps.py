"""Autoencoder-specific pieces of ``in1k_ae.py``: model/loss construction and the two stages' losses.

Stage 1 (alignment), trains stem + decoder::

    L = w_cos·mean(1 − cos(z, z_teacher)) + w_l1·|x̂ − x|₁ + w_lpips·LPIPS(x̂, x)

Stage 2 (adversarial + latent smoothing), trains decoder + discriminator; the encoder runs without grad and
the decoder sees z' = z + σε, σ ~ U(0, τ(epoch)) drawn once per batch, z = ``ae.encode(x)`` (the raw student
tokens by default; R·z/‖z‖ with ``decoder_input="sphere"``)::

    L_G = w_l1·|x̂ − x|₁ + w_lpips·LPIPS(x̂, x) + w_gan·(−D(x̂))          (after the D-only warm-up)
    L_D = mean relu(1 − D(x)) + mean relu(1 + D(x̂.detach()))

The latent arithmetic (projection, cosine, smoothing) runs in fp32 even under bf16 autocast.
"""
from __future__ import annotations

import torch
from torch import nn

from experiments.common.distributed import unwrap
from experiments.common.trainer import UserError
from models.latent import smooth_latent
from models.losses import LossWeights, autoencoder_losses, hinge_d_loss, hinge_g_loss


def build_lpips(weights: str | None, disabled: bool, device: torch.device) -> tuple[nn.Module | None, str]:
    """Frozen LPIPS(VGG) module, or None and the reason (VGG16 weights absent offline → run without it).

    An explicit ``weights`` file that cannot be loaded is an error; a missing default file is not.
    """
    if disabled:
        return None, "off (--no-lpips / LPIPS weight 0)"
    from models.losses import LPIPSLoss, LPIPSWeightsError

    try:
        mod = LPIPSLoss(weights)
    except (LPIPSWeightsError, OSError, RuntimeError) as e:
        if weights:
            raise UserError(f"cannot load LPIPS weights {weights}: {str(e).splitlines()[0]}") from e
        return None, "off (VGG16 weights not in the torch cache; pass --lpips-weights PATH)"
    return mod.to(device).eval(), "on"


def build_discriminator(preset: str, weights: str | None, pretrained: bool, random_init: bool,
                        device: torch.device) -> nn.Module:
    """The DINO-feature discriminator (frozen DINO ViT-S/8 + trainable spectral-norm heads)."""
    from models.discriminator import build_discriminator as build

    tiny = preset in ("tiny", "cpu")
    if not (tiny or weights or pretrained or random_init):
        raise UserError("stage 2 needs the discriminator's DINO ViT-S/8 weights: pass --disc-weights PATH, "
                        "--pretrained (online) or --random-encoder")
    disc = build("tiny" if tiny else "paper", weights=weights, pretrained=pretrained and not weights,
                 random_init=random_init)
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
            z = smooth_latent(z.float(), tau, generator)
        return self.ae.decode(z)


def stage1_losses(x, recon, z, z_teacher, lpips, w: LossWeights) -> tuple[torch.Tensor, dict]:
    """Total stage-1 loss and its computed parts ``cos``, ``l1``, ``lpips`` (fp32 scalars)."""
    out = autoencoder_losses(recon, x, z, z_teacher, w, lpips_fn=lpips)
    return out.total, out.parts()


def stage2_g_losses(x, recon, lpips, disc, w: LossWeights, adversarial: bool,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """Generator (decoder) loss of stage 2; the discriminator's parameters get no gradient here."""
    out = autoencoder_losses(recon, x, None, None, w, lpips_fn=lpips)
    total, parts = out.total, out.parts()
    if adversarial and w.gan > 0:
        core = unwrap(disc)
        flags = [p.requires_grad for p in core.parameters()]
        core.requires_grad_(False)
        try:
            parts["g_gan"] = hinge_g_loss(core(recon, generator=generator))
        finally:
            for p, f in zip(core.parameters(), flags):
                p.requires_grad_(f)
        total = total + w.gan * parts["g_gan"]
    return total, parts


def stage2_d_loss(x, recon, disc, generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """Hinge discriminator loss on real vs detached reconstructions (one forward: DDP-friendly)."""
    logits = disc(torch.cat([x, recon.detach()], 0), generator=generator)
    real, fake = logits[: x.shape[0]], logits[x.shape[0]:]
    loss = hinge_d_loss(real, fake)
    return loss, {"d_loss": loss, "d_real": real.float().mean(), "d_fake": fake.float().mean()}
