"""gFID, sFID, Inception Score, precision and recall of generated samples, as the ADM evaluator defines them.

    python experiments/eval_gen.py --samples runs/dit-xl/samples-50000.npz \
        --ref VIRTUAL_imagenet256_labeled.npz --inception-weights pt_inception-2015-12-05-6726825d.pth \
        --out runs/dit-xl/gfid.json

Inputs are ADM-evaluator ``.npz`` files (uint8 ``[N, H, W, 3]`` under ``arr_0``, as written by
``experiments/sample.py --npz``) or image folders (every image file below, sorted; ``--image-size S``
centre-crops them to S×S, otherwise they must share one size). Features: torchmetrics'
``NoTrainInceptionV3`` (torch-fidelity's port of the TF FID Inception, TF1-style bilinear resize to 299):
2048-d pool3 (FID, precision/recall), unbiased 1008-way logits (IS) and the spatial features of sFID, the
first 7 channels of ``Mixed_6d``'s 1×1 branch (TF name ``mixed_6/conv``), 17·17·7 = 2023-d in (h, w, c)
order; run once per image. The weights file ``pt_inception-2015-12-05-6726825d.pth`` comes from the torch
hub cache or ``--inception-weights``; nothing is downloaded.

* FID / sFID: Fréchet distance between Gaussians; the samples' mean and covariance are float64 sums
  (independent of the batch size). The reference side is the ``.npz``'s stored ``mu``/``sigma`` (and
  ``mu_s``/``sigma_s``) when it holds them (ADM's reference batches do: statistics of the whole training
  set), else the statistics of its images; the JSON says which (``reference_stats``).
* Precision / recall (Kynkäänniemi et al., as in ADM's ``ManifoldEstimator``): each feature set's manifold
  is the union of balls around its points with radius the squared distance to the k-th nearest neighbour
  (k = 3); precision = fraction of sample features inside the reference manifold, recall = fraction of
  reference features inside the sample manifold; on all features of both sides by default, as ADM's
  evaluator (all 50 k samples against the 10 k reference images); ``--pr-max-features M`` takes a seeded
  random subset of M per side instead (memory: the k-NN radii of n features cost ~8·1024·n bytes per block).
* IS: torchmetrics' ``InceptionScore`` with ``--splits`` splits (ADM: 10).
Results go to ``--out`` as strict JSON (never ``NaN``: stored reference statistics and every feature
batch are checked to be finite first, naming the key or the batch and the first bad image) and one line
on the console. A ``<samples>.provenance.json`` record written by ``sample.py`` is copied into the
results (``samples_provenance``: the DiT and autoencoder the images came from).
"""
from __future__ import annotations

import json
import os
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Iterator, Sequence

warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from experiments.common.trainer import OneLineParser, UserError, run_cli  # noqa: E402

_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm")


class InceptionFeatures(nn.Module):
    """FID Inception (torch-fidelity weights): uint8 ``[B, 3, H, W]`` →
    ``(pool [B, 2048], logits [B, 1008], spatial [B, 2023])``.

    ``spatial`` is ADM's sFID feature: ``mixed_6/conv`` (here ``Mixed_6d.branch1x1``, after its ReLU),
    channels 0–6, flattened in (h, w, c) order like ADM's NHWC ``[B, 17, 17, 7]``.
    """

    def __init__(self, weights_path: str):
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        # antialias=False: torch-fidelity's TF1-compatible bilinear resize, as in the TF graph ADM runs
        self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048", "logits_unbiased"],
                                      feature_extractor_weights_path=weights_path, antialias=False)
        self._spatial: torch.Tensor | None = None
        self.net.Mixed_6d.branch1x1.register_forward_hook(self._keep_spatial)

    def _keep_spatial(self, _module, _inp, out: torch.Tensor) -> None:
        self._spatial = out[:, :7].permute(0, 2, 3, 1).reshape(out.shape[0], -1).float()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pool, logits = self.net._torch_fidelity_forward(x)
        spatial, self._spatial = self._spatial, None
        return pool.reshape(x.shape[0], -1), logits.reshape(x.shape[0], -1), spatial


