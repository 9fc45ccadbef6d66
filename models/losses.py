"""Autoencoder losses: cosine alignment, L1, LPIPS (VGG, offline-safe), hinge GAN, adaptive GAN weight.

Stage weights of the paper (v2) are in :data:`STAGE_LOSS_WEIGHTS`:
stage 1 = 0.5·(1 − cos) + 1.0·L1 + 1.0·LPIPS; stage 2 = L1 + LPIPS + 0.5·hinge GAN (cosine weight 0).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["cosine_alignment_loss", "l1_loss", "hinge_d_loss", "hinge_g_loss", "adaptive_gan_weight",
           "LPIPSWeightsError", "LPIPSLoss", "default_vgg_path", "LossWeights", "STAGE_LOSS_WEIGHTS",
           "AELosses", "autoencoder_losses"]

VGG16_FILENAME = "vgg16-397923af.pth"  # torchvision's ImageNet VGG16 in the torch hub cache


def cosine_alignment_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of 1 − cos(student, teacher) (direction only; magnitudes are free).

    Args:
        student: ``[..., C]`` (e.g. ``[B, N, C]``).
        teacher: ``[..., C]``, same shape; detached.

    Returns:
        A scalar in [0, 2]: 0 for parallel tokens, 1 for orthogonal, 2 for opposite. Computed in float32.
    """
    cos = F.cosine_similarity(student.float(), teacher.detach().float(), dim=-1, eps=1e-8)
    return (1.0 - cos).mean()


