"""Sample images from a trained spherical-latent DiT (PAPER.md "Riemannian flow matching", "Sampler").

    python experiments/sample.py                              # runs/dit-cpu-embedded -> samples.png
    python experiments/sample.py --ckpt runs/dit-xl --cfg 1.5 --cfg-interval 0.0 0.7
    torchrun --nproc_per_node=8 experiments/sample.py --ckpt runs/dit-xl --num-samples 50000 --npz

Pipeline: uniform noise on the product of N spheres S^{C−1}_R (t = 1) → ``spherical.integrate``
(Riemannian Euler, 50 steps by default) on the α-shifted grid ``time_shift(linspace(1, 0, steps+1), α)``
(or ``spherical.odeint`` with ``--method odeint:dopri5``) with classifier-free guidance
``v = v_u + w·(v_c − v_u)`` (``--cfg w``, optionally only for t in ``--cfg-interval lo hi``) → every token
rescaled to norm s by ``Hypersphere(s).projx`` (PAPER.md Alg. 2 line 14) → autoencoder decoder. s is the
autoencoder checkpoint's ``latent_norm`` (the mean norm of the tokens its decoder read, measured on
held-out images by ``in1k_ae.py``) unless ``--decode-norm S`` is given; the startup line says which. The
paper's s_vae = 14 is that value for DINOv3-L (App. C); a toy autoencoder's is its own.
A checkpoint trained with ``in1k_dit.py --flow euclidean`` (stored as ``latent["flow"]``) is sampled with
its own flow instead: Gaussian noise and ambient Euler (:mod:`experiments.common.flows`), then the same
rescale-and-decode.
For a run trained on the embedded photos (the demo) it ends by printing, and writing to
``<out>.figures.json``, the demo figures of :mod:`experiments.common.demo_metrics`: the fraction of samples
whose nearest training crop (in the autoencoder's latent directions, and in pixels) is of the sample's own
class, and the FD of latent directions against held-out crops (``--no-figures`` skips them). ``--cfg``
defaults to the run's ``--sample-cfg`` (1 for runs written before it existed).
Outputs: a PNG grid and, with ``--npz``, an ADM-evaluator ``.npz`` (uint8 NHWC under ``arr_0``; labels are
``arange(N) % num_classes``, i.e. 50 per class for N = 50000). Sample ``i``'s noise depends only on
``(--seed, i)``: results do not depend on the number of processes or the batch size.
Checks before any sampling: ``--out``/``--npz`` are file paths (not folders, not under a file); the
autoencoder gives the DiT's latent shape and has the encoder the DiT was trained on (content identity,
:mod:`experiments.common.provenance`; ``--accept-changed-ae`` decodes with another one on purpose); the
folders written into are locked as run folders (a training run writing there makes this refuse). Each
output gets a ``<name>.provenance.json`` record (DiT weights digest, autoencoder identity, settings).
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Callable, Sequence

warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from experiments.common import distributed as D, provenance  # noqa: E402
from experiments.common.cli_common import require_finite, validate_sample_args  # noqa: E402
from experiments.common.data import mix_seed  # noqa: E402
from experiments.common.finite import write_json_strict  # noqa: E402
from experiments.common.dit_io import (DEFAULT_DIT_RUN, decode_norm, load_autoencoder, load_dit,  # noqa: E402
                                      resolve_ckpt)
from experiments.common.trainer import NonFiniteError, OneLineParser, UserError, autocast, run_cli  # noqa: E402
from spherical import ADAPTIVE_METHODS, METHODS, Hypersphere, dimension_shift, integrate, odeint, time_shift  # noqa: E402

Tensor = torch.Tensor


def time_grid(steps: int, alpha: float) -> Tensor:
    """The sampling grid ``time_shift(linspace(1, 0, steps + 1), α)``: ``[steps + 1]``, 1 → 0."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return time_shift(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), alpha).float()


