"""experiments/eval_gen.py: gFID / IS through torchmetrics, with a tiny stand-in feature extractor
(no Inception weights can exist offline) and the clear missing-weights error."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from experiments import eval_gen


class StandIn(nn.Module):
    """uint8 [B,3,H,W] -> (pool [B,16], logits [B,10]); fixed random weights."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.head = nn.Linear(16, 10)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x):
        h = torch.relu(self.conv(x.float() / 127.5 - 1))
        pool = torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1)
        return pool, self.head(pool)


def _npz(path: Path, arr: np.ndarray) -> Path:
    np.savez(path, arr_0=arr)
    return path


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(48, 16, 16, 3), dtype=np.uint8)


def test_fd_of_a_set_to_itself_is_zero_and_batch_size_free(tmp_path, images):
    a = _npz(tmp_path / "a.npz", images)
    same = eval_gen.evaluate(a, a, StandIn(), batch_size=48)
    assert abs(same["fid"]) < 1e-6 and same["n_samples"] == same["n_reference"] == 48
    other = _npz(tmp_path / "b.npz", (images // 2).astype(np.uint8))  # darker images
    d1 = eval_gen.evaluate(other, a, StandIn(), batch_size=48)
    d2 = eval_gen.evaluate(other, a, StandIn(), batch_size=7)
    assert d1["fid"] > 0.1
    assert d1["fid"] == pytest.approx(d2["fid"], rel=1e-5)  # float64 sums: batch size does not matter
    assert d1["is"] == pytest.approx(d2["is"], rel=1e-5)


def test_inception_score_is_one_for_identical_images(tmp_path, images):
    same_img = _npz(tmp_path / "s.npz", np.repeat(images[:1], 20, axis=0))
    res = eval_gen.evaluate(same_img, same_img, StandIn(), splits=2)
    assert res["is"] == pytest.approx(1.0, abs=1e-5)


def test_folder_reference_equals_npz(tmp_path, images):
    from PIL import Image

    folder = tmp_path / "ref" / "cls"
    folder.mkdir(parents=True)
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i:03d}.png")
    a = _npz(tmp_path / "a.npz", images)
    res = eval_gen.evaluate(a, tmp_path / "ref", StandIn(), batch_size=10)
    assert abs(res["fid"]) < 1e-6 and res["n_reference"] == 48


def test_cli_writes_json_with_stand_in(tmp_path, images):
    a = _npz(tmp_path / "a.npz", images)
    args = eval_gen.build_parser().parse_args(["--samples", str(a), "--ref", str(a), "--splits", "4",
                                               "--out", str(tmp_path / "r.json")])
    returned = eval_gen.run(args, extractor=StandIn())
    res = json.loads((tmp_path / "r.json").read_text())
    assert set(res) >= {"fid", "is", "is_std", "n_samples", "n_reference"} and res["splits"] == 4
    # the file holds what evaluate() gives for the same options, plus the two paths
    direct = eval_gen.evaluate(a, a, StandIn(), splits=4)
    assert res == json.loads(json.dumps(returned))
    for k in ("fid", "is", "is_std", "n_samples", "n_reference"):
        assert res[k] == pytest.approx(direct[k], rel=1e-6, abs=1e-9), k
    assert abs(res["fid"]) < 1e-6 and res["n_samples"] == len(images)
    assert res["samples"] == res["reference"] == str(a)


def test_missing_inception_weights_is_one_clear_line(tmp_path, images, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    a = _npz(tmp_path / "a.npz", images)
    rc = eval_gen.main(["--samples", str(a), "--ref", str(a), "--out", str(tmp_path / "r.json")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "--inception-weights" in err
    assert not (tmp_path / "r.json").exists()
    rc = eval_gen.main(["--samples", str(a), "--ref", str(a), "--inception-weights", str(tmp_path / "no.pth")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--inception-weights" in err and "no.pth" in err


def test_bad_npz_is_rejected(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(eval_gen.UserError, match="arr_0"):
        list(eval_gen.iter_images(bad, 4))
    np.savez(bad, arr_0=np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(eval_gen.UserError, match="uint8"):
        list(eval_gen.iter_images(bad, 4))
