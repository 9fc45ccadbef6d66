"""Helpers shared by tests/test_exp_*.py (no tests here): tiny 32 px runs, in-process."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


def tiny_argv(out: Path, *extra: str, steps: int = 4) -> list[str]:
    return ["--preset", "tiny", "--image-size", "32", "--batch-size", "4", "--max-steps", str(steps), "--eval-images", "8",
            "--log-every", "1", "--eval-every", "0", "--ckpt-every", "100", "--no-progress",
            "--out", str(out), *extra]


def records(out: Path, event: str | None = None) -> list[dict]:
    recs = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if event is None or r["event"] == event]


def train_losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records(out, "train")}


def final_state(out: Path) -> dict:
    return torch.load(Path(out) / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)


def make_image_folder(root: Path, n_good: int = 6, corrupt: bool = True) -> list[Path]:
    """root/{train,val}/{a,b}/ with random PNGs; returns the corrupt train files written."""
    from PIL import Image

    rng = np.random.default_rng(0)
    bad = []
    for split, n in (("train", n_good), ("val", 2)):
        for i in range(n):
            d = root / split / ("a" if i % 2 == 0 else "b")
            d.mkdir(parents=True, exist_ok=True)
            arr = rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
            Image.fromarray(arr).save(d / f"img{i}.png")
    if corrupt:
        (root / "train" / "a" / "garbage.jpg").write_bytes(b"this is not a jpeg" * 10)
        full = (root / "train" / "b" / "img1.png").read_bytes()
        (root / "train" / "b" / "truncated.png").write_bytes(full[: len(full) // 3])
        bad = [root / "train" / "a" / "garbage.jpg", root / "train" / "b" / "truncated.png"]
    return bad


def test_resume_check_reads_options_a_checkpoint_predates_as_their_old_value():
    """A checkpoint written before --stem / --flow existed resumes under the value it was written with
    (conv, riemannian) and refuses any other; a key it does hold is compared as written."""
    import argparse

    import pytest

    from experiments.common.trainer import UserError, check_resume_args

    old = {"preset": "cpu"}  # written before "stem" and "flow" were recorded
    ns = argparse.Namespace(preset="cpu", stem="conv", flow="riemannian")
    check_resume_args(old, ns, ("preset", "stem", "flow"), "last.pt")
    for k, v in (("stem", "patchify"), ("flow", "euclidean"), ("preset", "tiny")):
        with pytest.raises(UserError, match="--" + k):
            check_resume_args(old, argparse.Namespace(**{**vars(ns), k: v}), ("preset", "stem", "flow"), "last.pt")
    with pytest.raises(UserError, match="--stem"):
        check_resume_args({"preset": "cpu", "stem": "patchify"}, ns, ("preset", "stem"), "last.pt")
