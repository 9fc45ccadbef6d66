"""Evaluate a trained autoencoder: PSNR, SSIM, LPIPS and rFID (or FD_dino) on centre-cropped images.

    python experiments/eval_ae.py --ckpt runs/ae-paper-s1 --data /imagenet --inception-weights \
        pt_inception-2015-12-05-6726825d.pth --out runs/ae-paper-s1/eval.json
    python experiments/eval_ae.py --ckpt runs/ae-tiny-embedded-s1       # embedded held-out crops

Protocol (PAPER.md "Evaluation protocol"): ImageNet val, short side resized to S then centre-cropped to
S×S, reconstructed with the EMA weights; PSNR (mean of per-image PSNR on [0, 1]) and SSIM (torchmetrics,
Gaussian 11/1.5) per image; LPIPS(VGG) when its weights are available; rFID through torchmetrics'
``FrechetInceptionDistance`` (2048-d pool3) against the same centre-cropped originals, both fed as
rounded uint8 (``round((x + 1)·127.5)``, as ``sample.py`` writes samples), when the
torch-fidelity Inception weights are in the torch hub cache or given by ``--inception-weights``.
Without them the Fréchet distance is computed on the DINO teacher's mean-pooled patch tokens and reported
as ``fd_dino`` (never called FID). All statistics are float64 sums: results do not depend on the batch
size or the number of processes. ``latent_norm`` is the mean norm of the tokens the decoder reads (raw
student tokens; R with ``decoder_input="sphere"``) over the evaluated images' tokens.

``--decode-norm-sweep [S ...]``: the reconstruction-side analogue of the paper's App. C sweep of s_vae.
Every token is rescaled to norm S (``ae.decode(z, norm=S)``) before decoding; PSNR and SSIM per S go to
``<run>/decode_norm_sweep.json`` and a plot ``decode_norm_sweep.png``. Without values: S = f·latent_norm
for f in 0.5, 0.625, ..., 2.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from experiments.common import distributed as D  # noqa: E402
from experiments.common.metrics import (FrechetStats, fd_from_stats, find_inception_weights, make_fid,  # noqa: E402
                                 psnr_per_image, save_grid, ssim_per_image, to_uint8)
from experiments.common.trainer import OneLineParser, UserError, autocast, cpu_threads, run_cli  # noqa: E402


@torch.no_grad()
def dino_features(ae, images: torch.Tensor) -> torch.Tensor:
    """FD_dino features: the frozen teacher's patch tokens, mean-pooled, fp32. ``[B, C]``."""
    return ae.teacher_tokens(images).float().mean(1)


@torch.no_grad()
def evaluate(ae, loader, device: torch.device, *, precision: str = "fp32", lpips=None, fd: str = "auto",
             inception_weights: str | None = None, grid_path: str | Path | None = None) -> dict:
    """Reconstruction metrics of ``ae`` over ``loader`` (batches of ``{"image": [B,3,H,W] in [-1,1]}``).

    Args:
        fd: ``"auto"`` (rFID if Inception weights are found, else ``fd_dino``), ``"fid"``, ``"dino"``
            or ``"off"``.
        grid_path: write originals (top row) over reconstructions of the first batch to this PNG.

    Returns:
        ``{"psnr", "ssim", "n_images", "latent_norm"[, "lpips"][, "rfid" | "fd_dino", "fd_features"]}``;
        identical on every process (sums are all-reduced).
    """
    was_training = ae.training
    ae.eval()
    sums = torch.zeros(5, dtype=torch.float64, device=device)  # psnr, ssim, lpips, n, Σ_images mean ‖z_i‖
    fid = real = fake = None
    if fd in ("auto", "fid"):
        w = find_inception_weights(inception_weights)
        if w is None and fd == "fid":
            raise UserError("rFID needs torch-fidelity's Inception weights: pass --inception-weights PATH")
        if w is not None:
            fid = make_fid(w, device)
    if fid is None and fd != "off":
        real, fake = FrechetStats(ae.latent_dim, device), FrechetStats(ae.latent_dim, device)
    for i, batch in enumerate(loader):
        x = batch["image"].to(device)
        with autocast(device, precision):
            z = ae.encode(x)  # what the decoder reads (raw tokens, or R·z/‖z‖ for decoder_input="sphere")
            recon = ae.decode(z.float())
        recon = recon.float().clamp(-1, 1)
        part = [psnr_per_image(recon, x).double().sum(), ssim_per_image(recon, x).double().sum(),
                lpips(recon, x).double().sum() if lpips is not None else torch.zeros((), dtype=torch.float64,
                                                                                      device=device)]
        part += [torch.tensor(float(x.shape[0]), dtype=torch.float64, device=device),
                 z.float().norm(dim=-1).mean(-1).double().sum()]
        sums += torch.stack(part)
        if fid is not None:
            fid.update(to_uint8(x), real=True)  # rounded uint8, as sample.py's .npz and saved PNGs
            fid.update(to_uint8(recon), real=False)
        elif real is not None:
            real.update(dino_features(ae, x))
            fake.update(dino_features(ae, recon))
        if i == 0 and grid_path is not None and _rank() == 0:
            save_grid([x, recon], grid_path)
    D.all_reduce_sum(sums)
    n = max(sums[3].item(), 1.0)
    res = {"psnr": sums[0].item() / n, "ssim": sums[1].item() / n, "n_images": int(sums[3].item()),
           "latent_norm": sums[4].item() / n}
    if lpips is not None:
        res["lpips"] = sums[2].item() / n
    if fid is not None:
        res["rfid"] = float(fid.compute())
        res["fd_features"] = "inception_pool3_2048"
    elif real is not None:
        real.all_reduce()
        fake.all_reduce()
        res["fd_dino"] = fd_from_stats(real, fake)
        res["fd_features"] = f"dino_teacher_meanpool_{ae.latent_dim}"
    ae.train(was_training)
    return res


