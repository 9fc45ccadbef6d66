"""models: the DINO Spherical Autoencoder (encoder, stem, decoder, losses, discriminator) and the DiT.

Entry point::

    from models import build_autoencoder, DinoSphericalAutoencoder
    ae = build_autoencoder("tiny")                       # random-by-design CPU model
    ae = build_autoencoder("paper", weights="dinov3_vitl16.pth")
    dit = LightningDiT_models["LightningDiT-XL/1"](in_channels=1024, num_tokens=256)  # see models/dit.py
"""
from models.autoencoder import (AE_CONFIGS, AutoencoderConfig, AutoencoderOutput,
                                DinoSphericalAutoencoder, build_autoencoder)
from models.dit import DiTConfig, LightningDiT, LightningDiT_models, cfg_combine, count_parameters
from models.decoder import DECODER_CONFIGS, ConvDecoder, DecoderConfig
from models.encoder import DinoBackbone, EncoderWeightsError, create_dino_vit, load_dino_weights
from models.latent import gaussian_norm_radius, smooth_latent, smoothing_tau
from models.stem import TRMS2d, HierarchicalConvPatchEmbed

__all__ = ["AE_CONFIGS", "AutoencoderConfig", "AutoencoderOutput", "DinoSphericalAutoencoder",
           "build_autoencoder", "DECODER_CONFIGS", "ConvDecoder", "DecoderConfig", "DinoBackbone",
           "EncoderWeightsError", "create_dino_vit", "load_dino_weights", "gaussian_norm_radius",
           "smooth_latent", "smoothing_tau", "TRMS2d", "HierarchicalConvPatchEmbed",
           "DiTConfig", "LightningDiT", "LightningDiT_models", "cfg_combine", "count_parameters"]
