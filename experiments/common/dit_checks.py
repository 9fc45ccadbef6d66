"""What ``in1k_dit.py`` checks before it spends compute, and what a resume states (issue 20).

* :func:`check_autoencoder`: the autoencoder given now against the one the resumed run and the ``--latents``
  cache were made with (content identity, :mod:`experiments.common.provenance`); another encoder stops
  with one line naming both, unless ``--accept-changed-ae`` (then the change is returned and logged).
* :func:`check_classes`: a class list that differs from the resumed run's (renamed, added, removed or
  re-ordered folders: the labels would be permuted or shifted) stops with one line; a ``--num-classes``
  below the data's classes too.
* :func:`resume_report`: the one line a resume prints (every changed option, whether the data order is
  still exact) and the ``resume`` record of ``metrics.jsonl``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from experiments.common import provenance
from experiments.common.trainer import UserError


def check_autoencoder(args, resume: dict | None, ae, ckpt: Path) -> list[dict]:
    """Compare ``ae`` with the resumed checkpoint's and the ``--latents`` cache's recorded identity.

    Returns:
        The accepted changes (``{"what", "from", "to"}``; empty unless ``args.accept_changed_ae``).

    Raises:
        UserError: another latent shape, or other encoder weights without ``--accept-changed-ae``.
    """
    current = provenance.ae_identity(ae)
    accept = bool(getattr(args, "accept_changed_ae", False))
    changes = []
    if resume is not None:
        ch = provenance.check_ae(resume.get("latent", {}).get("ae_identity"), current,
                                 what=f"the run being resumed ({ckpt})", accept=accept)
        if ch:
            changes.append(dict(ch, what=str(ckpt)))
    if args.latents is not None:
        index = json.loads((Path(args.latents) / "index.json").read_text())
        rec = index.get("ae_identity")
        if rec is None and (index.get("num_tokens"), index.get("channels")) != (ae.num_tokens, ae.latent_dim):
            raise UserError(f"{args.latents} holds {index.get('num_tokens')}x{index.get('channels')} latents but "
                            f"the autoencoder {current['path']} gives {ae.num_tokens}x{ae.latent_dim}; pass the "
                            f"--ae-ckpt that wrote the cache")
        ch = provenance.check_ae(rec, current, what=f"the latent cache {args.latents}", accept=accept)
        if ch:
            changes.append(dict(ch, what=str(args.latents)))
    return changes


def check_classes(resumed: dict | None, classes: list | None, num_classes: int, args, where: str) -> None:
    """Stop (one line) when the data's class list differs from the resumed run's (``resumed``: its
    ``latent`` record), or when ``--num-classes`` is below the data's ``num_classes``."""
    if args.num_classes is not None and args.num_classes < num_classes:
        raise UserError(f"--num-classes {args.num_classes} is below the {num_classes} classes of {where}")
    if resumed is None:
        return
    change = provenance.class_change(resumed.get("classes"), classes)
    if change is not None:
        raise UserError(f"the class list of {where} changed since the run was started ({change}): its labels "
                        f"would be permuted or shifted; restore the class folders, or start a new run "
                        f"(another --out or --no-resume)")
    old_k, new_k = resumed.get("num_classes"), args.num_classes or num_classes
    if old_k is not None and old_k != new_k:
        raise UserError(f"the run was started with {old_k} classes, now {new_k} (--num-classes); use the same "
                        f"number, another --out or --no-resume")


def resume_report(resume: dict, args, listing: dict, changes: list[dict], step: int, ckpt: Path
                  ) -> tuple[str, dict[str, Any]]:
    """The resume line and the ``resume`` record of ``metrics.jsonl``.

    The data order of a resumed run repeats an uninterrupted one exactly only when the training set's
    listing (:func:`provenance.listing_digest`: items, order, labels) is the one the run started with.
    """
    changed = provenance.changed_options(resume.get("args", {}), vars(args))
    old = resume.get("latent", {}).get("data_listing")
    if old is None:
        exact, data = None, "data order not verifiable (the checkpoint predates data-listing records)"
    elif old == listing:
        exact, data = True, f"data order exact ({listing['n']} items, listing {provenance.short(listing['digest'])})"
    else:
        exact, data = False, (f"DATA CHANGED ({old['n']} -> {listing['n']} items, listing "
                              f"{provenance.short(old['digest'])} -> {provenance.short(listing['digest'])}): "
                              f"the batches differ from an uninterrupted run's")
    ae = "; " + "; ".join(f"AUTOENCODER CHANGED by --accept-changed-ae for {c['what']}: "
                         f"{provenance.describe(c['from'])} -> {provenance.describe(c['to'])}" for c in changes) \
        if changes else ""
    line = (f"in1k_dit: resuming from {ckpt} at step {step}; changed options: {', '.join(changed) or 'none'}; "
            f"{data}{ae}")
    return line, {"changed_options": changed, "data_order_exact": exact, "data_listing": listing,
                  "previous_data_listing": old, "ae_changes": changes}
