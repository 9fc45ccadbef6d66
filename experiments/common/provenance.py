"""Content identities of the artefacts that depend on one another (issue 20): a latent cache, a DiT run
and a batch of samples record *what* they were made from, not only *where* it was.

* :func:`tensor_digest` is sha256 over a state dict's tensors in sorted key order (each key, dtype, shape
  and raw bytes), so the same weights give the same digest wherever the file lives, and any change of one
  value changes it. About as fast as reading the bytes once (measured in ``docs/robustness.md``).
* :func:`ae_identity` of an autoencoder: ``encoder`` (digest of every tensor outside ``decoder.``: the stem
  and the DINO trunk, i.e. the latent space the DiT sees), ``decoder`` (digest of ``decoder.``), the latent
  shape ``num_tokens`` × ``channels``, ``radius``, ``latent_norm``, ``decoder_input``, ``image_size``.
  A stage-2 autoencoder (decoder fine-tuned, encoder frozen) keeps its stage-1 ``encoder`` digest, so a DiT
  trained on stage-1 latents may decode with it (the paper's recipe).
* :func:`check_ae`: a recorded identity against the autoencoder now given: the same ``encoder`` and latent
  shape pass (whatever the path), anything else stops with one line naming both sides, unless the user
  passed ``--accept-changed-ae`` (then the change is returned for the caller to log).
* :func:`class_change`, :func:`listing_digest`, :func:`changed_options`: what a resume must state or refuse.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from experiments.common.trainer import UserError

#: The identity fields that define the latent space (a change is a different space); the others are notes.
LATENT_SPACE_KEYS = ("encoder", "num_tokens", "channels", "radius")
ACCEPT_FLAG = "--accept-changed-ae"


def tensor_digest(tensors: Mapping[str, torch.Tensor], keys: Iterable[str] | None = None) -> str:
    """sha256 (hex) of ``tensors[k]`` for ``k`` in ``sorted(keys or tensors)``: key, dtype, shape, bytes.

    Args:
        tensors: name → tensor (a ``state_dict``); non-tensor values are hashed through ``repr``.
        keys: the subset to hash (default: all).
    """
    h = hashlib.sha256()
    for k in sorted(tensors if keys is None else keys):
        t = tensors[k]
        if not isinstance(t, torch.Tensor):
            h.update(f"{k}:{t!r};".encode())
            continue
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)};".encode())
        flat = t.detach().reshape(-1).contiguous().cpu()
        if flat.numel():  # the bytes as they are in memory (no copy): a buffer sha256 reads directly
            h.update((flat.to(torch.uint8) if flat.dtype == torch.bool else flat.view(torch.uint8)).numpy().data)
    return h.hexdigest()


def file_digest(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """sha256 (hex) of a file's bytes, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def json_digest(obj: Any) -> str:
    """sha256 (hex) of ``json.dumps(obj, sort_keys=True)``."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def short(digest: str | None) -> str:
    """The first 12 hex digits (what messages print), or ``"unrecorded"``."""
    return digest[:12] if digest else "unrecorded"


def ae_identity(ae: torch.nn.Module) -> dict:
    """The content identity of a loaded autoencoder (EMA weights applied, as used); computed once per model
    and memoised on it (``ae._identity``). See the module docstring for the fields."""
    cached = getattr(ae, "_identity", None)
    if cached is not None:
        return dict(cached)
    sd = ae.state_dict()
    dec = [k for k in sd if k.startswith("decoder.")]
    enc = [k for k in sd if not k.startswith("decoder.")]
    ident = {"encoder": tensor_digest(sd, enc), "decoder": tensor_digest(sd, dec),
             "num_tokens": int(ae.num_tokens), "channels": int(ae.latent_dim), "radius": float(ae.radius),
             "latent_norm": getattr(ae, "latent_norm", None),
             "decoder_input": getattr(getattr(ae, "config", None), "decoder_input", None),
             "image_size": int(ae.image_size), "path": str(getattr(ae, "ckpt_path", "") or "")}
    ae._identity = dict(ident)
    return ident


def describe(ident: Mapping | None) -> str:
    """``encoder 1a2b3c4d5e6f, 256x1024 on R=31.99 (path)`` for messages."""
    if not ident:
        return "no recorded autoencoder identity"
    where = f" ({ident['path']})" if ident.get("path") else ""
    return (f"encoder {short(ident.get('encoder'))}, {ident.get('num_tokens')}x{ident.get('channels')} "
            f"latents on R={float(ident.get('radius', float('nan'))):.4g}{where}")


def same_latent_space(a: Mapping, b: Mapping) -> bool:
    """Whether two identities define the same latent space (:data:`LATENT_SPACE_KEYS` equal)."""
    return all(a.get(k) == b.get(k) for k in LATENT_SPACE_KEYS)


def check_ae(recorded: Mapping | None, current: Mapping, *, what: str, accept: bool = False,
             hint: str | None = None) -> dict | None:
    """Compare the autoencoder identity ``recorded`` by an artefact (``what``: "the cache X", "the run Y")
    with ``current`` (:func:`ae_identity` of the autoencoder given now).

    Returns:
        ``None`` when they define the same latent space (or ``recorded`` predates identities), else, when
        ``accept`` and the latent shapes agree, ``{"from": recorded, "to": current}`` for the caller to log.

    Raises:
        UserError: one line naming both sides: another latent shape (never acceptable), or another
            encoder without ``accept`` (the line ends with ``hint``, by default: the autoencoder it was
            made with, or :data:`ACCEPT_FLAG`).
    """
    if not recorded or not recorded.get("encoder"):
        return None
    if same_latent_space(recorded, current):
        return None
    shape = ("num_tokens", "channels", "radius")
    if any(recorded.get(k) != current.get(k) for k in shape):
        raise UserError(f"{what} was made with {describe(recorded)} but the autoencoder given now has "
                        f"{describe(current)}: another latent shape; pass the autoencoder it was made with")
    if accept:
        return {"from": dict(recorded), "to": dict(current)}
    hint = hint or (f"pass the autoencoder it was made with, or {ACCEPT_FLAG} to continue on the new latents "
                    f"on purpose (recorded in the run's log)")
    raise UserError(f"{what} was made with {describe(recorded)} but the autoencoder given now has "
                    f"{describe(current)}: other weights, another latent space; {hint}")


def class_change(old: list | None, new: list | None) -> str | None:
    """``None`` when the class lists agree (or one is unknown); else what changed, in words: a rename is a
    permutation of the labels, an added or removed class shifts them."""
    if old is None or new is None or list(old) == list(new):
        return None
    added, removed = [c for c in new if c not in old], [c for c in old if c not in new]
    parts = []
    if added:
        parts.append(f"{len(added)} added (e.g. {added[0]!r})")
    if removed:
        parts.append(f"{len(removed)} removed or renamed (e.g. {removed[0]!r})")
    if not parts:
        parts.append("the same names in another order")
    return f"{len(old)} -> {len(new)} classes, " + ", ".join(parts)


def listing_digest(ds) -> dict:
    """The identity of a training set's listing: ``{"n", "digest"}``. Same digest ⇔ the same items in the
    same order with the same labels, so ``ResumableBatchSampler``'s batches (a function of n and the seed)
    read the same data.

    Image folders hash ``relative path \\t label`` per file; latent caches their index (ae identity, shard
    checksums); anything else (embedded photos) its class names, length and seed.
    """
    if hasattr(ds, "samples") and hasattr(ds, "root"):
        root = str(ds.root)
        h = hashlib.sha256()
        cut = len(root) + 1
        for path, label in ds.samples:  # paths are root/<class>/...: a slice is the relative path
            rel = path[cut:] if path.startswith(root + os.sep) else os.path.relpath(path, root)
            h.update(f"{rel}\t{label}\n".encode())
        return {"n": len(ds), "digest": h.hexdigest()}
    index = getattr(ds, "index", None)
    if isinstance(index, dict):
        keys = ("num_images", "shard_size", "flip", "dtype", "ae_identity", "shards", "classes", "source")
        return {"n": len(ds), "digest": json_digest({k: index.get(k) for k in keys})}
    return {"n": len(ds), "digest": json_digest({"type": type(ds).__name__, "classes": list(getattr(ds, "classes", [])),
                                                 "n": len(ds), "seed": getattr(ds, "seed", None),
                                                 "image_size": getattr(ds, "image_size", None)})}


#: Options that never change what a run computes (how it is watched or stopped): not reported on resume.
_QUIET = frozenset({"no_progress", "stop_after", "no_resume", "tensorboard", "inject_nan_steps",
                    "accept_changed_ae", "num_workers", "threads", "device"})


def changed_options(old: Mapping, new: Mapping, quiet: Iterable[str] = _QUIET) -> list[str]:
    """``["--lr 0.001 -> 0.002", ...]`` for every option whose value differs between the checkpoint's
    ``args`` (``old``) and this run's (``new``), sorted; options in ``quiet`` and keys missing from the old
    record (written before the option existed) are left out."""
    skip = set(quiet)
    out = []
    for k in sorted(new):
        if k in skip or k not in old or old[k] == new[k]:
            continue
        out.append(f"--{k.replace('_', '-')} {old[k]} -> {new[k]}")
    return out


def run_dir_of(path: str | os.PathLike) -> Path:
    """The folder an output file lives in (what :class:`experiments.common.rundir.RunLock` locks)."""
    return Path(path).resolve().parent
