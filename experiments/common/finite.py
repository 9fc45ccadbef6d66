"""Finite or nothing: checks run before anything is written (latents, images, statistics, metrics).

* :func:`first_bad` locates the first NaN/±Inf entry of a tensor or array (row-major).
* :func:`require_finite` raises :class:`experiments.common.trainer.NonFiniteError` (one line, exit 3
  through ``run_cli``) naming what was checked, the tensor, how many values are bad and the first bad
  index (``offset`` turns the batch's first index into the dataset's).
* :func:`dumps_strict` is ``json.dumps(..., allow_nan=False)`` whose error names the key holding the
  non-finite number (strict JSON has no NaN; Python's default writes the invalid token ``NaN``).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from experiments.common.trainer import NonFiniteError


def first_bad(x: torch.Tensor | np.ndarray) -> tuple[int, tuple[int, ...]] | None:
    """``None`` when every entry of ``x`` is finite; else ``(number of bad entries, index of the first)``."""
    if isinstance(x, np.ndarray):
        if not np.issubdtype(x.dtype, np.floating) and not np.issubdtype(x.dtype, np.complexfloating):
            return None
        bad = ~np.isfinite(x)
        if not bad.any():
            return None
        return int(bad.sum()), tuple(int(i) for i in np.unravel_index(int(np.argmax(bad.reshape(-1))), x.shape))
    if not (x.is_floating_point() or x.is_complex()):
        return None
    bad = ~torch.isfinite(x)
    if not bool(bad.any()):
        return None
    flat = int(bad.reshape(-1).to(torch.uint8).argmax())
    return int(bad.sum()), tuple(int(i) for i in np.unravel_index(flat, tuple(x.shape))) if x.dim() else ()


def require_finite(what: str, *, offset: int = 0, hint: str = "nothing written", **tensors) -> None:
    """Raise :class:`NonFiniteError` naming ``what`` and the first of ``tensors`` (name → tensor with the
    item on axis 0) holding NaN or ±Inf: ``non-finite latents (12 of 4096 values NaN/Inf, first at item
    1037 [1037, 3, 5]) in shard 1 (images 1024..2047); nothing written``."""
    for name, t in tensors.items():
        if t is None:
            continue
        found = first_bad(t)
        if found is None:
            continue
        n_bad, idx = found
        size = t.size if isinstance(t, np.ndarray) else t.numel()
        where = (f"first at item {idx[0] + offset} {list((idx[0] + offset,) + idx[1:])}" if idx else "a scalar")
        raise NonFiniteError(f"non-finite {name} ({n_bad} of {size} values NaN/Inf, {where}) in {what}; {hint}")


def _find_nonfinite(obj: Any, path: str = "") -> str | None:
    if isinstance(obj, float) and not math.isfinite(obj):
        return path or "<top>"
    if isinstance(obj, dict):
        for k, v in obj.items():
            found = _find_nonfinite(v, f"{path}.{k}" if path else str(k))
            if found:
                return found
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            found = _find_nonfinite(v, f"{path}[{i}]")
            if found:
                return found
    return None


def dumps_strict(obj: Any, what: str, **kw) -> str:
    """``json.dumps(obj, allow_nan=False, **kw)``; a NaN/±Inf number raises :class:`NonFiniteError` naming
    ``what`` and the key (``fid``, ``sweep[2].psnr``)."""
    key = _find_nonfinite(obj)
    if key is not None:
        raise NonFiniteError(f"{what}: {key} is not finite; nothing written (strict JSON has no NaN/Inf)")
    return json.dumps(obj, allow_nan=False, **kw)


def write_json_strict(path: str | os.PathLike, obj: Any, what: str, *, indent: int | None = 1) -> Path:
    """:func:`dumps_strict` then an atomic write (temp file + ``os.replace``; nothing left on error)."""
    text = dumps_strict(obj, what, indent=indent) + "\n"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