def guided_velocity(model: torch.nn.Module, labels: Tensor, cfg_scale: float = 1.0,
                    cfg_interval: tuple[float, float] | None = None,
                    precision: str = "fp32") -> Callable[[Tensor, Tensor], Tensor]:
    """``v(x [B,N,C], t 0-dim) -> [B,N,C]`` (float32): the model with CFG where ``lo ≤ t ≤ hi``.

    ``cfg_scale == 1`` (or t outside the interval) runs only the conditional model. bf16 autocast wraps the
    model call on CUDA when ``precision == "bf16"``; the output is returned in float32.
    """
    def v(x: Tensor, t: Tensor) -> Tensor:
        tb = t.reshape(1).expand(x.shape[0]).to(x.dtype)
        # the interval test reads t on the host (one sync per evaluation), only when an interval is set
        guide = cfg_scale != 1.0 and (cfg_interval is None or cfg_interval[0] <= float(t) <= cfg_interval[1])
        with autocast(x.device, precision, cuda_only=True):
            out = model.forward_with_cfg(x, tb, labels, cfg_scale) if guide else model(x, tb, labels)
        return out.float()

    return v


def sample_noise(indices: Sequence[int], num_tokens: int, channels: int, radius: float, seed: int,
                 device: torch.device | str = "cpu", flow: str = "riemannian") -> Tensor:
    """The flow's t = 1 noise for the given global sample indices: ``[len(indices), N, C]`` (uniform on
    S^{C−1}_R, or (R/χ_C)·N(0, I) for ``flow="euclidean"``).

    Sample ``i`` uses its own generator seeded by ``(seed, i)``, so it is the same on any rank/batch.
    """
    from experiments.common.flows import flow_noise

    out = [flow_noise(flow, (1, num_tokens, channels), radius, generator=torch.Generator().manual_seed(
        mix_seed(seed, int(i)))) for i in indices]
    return torch.cat(out).to(device)


@torch.no_grad()
def sample_latents(model: torch.nn.Module, labels: Tensor, *, num_tokens: int, channels: int, radius: float,
                   steps: int = 50, method: str = "euler", cfg_scale: float = 1.0,
                   cfg_interval: tuple[float, float] | None = None, alpha: float | None = None,
                   generator: torch.Generator | None = None, noise: Tensor | None = None,
                   precision: str = "fp32", rtol: float = 1e-5, atol: float = 1e-5,
                   flow: str = "riemannian") -> Tensor:
    """Integrate the learned field from uniform noise (t = 1) to data (t = 0) on the sphere, or, for
    ``flow="euclidean"``, from Gaussian noise with ambient Euler (no projection; ``method`` must be euler).

    Args:
        model: a :class:`models.dit.LightningDiT` (``(x, t, y) -> v``, with ``forward_with_cfg``).
        labels: ``[B]`` int64 class labels (real classes; the null class is added by CFG).
        num_tokens, channels, radius: the latent manifold, N tokens on S^{C−1}_R.
        steps: number of grid intervals.
        method: an ``integrate`` method (``euler``, ``midpoint``, ``heun``, ``rk4``, ``projected_euler``,
            ``projected_rk4``), an adaptive pair on the sphere (``dopri5``, ``bosh3``: ``rtol``/``atol``, end points
            only) or ``odeint[:SOLVER]`` (torchdiffeq, default dopri5, end points only).
        cfg_scale: guidance weight w (1 = conditional model).
        cfg_interval: ``(lo, hi)``: guidance only for lo ≤ t ≤ hi.
        alpha: time-grid shift; ``None`` = ``dimension_shift(num_tokens, channels)`` as in training.
        generator: RNG for the noise (ignored when ``noise`` is given).
        noise: optional ``[B, N, C]`` start points (on the sphere for the Riemannian flow).
        flow: ``"riemannian"`` or ``"euclidean"`` (the checkpoint's ``latent["flow"]``).

    Returns:
        ``[B, N, C]`` float32 latents on S^{C−1}_R (Riemannian), or off it in general (Euclidean).
    """
    from experiments.common.flows import check_flow, euclidean_euler, flow_noise

    dev = labels.device
    alpha = dimension_shift(num_tokens, channels) if alpha is None else float(alpha)
    sphere = Hypersphere(radius)
    if check_flow(flow) == "euclidean" and method != "euler":
        raise ValueError(f"the euclidean flow samples with ambient Euler only, got method {method!r}")
    if noise is None:
        noise = flow_noise(flow, (labels.shape[0], num_tokens, channels), radius, generator=generator,
                           device=generator.device if generator is not None else dev)
    x = noise.to(dev, torch.float32)
    v = guided_velocity(model, labels, cfg_scale, cfg_interval, precision)
    if flow == "euclidean":
        return euclidean_euler(v, x, time_grid(steps, alpha))
    if method.startswith("odeint"):
        solver = method.partition(":")[2] or "dopri5"
        return odeint(v, x, torch.tensor([1.0, 0.0]), sphere=sphere, method=solver, rtol=rtol, atol=atol)
    if method in ADAPTIVE_METHODS:  # adaptive pairs on the sphere: only the end points of the grid
        return integrate(v, x, torch.tensor([1.0, 0.0]), sphere=sphere, method=method, rtol=rtol, atol=atol)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS + ADAPTIVE_METHODS} or odeint[:SOLVER]")
    return integrate(v, x, time_grid(steps, alpha), sphere=sphere, method=method)