def build_inception(weights: str | None) -> InceptionFeatures:
    """The FID Inception from ``weights`` or the torch hub cache; :class:`UserError` naming the flag if absent."""
    from experiments.common.metrics import INCEPTION_FILE, find_inception_weights

    try:
        path = find_inception_weights(weights)
    except FileNotFoundError as e:
        raise UserError(f"{e} (--inception-weights)") from e
    if path is None:
        raise UserError(f"no FID Inception weights: {INCEPTION_FILE} is not in the torch hub cache "
                        f"({torch.hub.get_dir()}/checkpoints); pass --inception-weights PATH")
    return InceptionFeatures(path)


class _Precomputed(nn.Module):
    """Identity 'feature extractor' so torchmetrics' Inception Score accumulates logits computed once."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _load_images(files: Sequence[Path], image_size: int | None) -> np.ndarray:
    from experiments.common.data import center_crop, load_rgb

    imgs = [load_rgb(f) for f in files]
    if image_size:
        imgs = [center_crop(i, image_size) for i in imgs]
    shapes = {i.shape for i in imgs}
    if len(shapes) > 1:
        raise UserError(f"images of different sizes {sorted(shapes)[:3]}: pass --image-size S to centre-crop")
    return np.stack(imgs)


def iter_images(path: str | os.PathLike, batch_size: int, image_size: int | None = None
                ) -> Iterator[torch.Tensor]:
    """Batches of uint8 ``[B, 3, H, W]`` from an ADM ``.npz`` (``arr_0`` NHWC) or an image folder."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.suffix.lower() in _EXTS)
        if not files:
            raise UserError(f"no images found under {p}")
        for i in range(0, len(files), batch_size):
            yield torch.from_numpy(_load_images(files[i:i + batch_size], image_size)).permute(0, 3, 1, 2)
        return
    if not p.is_file():
        raise UserError(f"not found: {p} (expected an ADM .npz with arr_0 or an image folder)")
    try:
        with np.load(p) as f:
            if "arr_0" not in f.files:
                raise UserError(f"{p} has no arr_0 (ADM format: uint8 [N, H, W, 3] under arr_0)")
            arr = f["arr_0"]
    except (OSError, ValueError, EOFError, TypeError, AttributeError, zipfile.BadZipFile) as e:  # not an .npz
        raise UserError(f"{p} is not a readable .npz ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                        f"expected an ADM .npz with uint8 [N, H, W, 3] under arr_0") from None
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise UserError(f"{p}: arr_0 must be uint8 [N, H, W, 3], got {arr.dtype} {arr.shape}")
    for i in range(0, arr.shape[0], batch_size):
        yield torch.from_numpy(np.ascontiguousarray(arr[i:i + batch_size])).permute(0, 3, 1, 2)


def stored_statistics(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The reference statistics an ADM ``.npz`` holds: any of ``mu``, ``sigma``, ``mu_s``, ``sigma_s``
    (empty for folders and for files without them)."""
    p = Path(path)
    if not p.is_file():
        return {}
    from experiments.common.finite import first_bad

    with np.load(p) as f:
        stats = {k: f[k].astype(np.float64) for k in ("mu", "sigma", "mu_s", "sigma_s") if k in f.files}
    for k, v in stats.items():
        bad = first_bad(v)
        if bad is not None:
            raise UserError(f"{p}: stored {k} holds {bad[0]} NaN/Inf values (first at {list(bad[1])}); recompute "
                            f"the reference statistics")
    return stats


def _squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[n, D], [m, D] → [n, m]`` squared Euclidean distances ‖a_i‖² − 2⟨a_i, b_j⟩ + ‖b_j‖² ≥ 0 (float64)."""
    return (a.square().sum(1, keepdim=True) - 2 * a @ b.T + b.square().sum(1)).clamp_min(0)


def manifold_radii(feats: torch.Tensor, k: int = 3, block: int = 1024) -> torch.Tensor:
    """Squared distance of every feature ``[n, D]`` to its k-th nearest neighbour in the same set (itself
    excluded): ``[n]``. Needs n > k."""
    if feats.shape[0] <= k:
        raise UserError(f"precision/recall with k = {k} needs more than {k} images per side, got {feats.shape[0]}")
    return torch.cat([_squared_distances(feats[i:i + block], feats).kthvalue(k + 1, dim=1).values
                      for i in range(0, feats.shape[0], block)])


def _inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """Fraction of ``points`` within squared distance ``radii[j]`` of some ``centres[j]``."""
    hits = [(_squared_distances(points[i:i + block], centres) <= radii).any(1) for i in range(0, len(points), block)]
    return torch.cat(hits).double().mean()


def precision_recall(ref: torch.Tensor, gen: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """k-NN manifold precision and recall (Kynkäänniemi et al. 2019, ADM's ``ManifoldEstimator``).

    precision = mean_g 1[∃ r: ‖g − r‖² ≤ ρ_k(r)], recall = mean_r 1[∃ g: ‖r − g‖² ≤ ρ_k(g)], where ρ_k(x) is
    the squared distance from x to its k-th nearest neighbour within its own set. ``ref [n, D]``,
    ``gen [m, D]``; computed in float64.
    """
    ref, gen = ref.double(), gen.double()
    return (float(_inside(gen, ref, manifold_radii(ref, k))), float(_inside(ref, gen, manifold_radii(gen, k))))


def _subset(feats: torch.Tensor, limit: int, seed: int) -> torch.Tensor:
    if limit <= 0 or feats.shape[0] <= limit:
        return feats
    idx = torch.randperm(feats.shape[0], generator=torch.Generator().manual_seed(seed))[:limit].sort().values
    return feats[idx]


def _features(src, extractor: nn.Module, batch_size: int, image_size: int | None, device, want_logits: bool
              ) -> dict:
    """One pass of ``extractor`` over ``src``: Fréchet statistics of pool and spatial features, the pool
    features (float32, CPU, for precision/recall) and, if ``want_logits``, the logits."""
    from experiments.common.metrics import FrechetStats

    from experiments.common.finite import require_finite

    out: dict = {"n": 0, "pool": [], "logits": [], "stats": None, "stats_s": None, "spatial": True}
    for imgs in iter_images(src, batch_size, image_size):
        feats = extractor(imgs.to(device))
        pool, logits = feats[0], feats[1]
        spatial = feats[2] if len(feats) > 2 else None
        require_finite(f"the features of {src}, images {out['n']}..{out['n'] + imgs.shape[0] - 1}",
                       offset=out["n"], hint="no metric written (check the feature network's weights)",
                       pool_features=pool, logits=logits if want_logits else None, spatial_features=spatial)
        if out["stats"] is None:
            out["stats"] = FrechetStats(pool.shape[-1], device)
            if spatial is not None:
                out["stats_s"] = FrechetStats(spatial.shape[-1], device)
        out["stats"].update(pool)
        if spatial is None:
            out["spatial"] = False
        elif out["stats_s"] is not None:
            out["stats_s"].update(spatial)
        out["pool"].append(pool.float().cpu())
        if want_logits:
            out["logits"].append(logits.double().cpu())
        out["n"] += imgs.shape[0]
    if not out["spatial"]:
        out["stats_s"] = None
    out["pool"] = torch.cat(out["pool"]) if out["pool"] else torch.zeros(0)
    return out


def _reference_side(stored: dict, ref: dict, key_mu: str, key_sigma: str, dim: int, what: str, path
                    ) -> tuple[torch.Tensor, torch.Tensor, str] | None:
    """The reference (μ, Σ) for one Fréchet distance: stored in the file when present, else of its images."""
    if key_mu in stored and key_sigma in stored:
        mu, sigma = torch.from_numpy(stored[key_mu]).reshape(-1), torch.from_numpy(stored[key_sigma])
        if mu.shape[0] != dim or sigma.shape != (dim, dim):
            raise UserError(f"{path}: stored {key_mu}/{key_sigma} have {mu.shape[0]} dims but the {what} features "
                            f"have {dim} (another feature network?)")
        return mu, sigma, f"stored {key_mu}/{key_sigma} of {path}"
    stats = ref["stats"] if key_mu == "mu" else ref["stats_s"]
    if stats is None:
        return None
    mu, sigma = stats.mean_cov()
    return mu, sigma, f"computed from the {ref['n']} reference images ({path} holds no {key_mu}/{key_sigma})"


@torch.no_grad()
def evaluate(samples: str | os.PathLike, reference: str | os.PathLike, extractor: nn.Module, *,
             batch_size: int = 100, splits: int = 10, image_size: int | None = None, seed: int = 0,
             device: torch.device | str = "cpu", pr_max_features: int = 0, k: int = 3) -> dict:
    """FID, sFID, IS, precision and recall of ``samples`` against ``reference`` (ADM protocol).

    Args:
        extractor: uint8 ``[B, 3, H, W]`` → ``(pool [B, D], logits [B, K][, spatial [B, S]])`` (the FID
            Inception, or a stand-in in tests); without the spatial output sFID is None.
        splits: IS splits; ``seed`` fixes torchmetrics' random permutation before splitting and the
            precision/recall subsets.
        pr_max_features: at most this many pool features per side for precision/recall (0 = all, ADM).
        k: neighbourhood size of the manifold estimate.

    Returns:
        ``{"fid", "is", "is_std", "precision", "recall", "sfid" (None without spatial features),
        "n_samples", "n_reference", "splits", "reference_stats", "reference_stats_spatial", "pr_k",
        "pr_features"}``.
    """
    from torchmetrics.image.inception import InceptionScore

    from experiments.common.metrics import frechet_distance

    extractor = extractor.to(device).eval()
    ref = _features(reference, extractor, batch_size, image_size, device, want_logits=False)
    gen = _features(samples, extractor, batch_size, image_size, device, want_logits=True)
    if ref["n"] < 2 or gen["n"] < 2:
        raise UserError(f"need at least 2 images on each side, got {gen['n']} samples and {ref['n']} reference")
    stored = stored_statistics(reference)
    mu_r, sigma_r, source = _reference_side(stored, ref, "mu", "sigma", gen["stats"].sum.shape[0], "pool", reference)
    fid = frechet_distance(*gen["stats"].mean_cov(), mu_r, sigma_r)
    sfid = source_s = None
    if gen["stats_s"] is not None:
        side = _reference_side(stored, ref, "mu_s", "sigma_s", gen["stats_s"].sum.shape[0], "spatial", reference)
        if side is not None:
            sfid, source_s = frechet_distance(*gen["stats_s"].mean_cov(), side[0], side[1]), side[2]
    ref_pr, gen_pr = _subset(ref["pool"], pr_max_features, seed), _subset(gen["pool"], pr_max_features, seed + 1)
    precision, recall = precision_recall(ref_pr, gen_pr, k)
    logits = torch.cat(gen["logits"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        is_ = InceptionScore(feature=_Precomputed(logits.shape[-1]), splits=splits)
    is_.update(logits)
    torch.manual_seed(seed)
    is_mean, is_std = is_.compute()
    return {"fid": fid, "is": float(is_mean), "is_std": float(is_std), "precision": precision, "recall": recall,
            "sfid": sfid, "n_samples": gen["n"], "n_reference": ref["n"], "splits": splits,
            "reference_stats": source, "reference_stats_spatial": source_s, "pr_k": k,
            "pr_features": {"reference": int(ref_pr.shape[0]), "samples": int(gen_pr.shape[0])}}


def summary(res: dict) -> str:
    """The console line of a result: ``gFID 2.65  sFID 4.1  IS 202.1 ± 3.0  precision 0.82  recall 0.55``."""
    sf = f"{res['sfid']:.3f}" if res.get("sfid") is not None else "n/a"
    return (f"gFID {res['fid']:.3f}  sFID {sf}  IS {res['is']:.2f} ± {res['is_std']:.2f}  "
            f"precision {res['precision']:.3f}  recall {res['recall']:.3f}  ({res['n_samples']} samples vs "
            f"{res['n_reference']} reference; reference statistics: {res['reference_stats']})")


def build_parser() -> OneLineParser:
    p = OneLineParser(prog="eval_gen.py", description="gFID, sFID, IS, precision and recall of generated images "
                      "(ADM .npz or folder) against a reference .npz (its stored mu/sigma when present) or "
                      "folder, as the ADM evaluator defines them; results to JSON.")
    a = p.add_argument
    a("--samples", required=True, help="generated images: ADM .npz (arr_0 uint8 NHWC) or image folder")
    a("--ref", required=True, help="reference images: ADM .npz (e.g. VIRTUAL_imagenet256_labeled.npz) or folder")
    a("--inception-weights", help="torch-fidelity FID Inception weights (pt_inception-2015-12-05-6726825d.pth); "
      "default: the torch hub cache")
    a("--out", help="JSON results path (default: next to --samples, <name>-gfid.json)")
    a("--batch-size", type=int, default=100, help="images per Inception batch")
    a("--splits", type=int, default=10, help="Inception Score splits")
    a("--image-size", type=int, help="centre-crop folder images to this side")
    a("--seed", type=int, default=0, help="seed of the IS split permutation and the precision/recall subsets")
    a("--pr-max-features", type=int, default=0, help="at most this many features per side for "
      "precision/recall (0 = all, as ADM's evaluator: every sample against every reference image)")
    a("--device", default="auto", help="auto | cpu | cuda")
    return p


def run(args, extractor: nn.Module | None = None) -> dict:
    """Evaluate and write the JSON; ``extractor`` replaces the Inception (tests)."""
    from experiments.common.distributed import pick_device

    for name in ("samples", "ref"):
        if not Path(getattr(args, name)).exists():
            raise UserError(f"--{name} not found: {getattr(args, name)}")
    extractor = extractor if extractor is not None else build_inception(args.inception_weights)
    res = evaluate(args.samples, args.ref, extractor, batch_size=args.batch_size, splits=args.splits,
                   image_size=args.image_size, seed=args.seed, device=pick_device(args.device),
                   pr_max_features=args.pr_max_features)
    res.update(samples=str(args.samples), reference=str(args.ref))
    s = Path(args.samples)
    rec = s.with_name(f"{s.stem}.provenance.json") if s.is_file() else None
    if rec is not None and rec.is_file():
        try:
            res["samples_provenance"] = json.loads(rec.read_text())
        except (OSError, ValueError) as e:  # a damaged record is reported, never fatal
            res["samples_provenance"] = {"unreadable": str(rec), "error": type(e).__name__}
    out = Path(args.out or s.with_name(f"{s.stem if s.is_file() else s.name}-gfid.json"))
    from experiments.common.finite import write_json_strict

    write_json_strict(out, res, f"eval_gen.py results for {s}")
    print(f"eval_gen.py: {summary(res)} -> {out}", flush=True)
    return res


def _main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from experiments.common.cli_common import validate_args

    validate_args(args)  # ranges, --device
    run(args)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 2 user error such as missing Inception weights)."""
    return run_cli(_main, argv, prog="eval_gen.py")


if __name__ == "__main__":
    sys.exit(main())
