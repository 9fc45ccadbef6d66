"""Toy version of the paper's Table 4: Riemannian vs flat flow matching on a product of spheres.

Target distribution: N tokens, each on S^{C−1}_R. A shared mixture component k ~ U{0..K−1} picks, for
every token n, a mean direction μ[k, n] (drawn once, uniformly on the sphere); each token is then
``projx(μ[k, n] + R·spread·ε/√C)``, ε ~ N(0, I_C) (a projected-normal cluster, vMF-like, of angular
radius ≈ atan(spread) whatever C). Tokens are
therefore correlated only through the shared k, which the model has to learn jointly.

Methods, trained with the same tiny LightningDiT, optimiser, step budget, time law and sampling grid:
  * ``fm``        flat flow matching: Gaussian noise x1 (scaled so E‖x1‖ = R), x_t = (1−t)x0 + t·x1,
                  target x1 − x0, ambient Euler sampling, samples projected onto the sphere at the end;
  * ``rfm_lam*``  Riemannian flow matching (``spherical``): uniform noise on the sphere, slerp path,
                  ``rfm_loss`` with λ_rad ∈ {0, 0.1, 1}, Riemannian Euler (exp-map) sampling.

Metrics between generated and true samples (compare each with the "true vs true" row, which is the
value for a fresh set of real samples: a mode angle below it means over-concentrated samples, and
mode_tv ≈ 0.04 is already the sampling-noise floor at n_eval = 384):
  * ``mmd``          unbiased MMD² with the product geodesic Laplacian kernel exp(−D/σ),
                     D = mean over tokens of the angle, averaged over σ ∈ {0.1, 0.3, 1};
  * ``mode_angle``   mean per-token angle (degrees) to the nearest joint mode μ[k*, :];
  * ``coherence``    fraction of samples whose tokens all pick the same component (true data ≈ 1);
  * ``mode_tv``      total variation between the nearest-mode frequencies and the true (uniform) weights;
  * ``off_sphere``   for ``fm`` only: mean |‖x‖ − R|/R of the raw samples before the final projection.

Run: ``python experiments/toy_rfm_vs_fm.py`` (3–4 min on 2 CPU cores, measured 241 s: 12 single-threaded jobs of
≈ 31 CPU-s in 2 worker processes) or ``--quick`` (seconds); ``--preset medium`` (≈ 5 min) trains a
wider/deeper DiT; ``--channels 32`` changes C. Writes ``benchmarks/results/toy_rfm_vs_fm.{json,png,md}``
(or under ``--out``).
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from models.dit import DiTConfig, LightningDiT
from spherical import Hypersphere, geodesic_flow, integrate, rfm_loss, sample_time, time_shift

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
METRICS = ("mmd", "mode_angle", "coherence", "mode_tv")


@dataclass
class ToyConfig:
    """Everything that defines one run of the benchmark."""

    tokens: int = 16
    channels: int = 8
    components: int = 4
    spread: float = 0.15 * math.sqrt(8)  # noise norm relative to R (≈ 23° clusters)
    radius: float = 0.0            # 0 → E‖N(0, I_C)‖, so each channel has unit variance
    hidden: int = 32
    depth: int = 2
    heads: int = 2
    train_steps: int = 1000
    batch: int = 64
    lr: float = 3e-3
    ema: float = 0.0               # EMA decay of the weights used for sampling (0 = off)
    alpha: float = 1.0             # time shift for training times and the sampling grid
    sample_steps: int = 50
    n_eval: int = 384
    seeds: int = 3
    lambdas: tuple[float, ...] = (0.0, 0.1, 1.0)
    data_seed: int = 1234
    bandwidths: tuple[float, ...] = field(default=(0.1, 0.3, 1.0))

    @property
    def R(self) -> float:
        if self.radius > 0:
            return self.radius
        c = self.channels
        return math.sqrt(2.0) * math.exp(math.lgamma((c + 1) / 2) - math.lgamma(c / 2))


class ToyDistribution:
    """Mixture over a shared component of per-token clusters on the product of spheres."""

    def __init__(self, cfg: ToyConfig) -> None:
        self.cfg, self.sphere = cfg, Hypersphere(cfg.R)
        g = torch.Generator().manual_seed(cfg.data_seed)
        self.means = self.sphere.random_uniform(cfg.components, cfg.tokens, cfg.channels, generator=g)

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Returns ``x [n, N, C]`` on the sphere and component labels ``k [n]``."""
        k = torch.randint(0, self.cfg.components, (n,), generator=generator)
        eps = torch.randn(n, self.cfg.tokens, self.cfg.channels, generator=generator)
        scale = self.cfg.R * self.cfg.spread / math.sqrt(self.cfg.channels)
        return self.sphere.projx(self.means[k] + scale * eps), k

    def angles_to_means(self, x: Tensor) -> Tensor:
        """Angle (radians) of every token to every component's mean: ``[n, K, N]``."""
        return self.sphere.dist(x[:, None], self.means[None]) / self.cfg.R