@torch.no_grad()
def mean_latent_norm(ae, loader, device: torch.device, *, precision: str = "fp32") -> float:
    """Mean norm of the tokens the decoder reads (``ae.encode``) over ``loader``'s images and tokens,
    ``(1/(B·N)) Σ ‖z_{b,i}‖``; all-reduced over processes (what ``in1k_ae.py`` stores as ``latent_norm``)."""
    was_training = ae.training
    ae.eval()
    sums = torch.zeros(2, dtype=torch.float64, device=device)
    for batch in loader:
        x = batch["image"].to(device)
        with autocast(device, precision):
            z = ae.encode(x)
        sums += torch.stack([z.float().norm(dim=-1).mean(-1).double().sum(),
                             torch.tensor(float(x.shape[0]), dtype=torch.float64, device=device)])
    D.all_reduce_sum(sums)
    ae.train(was_training)
    return sums[0].item() / max(sums[1].item(), 1.0)


@torch.no_grad()
def decode_norm_sweep(ae, loader, device: torch.device, norms: list[float], *,
                      precision: str = "fp32") -> list[dict]:
    """Reconstruct ``loader``'s images with every token rescaled to each norm S in ``norms``.

    ``recon_S = decode(S·z/‖z‖)`` per token, z = ``ae.encode(x)``. Returns ``[{"norm": S, "psnr", "ssim"}]``
    (means over images, float64 sums, all-reduced), in the order of ``norms``.
    """
    if not norms or any(not s > 0 for s in norms):
        raise UserError(f"decode norms must be > 0, got {norms}")
    was_training = ae.training
    ae.eval()
    sums = torch.zeros(len(norms), 3, dtype=torch.float64, device=device)  # psnr, ssim, n per norm
    for batch in loader:
        x = batch["image"].to(device)
        with autocast(device, precision):
            z = ae.encode(x).float()
        for k, s in enumerate(norms):
            with autocast(device, precision):
                recon = ae.decode(z, norm=s)
            recon = recon.float().clamp(-1, 1)
            sums[k] += torch.stack([psnr_per_image(recon, x).double().sum(), ssim_per_image(recon, x).double().sum(),
                                    torch.tensor(float(x.shape[0]), dtype=torch.float64, device=device)])
    D.all_reduce_sum(sums)
    ae.train(was_training)
    n = sums[:, 2].clamp(min=1.0)
    return [{"norm": float(s), "psnr": (sums[k, 0] / n[k]).item(), "ssim": (sums[k, 1] / n[k]).item()}
            for k, s in enumerate(norms)]


SWEEP_FACTORS = (0.5, 0.625, 0.75, 0.875, 1.0, 1.25, 1.5, 1.75, 2.0)


def plot_sweep(rows: list[dict], latent_norm: float | None, path: str | Path) -> Path:
    """PSNR against decode norm (the sweep's plot), with the stored ``latent_norm`` marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([r["norm"] for r in rows], [r["psnr"] for r in rows], "o-")
    if latent_norm is not None:
        ax.axvline(latent_norm, color="gray", ls="--", label=f"stored latent_norm {latent_norm:.3g}")
        ax.legend()
    ax.set_xlabel("decode norm S (every token rescaled to ‖z‖ = S)")
    ax.set_ylabel("held-out PSNR (dB)")
    ax.set_title("reconstruction vs decode norm")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def load_autoencoder(ckpt: str | Path, *, use_ema: bool = True, device: str | torch.device = "cpu"):
    """Rebuild an autoencoder from an ``in1k_ae.py`` checkpoint (file or run folder).

    The checkpoint holds the full model (DINO trunk included), so no encoder weights are needed.
    Returns ``(ae, state)``; ``ae`` is in eval mode with the EMA weights when ``use_ema``
    (:func:`experiments.common.dit_io.load_autoencoder_state`).
    """
    from experiments.common.dit_io import load_autoencoder_state

    return load_autoencoder_state(ckpt, device, ema=use_ema, flag="--ckpt")


def _eval_threads(a: dict, info) -> int | None:
    """CPU threads for evaluating a checkpoint trained with args ``a``: 1 for the small embedded presets (their
    kernels only lose to OpenMP sync), else torch's default."""
    return 1 if a["preset"] in ("tiny", "cpu") and info.device.type == "cpu" else None


