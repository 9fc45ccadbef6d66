"""Exponential moving average of a module's trainable parameters.

``ema ← d·ema + (1 − d)·θ`` after each optimizer step, with ``d = min(decay, (1 + n) / (warmup + n))``
when ``warmup > 0`` (so the average follows the model closely early on), ``n`` the number of updates.
Only parameters that require grad at construction are tracked (frozen backbones are shared, not copied);
the shadow is kept in float32 whatever the parameter dtype.

:func:`load_ema_weights` copies the EMA shadow stored in a training checkpoint over a rebuilt module
(used by every loader of ``in1k_ae.py`` / ``in1k_dit.py`` checkpoints).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


class EMA:
    def __init__(self, module: nn.Module, decay: float, *, warmup: int = 0,
                 names: list[str] | None = None):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay, self.warmup, self.num_updates = decay, warmup, 0
        params = dict(module.named_parameters())
        self.names = names if names is not None else [n for n, p in params.items() if p.requires_grad]
        self.shadow = {n: params[n].detach().float().clone() for n in self.names}

    def current_decay(self) -> float:
        if self.warmup <= 0:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (self.warmup + n))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        d = self.current_decay()
        params = dict(module.named_parameters())
        for n in self.names:
            self.shadow[n].lerp_(params[n].detach().float(), 1.0 - d)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        params = dict(module.named_parameters())
        for n in self.names:
            params[n].copy_(self.shadow[n].to(params[n].dtype))

    @contextlib.contextmanager
    def applied(self, module: nn.Module) -> Iterator[nn.Module]:
        """Temporarily load the EMA weights into ``module`` (restored on exit)."""
        params = dict(module.named_parameters())
        backup = {n: params[n].detach().clone() for n in self.names}
        self.copy_to(module)
        try:
            yield module
        finally:
            with torch.no_grad():
                for n in self.names:
                    params[n].copy_(backup[n])

    def state_dict(self) -> dict:
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates,
                "shadow": {n: t.clone() for n, t in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.warmup = state["decay"], state["warmup"]
        self.num_updates = state["num_updates"]
        missing = set(self.names) - set(state["shadow"])
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:3]}...")
        for n in self.names:
            self.shadow[n].copy_(state["shadow"][n])


@torch.no_grad()
def load_ema_weights(module: nn.Module, state: dict) -> bool:
    """Copy the EMA shadow of checkpoint ``state`` (``state["ema"]["shadow"]``) over ``module``'s parameters.

    Returns whether the checkpoint had EMA weights (nothing is changed when it has none).
    """
    ema_state = state.get("ema")
    if not ema_state:
        return False
    params = dict(module.named_parameters())
    for n, t in ema_state.get("shadow", {}).items():
        params[n].copy_(t)
    return True
