"""Toy RFM-vs-FM benchmark: a tiny DiT learns with rfm_loss, the metrics behave, --quick writes its JSON."""
from __future__ import annotations

import json

import pytest
import torch

from experiments.toy_rfm_vs_fm import (METRICS, ToyConfig, ToyDistribution, evaluate, main,
                                       quick_config)
from models.dit import DiTConfig, LightningDiT
from spherical import Hypersphere, geodesic_flow, rfm_loss, sample_time


def test_rfm_training_steps_reduce_loss() -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    sphere = Hypersphere(2.0)
    model = LightningDiT(DiTConfig(in_channels=4, num_tokens=4, hidden_size=16, depth=1,
                                   num_heads=2, num_classes=2, class_dropout_prob=0.0))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    # a fixed tiny problem: two clusters of data, fixed noise and times
    means = sphere.random_uniform(2, 4, 4, generator=g)
    y = torch.arange(32) % 2
    x0 = sphere.projx(means[y] + 0.1 * torch.randn(32, 4, 4, generator=g))
    x1 = sphere.random_uniform(32, 4, 4, generator=g)
    t = sample_time(32, generator=g)
    xt, ut = geodesic_flow(x0, x1, t[:, None, None], sphere=sphere)
    losses = []
    for _ in range(40):
        loss = rfm_loss(model(xt, t, y), xt, ut, lambda_rad=0.1)
        opt.zero_grad()
        loss.total.backward()
        opt.step()
        losses.append(loss.total.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.7 * losses[0], losses


def test_metrics_separate_truth_from_noise() -> None:
    cfg = ToyConfig(tokens=4, channels=6, components=3, n_eval=96)
    dist = ToyDistribution(cfg)
    ref, _ = dist.sample(96, torch.Generator().manual_seed(1))
    same, _ = dist.sample(96, torch.Generator().manual_seed(2))
    noise = dist.sphere.random_uniform(96, 4, 6, generator=torch.Generator().manual_seed(3))
    good, bad = evaluate(same, ref, dist, cfg), evaluate(noise, ref, dist, cfg)
    assert abs(good["mmd"]) < 0.2 * bad["mmd"]
    assert good["mode_angle"] < 0.5 * bad["mode_angle"]
    assert good["coherence"] > 0.8 > 0.3 > bad["coherence"]
    torch.testing.assert_close(dist.sphere.projx(same), same)  # samples lie on the sphere


def test_quick_run_writes_json_and_png(tmp_path) -> None:
    result = main(["--quick", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "toy_rfm_vs_fm.json").read_text())
    assert (tmp_path / "toy_rfm_vs_fm.png").stat().st_size > 0
    table = (tmp_path / "toy_rfm_vs_fm.md").read_text()
    assert table.startswith("| method |") and "rfm_lam0.1" in table and "true vs true" in table
    assert set(data) >= {"config", "reference", "methods", "seconds_total"}
    assert set(data["methods"]) == {"fm", "rfm_lam0", "rfm_lam0.1", "rfm_lam1"}
    cfg = quick_config()
    for name, rows in data["methods"].items():
        for metric in METRICS + ("final_loss", "seconds"):
            assert set(rows[metric]) == {"mean", "std", "values"}
            assert len(rows[metric]["values"]) == cfg.seeds
        assert ("off_sphere" in rows) == (name == "fm")
        assert all(v >= 0 and v == v for v in rows["final_loss"]["values"])
    # Euclidean FM leaves the sphere before its final projection (what the column measures)
    assert all(v > 0 for v in data["methods"]["fm"]["off_sphere"]["values"])
    assert set(data["reference"]) == set(METRICS)
    assert data["config"]["R"] == pytest.approx(cfg.R)
    assert result["methods"].keys() == data["methods"].keys()