def _loader(data: str | None, split: str, image_size: int, n: int, batch_size: int, workers: int,
            info, seed: int = 0):
    from experiments.common.data import EmbeddedPhotos, ImageFolderDataset, ShardedEvalSampler, collate

    if data is None:
        ds = EmbeddedPhotos("eval", image_size, length=n or 32, seed=seed)
    else:
        ds = ImageFolderDataset(Path(data) / split, image_size, train=False)
    n = min(len(ds), n) if n else len(ds)
    sampler = ShardedEvalSampler(n, batch_size, rank=info.rank, world=info.world_size)
    return torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=workers, collate_fn=collate)


def run_eval(ckpt, *, data, out_json, info, batch_size=50, num_images=0, num_workers=0,
             inception_weights=None, lpips_weights=None, no_lpips=False, fd="auto", precision="fp32",
             use_ema=True, split="val") -> dict:
    """Evaluate a checkpoint (file or run folder); writes ``out_json`` on the main process."""
    ae, state = load_autoencoder(ckpt, use_ema=use_ema, device=info.device)
    a = state["args"]
    # tiny convolutions on CPU: OpenMP sync costs more than it gains
    with cpu_threads(_eval_threads(a, info)):
        return _run_eval(ae, state, a, ckpt, data=data, out_json=out_json, info=info, batch_size=batch_size,
                         num_images=num_images, num_workers=num_workers, inception_weights=inception_weights,
                         lpips_weights=lpips_weights, no_lpips=no_lpips, fd=fd, precision=precision,
                         use_ema=use_ema, split=split)


def _run_eval(ae, state, a, ckpt, *, data, out_json, info, batch_size, num_images, num_workers,
              inception_weights, lpips_weights, no_lpips, fd, precision, use_ema, split) -> dict:
    from experiments.common.ae_steps import build_lpips

    data = data if data is not None else a.get("data")
    seed = a.get("seed", 0)
    loader = _loader(data, split, ae.image_size, num_images or (a.get("eval_images") if data is None else 0),
                     batch_size, num_workers, info, seed)
    lpips, note = build_lpips(lpips_weights, no_lpips, info.device)
    res = evaluate(ae, loader, info.device, precision=precision, lpips=lpips, fd=fd,
                   inception_weights=inception_weights,
                   grid_path=Path(out_json).with_name("eval_recon.png") if out_json else None)
    res.update(step=int(state["step"]), checkpoint=str(ckpt), data=data or "embedded", ema=use_ema,
               lpips_status=note, image_size=ae.image_size)
    if info.is_main and out_json:
        from experiments.common.finite import write_json_strict

        write_json_strict(out_json, res, f"eval_ae.py results for {ckpt}", indent=2)  # no NaN in JSON
    return res


def run_sweep(ckpt, norms: list[float], *, data, out_json, info, batch_size=50, num_images=0, num_workers=0,
              precision="fp32", use_ema=True, split="val") -> dict:
    """``--decode-norm-sweep``: PSNR/SSIM per decode norm; writes ``out_json`` and the plot next to it.

    ``norms`` empty → ``f·latent_norm`` for f in :data:`SWEEP_FACTORS` (latent_norm from the checkpoint,
    else measured on the same images).
    """
    ae, state = load_autoencoder(ckpt, use_ema=use_ema, device=info.device)
    a = state["args"]
    data = data if data is not None else a.get("data")
    loader = _loader(data, split, ae.image_size, num_images or (a.get("eval_images") if data is None else 0),
                     batch_size, num_workers, info, a.get("seed", 0))
    with cpu_threads(_eval_threads(a, info)):
        stored = state.get("latent_norm")
        ref = float(stored) if stored is not None else mean_latent_norm(ae, loader, info.device,
                                                                         precision=precision)
        norms = list(norms) or [round(f * ref, 4) for f in SWEEP_FACTORS]
        rows = decode_norm_sweep(ae, loader, info.device, norms, precision=precision)
    best = max(rows, key=lambda r: r["psnr"])
    res = {"sweep": rows, "latent_norm": ref, "latent_norm_source": "checkpoint" if stored is not None
           else "measured on these images", "best_norm": best["norm"], "step": int(state["step"]),
           "checkpoint": str(ckpt), "data": data or "embedded", "ema": use_ema,
           "decoder_input": ae.config.decoder_input}
    if info.is_main:
        from experiments.common.finite import write_json_strict

        out_json = write_json_strict(out_json, res, f"eval_ae.py decode-norm sweep of {ckpt}", indent=2)
        res["plot"] = str(plot_sweep(rows, ref, out_json.with_suffix(".png")))
        for r in rows:
            print(f"eval_ae: decode norm {r['norm']:8.4g}: PSNR {r['psnr']:6.2f} dB, SSIM {r['ssim']:.4f}"
                  + ("   <- stored latent_norm" if abs(r["norm"] - ref) < 1e-3 * ref else ""), flush=True)
        print(f"eval_ae: wrote {out_json} and {res['plot']}", flush=True)
    return res


