"""DDP: 2 gloo processes on CPU give the same losses and weights as 1 process (global batch fixed)."""
from __future__ import annotations

import sys

import torch

from experiments.common import distributed as D
from test_exp_support import final_state, records, tiny_argv, train_losses


def _worker(argv: list[str]) -> None:
    from experiments import in1k_ae

    rc = in1k_ae.main(argv + ["--threads", "1"])
    if rc != 0:
        sys.exit(rc)


def test_ddp_two_processes_match_single(tmp_path):
    steps = 3
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    from experiments import in1k_ae

    assert in1k_ae.main(tiny_argv(single, "--threads", "1", steps=steps)) == 0
    D.spawn_local(_worker, 2, (tiny_argv(ddp, steps=steps),), start_method="fork")  # no re-imports
    assert records(ddp, "start")[0]["world_size"] == 2
    a, b = train_losses(single), train_losses(ddp)
    assert sorted(a) == sorted(b) == list(range(1, steps + 1))
    for s in a:
        assert abs(a[s] - b[s]) <= 1e-5 * max(1.0, abs(a[s])), (s, a[s], b[s])
    sa, sb = final_state(single), final_state(ddp)
    assert sb["world_size"] == 2 and len(sb["rng"]) == 2
    changed = 0
    for k, v in sa["model"].items():
        if v.is_floating_point():
            assert torch.allclose(v, sb["model"][k], atol=2e-5, rtol=1e-4), k
    for k, v in sa["ema"]["shadow"].items():
        assert torch.allclose(v, sb["ema"]["shadow"][k], atol=2e-5, rtol=1e-4), k
        changed += 1
    assert changed > 0
