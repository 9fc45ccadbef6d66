"""Plot a run's loss and PSNR curves from ``DIR/metrics.jsonl`` into a PNG.

    python experiments/plot_run.py runs/ae-tiny-embedded-s1            # -> DIR/curves.png
    python experiments/plot_run.py DIR --out curves.png --keys loss l1 cos

Left panel: training losses (every ``train`` record key in ``--keys`` that is present) against step, log
scale. Right panel: evaluation PSNR (and SSIM on a twin axis) against step.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.common.logging_utils import read_jsonl  # noqa: E402

DEFAULT_KEYS = ("loss", "l1", "cos", "lpips", "g_gan", "d_loss", "tangent", "radial")


def plot(run_dir: str | Path, out: str | Path | None = None, keys=DEFAULT_KEYS) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    recs = read_jsonl(run_dir / "metrics.jsonl")
    if not recs:
        raise FileNotFoundError(f"no records in {run_dir / 'metrics.jsonl'}")
    train = [r for r in recs if r.get("event") == "train"]
    evals = [r for r in recs if r.get("event") == "eval"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for k in keys:
        pts = [(r["step"], r[k]) for r in train if isinstance(r.get(k), (int, float))]
        if pts:
            ax1.plot(*zip(*pts), label=k)
    ax1.set_xlabel("step")
    ax1.set_ylabel("training loss")
    if any(ax1.get_lines()):
        ax1.set_yscale("log")
        ax1.legend()
    ax1.grid(alpha=0.3)
    pts = [(r["step"], r["psnr"]) for r in evals if "psnr" in r]
    if pts:
        ax2.plot(*zip(*pts), "o-", color="C3", label="PSNR")
        ax2.set_ylabel("PSNR (dB)")
        ax2.set_title(f"held-out PSNR {pts[0][1]:.2f} → {pts[-1][1]:.2f} dB")
    ss = [(r["step"], r["ssim"]) for r in evals if "ssim" in r]
    if ss:
        tw = ax2.twinx()
        tw.plot(*zip(*ss), "s--", color="C0", alpha=0.6, label="SSIM")
        tw.set_ylabel("SSIM")
    ax2.set_xlabel("step")
    ax2.grid(alpha=0.3)
    fig.suptitle(str(run_dir))
    fig.tight_layout()
    out = Path(out) if out else run_dir / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="plot_run.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run_dir", help="run folder holding metrics.jsonl")
    p.add_argument("--out", help="output PNG (default: DIR/curves.png)")
    p.add_argument("--keys", nargs="+", default=list(DEFAULT_KEYS), help="train metrics to plot")
    args = p.parse_args(argv)
    try:
        print(plot(args.run_dir, args.out, args.keys))
    except FileNotFoundError as e:
        print(f"plot_run.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