def evaluate_run(args, info) -> dict:
    """``in1k_ae.py --eval-only``: evaluate ``DIR/checkpoints/last.pt`` into ``DIR/eval.json``."""
    res = run_eval(args.out, data=args.data, out_json=Path(args.out) / "eval.json", info=info,
                   batch_size=min(50, args.batch_size), num_images=args.eval_images if args.embedded else 0,
                   num_workers=args.num_workers, inception_weights=args.inception_weights,
                   lpips_weights=args.lpips_weights, no_lpips=args.no_lpips, precision=args.precision)
    if info.is_main:
        print(json.dumps(res))
    return res


def _main(argv=None) -> int:
    p = OneLineParser(prog="eval_ae.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="in1k_ae.py checkpoint file or run folder")
    p.add_argument("--data", help="ImageNet-style folder (uses <data>/<split>); default: the run's data "
                   "or the embedded held-out photos")
    p.add_argument("--split", default="val", help="sub-folder of --data to evaluate")
    p.add_argument("--out", help="result JSON (default: <run>/eval.json)")
    p.add_argument("--batch-size", type=int, default=50, help="images per batch and process")
    p.add_argument("--num-images", type=int, default=0, help="limit the number of images (0 = all)")
    p.add_argument("--num-workers", type=int, default=4, help="data-loader workers")
    p.add_argument("--inception-weights", help="torch-fidelity FID Inception weights (else torch cache)")
    p.add_argument("--lpips-weights", help="local VGG16 weights for LPIPS")
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    p.add_argument("--fd", choices=("auto", "fid", "dino", "off"), default="auto",
                   help="Fréchet distance: rFID if Inception weights exist (auto), else fd_dino")
    p.add_argument("--raw", action="store_true", help="evaluate the raw (non-EMA) weights")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="autocast precision")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--decode-norm-sweep", type=float, nargs="*", metavar="S",
                   help="instead of the metrics: PSNR/SSIM with every token rescaled to each norm S "
                        "(no values: 0.5..2 x the stored latent_norm) -> <run>/decode_norm_sweep.json + .png")
    args = p.parse_args(argv)
    from experiments.common.cli_common import at_least, validate_args

    validate_args(args, {"num_images": at_least(0)})  # ranges, --device (--num-images 0 = all)
    info = D.setup(args.device)
    try:
        ck = Path(args.ckpt)
        run_dir = ck if ck.is_dir() else ck.parent.parent
        if args.decode_norm_sweep is not None:
            run_sweep(args.ckpt, args.decode_norm_sweep, data=args.data, info=info, batch_size=args.batch_size,
                      out_json=args.out or run_dir / "decode_norm_sweep.json", num_images=args.num_images,
                      num_workers=args.num_workers, precision=args.precision, use_ema=not args.raw,
                      split=args.split)
            return 0
        out = args.out or (run_dir / "eval.json")
        res = run_eval(args.ckpt, data=args.data, out_json=out, info=info, batch_size=args.batch_size,
                       num_images=args.num_images, num_workers=args.num_workers,
                       inception_weights=args.inception_weights, lpips_weights=args.lpips_weights,
                       no_lpips=args.no_lpips, fd=args.fd, precision=args.precision, use_ema=not args.raw,
                       split=args.split)
        if info.is_main:
            print(json.dumps(res))
    finally:
        D.cleanup()
    return 0


def main(argv=None) -> int:
    from experiments.common.data import DataError
    from models.encoder import EncoderWeightsError

    return run_cli(_main, argv, prog="eval_ae.py", one_line=(DataError, EncoderWeightsError,
                                                             FileNotFoundError))


if __name__ == "__main__":
    import warnings as _w

    _w.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)  # geoopt import
    sys.exit(main())
