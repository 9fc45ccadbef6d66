"""gFID and Inception Score of generated samples against a reference set, through torchmetrics.

    python experiments/eval_gen.py --samples runs/dit-xl/samples-50000.npz \
        --ref VIRTUAL_imagenet256_labeled.npz --inception-weights pt_inception-2015-12-05-6726825d.pth \
        --out runs/dit-xl/gfid.json

Inputs are ADM-evaluator ``.npz`` files (uint8 ``[N, H, W, 3]`` under ``arr_0``, as written by
``experiments/sample.py --npz``) or image folders (every image file below, sorted; ``--image-size S``
centre-crops them to S×S, otherwise they must share one size). Features: torchmetrics'
``NoTrainInceptionV3`` (torch-fidelity's port of the TF FID Inception: 2048-d pool3 for FID, unbiased
1008-way logits for IS), run once per image; the statistics and the scores are torchmetrics'
``FrechetInceptionDistance`` (float64 sums: independent of the batch size) and ``InceptionScore``
(``--splits`` splits, as ADM: 10). The weights file ``pt_inception-2015-12-05-6726825d.pth`` comes from
the torch hub cache or ``--inception-weights``; nothing is downloaded. Results go to ``--out`` as JSON.
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
    """FID Inception (torch-fidelity weights): uint8 ``[B, 3, H, W]`` → ``(pool [B, 2048], logits [B, 1008])``."""

    def __init__(self, weights_path: str):
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048", "logits_unbiased"],
                                      feature_extractor_weights_path=weights_path)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pool, logits = self.net._torch_fidelity_forward(x)
        return pool.reshape(x.shape[0], -1), logits.reshape(x.shape[0], -1)


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
    """Identity 'feature extractor' so torchmetrics' metrics accumulate features computed once."""

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


@torch.no_grad()
def evaluate(samples: str | os.PathLike, reference: str | os.PathLike, extractor: nn.Module, *,
             batch_size: int = 100, splits: int = 10, image_size: int | None = None, seed: int = 0,
             device: torch.device | str = "cpu") -> dict:
    """gFID of ``samples`` against ``reference`` and the IS of ``samples``.

    Args:
        extractor: uint8 ``[B, 3, H, W]`` → ``(pool [B, D], logits [B, K])`` (the FID Inception, or a
            stand-in in tests).
        splits: IS splits; ``seed`` fixes torchmetrics' random permutation before splitting.

    Returns:
        ``{"fid", "is", "is_std", "n_samples", "n_reference", "splits"}``.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.inception import InceptionScore

    extractor = extractor.to(device).eval()
    fid = is_ = None
    n = {"ref": 0, "gen": 0}
    for name, src in (("ref", reference), ("gen", samples)):
        for imgs in iter_images(src, batch_size, image_size):
            pool, logits = extractor(imgs.to(device))
            if fid is None:
                fid = FrechetInceptionDistance(feature=_Precomputed(pool.shape[-1])).to(device)
            fid.update(pool.double(), real=name == "ref")
            if name == "gen":
                if is_ is None:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", UserWarning)
                        is_ = InceptionScore(feature=_Precomputed(logits.shape[-1]), splits=splits).to(device)
                is_.update(logits.double())
            n[name] += imgs.shape[0]
    if n["ref"] < 2 or n["gen"] < 2:
        raise UserError(f"need at least 2 images on each side, got {n['gen']} samples and {n['ref']} reference")
    torch.manual_seed(seed)
    is_mean, is_std = is_.compute()
    return {"fid": float(fid.compute()), "is": float(is_mean), "is_std": float(is_std),
            "n_samples": n["gen"], "n_reference": n["ref"], "splits": splits}


def build_parser() -> OneLineParser:
    p = OneLineParser(prog="eval_gen.py", description="gFID / IS of generated images (ADM .npz or folder) "
                      "against a reference .npz or folder, through torchmetrics; results to JSON.")
    a = p.add_argument
    a("--samples", required=True, help="generated images: ADM .npz (arr_0 uint8 NHWC) or image folder")
    a("--ref", required=True, help="reference images: ADM .npz (e.g. VIRTUAL_imagenet256_labeled.npz) or folder")
    a("--inception-weights", help="torch-fidelity FID Inception weights (pt_inception-2015-12-05-6726825d.pth); "
      "default: the torch hub cache")
    a("--out", help="JSON results path (default: next to --samples, <name>-gfid.json)")
    a("--batch-size", type=int, default=100, help="images per Inception batch")
    a("--splits", type=int, default=10, help="Inception Score splits")
    a("--image-size", type=int, help="centre-crop folder images to this side")
    a("--seed", type=int, default=0, help="seed of the IS split permutation")
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
                   image_size=args.image_size, seed=args.seed, device=pick_device(args.device))
    res.update(samples=str(args.samples), reference=str(args.ref))
    s = Path(args.samples)
    out = Path(args.out or s.with_name(f"{s.stem if s.is_file() else s.name}-gfid.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"eval_gen.py: gFID {res['fid']:.3f}  IS {res['is']:.2f} ± {res['is_std']:.2f}  "
          f"({res['n_samples']} samples vs {res['n_reference']} reference) -> {out}", flush=True)
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
