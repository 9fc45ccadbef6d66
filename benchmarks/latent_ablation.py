"""Paper Table 4 at CPU scale: Riemannian vs Euclidean flow matching on the cpu autoencoder's latents.

    python benchmarks/latent_ablation.py                # needs runs/ae-cpu-embedded-s1 (python experiments/in1k_ae.py)
    python benchmarks/latent_ablation.py --quick        # seconds, a smoke test of the pipeline

Pipeline, with the project's own scripts:
1. ``experiments/cache_latents.py``: ``--num-images`` fixed random crops of the 8 embedded training photos,
   encoded once by the autoencoder (float32 shards of R·z/‖z‖, the DiT's latent).
2. ``experiments/in1k_dit.py --latents ... --preset tiny --flow {riemannian,euclidean} --seed s``: the same
   DiT, optimiser, step budget, time law and label dropout for both flows, over ``--seeds``.
3. ``--n-eval`` latents from each EMA model (50 Euler steps on the α-shifted grid, the flow's own sampler,
   no CFG, labels cycling over the 8 photos), compared with ``--n-eval`` *held-out* latents: fresh random
   crops of the same photos (another crop seed, never trained on), same label cycle.

Metrics (no pretrained network), generated vs held-out, on the raw samples *before* decoding:

* ``fd_dir``:  Fréchet distance between Gaussian fits of the per-token unit directions z/‖z‖ (every token of
  every sample pooled: points in R^C);
* ``mmd_dir``: unbiased MMD² between samples with the kernel mean_σ exp(−D/σ), D = token-averaged angle
  between the two samples' tokens at the same grid position; σ = {½, 1, 2} × the median D of held-out pairs;
* ``fd_norm``: 1-D Fréchet distance of the token norms ‖z‖/R, ``(μ_g − μ_r)² + (s_g − s_r)²``;
* ``mmd_norm``: unbiased MMD² of the token norms ‖z‖/R (Gaussian kernel, bandwidth 0.05), 4096 tokens each;
* ``off_sphere``: fraction of generated tokens with |‖z‖/R − 1| > 1 %; ``norm_dev``: mean |‖z‖/R − 1|.

The "held-out vs held-out" row compares a second held-out set with the first (the floor at this n).
Writes ``benchmarks/results/latent_ablation.{json,md}`` and one decoded sample grid per flow
(``latent_ablation_<flow>.png``: seed 0, tokens rescaled to the mean raw-token norm of the held-out crops).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
FLOWS = ("riemannian", "euclidean")
METRICS = ("fd_dir", "mmd_dir", "fd_norm", "mmd_norm", "off_sphere", "norm_dev")


# ----------------------------------------------------------------------------------------- metrics
def frechet(x: np.ndarray, y: np.ndarray) -> float:
    """Fréchet distance between Gaussian fits of samples ``x [n, d]`` and ``y [m, d]`` (float64):
    ‖μx − μy‖² + tr(Σx + Σy − 2(Σx^½ Σy Σx^½)^½), by :func:`experiments.common.metrics.frechet_distance`."""
    from experiments.common.metrics import frechet_distance

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    mx, my = x.mean(0), y.mean(0)
    sx, sy = np.atleast_2d(np.cov(x, rowvar=False)), np.atleast_2d(np.cov(y, rowvar=False))
    return frechet_distance(*(torch.from_numpy(a) for a in (mx, sx, my, sy)))


def mmd2_unbiased(kxx: Tensor, kyy: Tensor, kxy: Tensor) -> float:
    """Unbiased MMD² from kernel matrices (diagonals of kxx, kyy excluded)."""
    n, m = kxx.shape[0], kyy.shape[0]
    return float((kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
                 + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1)) - 2 * kxy.mean())


def token_angles(a: Tensor, b: Tensor) -> Tensor:
    """D[i, j] = mean over tokens n of the angle between a[i, n] and b[j, n]; a, b unit ``[*, N, C]``."""
    cos = torch.einsum("inc,jnc->ijn", a.double(), b.double()).clamp(-1, 1)
    return torch.arccos(cos).mean(-1)


def latent_metrics(z: Tensor, ref: Tensor, radius: float, sigmas: tuple[float, ...]) -> dict[str, float]:
    """All metrics of generated ``z [n, N, C]`` against held-out ``ref [m, N, C]`` (both raw, any norm)."""
    gn, rn = z.norm(dim=-1) / radius, ref.norm(dim=-1) / radius
    gu, ru = z / z.norm(dim=-1, keepdim=True), ref / ref.norm(dim=-1, keepdim=True)
    c = z.shape[-1]
    dxx, dyy, dxy = token_angles(gu, gu), token_angles(ru, ru), token_angles(gu, ru)
    mmd_dir = float(np.mean([mmd2_unbiased((-dxx / s).exp(), (-dyy / s).exp(), (-dxy / s).exp()) for s in sigmas]))
    g = torch.Generator().manual_seed(0)
    a = gn.flatten()[torch.randperm(gn.numel(), generator=g)[:4096]].double()
    b = rn.flatten()[torch.randperm(rn.numel(), generator=g)[:4096]].double()

    def k(u: Tensor, v: Tensor) -> Tensor:
        return torch.exp(-(u[:, None] - v[None, :]) ** 2 / (2 * 0.05 ** 2))

    return dict(fd_dir=frechet(gu.reshape(-1, c).numpy(), ru.reshape(-1, c).numpy()), mmd_dir=mmd_dir,
                fd_norm=float((gn.mean() - rn.mean()) ** 2 + (gn.std() - rn.std()) ** 2),
                mmd_norm=mmd2_unbiased(k(a, a), k(b, b), k(a, b)),
                off_sphere=float(((gn - 1).abs() > 0.01).float().mean()), norm_dev=float((gn - 1).abs().mean()))


# ----------------------------------------------------------------------------------------- pipeline
def held_out(ae, n: int, seed: int, image_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """``n`` fresh crops of the training photos (crop seed ``seed``): sphere latents, raw tokens, labels."""
    from experiments.common.data import EmbeddedPhotos

    ds = EmbeddedPhotos("train", image_size, length=n, seed=seed)
    imgs = torch.stack([ds[i]["image"] for i in range(n)])
    labels = torch.tensor([ds[i]["label"] for i in range(n)])
    with torch.no_grad():
        raw = torch.cat([ae.student_tokens(imgs[i:i + 64]) for i in range(0, n, 64)]).float()
    return ae.to_sphere(raw), raw, labels


@torch.no_grad()
def generate_latents(run: Path, labels: Tensor, seed: int, steps: int) -> tuple[Tensor, dict]:
    """Raw (undecoded) samples of an in1k_dit.py run with its own flow; noise of sample i from (seed, i)."""
    from experiments.common.dit_io import load_dit
    from experiments.sample import sample_latents, sample_noise

    model, latent, _ = load_dit(run)
    flow = latent.get("flow", "riemannian")
    out = []
    for s in range(0, labels.numel(), 64):
        idx = range(s, min(labels.numel(), s + 64))
        noise = sample_noise(idx, latent["num_tokens"], latent["channels"], latent["radius"], seed, flow=flow)
        out.append(sample_latents(model, labels[s:s + 64], num_tokens=latent["num_tokens"],
                                  channels=latent["channels"], radius=latent["radius"], steps=steps,
                                  alpha=latent["alpha"], noise=noise, flow=flow))
    return torch.cat(out), latent


def _job(flow: str, seed: int, a: argparse.Namespace, lat: Path, labels: Tensor, ref: Tensor, radius: float,
         sigmas: tuple[float, ...]) -> tuple[dict, Tensor]:
    """Train one DiT with ``in1k_dit.py`` (resumes a finished run: nothing to redo), sample, score.
    Returns the metric row and the first 32 raw samples (for the decoded grid)."""
    from experiments import in1k_dit

    torch.set_num_threads(1)
    run = Path(a.work) / f"{flow}-s{seed}"
    argv = ["--latents", str(lat), "--preset", "tiny", "--flow", flow, "--seed", str(seed),
            "--steps", str(a.steps), "--batch-size", str(a.batch_size), "--out", str(run),
            "--no-progress", "--sample-steps", str(a.sample_steps)]
    if in1k_dit.main(argv) != 0:
        raise SystemExit(f"latent_ablation: in1k_dit.py {' '.join(argv)} failed")
    z, _ = generate_latents(run, labels, seed=1000 + seed, steps=a.sample_steps)
    return dict(seed=seed, **latent_metrics(z, ref, radius, sigmas)), z[:32]


def summary(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
            "values": [float(v) for v in arr]}


def markdown(result: dict) -> str:
    """The README table: mean ± std over seeds per flow, and the held-out floor."""
    lines = ["| flow | FD dir ↓ | MMD² dir ↓ | FD norm ↓ | MMD² norm ↓ | off-sphere tokens | mean abs(norm/R − 1) |",
             "|---|---|---|---|---|---|---|"]
    for flow in FLOWS:
        s = result["flows"][flow]
        lines.append(f"| {flow} | " + " | ".join(f"{s[m]['mean']:.4g} ± {s[m]['std']:.2g}" for m in METRICS) + " |")
    f = result["floor"]
    lines.append("| held-out vs held-out | " + " | ".join(f"{f[m]:.4g}" for m in METRICS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ae-ckpt", default="runs/ae-cpu-embedded-s1", help="in1k_ae.py run (the cpu preset)")
    p.add_argument("--work", default="runs/latent-ablation", help="folder of the latent cache and DiT runs")
    p.add_argument("--out", default=str(RESULTS), help="where latent_ablation.{json,md} go")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=600, help="DiT optimizer steps per run (same for both flows)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-images", type=int, default=2048, help="cached training crops")
    p.add_argument("--n-eval", type=int, default=256, help="generated and held-out latents per comparison")
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--jobs", type=int, default=2, help="DiT runs in parallel (one thread each)")
    p.add_argument("--quick", action="store_true", help="tiny budget (pipeline check, meaningless figures)")
    a = p.parse_args(argv)
    if a.quick:
        a.steps, a.num_images, a.n_eval, a.sample_steps, a.seeds = 3, 64, 16, 2, [0, 1]
    from experiments import cache_latents
    from experiments.common.dit_io import load_autoencoder
    from experiments.common.metrics import save_grid

    torch.set_num_threads(1)
    t0 = time.time()
    work, out = Path(a.work), Path(a.out)
    lat = work / "latents"
    if cache_latents.main(["--out", str(lat), "--ae-ckpt", a.ae_ckpt, "--num-images", str(a.num_images),
                           "--dtype", "float32", "--shard-size", "1024"]) != 0:
        raise SystemExit("latent_ablation: caching the latents failed")
    ae = load_autoencoder(a.ae_ckpt)
    ref, ref_raw, labels = held_out(ae, 2 * a.n_eval, seed=777, image_size=ae.image_size)
    ref_a, ref_b, labels = ref[:a.n_eval], ref[a.n_eval:], labels[:a.n_eval]
    radius = float(ae.radius)
    d_ref = token_angles(ref_a / radius, ref_a / radius)
    med = float(d_ref[~torch.eye(a.n_eval, dtype=torch.bool)].median())
    sigmas = (0.5 * med, med, 2 * med)
    decode_norm = float(ref_raw.norm(dim=-1).mean())
    jobs = [(flow, seed) for flow in FLOWS for seed in a.seeds]
    args = [(flow, seed, a, lat, labels, ref_a, radius, sigmas) for flow, seed in jobs]
    if a.jobs > 1:
        with ProcessPoolExecutor(a.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            done = list(pool.map(_job, *zip(*args)))
    else:
        done = [_job(*x) for x in args]
    runs: dict[str, list[dict]] = {f: [] for f in FLOWS}
    for (flow, seed), (row, z) in zip(jobs, done):
        runs[flow].append(row)
        print(f"latent_ablation: {flow} seed {seed}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items()
                                                                  if k != "seed"), flush=True)
        if seed == a.seeds[0]:
            with torch.no_grad():
                img = ae.decode(z, norm=decode_norm).clamp(-1, 1)
            save_grid(list(img.split(8)), out / f"latent_ablation_{flow}.png", nrow=8)
    floor = latent_metrics(ref_b, ref_a, radius, sigmas)
    result = dict(config=vars(a), radius=radius, sigmas=sigmas, decode_norm=decode_norm,
                  tokens=int(ref.shape[1]), channels=int(ref.shape[2]), wall_s=round(time.time() - t0, 1),
                  flows={f: {m: summary([r[m] for r in runs[f]]) for m in METRICS} for f in FLOWS},
                  runs=runs, floor=floor)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latent_ablation.json").write_text(json.dumps(result, indent=1))
    (out / "latent_ablation.md").write_text(markdown(result) + "\n")
    print(markdown(result))
    print(f"latent_ablation: {result['wall_s']} s -> {out}/latent_ablation.{{json,md}}")
    return result


if __name__ == "__main__":
    main()