def build_model(cfg: ToyConfig) -> LightningDiT:
    """Tiny unconditional LightningDiT (a single class 0, no label dropout)."""
    return LightningDiT(DiTConfig(in_channels=cfg.channels, num_tokens=cfg.tokens,
                                  hidden_size=cfg.hidden, depth=cfg.depth, num_heads=cfg.heads,
                                  num_classes=1, class_dropout_prob=0.0))


def fm_noise(cfg: ToyConfig, shape: tuple[int, ...], g: torch.Generator) -> Tensor:
    """Gaussian noise for flat FM, scaled so that E‖x1‖ = R."""
    chi = math.sqrt(2.0) * math.exp(math.lgamma((cfg.channels + 1) / 2) - math.lgamma(cfg.channels / 2))
    return torch.randn(shape, generator=g) * (cfg.R / chi)


def train(method: str, lam: float, cfg: ToyConfig, dist: ToyDistribution, seed: int
          ) -> tuple[LightningDiT, list[float]]:
    """Trains one model with ``method`` ∈ {"fm", "rfm"}; returns it and the loss history."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(10_000 + seed)
    model = build_model(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * s / cfg.train_steps)))
    y = torch.zeros(cfg.batch, dtype=torch.long)
    history = []
    ema = [p.detach().clone() for p in model.parameters()] if cfg.ema > 0 else None
    for _ in range(cfg.train_steps):
        x0, _ = dist.sample(cfg.batch, g)
        t = sample_time(cfg.batch, alpha=cfg.alpha, generator=g)
        if method == "rfm":
            x1 = dist.sphere.random_uniform(*x0.shape, generator=g)
            xt, ut = geodesic_flow(x0, x1, t[:, None, None], sphere=dist.sphere)
            loss = rfm_loss(model(xt, t, y), xt, ut, lambda_rad=lam).total
        else:
            x1 = fm_noise(cfg, tuple(x0.shape), g)
            tb = t[:, None, None]
            xt = (1 - tb) * x0 + tb * x1
            loss = (model(xt, t, y) - (x1 - x0)).square().sum(-1).mean()  # same reduction as rfm_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        history.append(loss.item())
        if ema is not None:
            with torch.no_grad():
                torch._foreach_lerp_(ema, [p.detach() for p in model.parameters()], 1 - cfg.ema)
    if ema is not None:
        with torch.no_grad():
            for p, e in zip(model.parameters(), ema):
                p.copy_(e)
    return model.eval(), history


@torch.no_grad()
def generate(method: str, model: LightningDiT, cfg: ToyConfig, dist: ToyDistribution, n: int,
             seed: int) -> tuple[Tensor, float]:
    """``n`` samples ``[n, N, C]`` on the sphere, and (FM only) the raw off-sphere error."""
    g = torch.Generator().manual_seed(20_000 + seed)
    grid = time_shift(torch.linspace(1.0, 0.0, cfg.sample_steps + 1), cfg.alpha)
    y = torch.zeros(n, dtype=torch.long)
    shape = (n, cfg.tokens, cfg.channels)
    if method == "rfm":
        x = dist.sphere.random_uniform(*shape, generator=g)
        return integrate(lambda z, t: model(z, t, y), x, grid, sphere=dist.sphere, method="euler"), 0.0
    x = fm_noise(cfg, shape, g)
    for k in range(cfg.sample_steps):
        x = x + (grid[k + 1] - grid[k]) * model(x, grid[k], y)
    off = ((x.norm(dim=-1) - cfg.R).abs() / cfg.R).mean().item()
    return dist.sphere.projx(x), off


def mmd2(x: Tensor, y: Tensor, dist: ToyDistribution, bandwidths: tuple[float, ...]) -> float:
    """Unbiased MMD² with kernel mean_σ exp(−D/σ), D = token-averaged geodesic angle."""
    def d(a: Tensor, b: Tensor) -> Tensor:                    # [len(a), len(b)], chunked over a
        rows = [dist.sphere.dist(a[i:i + 64, None], b[None]).mean(-1) for i in range(0, len(a), 64)]
        return torch.cat(rows) / dist.cfg.R

    dxx, dyy, dxy = d(x, x), d(y, y), d(x, y)
    n, m = len(x), len(y)
    total = 0.0
    for s in bandwidths:
        kxx, kyy, kxy = (-dxx / s).exp(), (-dyy / s).exp(), (-dxy / s).exp()
        total += ((kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
                  + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1)) - 2 * kxy.mean()).item()
    return total / len(bandwidths)


def mode_stats(x: Tensor, dist: ToyDistribution) -> dict[str, float]:
    """Nearest-mode angle (degrees), coherence and component-frequency TV of samples ``[n, N, C]``."""
    ang = dist.angles_to_means(x)                              # [n, K, N]
    joint = ang.mean(-1)                                       # [n, K]
    k_star = joint.argmin(-1)
    per_token = ang.argmin(1)                                  # [n, N]
    coherent = (per_token == k_star[:, None]).all(-1).float().mean().item()
    freq = torch.bincount(k_star, minlength=dist.cfg.components).float() / len(x)
    return {"mode_angle": math.degrees(joint.min(-1).values.mean().item()),
            "coherence": coherent,
            "mode_tv": 0.5 * (freq - 1.0 / dist.cfg.components).abs().sum().item()}


def evaluate(x: Tensor, ref: Tensor, dist: ToyDistribution, cfg: ToyConfig) -> dict[str, float]:
    return {"mmd": mmd2(x, ref, dist, cfg.bandwidths), **mode_stats(x, dist)}


def _summary(values: list[float]) -> dict[str, object]:
    v = torch.tensor(values, dtype=torch.float64)
    return {"mean": v.mean().item(), "std": v.std(unbiased=False).item(), "values": values}


def _reference(cfg: ToyConfig, dist: ToyDistribution) -> tuple[Tensor, Tensor]:
    """Two independent sets of true samples: the evaluation target and a noise-floor control."""
    return (dist.sample(cfg.n_eval, torch.Generator().manual_seed(99))[0],
            dist.sample(cfg.n_eval, torch.Generator().manual_seed(98))[0])


def _job(cfg: ToyConfig, kind: str, lam: float, seed: int) -> dict[str, float]:
    """Train + sample + evaluate one (method, seed); runs single-threaded (also in a worker process)."""
    torch.set_num_threads(1)
    t0, c0 = time.time(), time.process_time()
    dist = ToyDistribution(cfg)
    ref, _ = _reference(cfg, dist)
    model, hist = train(kind, lam, cfg, dist, seed)
    x, off = generate(kind, model, cfg, dist, cfg.n_eval, seed)
    row = evaluate(x, ref, dist, cfg) | {"final_loss": sum(hist[-50:]) / len(hist[-50:])}
    if kind == "fm":
        row["off_sphere"] = off
    return row | {"seconds": time.time() - t0, "cpu_seconds": time.process_time() - c0}


def run(cfg: ToyConfig, out_dir: Path = RESULTS, plot: bool = True, verbose: bool = True,
        workers: int = 1) -> dict:
    """Runs every method × seed (in ``workers`` processes), writes JSON (and PNG), returns the dict.

    Tiny models run fastest single-threaded, so each job uses one thread and jobs run in parallel.
    """
    start = time.time()
    dist = ToyDistribution(cfg)
    ref, ref2 = _reference(cfg, dist)
    methods = {"fm": ("fm", 0.0)} | {f"rfm_lam{lam:g}": ("rfm", lam) for lam in cfg.lambdas}
    jobs = [(name, seed) for name in methods for seed in range(cfg.seeds)]
    raw: dict[str, dict[str, list[float]]] = {m: {} for m in methods}

    def record(name: str, seed: int, row: dict[str, float]) -> None:
        for key, val in row.items():
            raw[name].setdefault(key, []).append(val)
        if verbose:
            print(f"{name:>12s} seed {seed}: " + "  ".join(f"{k}={v:.4g}" for k, v in row.items()),
                  flush=True)

    if workers <= 1:
        threads = torch.get_num_threads()
        for name, seed in jobs:
            record(name, seed, _job(cfg, *methods[name], seed))
        torch.set_num_threads(threads)
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            futures = [pool.submit(_job, cfg, *methods[name], seed) for name, seed in jobs]
            for (name, seed), fut in zip(jobs, futures):
                record(name, seed, fut.result())
    result = {
        "config": asdict(cfg) | {"R": cfg.R, "workers": workers},
        "reference": evaluate(ref2, ref, dist, cfg),
        "methods": {m: {k: _summary(v) for k, v in rows.items()} for m, rows in raw.items()},
        "seconds_total": time.time() - start,
        "cpu_seconds_jobs": sum(sum(rows["cpu_seconds"]) for rows in raw.values()),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "toy_rfm_vs_fm.json").write_text(json.dumps(result, indent=2))
    (out_dir / "toy_rfm_vs_fm.md").write_text(markdown_table(result))
    if plot:
        _plot(result, out_dir / "toy_rfm_vs_fm.png")
    return result


def markdown_table(result: dict) -> str:
    """The result as a Markdown table: mean ± std over seeds per method, plus the true-vs-true row."""
    cols = METRICS + ("off_sphere",)
    lines = ["| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, rows in result["methods"].items():
        cells = [f"{rows[m]['mean']:.4g} ± {rows[m]['std']:.2g}" if m in rows else "—" for m in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    ref = result["reference"]
    lines.append("| true vs true | " + " | ".join(f"{ref[m]:.4g}" if m in ref else "—" for m in cols) + " |")
    return "\n".join(lines) + "\n"


def _plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["methods"])
    titles = {"mmd": "MMD² (geodesic kernel) ↓", "mode_angle": "angle to nearest mode [deg] ↓",
              "coherence": "token coherence ↑", "mode_tv": "mode-frequency TV ↓"}
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.6))
    colors = ["tab:gray"] + [f"C{i}" for i in range(len(names) - 1)]
    for ax, metric in zip(axes, METRICS):
        means = [result["methods"][n][metric]["mean"] for n in names]
        stds = [result["methods"][n][metric]["std"] for n in names]
        ax.bar(range(len(names)), means, yerr=stds, color=colors, capsize=4)
        ax.axhline(result["reference"][metric], color="k", ls="--", lw=1, label="true vs true")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_title(titles[metric], fontsize=10)
    axes[0].legend(fontsize=8)
    c = result["config"]
    fig.suptitle(f"Toy Table 4: {c['tokens']} tokens on S^{c['channels'] - 1}, {c['components']} joint "
                 f"modes, {c['train_steps']} steps × {c['batch']}, mean ± std over {c['seeds']} seeds",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def quick_config() -> ToyConfig:
    """A seconds-long configuration for tests."""
    return ToyConfig(tokens=4, channels=4, components=2, hidden=16, depth=1, heads=2, train_steps=15,
                     batch=16, sample_steps=4, n_eval=24, seeds=2)


PRESETS = {
    "tiny": {},                                                        # default: ≈ 3 min on 2 cores
    "medium": {"hidden": 64, "depth": 3, "heads": 4, "batch": 32},     # ≈ 5 min on 2 cores
}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny run for tests (seconds)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny",
                   help="model size: tiny (default, capacity-limited) or medium (better trained, slower)")
    p.add_argument("--steps", type=int, help="training steps per run")
    p.add_argument("--seeds", type=int, help="seeds per method")
    p.add_argument("--tokens", type=int, help="N (a perfect square)")
    p.add_argument("--channels", type=int, help="C (each token on S^{C-1})")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--workers", type=int, default=None,
                   help="parallel single-threaded jobs (default: 2, or 1 with --quick)")
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args(argv)
    cfg = quick_config() if args.quick else ToyConfig(**PRESETS[args.preset])
    if args.steps:
        cfg.train_steps = args.steps
    for name in ("seeds", "tokens", "channels"):
        if getattr(args, name):
            setattr(cfg, name, getattr(args, name))
    workers = args.workers if args.workers is not None else (1 if args.quick else 2)
    result = run(cfg, args.out, plot=not args.no_plot, workers=workers)
    print(f"wrote {args.out / 'toy_rfm_vs_fm.json'} in {result['seconds_total']:.1f}s")
    for name, rows in result["methods"].items():
        print(f"{name:>12s}: " + "  ".join(f"{m}={rows[m]['mean']:.4g}±{rows[m]['std']:.2g}"
                                          for m in METRICS))
    print(f"{'reference':>12s}: " + "  ".join(f"{m}={result['reference'][m]:.4g}" for m in METRICS))
    return result


if __name__ == "__main__":
    main()
