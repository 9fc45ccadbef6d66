"""benchmarks/memory_plan.py: fake-tensor accounting equals real accounting, the plan's arithmetic, and every
documented ImageNet command fits 80 GB per GPU by the committed plan."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks import memory_plan as bp  # noqa: E402
from experiments.common import memory_plan as MP  # noqa: E402

PLAN = ROOT / "benchmarks" / "results" / "memory_plan.json"


def _tiny_step():
    from experiments.common.dit_cli import dit_registry

    torch.manual_seed(0)
    model = dit_registry()["LightningDiT-T/1"](in_channels=32, num_tokens=16, num_classes=5)

    def saved(b, precision, ckpt, fake):
        model.set_grad_checkpointing(ckpt)
        with MP.maybe_fake([model], fake), MP.SavedBytes([model]) as rec, MP.autocast_cpu(precision):
            model(torch.randn(b, 16, 32), torch.rand(b), torch.zeros(b, dtype=torch.long)).float().sum()
        return rec.total
    return model, saved


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fake_accounting_equals_real_and_excludes_parameters(precision):
    model, saved = _tiny_step()
    for ckpt in (False, True):
        assert saved(3, precision, ckpt, True) == saved(3, precision, ckpt, False)
    # activations only: a batch of 0 saves (almost) nothing, far less than the weights
    per, fixed = MP.linear_fit(lambda b: saved(b, precision, False, True), (1, 3))
    n_bytes = 4 * sum(p.numel() for p in model.parameters())
    assert per > 0 and abs(fixed) < 0.5 * n_bytes
    assert saved(4, precision, False, True) == pytest.approx(4 * per + fixed, rel=1e-6)


def test_plan_takes_the_largest_micro_batch_that_fits():
    gib = MP.GIB
    fixed = {"weights": 10 * gib, "ddp_buckets": 2 * gib}
    act = {"per_sample": 1.0 * gib, "fixed_part": 0.0, "attn_probs_per_sample": 0.0}
    acts, blocks = {False: act, True: dict(act, per_sample=0.1 * gib)}, {False: 0.0, True: 0.0}
    cap = int((12 + MP.RUNTIME_GIB + 20.5) * gib / MP.HEADROOM)  # room for 20 samples
    rows = bp.plan(fixed, acts, blocks, 512, cap)
    one_node = rows[0]
    assert one_node["per_gpu_batch"] == 64 and one_node["plain"]["micro_batch"] == 16  # 32 > 20, 16 divides 64
    assert one_node["recommended"] == dict(one_node["plain"], grad_checkpointing=False)
    assert one_node["ckpt"]["micro_batch"] == 64
    assert rows[-1]["per_gpu_batch"] == 8 and rows[-1]["recommended"]["grad_accum"] == 1


def _docs_commands():
    text = "\n".join((ROOT / "docs" / f).read_text() for f in ("scale.md", "autoencoder.md", "dit.md"))
    for cmd in re.findall(r"torchrun(?:[^\n]*\\\n)*[^\n]*", text):
        cmd = cmd.replace("\\\n", " ")
        if "--data /imagenet" not in cmd or not ("in1k_ae.py" in cmd or "in1k_dit.py" in cmd):
            continue  # training commands only (caching, sampling and evaluation hold no optimizer state)
        nodes = int(re.search(r"--nnodes[ =](\d+)", cmd).group(1)) if "--nnodes" in cmd else 1
        accum = int(re.search(r"--grad-accum (\d+)", cmd).group(1)) if "--grad-accum" in cmd else 1
        kind = "dit" if "in1k_dit" in cmd else ("ae_s2" if "--stage 2" in cmd else "ae_s1")
        yield kind, nodes, accum, cmd


def test_every_documented_imagenet_command_fits_80gb_by_the_plan():
    res = json.loads(PLAN.read_text())
    found = set()
    for kind, nodes, accum, cmd in _docs_commands():
        entry = res["configs"][kind]
        prec = "fp32" if kind == "dit" else "bf16"  # the presets' defaults (DiT: fp32 weights + TF32)
        e = entry["by_precision"][prec]
        world = 8 * nodes
        micro = res["global_batch"][kind] // (world * accum)
        peak = bp.peak_bytes(entry["fixed_bytes"], e["activations"]["false"], e["block_per_sample"], micro,
                             world=world)
        assert peak <= MP.HEADROOM * res["gpus_bytes"]["80GB"], f"{cmd}: plans {peak / MP.GIB:.1f} GiB"
        found.add(kind)
    assert found == {"ae_s1", "ae_s2", "dit"}
