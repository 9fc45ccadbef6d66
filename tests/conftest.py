"""Shared pytest configuration: hypothesis profiles and torch determinism.

Profiles (select with ``pytest --hypothesis-profile=NAME``):
  * ``ci``       deterministic (derandomized), bounded example counts, no deadline: the CI gate.
  * ``dev``      few examples, for a fast local loop (the default).
  * ``thorough`` thousands of examples, for before a release.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

_SUPPRESS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

settings.register_profile("ci", max_examples=60, derandomize=True, deadline=None,
                          suppress_health_check=_SUPPRESS, print_blob=True)
settings.register_profile("dev", max_examples=20, deadline=None, suppress_health_check=_SUPPRESS)
settings.register_profile("thorough", max_examples=3000, deadline=None,
                          suppress_health_check=_SUPPRESS)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

# Test tensors are tiny: one intra-op thread is fastest and avoids OpenMP contention on a shared
# 2-core box (measured ~30x slower tiny convolutions with 2 threads under load).
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def ae_ckpt(tmp_path_factory) -> Path:
    """A random-init tiny autoencoder at 32 px (2x2 tokens x 32 channels) in the in1k_ae checkpoint layout,
    with a stored ``latent_norm`` of 7.0 (the DiT training and Euclidean-flow tests share it)."""
    from experiments.common.dit_io import save_autoencoder
    from models import build_autoencoder

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ae") / "ae.pt"
    save_autoencoder(build_autoencoder("tiny", image_size=32), path, "tiny", latent_norm=7.0)
    return path
