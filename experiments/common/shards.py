"""Verified latent shards: every shard's size and sha256 are recorded when it is written, and checked when
a cache is re-run (a damaged shard is named and re-made) and when it is read (a damaged shard stops the
reader with one line naming it).

A record lives beside its shard, ``shard-00003.safetensors.sha256`` = ``{"bytes": int, "sha256": hex}``,
written atomically *after* the shard, so a shard without a record is one whose write was interrupted (or
a cache from before records existed) and is never trusted. Each process records its own shards (DDP); the
main process copies all records into ``index.json["shards"]`` when the cache is complete, which is what
readers check.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from experiments.common.provenance import file_digest

SUFFIX = ".sha256"
#: Temporary files of a killed record write (for the run folder's clean-up).
TMP_GLOBS = (".shard-*.safetensors.sha256.tmp",)


def record_path(shard: str | os.PathLike) -> Path:
    return Path(f"{shard}{SUFFIX}")


def make_record(shard: str | os.PathLike) -> dict:
    """``{"bytes", "sha256"}`` of a shard file as it is on disk now."""
    return {"bytes": os.path.getsize(shard), "sha256": file_digest(shard)}


def write_record(shard: str | os.PathLike) -> dict:
    """Hash ``shard`` and write its record beside it (atomically). Returns the record."""
    rec = make_record(shard)
    path = record_path(shard)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(rec))
    os.replace(tmp, path)
    return rec


def read_record(shard: str | os.PathLike) -> dict | None:
    """The record beside ``shard``, or ``None`` when missing or unreadable."""
    try:
        rec = json.loads(record_path(shard).read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and {"bytes", "sha256"} <= rec.keys() else None


def problem(shard: str | os.PathLike, rec: dict | None, *, checksum: bool = True) -> str | None:
    """What is wrong with ``shard`` against its record ``rec``, in words, or ``None`` when it matches.

    ``checksum=False`` checks existence and size only (no read of the data).
    """
    p = Path(shard)
    if not p.is_file():
        return "missing"
    if rec is None:
        return "no size/checksum record (its write was interrupted, or the cache predates records)"
    size = p.stat().st_size
    if size != rec["bytes"]:
        return f"{size} bytes, {rec['bytes']} recorded (truncated or overwritten)"
    if checksum and file_digest(p) != rec["sha256"]:
        return f"sha256 {file_digest(p)[:12]} differs from the recorded {rec['sha256'][:12]} (damaged)"
    return None


def discard(shard: str | os.PathLike) -> None:
    """Remove a shard and its record (before re-making it)."""
    for p in (Path(shard), record_path(shard)):
        if p.is_file():
            p.unlink()
