"""How long the SIGTERM path's checkpoint write takes for a LightningDiT-XL/1-sized training state.

    python benchmarks/sigterm_save.py --dir /work/tmp-ckpt            # writes ~11 GB there, then deletes it

The state has the shapes of ``in1k_dit.py``'s ``last.pt`` for LightningDiT-XL/1 on 256 tokens × 1024
channels: model, EMA shadow and AdamW's two moments (4 × 677 M fp32 values ≈ 10.8 GB; the DiT is built on
the ``meta`` device, nothing is trained). So that the benchmark does not need 11 GB of RAM, the tensors are
read-only views of a sparse file (``np.memmap``): serialising them reads zero pages, and what is timed is
``torch.save`` + ``fsync`` + ``os.replace`` of :func:`experiments.common.checkpoint.save_atomic` onto
``--dir`` — what a run pays on that disk. Variants: the full state, and model + EMA only (what sampling and a
non-exact restart need). Writes ``benchmarks/results/sigterm_save.json``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from experiments.common.checkpoint import save_atomic  # noqa: E402


def xl_shapes() -> dict[str, tuple[int, ...]]:
    """Parameter name → shape of LightningDiT-XL/1 for 256 tokens × 1024 channels, 1000 classes."""
    from models.dit import LightningDiT_models

    with torch.device("meta"):
        m = LightningDiT_models["LightningDiT-XL/1"](in_channels=1024, num_tokens=256, num_classes=1000)
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


def fake_state(shapes: dict[str, tuple[int, ...]], backing: Path, parts: tuple[str, ...]) -> dict:
    """``{part: {name: fp32 tensor}}`` for each part, every tensor its own storage in the sparse file."""
    per = sum(math.prod(s) for s in shapes.values())
    total = per * len(parts)
    with open(backing, "wb") as f:
        f.truncate(total * 4)  # sparse: no disk blocks, reads give zeros
    mm = np.memmap(backing, dtype=np.float32, mode="r", shape=(total,))
    state, off = {}, 0
    for part in parts:
        state[part] = {}
        for name, shape in shapes.items():
            n = math.prod(shape)
            state[part][name] = torch.from_numpy(mm[off:off + n]).view(shape)
            off += n
    return state


def time_save(state: dict, dest: Path, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        save_atomic(state, dest)
        out.append(time.perf_counter() - t)
        dest.unlink()
    return out


def main() -> int:
    import warnings

    warnings.filterwarnings("ignore", message=".*non-writable.*")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", required=True, help="folder on the disk to measure (needs ~11 GB free)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", default=str(Path(__file__).parent / "results" / "sigterm_save.json"))
    args = p.parse_args()
    d = Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    shapes = xl_shapes()
    res = {"model": "LightningDiT-XL/1 (256 tokens x 1024 ch, 1000 classes)",
           "params": sum(math.prod(s) for s in shapes.values()), "dir": str(d), "variants": {}}
    for label, parts in (("full (model, ema, exp_avg, exp_avg_sq)", ("model", "ema", "exp_avg", "exp_avg_sq")),
                         ("model + ema", ("model", "ema"))):
        backing = d / "backing.bin"
        state = fake_state(shapes, backing, parts)
        gb = sum(t.numel() * 4 for v in state.values() for t in v.values()) / 1e9
        secs = time_save(state, d / "last.pt", args.repeats)
        del state
        backing.unlink()
        res["variants"][label] = {"GB": round(gb, 3), "seconds": [round(s, 2) for s in secs],
                                  "GB_per_s": round(gb / min(secs), 3)}
        print(f"{label}: {gb:.2f} GB in {', '.join(f'{s:.1f}' for s in secs)} s "
              f"({gb / min(secs):.2f} GB/s best)", flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
