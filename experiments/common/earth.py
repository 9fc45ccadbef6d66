"""The four earth-event datasets on S² and the published protocol's random 80/10/10 splits.

Files live in ``benchmarks/data/earth/`` (see its README for sources and sha256 sums): comment lines
start with ``#``, an optional header line follows, then one ``lat,lon`` row (degrees) per event.

* :func:`read_latlon` reads a file into ``[N, 2]`` float64 degrees (rows checked, one-line errors).
* :func:`latlon_to_xyz` / :func:`xyz_to_latlon`: degrees ↔ unit vectors on S²,
  ``x = cos(lat)cos(lon), y = cos(lat)sin(lon), z = sin(lat)``.
* :func:`load_earth` loads a named dataset as ``[N, 3]`` unit vectors;
  :func:`split` draws the train/val/test split of one seed (the published tables use seeds 0–4).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import NamedTuple, Optional, Union

import torch
from torch import Tensor

DATA_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "data" / "earth"
FILES = {"volcano": "volerup.csv", "earthquake": "quakes_all.csv", "flood": "flood.csv", "fire": "fire.csv"}
ROWS = {"volcano": 827, "earthquake": 6120, "flood": 4875, "fire": 12809}  # events per file (README)


class EarthDataError(ValueError):
    """A dataset file is missing or malformed (printed as one line by the scripts)."""


def read_latlon(path: Union[str, os.PathLike]) -> Tensor:
    """``lat,lon`` rows of ``path`` as ``[N, 2]`` float64 degrees.

    Lines starting with ``#`` and blank lines are skipped; a first data line whose fields are not both
    numbers is the header. Raises :class:`EarthDataError` on a missing file, a row that is not two numbers,
    a latitude outside [−90, 90] or a longitude outside [−180, 360].
    """
    path = Path(path)
    if not path.is_file():
        raise EarthDataError(f"dataset file {path} not found (expected a lat,lon CSV; see benchmarks/data/earth)")
    rows: list[tuple[float, float]] = []
    header_seen = False
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.split(",")]
        try:
            if len(fields) != 2:
                raise ValueError
            lat, lon = float(fields[0]), float(fields[1])
        except ValueError:
            if not rows and not header_seen:
                header_seen = True
                continue
            raise EarthDataError(f"{path}:{lineno}: expected 'lat,lon' (two numbers), got {line!r}") from None
        if not (math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 360):
            raise EarthDataError(f"{path}:{lineno}: latitude must be in [-90, 90] and longitude in [-180, 360] "
                                 f"degrees, got {lat}, {lon}")
        rows.append((lat, lon))
    if not rows:
        raise EarthDataError(f"{path} holds no lat,lon rows")
    return torch.tensor(rows, dtype=torch.float64)


def latlon_to_xyz(latlon: Tensor) -> Tensor:
    """Degrees ``[..., 2]`` (lat, lon) → unit vectors ``[..., 3]`` (cos φ cos λ, cos φ sin λ, sin φ)."""
    if latlon.shape[-1:] != (2,):
        raise ValueError(f"latlon_to_xyz: expected [..., 2] (lat, lon) degrees, got {tuple(latlon.shape)}")
    lat, lon = torch.deg2rad(latlon).unbind(-1)
    return torch.stack([lat.cos() * lon.cos(), lat.cos() * lon.sin(), lat.sin()], dim=-1)


def xyz_to_latlon(x: Tensor) -> Tensor:
    """Inverse of :func:`latlon_to_xyz`: ``[..., 3]`` → degrees ``[..., 2]``, lon in (−180, 180]."""
    if x.shape[-1:] != (3,):
        raise ValueError(f"xyz_to_latlon: expected [..., 3] points, got {tuple(x.shape)}")
    lat = torch.atan2(x[..., 2], torch.linalg.vector_norm(x[..., :2], dim=-1))
    lon = torch.atan2(x[..., 1], x[..., 0])
    return torch.rad2deg(torch.stack([lat, lon], dim=-1))


def load_earth(name: str, data_dir: Optional[Union[str, os.PathLike]] = None,
               dtype: torch.dtype = torch.float32) -> Tensor:
    """Dataset ``name`` (one of :data:`FILES`) as ``[N, 3]`` unit vectors in ``dtype``."""
    if name not in FILES:
        raise EarthDataError(f"unknown earth dataset {name!r}; expected one of {', '.join(FILES)}")
    return latlon_to_xyz(read_latlon(Path(data_dir or DATA_DIR) / FILES[name])).to(dtype)  # already unit


class Split(NamedTuple):
    """Train / validation / test points, each ``[n_i, 3]``."""

    train: Tensor
    val: Tensor
    test: Tensor


def split_sizes(n: int) -> tuple[int, int, int]:
    """``(train, val, test)`` sizes for ``n`` rows, the anchor's rule: val = test = ⌊n/10⌋, train the rest.

    (Riemannian flow matching's data loader: ``N_val = N_test = N // 10``.)"""
    if n < 20:
        raise EarthDataError(f"need at least 20 rows to split 80/10/10, got {n}")
    k = n // 10
    return n - 2 * k, k, k


def points_sha256(x: Tensor) -> str:
    """SHA-256 (:func:`~experiments.common.provenance.tensor_digest`: shape and bytes) of the points ``x``
    ``[N, 3]`` in float64: names a test set by its content, so a stored per-point result can be checked against
    the split it claims to be on."""
    from experiments.common.provenance import tensor_digest

    return tensor_digest({"points": x.detach().to("cpu", torch.float64)})


def split(x: Tensor, seed: int) -> Split:
    """Random 80/10/10 split of the rows of ``x`` ``[N, D]``, made as the anchor makes it: the permutation
    ``torch.randperm(N, generator=torch.Generator().manual_seed(seed))`` cut into train, val, test in that
    order (what ``torch.utils.data.random_split`` does with that generator and :func:`split_sizes`)."""
    n_train, n_val, _ = split_sizes(x.shape[0])
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(int(seed)))
    return Split(x[perm[:n_train]], x[perm[n_train:n_train + n_val]], x[perm[n_train + n_val:]])