def to_uint8(images: Tensor) -> np.ndarray:
    """``[B, 3, H, W]`` in [-1, 1] → uint8 ``[B, H, W, 3]`` (ADM convention ``(x + 1)·127.5``)."""
    from experiments.common.metrics import to_uint8 as rounded

    return rounded(images).permute(0, 2, 3, 1).contiguous().cpu().numpy()


@torch.no_grad()
def generate(model: torch.nn.Module, ae: torch.nn.Module, labels: Tensor, latent: dict, *,
             decode_norm: float, noise: Tensor | None = None, **kw) -> tuple[Tensor, Tensor]:
    """Sample latents, rescale every token to ``decode_norm`` and decode.

    Returns:
        ``(z [B, N, C] with ‖z_i‖ = decode_norm, images [B, 3, H, W] in [-1, 1])``.
    """
    z = sample_latents(model, labels, num_tokens=latent["num_tokens"], channels=latent["channels"],
                       radius=latent["radius"], alpha=kw.pop("alpha", None) or latent.get("alpha"),
                       noise=noise, flow=latent.get("flow", "riemannian"), **kw)
    z = Hypersphere(decode_norm).projx(z)
    return z, ae.decode(z).float().clamp(-1, 1)


def build_parser() -> OneLineParser:
    p = OneLineParser(prog="sample.py", description="Sample images from an in1k_dit.py checkpoint "
                      "(Riemannian Euler on the sphere, CFG, decode at --decode-norm).")
    a = p.add_argument
    a("--ckpt", default=DEFAULT_DIT_RUN, help="in1k_dit.py run folder or checkpoint file")
    a("--ae-ckpt", help="autoencoder run folder / file (default: the one the DiT was trained on)")
    a("--num-samples", type=int, default=64, help="number of images; labels = arange(N) %% num_classes")
    a("--labels", type=int, nargs="+", help="explicit class labels (cycled to --num-samples)")
    a("--steps", type=int, default=50, help="integration steps on the α-shifted time grid")
    a("--method", default="euler", help=f"one of {', '.join(METHODS + ADAPTIVE_METHODS)}, or odeint[:SOLVER] "
      "(torchdiffeq)")
    a("--rtol", type=float, default=1e-5, help="relative tolerance of dopri5/bosh3/odeint")
    a("--atol", type=float, default=1e-5, help="absolute tolerance of dopri5/bosh3/odeint")
    a("--cfg", type=float, help="classifier-free guidance scale w (1 = off; default: the run's --sample-cfg, "
      "1 for runs that predate it)")
    a("--cfg-interval", type=float, nargs=2, metavar=("LO", "HI"), help="guide only for LO <= t <= HI")
    a("--alpha", type=float, help="time-grid shift α (default: the training α, sqrt(N·C/4096))")
    a("--decode-norm", type=float, help="token norm s_vae before decoding (default: the autoencoder "
      "checkpoint's latent_norm; the paper's value for DINOv3-L is 14)")
    a("--batch-size", type=int, default=64, help="images per forward batch per process")
    a("--seed", type=int, default=0, help="noise seed (sample i uses (seed, i))")
    a("--out", help="PNG grid path (default: <run>/samples.png)")
    a("--grid", type=int, default=64, help="at most this many images in the PNG grid")
    a("--nrow", type=int, default=8, help="images per grid row")
    a("--npz", nargs="?", const="auto", help="also write an ADM .npz (default path <run>/samples-N.npz)")
    a("--raw", action="store_true", help="use the raw weights instead of the EMA weights")
    a("--accept-changed-ae", action="store_true", help="decode with an autoencoder whose encoder differs from "
      "the one the DiT was trained on, on purpose (recorded in the provenance record)")
    a("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16 autocast of the DiT (CUDA only)")
    a("--device", default="auto", help="auto | cpu | cuda")
    a("--no-figures", action="store_true", help="skip the demo figures printed for runs trained on the "
      "embedded photos (nearest-crop class consistency, FD of latent directions; demo_metrics)")
    a("--threads", type=int, help="CPU intra-op threads (default: 1 for DiTs under 10 M parameters on CPU, "
      "where more threads are slower; else torch's)")
    return p


