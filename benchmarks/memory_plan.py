"""Memory plan of the paper-scale training steps: what fits an 80 GB / 141 GB GPU, and with which flags.

    python benchmarks/memory_plan.py            # ~1 min on CPU, no GPU, no weights; writes
                                                # benchmarks/results/memory_plan.{json,md}

Every paper-scale configuration is built at full size on CPU (random weights: the accounting needs shapes,
not values) and its training forward is run under ``torch._subclasses.FakeTensorMode`` (shapes and
dtypes propagate through the same ops and the same autograd graph, no arithmetic, no memory), with
``torch.autograd.graph.saved_tensors_hooks`` recording every tensor autograd keeps for backward: its storage
is counted once (views deduplicated), parameters and buffers excluded. ``--check-real`` repeats one small
configuration with real tensors and asserts the same byte count. Configurations:

* AE stage 1 (``Stage1Net`` + cos + L1 + LPIPS(VGG16)) and stage 2 (decoder on smoothed raw tokens, L1 +
  LPIPS + hinge G loss through the DINO ViT-S/8 discriminator; then the D pass), preset ``paper``, 256 px,
  fp32 and bf16 autocast, with and without activation checkpointing (``--grad-checkpointing``);
* DiT LightningDiT-XL/1 on [256 × 1024] latents, RFM loss, fp32 (= tf32: TF32 changes no storage), bf16
  autocast, with and without per-block checkpointing.

Activations are measured at micro-batches 1, 2 and 4: the per-sample slope and the batch-independent part
(e.g. bf16 weight copies autocast keeps for backward) are fitted and linearity is checked (asserted). Fixed
state per process: fp32 weights, gradients, AdamW (2 moments), fp32 EMA of the trained weights, DDP's
gradient buckets (a second copy of the gradients), plus a stated runtime allowance (CUDA context, cuBLAS /
cuDNN workspaces, NCCL buffers). Peak = fixed + runtime + activations(m) + one block's activations (the
backward of a block, or its recomputation under checkpointing); a plan must fit 90 % of the GPU's memory.

What CPU accounting can get wrong on CUDA (stated in the JSON): (1) attention: CPU SDPA keeps the
attention probabilities [B, H, N, N] for backward where CUDA's flash / memory-efficient kernels keep only
the output and a [B, H, N] log-sum-exp (reported as ``attn_probs_bytes``; the plan subtracts them for CUDA);
(2) autocast: the CPU and CUDA lower-precision op lists differ slightly (both run linear/matmul/conv in
bf16; CUDA keeps a few more reductions in fp32), so bf16 figures are ±a few %; (3) allocator
fragmentation and cuDNN workspaces are not modelled (the 10 % headroom and the runtime allowance); (4)
``torch.compile`` changes what is saved (usually less). ``benchmarks/bench_gpu.py plan`` measures the real
peak at the planned micro-batches on a GPU.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Callable

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from experiments.common.memory_plan import (GIB, HEADROOM, RUNTIME_GIB, SavedBytes,  # noqa: E402
                                            autocast_cpu as _autocast, maybe_fake, peak_bytes as _peak)

RESULTS = Path(__file__).resolve().parent / "results"
#: usable memory per GPU (nvidia-smi totals): H100 SXM 80 GB = 81559 MiB, H200 141 GB = 143771 MiB.
GPUS = {"80GB": 81559 * 2**20, "141GB": 143771 * 2**20}
#: paper global batches (PAPER.md): AE 512 (both stages), DiT 1024; 8 GPUs per node.
GLOBAL_BATCH = {"ae_s1": 512, "ae_s2": 512, "dit": 1024}
NODES = (1, 2, 4, 8)


# ----------------------------------------------------------------------------------------------------------
# The configurations: build once, then ``step(batch, precision) -> (saved bytes, attention bytes)``.
# ----------------------------------------------------------------------------------------------------------
def _count(params) -> int:
    return sum(p.numel() for p in params)


def dit_config(depth: int | None = None):
    """LightningDiT-XL/1 (or ``depth`` blocks of it) and its RFM training forward."""
    from models.dit import LightningDiT_XL_1
    from spherical import Hypersphere, geodesic_flow, rfm_loss

    model = LightningDiT_XL_1(**({"depth": depth} if depth else {}))
    n_all = _count(model.parameters())
    fixed = {"weights": 4 * n_all, "grads": 4 * n_all, "adamw": 8 * n_all, "ema": 4 * n_all, "ddp_buckets": 4 * n_all}

    def step(b: int, precision: str, ckpt: bool, fake: bool = True) -> tuple[int, int]:
        model.set_grad_checkpointing(ckpt)
        S = Hypersphere(32.0)
        with maybe_fake([model], fake), SavedBytes([model], (256,)) as rec:
            x0, x1 = S.projx(torch.randn(b, 256, 1024)), S.projx(torch.randn(b, 256, 1024))
            t = torch.rand(b)
            flow = geodesic_flow(x0, x1, t.view(b, 1, 1), sphere=S)
            with _autocast(precision):
                v = model(flow.xt, t, torch.zeros(b, dtype=torch.long))
            rfm_loss(v.float(), flow.xt, flow.ut)
        return rec.total, rec.attn_total

    return step, fixed, {"params": n_all, "trainable": n_all, "depth": model.config.depth}


def ae_config(stage: int):
    """The paper autoencoder (random DINOv3-L), LPIPS(VGG16) and, for stage 2, the discriminator."""
    from experiments.common.memory_plan import ae_step_saved, random_lpips
    from models import build_autoencoder
    from models.discriminator import build_discriminator

    ae = build_autoencoder("paper", random_init=True)
    train = ae.set_stage(stage)
    lpips = random_lpips()
    disc = build_discriminator("paper", random_init=True) if stage == 2 else None
    mods = [ae, lpips] + ([disc] if disc is not None else [])
    n_all = sum(_count(m.parameters()) for m in mods)
    n_t = _count(train)
    n_d = _count(p for p in disc.parameters() if p.requires_grad) if disc is not None else 0
    # EMA of the AE's trained weights only (not of the discriminator); the discriminator has its own AdamW
    fixed = {"weights": 4 * n_all, "grads": 4 * (n_t + n_d), "adamw": 8 * (n_t + n_d), "ema": 4 * n_t,
             "ddp_buckets": 4 * (n_t + n_d)}

    def step(b: int, precision: str, ckpt: bool, fake: bool = True) -> tuple[int, int]:
        ae.set_grad_checkpointing(ckpt)
        return ae_step_saved(ae, stage, lpips, disc, b, precision, fake=fake)

    return step, fixed, {"params": n_all, "trainable": n_t, "disc_trainable": n_d}


# ----------------------------------------------------------------------------------------------------------
# Fit, plan, write.
# ----------------------------------------------------------------------------------------------------------
def fit_linear(step: Callable, precision: str, ckpt: bool, batches=(1, 2, 4)) -> dict:
    """Activations a + m·b at micro-batch m from measurements at ``batches``; asserts linearity (0.5 %)."""
    got = {b: step(b, precision, ckpt) for b in batches}
    b1, b2 = batches[0], batches[-1]
    slope = (got[b2][0] - got[b1][0]) / (b2 - b1)
    icpt = got[b1][0] - slope * b1
    a_slope = (got[b2][1] - got[b1][1]) / (b2 - b1)
    for b in batches:
        pred = icpt + slope * b
        assert abs(pred - got[b][0]) <= 5e-3 * got[b][0], f"not linear in the batch: {got}"
    return {"per_sample": slope, "fixed_part": icpt, "attn_probs_per_sample": a_slope,
            "measured": {str(b): got[b][0] for b in batches}}


def peak_bytes(fixed: dict, act: dict, block: float, m: int, *, cuda: bool = True, world: int = 8) -> float:
    """Planned peak of one process at micro-batch ``m`` (``block``: one block's activations per sample)."""
    per = act["per_sample"] - (act["attn_probs_per_sample"] if cuda else 0.0)
    state = sum(v for k, v in fixed.items() if k != "ddp_buckets" or world > 1)
    return _peak(state, per, act["fixed_part"], block, m)


def plan(fixed: dict, acts: dict, blocks: dict, global_batch: int, capacity: int) -> list[dict]:
    """For each node count: largest micro-batch without checkpointing, else with; and --grad-accum."""
    rows = []
    for nodes in NODES:
        world = 8 * nodes
        per_rank = global_batch // world
        row = {"nodes": nodes, "gpus": world, "per_gpu_batch": per_rank}
        for ckpt in (False, True):
            act, blk = acts[ckpt], blocks[ckpt]
            fits = [m for m in range(per_rank, 0, -1) if per_rank % m == 0
                    and peak_bytes(fixed, act, blk, m, world=world) <= HEADROOM * capacity]
            key = "ckpt" if ckpt else "plain"
            if fits:
                m = fits[0]
                row[key] = {"micro_batch": m, "grad_accum": per_rank // m,
                            "peak_gib": peak_bytes(fixed, act, blk, m, world=world) / GIB}
            else:
                row[key] = None
        # recommendation: no checkpointing when a micro-batch >= 8 (or the whole per-GPU batch) fits
        plain = row["plain"]
        use_plain = plain is not None and (plain["micro_batch"] >= min(8, per_rank))
        row["recommended"] = dict(row["plain"] if use_plain else row["ckpt"], grad_checkpointing=not use_plain)
        rows.append(row)
    return rows


def measure_all(log=print) -> dict:
    out: dict = {"method": __doc__.split("\n\n")[2].strip(), "gpus_bytes": GPUS, "headroom": HEADROOM,
                 "runtime_gib": RUNTIME_GIB, "global_batch": GLOBAL_BATCH, "configs": {}}
    specs = [("ae_s1", lambda: ae_config(1), ("bf16", "fp32")), ("ae_s2", lambda: ae_config(2), ("bf16", "fp32")),
             ("dit", dit_config, ("fp32", "bf16"))]
    for name, build, precisions in specs:
        t0 = time.time()
        step, fixed, info = build()
        entry = {"info": info, "fixed_bytes": fixed, "by_precision": {}}
        for prec in precisions:
            acts = {ck: fit_linear(step, prec, ck) for ck in (False, True)}
            # one block's activations (recomputed, or back-propagated, at a time): saved(plain) − saved(ckpt)
            # spread over the checkpointed segments
            # AE: the 5 decoder stages hold the bulk, so a fifth (conservative); DiT: one of its blocks
            nblk = info.get("depth", 5)
            blocks = {ck: (acts[False]["per_sample"] - acts[True]["per_sample"]) / nblk for ck in (False, True)}
            e = {"activations": acts, "block_per_sample": blocks[False],
                 "plans": {g: plan(fixed, acts, blocks, GLOBAL_BATCH[name], cap) for g, cap in GPUS.items()}}
            entry["by_precision"][prec] = e
            log(f"memory_plan: {name} {prec}: {acts[False]['per_sample'] / GIB:.3f} GiB/sample "
                f"({acts[True]['per_sample'] / GIB:.3f} with checkpointing; attention probs "
                f"{acts[False]['attn_probs_per_sample'] / GIB:.3f}), fixed state "
                f"{sum(fixed.values()) / GIB:.1f} GiB")
        if name == "dit":
            entry["by_precision"]["tf32"] = dict(entry["by_precision"]["fp32"], note="TF32 changes no storage: "
                                                 "the fp32 figures")
        entry["seconds"] = round(time.time() - t0, 1)
        out["configs"][name] = entry
    return out


def markdown(res: dict) -> str:
    lines = ["| step | precision | GiB/sample (plain / ckpt) | fixed GiB | GPU | nodes x 8 GPUs | per-GPU batch "
             "| flags (micro-batch) | planned peak GiB |", "|---|---|---|---|---|---|---|---|---|"]
    names = {"ae_s1": "AE stage 1", "ae_s2": "AE stage 2", "dit": "DiT-XL/1"}
    for name, entry in res["configs"].items():
        for prec, e in entry["by_precision"].items():
            if "plans" not in e:
                continue
            a = e["activations"]
            for gpu, rows in e["plans"].items():
                for r in rows:
                    rec = r["recommended"]
                    flags = f"--grad-accum {rec['grad_accum']}" + (" --grad-checkpointing" if rec["grad_checkpointing"]
                                                                    else "")
                    lines.append(f"| {names[name]} | {prec}{' (=tf32)' if name == 'dit' and prec == 'fp32' else ''} | "
                                 f"{a[False]['per_sample'] / GIB:.2f} / {a[True]['per_sample'] / GIB:.2f} | "
                                 f"{sum(entry['fixed_bytes'].values()) / GIB:.1f} | {gpu} | {r['nodes']} | "
                                 f"{r['per_gpu_batch']} | {flags} ({rec['micro_batch']}) | {rec['peak_gib']:.1f} |")
    return "\n".join(lines) + "\n"


def check_real() -> None:
    """Fake-tensor accounting equals real-tensor accounting (a 2-block DiT, batch 2, fp32 and bf16)."""
    step, _, _ = dit_config(depth=2)
    for prec in ("fp32", "bf16"):
        for ck in (False, True):
            assert step(2, prec, ck, fake=True) == step(2, prec, ck, fake=False), (prec, ck)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=RESULTS, help="folder of memory_plan.json / .md")
    p.add_argument("--check-real", action="store_true", help="also compare fake and real accounting (2-block DiT)")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    if a.check_real:
        check_real()
        print("memory_plan: fake-tensor accounting = real accounting (2-block DiT, fp32/bf16, ckpt on/off)")
    res = measure_all()
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "memory_plan.json").write_text(json.dumps(res, indent=1) + "\n")
    (a.out / "memory_plan.md").write_text(markdown(res))
    print(f"memory_plan: wrote {a.out / 'memory_plan.json'} and memory_plan.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
