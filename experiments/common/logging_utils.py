"""Run logging: ``metrics.jsonl`` (one JSON object per event), tqdm progress, optional TensorBoard.

Every record has ``event`` (``"train"``, ``"eval"``, ``"nonfinite"``, ``"checkpoint"``, ``"start"``, ...),
``step``, ``time`` (Unix seconds) and the metric names as keys. Only the main process writes.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/Inf; keep them visible as strings
    if isinstance(v, Path):
        return str(v)
    return v


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All records of a ``metrics.jsonl`` file (a torn last line from a kill is ignored)."""
    out = []
    p = Path(path)
    if not p.is_file():
        return out
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def truncate_after(path: str | os.PathLike, step: int) -> None:
    """Drop records with ``step > step`` (resume from an earlier checkpoint: no duplicated steps)."""
    p = Path(path)
    if not p.is_file():
        return
    keep = [r for r in read_jsonl(p) if int(r.get("step", 0)) <= step]
    tmp = p.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
    os.replace(tmp, p)


class MetricsLogger:
    """Appends JSON lines to ``out_dir/metrics.jsonl``; mirrors scalars to TensorBoard if asked.

    Args:
        out_dir: run folder.
        enabled: False on non-main processes (then every call is a no-op).
        tensorboard: also write TensorBoard scalars to ``out_dir/tb`` (needs the ``tensorboard`` package;
            without it a one-line warning is printed and the run continues).
    """

    def __init__(self, out_dir: str | os.PathLike, *, enabled: bool = True, tensorboard: bool = False):
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(out_dir) / "tb"))
            except Exception as e:  # noqa: BLE001
                print(f"warning: TensorBoard unavailable ({type(e).__name__}: {e}); "
                      f"logging to {self.path} only", file=sys.stderr)

    def log(self, event: str, step: int, **metrics: Any) -> dict:
        rec = {"event": event, "step": int(step), "time": round(time.time(), 3)}
        rec.update({k: _jsonable(v) for k, v in metrics.items()})
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            if self.tb is not None:
                for k, v in rec.items():
                    if k not in ("step", "time", "event") and isinstance(v, (int, float)):
                        self.tb.add_scalar(f"{event}/{k}", v, step)
        return rec

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class Progress:
    """tqdm bar over optimizer steps with loss, img/s and ETA; silent when disabled."""

    def __init__(self, total: int, initial: int = 0, *, enabled: bool = True, desc: str = "train"):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True,
                            mininterval=1.0, smoothing=0.1, file=sys.stderr)

    def update(self, n: int = 1, **postfix: Any) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v)
                                      for k, v in postfix.items()}, refresh=False)

    def write(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Throughput:
    """Images per second over a sliding window of step timings."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.n = 0

    def add(self, images: int) -> None:
        self.n += images

    def rate(self, reset: bool = True) -> float:
        now = time.perf_counter()
        r = self.n / max(now - self.t0, 1e-9)
        if reset:
            self.t0, self.n = now, 0
        return r


def format_metrics(rec: dict, keys: Iterable[str]) -> str:
    return " ".join(f"{k}={rec[k]:.4g}" if isinstance(rec.get(k), float) else f"{k}={rec.get(k)}"
                    for k in keys if k in rec)