def l1_loss(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error, a scalar."""
    return (recon.float() - target.float()).abs().mean()


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: mean(relu(1 − D(real))) + mean(relu(1 + D(fake)))."""
    return F.relu(1.0 - logits_real.float()).mean() + F.relu(1.0 + logits_fake.float()).mean()


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator hinge loss: −mean(D(fake))."""
    return -logits_fake.float().mean()


def adaptive_gan_weight(rec_loss: torch.Tensor, gan_loss: torch.Tensor, last_layer: torch.Tensor, *,
                        max_weight: float = 1e4, eps: float = 1e-4) -> torch.Tensor:
    """RAE/VQGAN adaptive weight λ = ‖∇_w L_rec‖ / (‖∇_w L_gan‖ + eps), clamped to [0, max_weight].

    Args:
        rec_loss: reconstruction loss (scalar, graph kept).
        gan_loss: generator GAN loss (scalar, graph kept).
        last_layer: the decoder's last weight w (``ConvDecoder.last_layer``).

    Returns:
        λ as a detached 0-dim tensor (multiply the GAN loss by it).
    """
    g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_gan = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    lam = g_rec.norm() / (g_gan.norm() + eps)
    return lam.clamp(0.0, max_weight).detach()


class LPIPSWeightsError(RuntimeError):
    """Raised when LPIPS is requested but the VGG16 backbone weights are not available offline."""


def default_vgg_path() -> Path:
    """Where torchvision caches VGG16: ``$TORCH_HOME/hub/checkpoints/vgg16-397923af.pth``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILENAME


class LPIPSLoss(nn.Module):
    """LPIPS (VGG, v0.1) from the ``lpips`` package without any download.

    The calibrated linear heads ship inside the lpips wheel; the VGG16 trunk is read from ``vgg_path``
    (torchvision's ``vgg16-397923af.pth`` or any state dict with ``features.{i}.weight`` keys), by default
    from the torch hub cache. The trunk is built on the meta device (no 138 M-parameter classifier is
    allocated) and frozen.

    Args:
        vgg_path: VGG16 weights file; None → :func:`default_vgg_path`.

    Raises:
        LPIPSWeightsError: the file does not exist (offline, never downloaded). Either pass a file or
            disable LPIPS (loss weight 0).

    Shapes:
        ``forward(x, y)`` with images ``[B, 3, H, W]`` in [-1, 1] → scalar mean LPIPS distance.
    """

    def __init__(self, vgg_path: str | Path | None = None) -> None:
        super().__init__()
        import lpips

        path = Path(vgg_path) if vgg_path is not None else default_vgg_path()
        if not path.is_file():
            raise LPIPSWeightsError(
                f"LPIPS needs the torchvision VGG16 weights, not found at {path} (no download offline). "
                f"Pass `--lpips-weights PATH` (Python: `vgg_path=PATH`; a copy of {VGG16_FILENAME}), put it "
                f"in {default_vgg_path().parent}, or disable LPIPS (`--no-lpips`, LPIPS weight 0).")
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torchvision's `pretrained=` deprecation notes
            net = lpips.LPIPS(net="vgg", pretrained=False, pnet_rand=True, verbose=False)
        net = net.to_empty(device="cpu")
        net.scaling_layer = lpips.ScalingLayer()  # its constant buffers were left empty by to_empty
        heads = os.path.join(os.path.dirname(lpips.__file__), "weights", "v0.1", "vgg.pth")
        head_state = torch.load(heads, map_location="cpu", weights_only=True)
        missing, unexpected = net.load_state_dict(head_state, strict=False)
        if unexpected or any(k[:3] == "lin" and k[3].isdigit() for k in missing):
            raise LPIPSWeightsError(f"unexpected LPIPS head file {heads}")
        self._load_trunk(net, path)
        net.eval().requires_grad_(False)
        self.net = net

    @staticmethod
    def _load_trunk(net: nn.Module, path: Path) -> None:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
        loaded = 0
        for slice_idx in range(1, 6):
            for name, module in getattr(net.net, f"slice{slice_idx}").named_children():
                if not isinstance(module, nn.Conv2d):
                    continue
                for kind in ("weight", "bias"):
                    for key in (f"features.{name}.{kind}", f"net.slice{slice_idx}.{name}.{kind}"):
                        if key in state:
                            getattr(module, kind).data.copy_(state[key])
                            loaded += 1
                            break
                    else:
                        raise LPIPSWeightsError(f"{path} has no VGG16 key features.{name}.{kind}")
        assert loaded == 26  # 13 convolutions × (weight, bias)

    def train(self, mode: bool = True) -> "LPIPSLoss":
        super().train(mode)
        self.net.eval()
        return self

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(x.float(), y.float(), normalize=False).mean()


@dataclass(frozen=True)
class LossWeights:
    """Weights of the autoencoder objective (see :data:`STAGE_LOSS_WEIGHTS`)."""

    cosine: float = 0.5
    l1: float = 1.0
    lpips: float = 1.0
    gan: float = 0.0


STAGE_LOSS_WEIGHTS: dict[int, LossWeights] = {
    1: LossWeights(cosine=0.5, l1=1.0, lpips=1.0, gan=0.0),
    2: LossWeights(cosine=0.0, l1=1.0, lpips=1.0, gan=0.5),
}


class AELosses(NamedTuple):
    """Terms of the reconstruction objective; ``total`` is their weighted sum (GAN term excluded).

    A term that was not computed (weight 0, no LPIPS module, no teacher) is ``None``.
    """

    total: torch.Tensor
    cosine: Optional[torch.Tensor]
    l1: Optional[torch.Tensor]
    lpips: Optional[torch.Tensor]

    def parts(self) -> dict[str, torch.Tensor]:
        """The computed terms under their logged names ``cos``, ``l1``, ``lpips`` (in that order)."""
        named = (("cos", self.cosine), ("l1", self.l1), ("lpips", self.lpips))
        return {k: v for k, v in named if v is not None}


def autoencoder_losses(recon: torch.Tensor, images: torch.Tensor, z: torch.Tensor | None,
                       z_teacher: torch.Tensor | None, weights: LossWeights,
                       lpips_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> AELosses:
    """Reconstruction objective w_cos·mean(1 − cos(z, z_teacher)) + w_l1·|x̂ − x|₁ + w_lpips·LPIPS(x̂, x).

    Args:
        recon: ``[B, 3, H, W]`` reconstructions in [-1, 1].
        images: ``[B, 3, H, W]`` targets in [-1, 1].
        z: ``[B, N, C]`` student tokens (or ``None``).
        z_teacher: ``[B, N, C]`` teacher tokens (or ``None``).
        weights: the term weights.
        lpips_fn: ``(x̂, x) -> scalar or [B]`` (averaged), or ``None``.

    The GAN term is added by the trainer with :func:`hinge_g_loss` (and, optionally,
    :func:`adaptive_gan_weight`). Terms with weight 0, no LPIPS module or no teacher are not computed
    (``None``); every computed term is a float32 scalar.
    """
    cos = cosine_alignment_loss(z, z_teacher) if weights.cosine and z is not None and z_teacher is not None \
        else None
    l1 = l1_loss(recon, images) if weights.l1 else None
    lp = lpips_fn(recon.float(), images.float()).mean() if weights.lpips and lpips_fn is not None else None
    total = recon.new_zeros((), dtype=torch.float32)
    for w, term in ((weights.cosine, cos), (weights.l1, l1), (weights.lpips, lp)):
        if term is not None:
            total = total + w * term
    return AELosses(total=total, cosine=cos, l1=l1, lpips=lp)
