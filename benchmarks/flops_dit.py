"""FLOPs of one LightningDiT-XL/1 training step and what they mean for FP32 vs TF32 vs BF16 on a GPU.

    python benchmarks/flops_dit.py     # seconds on CPU (fake tensors); writes benchmarks/results/flops_dit.json

``torch.utils.flop_counter.FlopCounterMode`` counts the matmul / attention FLOPs of the forward and
backward of the RFM step (``geodesic_flow`` + DiT + ``rfm_loss``) at batch 1 on fake tensors (no
arithmetic). The counter has no formula for CPU's fused attention kernel, so attention is added by hand:
per block 4·N²·D forward (QKᵀ and AV) and twice that backward. Elementwise work is not counted (it is
memory-bound, a few % of the time at this size).
Peak dense throughput, public spec sheets (NVIDIA H100 SXM5 and H200 SXM datasheets, dense, no sparsity):
FP32 (CUDA cores) 67 TFLOP/s, TF32 tensor cores 495, BF16 tensor cores 990 (H200: the same compute).
The bound ``peak / FLOPs per image`` is a ceiling; real steps reach ~40-60 % of it (MFU).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from experiments.common.memory_plan import maybe_fake  # noqa: E402

PEAK_TFLOPS = {"fp32": 67.0, "tf32": 495.0, "bf16": 990.0}  # H100 SXM / H200 SXM dense


def step_flops(depth: int | None = None, batch: int = 1) -> int:
    from models.dit import LightningDiT_XL_1
    from spherical import Hypersphere, geodesic_flow, rfm_loss

    model = LightningDiT_XL_1(**({"depth": depth} if depth else {}))
    S = Hypersphere(32.0)
    with maybe_fake([model]), FlopCounterMode(display=False) as fc:
        x0, x1, t = S.projx(torch.randn(batch, 256, 1024)), S.projx(torch.randn(batch, 256, 1024)), torch.rand(batch)
        flow = geodesic_flow(x0, x1, t.view(batch, 1, 1), sphere=S)
        v = model(flow.xt, t, torch.zeros(batch, dtype=torch.long))
        rfm_loss(v, flow.xt, flow.ut).total.backward()
    cfg = model.config
    attention = 3 * 4 * cfg.num_tokens**2 * cfg.hidden_size * cfg.depth  # forward + backward, per sample
    return fc.get_total_flops() // batch + attention


def main() -> int:
    f = step_flops()
    per_img_tf = f / 1e12
    res = {"model": "LightningDiT-XL/1", "tokens": 256, "channels": 1024, "flops_per_training_image": f,
           "peak_tflops_h100_sxm": PEAK_TFLOPS,
           "ceiling_img_per_s_per_gpu": {k: v / per_img_tf for k, v in PEAK_TFLOPS.items()},
           "ceiling_hours_80_epochs_8_gpus": {k: 80 * 1281167 / (8 * v / per_img_tf) / 3600
                                              for k, v in PEAK_TFLOPS.items()},
           "method": __doc__.split("\n\n")[2].strip()}
    out = Path(__file__).resolve().parent / "results" / "flops_dit.json"
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"flops_dit: {per_img_tf:.3f} TFLOP per training image; ceilings per GPU: " + ", ".join(
        f"{k} {v:.0f} img/s" for k, v in res["ceiling_img_per_s_per_gpu"].items()) + f" -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