def _main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.num_samples < 1 or args.batch_size < 1:
        raise UserError("--num-samples and --batch-size must be >= 1")
    if not (args.method in METHODS + ADAPTIVE_METHODS or args.method.startswith("odeint")):
        raise UserError(f"--method {args.method!r}: expected one of {', '.join(METHODS + ADAPTIVE_METHODS)} "
                        "or odeint[:SOLVER]")
    validate_sample_args(args)  # ranges, --cfg-interval order, odeint solver, --device
    for flag, path in (("--out", args.out), ("--npz", None if args.npz in (None, "auto") else args.npz)):
        if path is not None:
            check_output_path(path, flag)
    info = D.setup(args.device)
    threads = torch.get_num_threads()
    try:
        return run(args, info)
    finally:
        torch.set_num_threads(threads)
        D.cleanup()


def check_output_path(path: str | Path, flag: str) -> None:
    """An output path must name a file: not an existing folder, and no part of its folder path a file.
    Raises :class:`UserError` (one line) before anything is computed or written."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{flag} {p} is a folder; pass a file path (e.g. {p / 'samples.png'})")
    for parent in p.parents:
        if parent.exists() and not parent.is_dir():
            raise UserError(f"{flag} {p}: {parent} is a file, not a folder; pass a path in a folder")


def _outputs(args, run_dir: Path, n: int) -> tuple[Path, Path | None]:
    out = Path(args.out or run_dir / "samples.png")
    npz = Path(run_dir / f"samples-{n}.npz" if args.npz == "auto" else args.npz) if args.npz else None
    for flag, p in (("--out", out), ("--npz", npz)):
        if p is not None:
            check_output_path(p, flag)
    return out, npz


def run(args, info) -> int:
    """Load, check, lock the output folders, sample (see the module docstring)."""
    import contextlib

    from experiments.common.rundir import run_folder

    ckpt = resolve_ckpt(args.ckpt, "DiT", "--ckpt")
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    out, npz = _outputs(args, run_dir, args.num_samples)
    folders = list(dict.fromkeys(provenance.run_dir_of(p) for p in (out, npz) if p is not None))
    with contextlib.ExitStack() as stack:
        for folder in folders:  # one writer per folder: a training run (or another sample.py) there refuses
            stack.enter_context(run_folder(folder, info, prog="sample.py", fresh_rule=False, tmp_globs=_TMP_GLOBS))
        return _run(args, info, ckpt, run_dir, out, npz)


#: Temporary files a killed sample.py leaves (removed under the folder's lock).
_TMP_GLOBS = (".*.tmp.npz", ".*.tmp.png", ".*.provenance.json.tmp", ".*.figures.json.tmp")  # not the ranks' parts: live


def _run(args, info, ckpt: Path, run_dir: Path, out: Path, npz: Path | None) -> int:
    from experiments.common.metrics import save_grid

    dev = info.device
    model, latent, train_args = load_dit(ckpt, dev, ema=not args.raw)
    if args.cfg is None:
        args.cfg = float(train_args.get("sample_cfg", 1.0))
    if args.threads or (dev.type == "cpu" and sum(p.numel() for p in model.parameters()) < 10_000_000):
        torch.set_num_threads(args.threads or 1)
    ae = load_autoencoder(args.ae_ckpt or latent["ae_ckpt"], dev)
    record = check_pair(args, ckpt, model, latent, ae, info)  # before any sampling
    s_vae, s_src = decode_norm(ae, args.decode_norm)
    n, k = args.num_samples, latent["num_classes"]
    labels = (torch.tensor(args.labels).repeat((n + len(args.labels) - 1) // len(args.labels))[:n]
              if args.labels else torch.arange(n) % k)
    if int(labels.max()) >= k or int(labels.min()) < 0:
        raise UserError(f"labels must be in [0, {k}) for this checkpoint")
    lo, hi = info.rank * n // info.world_size, (info.rank + 1) * n // info.world_size
    kw = dict(steps=args.steps, method=args.method, cfg_scale=args.cfg, precision=args.precision,
              cfg_interval=tuple(args.cfg_interval) if args.cfg_interval else None, alpha=args.alpha,
              rtol=args.rtol, atol=args.atol)
    flow = latent.get("flow", "riemannian")
    if flow == "euclidean" and args.method != "euler":
        raise UserError(f"{ckpt} was trained with --flow euclidean: it samples with --method euler only")
    if info.is_main:
        print(f"sample.py: {n} samples from {ckpt} ({flow} flow, {args.method}, {args.steps} steps, cfg {args.cfg}, "
              f"decode norm {s_vae:.6g} from {s_src}) on {info.world_size} process(es)", flush=True)
    figures = not args.no_figures and bool(train_args.get("embedded")) and info.world_size == 1
    parts, grid, kept = [], [], []
    for s in range(lo, hi, args.batch_size):
        idx = list(range(s, min(hi, s + args.batch_size)))
        noise = sample_noise(idx, latent["num_tokens"], latent["channels"], latent["radius"], args.seed, dev,
                             flow=flow)
        try:
            z, img = generate(model, ae, labels[idx].to(dev), latent, decode_norm=s_vae, noise=noise,
                              **kw)
        except FloatingPointError as e:  # the integrators stop at the first non-finite step
            raise NonFiniteError(f"non-finite latents in samples {idx[0]}..{idx[-1]} ({e}); nothing written "
                                 f"(check --cfg and the other sampling settings, or the checkpoint)") from None
        require_finite(f"samples {idx[0]}..{idx[-1]}", offset=idx[0], latents=z, images=img)  # never write garbage
        parts.append(to_uint8(img))
        if figures:
            kept.append((z.cpu(), img.cpu()))
        if sum(g.shape[0] for g in grid) < args.grid:
            grid.append(img.cpu())
    local = np.concatenate(parts) if parts else np.zeros((0,), np.uint8)
    if npz is not None:
        arr = _gather(local, npz, info)
        if info.is_main:
            write_npz(arr, npz)
    if info.is_main:
        imgs = torch.cat(grid)[:args.grid] if grid else torch.zeros(0)
        save_grid(list(imgs.split(args.nrow)), out, nrow=args.nrow)
        record.update(outputs=[str(p) for p in (out, npz) if p is not None], num_samples=n, seed=args.seed,
                      settings={k: v for k, v in vars(args).items() if k not in ("device", "threads")},
                      decode_norm=s_vae, decode_norm_source=s_src)
        for p in (out, npz):
            if p is not None:
                write_json_strict(provenance_path(p), record, f"provenance of {p}")
        print(f"sample.py: wrote {out}" + (f" and {npz} ({n} images)" if npz else ""), flush=True)
        if figures:
            _demo_figures(args, kept, labels, ae, latent, train_args, out, run_dir)
    D.barrier()
    return 0


def provenance_path(output: str | Path) -> Path:
    """The provenance record of an output file: ``samples.png`` → ``samples.provenance.json``."""
    p = Path(output)
    return p.with_name(f"{p.stem}.provenance.json")


def check_pair(args, ckpt: Path, model: torch.nn.Module, latent: dict, ae: torch.nn.Module, info=None) -> dict:
    """The DiT and the decoding autoencoder belong together: the same latent shape (always required) and
    the encoder the DiT was trained on (its recorded identity; ``--accept-changed-ae`` accepts another,
    noted in the record). Returns the samples' provenance record ``{"dit", "autoencoder",
    "ae_change_accepted"}``."""
    ident = provenance.ae_identity(ae)
    if (latent["num_tokens"], latent["channels"]) != (ident["num_tokens"], ident["channels"]):
        raise UserError(f"the DiT {ckpt} samples {latent['num_tokens']}x{latent['channels']} latents but the "
                        f"autoencoder {ident['path']} decodes {ident['num_tokens']}x{ident['channels']}; pass "
                        f"the --ae-ckpt it was trained with ({latent.get('ae_ckpt')})")
    change = provenance.check_ae(latent.get("ae_identity"), ident, what=f"the DiT {ckpt}",
                                 accept=args.accept_changed_ae)
    if change is not None and (info is None or info.is_main):
        print(f"sample.py: note: --accept-changed-ae: decoding with {provenance.describe(ident)}; the DiT was "
              f"trained on {provenance.describe(change['from'])}", flush=True)
    return {"dit": {"path": str(ckpt), "weights": provenance.tensor_digest(model.state_dict()),
                    "ema": not args.raw, "trained_on": latent.get("ae_identity")},
            "autoencoder": ident, "ae_change_accepted": change is not None}


def _demo_figures(args, kept: list, labels: Tensor, ae, latent: dict, train_args: dict, out: Path,
                  run_dir: Path) -> None:
    """Print and write (``<out>.figures.json``) the demo figures of a run trained on the embedded photos; the
    bank is the run's whole training pool (its latent cache when it has one)."""
    import json

    from experiments.common.demo_metrics import embedded_demo_figures
    from experiments.common.data import EMBEDDED_TRAIN_LEN

    bank_latents, cache = None, run_dir / "latents"
    if train_args.get("cache_latents") and (cache / "index.json").is_file():  # the pool the run trained on
        from experiments.cache_latents import LatentShards

        ds = LatentShards(cache)
        bank_latents = torch.stack([ds[i]["latent"] for i in range(len(ds))])
    figs = embedded_demo_figures(torch.cat([z for z, _ in kept]), torch.cat([i for _, i in kept]), labels, ae,
                                 image_size=latent["image_size"], train_seed=int(train_args.get("seed", 0)),
                                 bank=EMBEDDED_TRAIN_LEN, num_classes=latent["num_classes"],
                                 bank_latents=bank_latents)
    print(f"sample.py: {figs.line()}", flush=True)
    path = out.with_name(f"{out.stem}.figures.json")
    settings = dict(cfg=args.cfg, steps=args.steps, method=args.method, seed=args.seed, raw=args.raw,
                    cfg_interval=args.cfg_interval, ckpt=str(args.ckpt))
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(dict(figs.as_dict(), settings=settings), indent=1) + "\n")
    tmp.replace(path)


def _gather(local: np.ndarray, npz: Path, info) -> np.ndarray | None:
    """All ranks' uint8 arrays in rank order on rank 0 (through files next to ``npz``), else ``None``."""
    if not info.enabled:
        return local
    tmp = npz.with_name(f".{npz.stem}.rank{info.rank}.npy")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    np.save(tmp, local)
    D.barrier()
    if not info.is_main:
        return None
    files = [npz.with_name(f".{npz.stem}.rank{r}.npy") for r in range(info.world_size)]
    arr = np.concatenate([a for a in (np.load(f) for f in files) if a.size])
    for f in files:
        f.unlink()
    return arr


def write_npz(arr: np.ndarray, path: str | Path) -> Path:
    """ADM-evaluator sample file: ``arr_0`` = uint8 ``[N, H, W, 3]`` (written atomically)."""
    import os

    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected uint8 [N, H, W, 3], got {arr.dtype} {arr.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    try:
        np.savez(tmp, arr_0=arr)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 2 user error)."""
    return run_cli(_main, argv, prog="sample.py")


if __name__ == "__main__":
    sys.exit(main())
