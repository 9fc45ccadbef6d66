"""benchmarks/bench_gpu.py: the batch search, the timing arithmetic, and a tiny CPU run of both steps."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import bench_gpu  # noqa: E402


def test_largest_fitting_batch_falls_back_on_out_of_memory():
    tried, logs = [], []

    def make_step(b):
        tried.append(b)
        if b > 24:
            raise torch.OutOfMemoryError(f"batch {b}")
        return lambda: torch.tensor(float(b))

    b, step = bench_gpu.largest_fitting_batch(make_step, [8, 64, 32, 16], torch.device("cpu"), log=logs.append)
    assert b == 16 and float(step()) == 16.0
    assert tried == [64, 32, 16] and len(logs) == 2
    with pytest.raises(RuntimeError, match="not even 32"):
        bench_gpu.largest_fitting_batch(make_step, [64, 32], torch.device("cpu"), log=logs.append)


def test_measure_counts_only_the_timed_steps():
    calls = []

    def step():
        calls.append(1)
        return torch.tensor(float(len(calls)))

    res = bench_gpu.measure(step, batch=4, steps=5, warmup=2, dev=torch.device("cpu"))
    assert len(calls) == 5 and res["timed_steps"] == 3
    assert res["img_per_s"] == pytest.approx(4 * 3 / res["seconds"])
    assert (res["loss_first"], res["loss_last"], res["losses_finite"]) == (1.0, 5.0, True)
    with pytest.raises(ValueError, match="warmup < steps"):
        bench_gpu.measure(step, batch=4, steps=2, warmup=2, dev=torch.device("cpu"))


def test_tiny_cpu_run_of_both_training_steps(tmp_path):
    rc = bench_gpu.main(["all", "--tiny", "--device", "cpu", "--steps", "3", "--warmup", "1", "--lpips", "off",
                         "--batch-sizes", "4", "--out", str(tmp_path), "--dit-precisions", "fp32", "tf32"])
    assert rc == 0
    for kind in ("ae", "ae2", "dit"):
        res = json.loads((tmp_path / f"gpu_{kind}_tiny.json").read_text())
        assert res["kind"] == kind and res["batch"] == 4 and res["precision"] == "fp32"
        assert res["losses_finite"] and res["img_per_s"] > 0 and res["peak_mem_gib"] is None
        assert res["timed_steps"] == 2 and res["img_per_s"] == pytest.approx(4 * 2 / res["seconds"])
    # the AE step trains exactly stage 1's parameters (stem + decoder); the DiT step the whole T/1 model
    from experiments.common.dit_io import dit_registry
    from models import build_autoencoder

    ae, dit = (json.loads((tmp_path / f"gpu_{k}_tiny.json").read_text()) for k in ("ae", "dit"))
    # the DiT is measured once per precision; the top level is the first (fp32, the training default)
    assert list(dit["by_precision"]) == ["fp32", "tf32"] and dit["by_precision"]["fp32"]["seconds"] == dit["seconds"]
    assert dit["by_precision"]["tf32"]["precision"] == "tf32" and dit["by_precision"]["tf32"]["losses_finite"]
    tiny = build_autoencoder("tiny", image_size=64)
    stem_and_decoder = [*tiny.stem.parameters(), *tiny.decoder.parameters()]
    assert ae["trainable_params_m"] == pytest.approx(sum(p.numel() for p in stem_and_decoder) / 1e6)
    ae2 = json.loads((tmp_path / "gpu_ae2_tiny.json").read_text())  # stage 2 trains the decoder (+ D heads)
    assert ae2["trainable_params_m"] == pytest.approx(sum(p.numel() for p in tiny.decoder.parameters()) / 1e6)
    assert ae2["disc_trainable_params_m"] > 0
    t1 = dit_registry()["LightningDiT-T/1"](in_channels=32, num_tokens=16, num_classes=1000)
    assert "[16 x 32]" in dit["what"] and dit["params_m"] == pytest.approx(sum(p.numel() for p in t1.parameters()) / 1e6)


def test_sphere_accuracy_check_runs_on_cpu_within_the_contract(tmp_path):
    """The GPU check's sphere part, on CPU: TF32/medium on inside, restored after, errors within 1e-5."""
    assert bench_gpu.main(["sphere", "--device", "cpu", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "gpu_sphere_cpu.json").read_text())
    assert res["within_contract"] and 0 < res["dist_max_rel_err"] <= 1e-5
    assert torch.get_float32_matmul_precision() == "highest" and not torch.backends.cuda.matmul.allow_tf32


def test_planned_batches_read_the_memory_plan(tmp_path):
    plan = {"configs": {"dit": {"by_precision": {"fp32": {"plans": {"80GB": [
        {"recommended": {"micro_batch": 64, "grad_accum": 2}}]}}}}}}
    path = tmp_path / "memory_plan.json"
    path.write_text(json.dumps(plan))
    assert bench_gpu.planned_batches("dit", "80GB", "tf32", path) == [64, 32]
