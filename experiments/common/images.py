"""Decoding image files to upright uint8 RGB (:func:`load_rgb`), whatever their bit depth: the one
reader of the training, caching and evaluation scripts (re-exported by :mod:`experiments.common.data`)."""
from __future__ import annotations

import os

import numpy as np

from experiments.common.errors import DataError

#: Pillow modes holding more than 8 bits per sample, and the value that maps to 255.
_WIDE_MODES = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535}


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to uint8 RGB ``[H, W, 3]``, upright; raises on unreadable / corrupt files.

    * The EXIF orientation tag is applied (``PIL.ImageOps.exif_transpose``), as photo viewers do.
    * 16-bit grey images (Pillow modes ``I;16``, ``I;16B``, ``I;16L``, ``I;16N``; ``I`` as Pillow opens
      16-bit PNGs, and 32-bit integer or float images of whole numbers in [0, 65535]) are scaled
      ``round(v · 255 / 65535)`` (Pillow's own conversion would clip them to 255: white).
    * 32-bit float grey images (mode ``F``, e.g. float TIFFs) in [0, 1] are scaled ``round(v · 255)``
      (Pillow's conversion would truncate them to 0 and 1: black).
    * Any other range of a float or 32-bit integer image is ambiguous and raises :class:`DataError` (one
      line naming the file and the range); so do NaN/Inf pixels.
    """
    from PIL import Image, ImageOps


    with Image.open(path) as raw:
        raw.load()  # forces full decode: truncated files fail here, not later
        im = ImageOps.exif_transpose(raw)
        if im.mode in ("F", "I"):
            v = np.asarray(im).astype(np.float64)
            lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 0.0)
            if not np.isfinite(v).all():
                raise DataError(f"{path}: {im.mode}-mode image holds NaN/Inf pixels")
            if im.mode == "F" and lo >= 0 and hi <= 1:
                top = 1.0
            elif lo >= 0 and hi <= 65535 and np.array_equal(v, np.rint(v)):  # integer counts (16-bit data)
                top = 65535.0
            else:
                raise DataError(f"{path}: {'32-bit float' if im.mode == 'F' else '32-bit integer'} image with "
                                f"values in [{lo:.6g}, {hi:.6g}]; expected [0, 1] (float) or [0, 65535] "
                                f"(integer): convert it to 8 or 16 bits")
            grey = np.clip(np.rint(v * (255.0 / top)), 0, 255).astype(np.uint8)
            return np.repeat(grey[..., None], 3, axis=-1)
        top = _WIDE_MODES.get(im.mode)
        if top is not None:
            v = np.asarray(im).astype(np.float64)
            grey = np.clip(np.rint(v * (255.0 / top)), 0, 255).astype(np.uint8)
            return np.repeat(grey[..., None], 3, axis=-1)
        return np.asarray(im.convert("RGB"))
