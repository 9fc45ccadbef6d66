"""Loading what the generation scripts need: a trained autoencoder, a DiT (registry + checkpoints).

* :func:`load_autoencoder` reads a checkpoint written by ``experiments/in1k_ae.py`` (a run folder, whose
  ``checkpoints/last.pt`` is used, or a ``.pt`` file) and applies its EMA weights; :func:`decode_norm`
  says at which token norm generated latents are decoded (the checkpoint's ``latent_norm`` by default).
* :func:`dit_registry` (defined in :mod:`experiments.common.dit_cli`, re-exported here) is :data:`models.dit.LightningDiT_models` plus two CPU configurations:
  ``LightningDiT-T/1`` (depth 4, width 96, 4 heads: the tests, ``--preset tiny``) and ``LightningDiT-C/1``
  (depth 4, width 192, 4 heads: the embedded default run, ``--preset cpu``).
* :func:`load_dit` rebuilds the DiT of an ``experiments/in1k_dit.py`` checkpoint (its ``dit_config``) and
  loads the EMA (default) or raw weights; it also returns the checkpoint's ``latent`` metadata
  (``num_tokens``, ``channels``, ``radius``, ``alpha``, ``num_classes``, ``ae_ckpt``).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from experiments.common import checkpoint
from experiments.common.ae_cli import default_out as ae_default_out
from experiments.common.dit_cli import default_out as dit_default_out, dit_registry  # noqa: F401 (re-export)
from experiments.common.ema import load_ema_weights
from experiments.common.trainer import UserError

DEFAULT_AE_PRESET = "cpu"  # in1k_ae.py's preset without --data
DEFAULT_AE_RUN = ae_default_out(DEFAULT_AE_PRESET, embedded=True, stage=1)  # in1k_ae.py's --out without --data
DEFAULT_DIT_RUN = dit_default_out("cpu", embedded=True)         # in1k_dit.py's --out without --data


def resolve_ckpt(path: str | os.PathLike, what: str, flag: str) -> Path:
    """A run folder → ``folder/checkpoints/last.pt``; a file → itself. Raises :class:`UserError`."""
    p = checkpoint.in_run(path)
    if not p.is_file():
        raise UserError(f"{what} checkpoint not found: {p} (pass {flag} RUN_DIR or FILE.pt)")
    return p


def load_autoencoder(path: str | os.PathLike, device: torch.device | str = "cpu", *, ema: bool = True):
    """The autoencoder of an ``in1k_ae.py`` checkpoint, EMA weights applied, in eval mode, frozen
    (:func:`load_autoencoder_state` without the state).

    Args:
        path: run folder or checkpoint file; the file holds ``{"model": state_dict, "args": {"preset",
            "image_size", "decoder_input", ...}, "ema": {"shadow": {...}}?, "latent_norm": float?}``.
        device: where to put the model.
        ema: copy the EMA shadow (trained parameters) over the raw weights when present.

    Returns:
        The model, with two plain attributes added: ``latent_norm`` (the checkpoint's mean held-out norm
        of the tokens its decoder reads, or None in checkpoints written before it was stored) and
        ``ckpt_path`` (the resolved file).
    """
    return load_autoencoder_state(path, device, ema=ema)[0]


def load_autoencoder_state(path: str | os.PathLike, device: torch.device | str = "cpu", *, ema: bool = True,
                           flag: str = "--ae-ckpt") -> tuple[torch.nn.Module, dict]:
    """:func:`load_autoencoder` and the checkpoint dict it was read from; ``flag`` names the option in the
    one-line errors."""
    from models import build_autoencoder

    p = resolve_ckpt(path, "autoencoder", flag)
    state = checkpoint.load(p)
    if "dit_config" in state or "model" not in state:
        raise UserError(f"{p} is " + ("an in1k_dit.py (DiT) checkpoint" if "dit_config" in state else
                                      "not an in1k_ae.py checkpoint (no 'model')")
                        + f", not an autoencoder: pass an in1k_ae.py run folder or checkpoint as {flag}")
    args = state.get("args", {})
    ae = build_autoencoder(args.get("preset", "tiny"), random_init=True, image_size=args.get("image_size"),
                           stem=args.get("stem", "conv"), decoder_input=ckpt_decoder_input(args))
    load_weights(ae, state["model"], p, "autoencoder")
    if ema:
        load_ema_weights(ae, state)
    ae.requires_grad_(False)
    ae.latent_norm = float(state["latent_norm"]) if state.get("latent_norm") is not None else None
    ae.ckpt_path = p
    return ae.to(device).eval(), state


def load_weights(model: torch.nn.Module, weights: dict, path: Path, what: str) -> None:
    """``model.load_state_dict(weights)``; a mismatch is one :class:`UserError` line naming ``path`` and how
    many tensors are missing / unexpected / of another shape (not torch's page of keys)."""
    own = model.state_dict()
    if not isinstance(weights, dict):
        raise UserError(f"{path} holds no {what} weights (its 'model' is a {type(weights).__name__})")
    missing, extra = own.keys() - weights.keys(), weights.keys() - own.keys()
    shape = [k for k in own.keys() & weights.keys() if getattr(weights[k], "shape", None) != own[k].shape]
    if missing or extra or shape:
        raise UserError(f"{path} does not hold this {what}'s weights ({len(missing)} missing, {len(extra)} "
                        f"unexpected, {len(shape)} mis-shaped of {len(own)} tensors, e.g. "
                        f"{sorted(missing or extra or shape)[0]!r})")
    model.load_state_dict(weights)


def decode_norm(ae, override: float | None = None) -> tuple[float, str]:
    """The token norm s at which generated latents are decoded (PAPER.md Alg. 2 line 14: z ← s·z/R), and
    where it comes from, for the startup line.

    Order: ``override`` (``--decode-norm``); the checkpoint's ``latent_norm`` (what the decoder read in
    training, measured on held-out images); R for a checkpoint without it whose decoder read sphere
    tokens. A raw-token checkpoint without ``latent_norm`` raises :class:`UserError` (pass the norm).
    The paper's value for DINOv3-L is 14 (App. C sweep); a toy model's is its own token norm.
    """
    if override is not None:
        if not override > 0:
            raise UserError(f"--decode-norm must be > 0, got {override}")
        return float(override), "--decode-norm"
    where = getattr(ae, "ckpt_path", "the autoencoder checkpoint")
    if getattr(ae, "latent_norm", None) is not None:
        if not (math.isfinite(ae.latent_norm) and ae.latent_norm > 0):
            raise UserError(f"{where} stores latent_norm = {ae.latent_norm} (expected a finite number > 0): "
                            f"pass --decode-norm S, the typical norm of the tokens its decoder read")
        return float(ae.latent_norm), f"latent_norm stored in {where}"
    if ae.config.decoder_input == "sphere":
        return float(ae.radius), f"the sphere radius R ({where} has no latent_norm; its decoder read sphere tokens)"
    raise UserError(f"{where} has no latent_norm (written before it was stored): pass --decode-norm S, "
                    f"the typical norm of the tokens its decoder read")


def ckpt_decoder_input(args: dict) -> str:
    """The ``decoder_input`` an ``in1k_ae.py`` checkpoint was trained with; checkpoints written before the
    option existed trained the decoder on sphere tokens, so a missing key means ``"sphere"``."""
    return args.get("decoder_input", "sphere")


def save_autoencoder(ae, path: str | os.PathLike, preset: str, latent_norm: float | None = None) -> Path:
    """Write ``ae`` in the ``in1k_ae.py`` checkpoint layout (``model`` + ``args`` [+ ``latent_norm``]) so
    it loads back."""
    state = {"model": ae.state_dict(), "step": 0,
             "args": {"preset": preset, "image_size": ae.image_size, "decoder_input": ae.config.decoder_input}}
    if latent_norm is not None:
        state["latent_norm"] = float(latent_norm)
    return checkpoint.save_atomic(state, path)


def load_dit(path: str | os.PathLike, device: torch.device | str = "cpu", *, ema: bool = True
             ) -> tuple[torch.nn.Module, dict, dict]:
    """Rebuild the DiT of an ``in1k_dit.py`` checkpoint.

    Returns:
        ``(model in eval mode, latent metadata dict, training args dict)``.
    """
    from models.dit import LightningDiT, config_from_dict

    p = resolve_ckpt(path, "DiT", "--ckpt")
    state = checkpoint.load(p)
    if "dit_config" not in state:
        raise UserError(f"{p} is not an in1k_dit.py checkpoint (no 'dit_config')")
    model = LightningDiT(config_from_dict(state["dit_config"]))  # fields it predates: their old values
    load_weights(model, state["model"], p, "DiT")
    if ema:
        load_ema_weights(model, state)
    model.requires_grad_(False)
    return model.to(device).eval(), dict(state["latent"]), dict(state["args"])


def default_autoencoder(ae_ckpt: str | None, out: str | os.PathLike, seed: int, *, is_main: bool = True
                        ) -> tuple[Path, str | None]:
    """The autoencoder checkpoint to use, and a one-line note when it is a random-init stand-in.

    ``ae_ckpt`` given → that (resolved). Else the embedded default: ``runs/ae-cpu-embedded-s1`` when that
    run exists, otherwise a freshly built ``build_autoencoder("cpu")`` (random init, seeded by ``seed``)
    saved once to ``OUT/ae-random-init.pt`` so sampling later decodes with the same decoder.
    """
    if ae_ckpt is not None:
        return resolve_ckpt(ae_ckpt, "autoencoder", "--ae-ckpt").resolve(), None
    trained = checkpoint.in_run(DEFAULT_AE_RUN)
    if trained.is_file():
        return trained.resolve(), None
    path = Path(out) / "ae-random-init.pt"
    note = (f"no trained {DEFAULT_AE_PRESET} autoencoder at {DEFAULT_AE_RUN} (run `python experiments/in1k_ae.py` "
            f"first): using a freshly built random-init build_autoencoder('{DEFAULT_AE_PRESET}'), saved to {path}")
    if is_main and not path.is_file():
        from models import build_autoencoder

        from experiments.common.data import EmbeddedPhotos

        with torch.random.fork_rng():
            torch.manual_seed(seed)
            ae = build_autoencoder(DEFAULT_AE_PRESET).eval()
        held_out = torch.stack([EmbeddedPhotos("eval", ae.image_size, length=32, seed=seed)[i]["image"]
                                for i in range(32)])
        with torch.no_grad():  # as in1k_ae.py measures it: mean norm of what the decoder reads
            norm = ae.encode(held_out).norm(dim=-1).mean().item()
        save_autoencoder(ae, path, DEFAULT_AE_PRESET, latent_norm=norm)
    from experiments.common import distributed as D

    D.barrier()
    return path.resolve(), note
