"""Reading the golden fixtures in tests/data/ (made by the reference code; see tests/data/README.md)."""
from __future__ import annotations

from pathlib import Path

import torch

DATA = Path(__file__).parent / "data"


def unpack(packed: dict) -> dict[str, torch.Tensor]:
    """A fixture state dict: int8 mantissas k with exponents e (the value is k·2^-e, exact in float32) plus
    the tensors stored as they are (fixed tables). Returns float32 tensors (ints stay ints)."""
    out = {k: v.float() * 2.0 ** -packed["exp"][k] for k, v in packed["int8"].items()}
    return {**out, **packed["float"]}


def load(name: str) -> dict:
    """``tests/data/<name>`` (a ``torch.save`` of plain tensors, numbers, strings, lists and dicts)."""
    return torch.load(DATA / name, weights_only=True)
