"""Encode a dataset once into safetensors shards of spherical latents, and read them back.

    python experiments/cache_latents.py --out runs/latents-embedded                 # embedded photos
    torchrun --nproc_per_node=8 experiments/cache_latents.py --data /imagenet --ae-ckpt runs/ae-paper-s2 \
        --flip --out /scratch/in1k-latents

Layout of ``--out DIR``: ``shard-00000.safetensors``, ... each holding ``latents`` ``[S, N, C]`` (``--dtype``),
``labels`` ``[S]`` int64 and, with ``--flip``, ``latents_flip`` (the horizontally flipped image), for images
``[k·S, (k+1)·S)`` of the dataset (centre crops of ``DIR/train`` for ``--data``, the crop policy of
``in1k_dit.py``'s on-the-fly path too; the fixed epoch-0 crops of the embedded photos otherwise);
``index.json`` describes the cache (``complete: true`` once every shard is written) and records the
content identity of the autoencoder (``ae_identity``: digests of its encoder and decoder weights, latent
shape, ``latent_norm``; :mod:`experiments.common.provenance`), the class list and every shard's size and
sha256 (``shards``). Resumable: finished shards (written atomically, each with a size/checksum record)
are verified and skipped, so re-running the same command after a kill only encodes what is missing; a
damaged shard is named and re-made; a rerun with another autoencoder (other weights, even at the same
path) or another class list is refused. No non-finite latent is ever written: the check names the shard
and the first bad image. DDP-aware: rank r writes shards r, r + W, ...

Size: images × N × C × bytes(dtype) × (2 with ``--flip``): 256 × 1024 tokens in float16 are 512 KiB per
image, ≈ 671 GB for ImageNet's 1.28 M images (1.34 TB with ``--flip``). The size is printed before the
first shard and the run refuses (one line) when the free disk space is smaller than what is left to write.
Storage rounding moves each token on S^1023_R by ≈ 1.7e-3 rad in bfloat16 and ≈ 2.1e-4 rad in float16
(the default); tokens are re-projected onto the sphere in float32 when read.
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import warnings
from pathlib import Path
from typing import Sequence

warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402

from experiments.common import distributed as D  # noqa: E402
from experiments.common.data import (DataError, EmbeddedPhotos, ImageFolderDataset, _split_key,  # noqa: E402
                              close_loader, collate, mix_seed, worker_init)
from experiments.common import provenance, shards as S  # noqa: E402
from experiments.common.finite import require_finite  # noqa: E402
from experiments.common.trainer import OneLineParser, UserError, autocast, run_cli, script_exit  # noqa: E402
from spherical import Hypersphere  # noqa: E402

INDEX = "index.json"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_KEYS = ("num_images", "shard_size", "flip", "dtype", "image_size", "source", "classes")


def shard_path(root: str | os.PathLike, k: int) -> Path:
    return Path(root) / f"shard-{k:05d}.safetensors"


def _write_json(obj: dict, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


_TMP_GLOBS = (".shard-*.safetensors.tmp", ".index.json.tmp", *S.TMP_GLOBS)  # left by a kill mid-write



def cache_bytes(num_images: int, num_tokens: int, channels: int, dtype: str, flip: bool) -> int:
    """Bytes of latent data a cache holds: ``num_images · N · C · itemsize(dtype) · (2 if flip)`` plus the
    int64 labels (safetensors headers not counted)."""
    item = torch.empty((), dtype=_DTYPES[dtype]).element_size()
    return num_images * (num_tokens * channels * item * (2 if flip else 1) + 8)


def _free_bytes(path: Path) -> int:
    p = path
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def _gb(n: int) -> str:
    return f"{n / 1e9:.3g} GB"


@torch.no_grad()
def encode_batch(ae, images: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """``[B, 3, H, W]`` in [-1, 1] → the DiT's latents ``[B, N, C]``, float32 on S^{C−1}_R.

    The raw student tokens (computed under ``precision`` autocast on CUDA) are projected R·z/‖z‖ in
    float32 by ``ae.to_sphere``, whatever the decoder reads.
    """
    with autocast(images.device, precision, cuda_only=True):
        tokens = ae.student_tokens(images)
    return ae.to_sphere(tokens)


def cache_latents(ae, dataset: Dataset, out: str | os.PathLike, *, info: D.DistInfo = D.DistInfo(), **kw) -> dict:
    """:func:`encode_to_shards` while holding ``out``'s run-folder lock (one writer per cache folder; the
    temporary files of a killed write are removed first). Same arguments and result."""
    from experiments.common.rundir import run_folder

    with run_folder(out, info, prog="cache_latents", fresh_rule=False, tmp_globs=_TMP_GLOBS):
        return encode_to_shards(ae, dataset, out, info=info, **kw)


def complete_cache(root: str | os.PathLike, expect: dict) -> bool:
    """Whether ``root`` holds a complete cache whose ``index.json`` agrees with every item of ``expect``
    (e.g. ``source``, ``ae_ckpt``, ``image_size``, ``flip``, ``dtype``)."""
    path = Path(root) / INDEX
    try:
        index = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return False
    return bool(index and index.get("complete") and all(index.get(k) == v for k, v in expect.items())
                and all(shard_path(root, k).is_file() for k in range(index.get("num_shards", 0))))


def encode_to_shards(ae, dataset: Dataset, out: str | os.PathLike, *, meta: dict, shard_size: int = 1024,
                     batch_size: int = 64, flip: bool = False, dtype: str = "float16", precision: str = "fp32",
                     num_workers: int = 0, info: D.DistInfo = D.DistInfo(), log=print) -> dict:
    """Encode ``dataset`` (items ``{"image", "label"}``, indexed by int) into shards under ``out``.

    Args:
        ae: autoencoder in eval mode on ``info.device``.
        meta: identifies the cache (``ae_ckpt``, ``image_size``, ``source``, ``classes``); a rerun into the
            same folder with different settings, or with an autoencoder of another identity
            (:func:`experiments.common.provenance.ae_identity`, stored as ``ae_identity``), raises
            :class:`UserError` instead of mixing shards.
        shard_size: images per shard S.
        batch_size: images per encoder batch.
        flip: also store the latents of the flipped images (the flip is done on the device: no second
            decode).
        num_workers: data-loader worker processes decoding images for this process (one DataLoader over
            all of this process's missing shards).
        dtype: storage dtype of the latents (``float32``, ``bfloat16``, ``float16``).
        log: where the size line goes (the main process's ``print``); a cache larger than the free disk
            space raises :class:`UserError` before anything is written.

    Returns:
        ``{"written": int, "skipped": int}`` for this process.
    """
    root = Path(out)
    n = len(dataset)
    total = cache_bytes(n, ae.num_tokens, ae.latent_dim, dtype, flip)
    done = sum(p.stat().st_size for p in root.glob("shard-*.safetensors")) if root.is_dir() else 0
    need, free = max(total - done, 0), _free_bytes(root)
    log(f"cache_latents: {n} images x {ae.num_tokens} x {ae.latent_dim} {dtype}{' x 2 (flip)' if flip else ''}"
        f" = {_gb(total)} in {root} ({_gb(need)} left to write, {_gb(free)} free)")
    if need > free:
        raise UserError(f"not enough disk for the latent cache in {root}: {_gb(need)} left to write, {_gb(free)} "
                        f"free (use another --out, --dtype float16, or train on the fly without a cache)")
    root.mkdir(parents=True, exist_ok=True)
    index = dict(meta, num_images=n, shard_size=shard_size, num_shards=math.ceil(n / shard_size), flip=flip,
                 dtype=dtype, num_tokens=ae.num_tokens, channels=ae.latent_dim, radius=ae.radius,
                 ae_identity=provenance.ae_identity(ae), complete=False)
    old = _read_index(root)
    if old is not None:
        diff = [k for k in _KEYS if old.get(k) != index.get(k)]
        if diff:
            raise UserError(f"{root} holds a cache written with different {', '.join(diff)}; use another --out")
        if old.get("ae_identity"):
            provenance.check_ae(old["ae_identity"], index["ae_identity"], what=f"the latent cache {root}",
                                hint="pass the autoencoder it was made with, or another --out")
        elif old.get("ae_ckpt") != index.get("ae_ckpt"):
            raise UserError(f"{root} holds a cache written with different ae_ckpt; use another --out")
    D.barrier()
    if info.is_main:
        _write_json(dict(index, shards=(old or {}).get("shards"), complete=bool(old and old.get("complete"))),
                    root / INDEX)
    from safetensors.torch import save_file

    mine = range(info.rank, index["num_shards"], info.world_size)
    todo = []
    for k in mine:
        path = shard_path(root, k)
        if path.is_file():
            bad = S.problem(path, S.read_record(path))
            if bad is None:
                continue
            log(f"cache_latents: {path} is damaged ({bad}): re-making it")
            S.discard(path)
        todo.append(k)
    skipped = len(mine) - len(todo)
    # One DataLoader over every batch of this rank's missing shards (workers decode ahead across shard
    # boundaries); batches never straddle two shards, and arrive in order.
    plan = [(k, ids[i:i + batch_size]) for k in todo
            for ids in [list(range(k * shard_size, min(n, (k + 1) * shard_size)))]
            for i in range(0, len(ids), batch_size)]
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=[b for _, b in plan], num_workers=num_workers,
                                         collate_fn=collate, pin_memory=info.device.type == "cuda",
                                         worker_init_fn=worker_init if num_workers else None)
    it, parts, written = iter(loader), {"latents": [], "latents_flip": [], "labels": []}, 0
    try:
        for j, (k, _) in enumerate(plan):
            batch = next(it)
            x = batch["image"].to(info.device, non_blocking=True)
            parts["latents"].append(encode_batch(ae, x, precision).to(_DTYPES[dtype]).cpu())
            if flip:
                parts["latents_flip"].append(encode_batch(ae, x.flip(-1), precision).to(_DTYPES[dtype]).cpu())
            parts["labels"].append(batch["label"])
            if j + 1 == len(plan) or plan[j + 1][0] != k:  # shard k complete: check, then write it atomically
                tensors = {key: torch.cat(v).contiguous() for key, v in parts.items() if v}
                first = k * shard_size
                require_finite(f"shard {k} of {root} (images {first}..{first + len(tensors['labels']) - 1})",
                               offset=first, hint="nothing written (check the autoencoder's weights and the images)",
                               **tensors)
                path = shard_path(root, k)
                tmp = path.with_name(f".{path.name}.tmp")
                save_file(tensors, str(tmp))
                os.replace(tmp, path)
                S.write_record(path)
                written += 1
                log(f"cache_latents: wrote {path} ({len(tensors['labels'])} images)")
                parts = {key: [] for key in parts}
    finally:
        close_loader(it)
    D.barrier()
    if info.is_main:
        missing = [k for k in range(index["num_shards"]) if not shard_path(root, k).is_file()]
        if missing:
            raise RuntimeError(f"shards {missing[:5]} missing after encoding")
        records = [S.read_record(shard_path(root, k)) for k in range(index["num_shards"])]
        _write_json(dict(index, shards=records, complete=True), root / INDEX)
    D.barrier()
    return {"written": written, "skipped": skipped}


def _read_index(root: Path) -> dict | None:
    """``root/index.json`` or ``None``; an unreadable one is one :class:`DataError` line naming it."""
    path = root / INDEX
    if not path.is_file():
        return None
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path} is not a readable latent-cache index ({type(e).__name__}); delete it and "
                        f"re-run cache_latents.py") from None
    if not isinstance(index, dict):
        raise DataError(f"{path} is not a latent-cache index (a {type(index).__name__})")
    return index


class LatentShards(Dataset):
    """Cached latents as a dataset indexed by ``(epoch, i)`` (or ``i``): ``{"latent": [N, C], "label": int}``.
    With flipped latents in the cache, epoch e uses the flipped copy of image i with probability ½, a pure
    function of ``(seed, e, i)``.

    ``project=True``: the latent is float32, re-projected onto S^{C−1}_R. ``project=False`` (training): the
    latent as stored (float16 by default: half the bytes through the loader workers, pinned memory and the
    host-to-device copy); the training step casts it to float32 and projects it on the device.
    Shards are read through safetensors' memory map on first use (``preload=True``: all in RAM, as stored;
    default: when that is under 2 GiB). Every shard is checked against the index's size/sha256 record first
    (``verify``: ``"full"`` size and checksum, ``"size"`` size only, default full when preloading, since the
    data is read anyway); a damaged shard is one :class:`DataError` line naming it.
    """

    def __init__(self, root: str | os.PathLike, *, seed: int = 0, preload: bool | None = None,
                 project: bool = True, verify: str | None = None):
        self.root = Path(root)
        index = _read_index(self.root)
        if index is None:
            raise DataError(f"{self.root}/{INDEX} not found (write it with experiments/cache_latents.py)")
        self.index = index
        if not self.index.get("complete"):
            raise DataError(f"{self.root} is an incomplete latent cache: re-run cache_latents.py to finish it")
        self.n, self.shard_size = self.index["num_images"], self.index["shard_size"]
        self.flip, self.seed = bool(self.index["flip"]), seed
        self.sphere = Hypersphere(self.index["radius"])
        item = torch.empty((), dtype=_DTYPES[self.index["dtype"]]).element_size()
        size = self.n * self.index["num_tokens"] * self.index["channels"] * (2 if self.flip else 1) * item
        preload = preload if preload is not None else size < 2**31
        self._verify([shard_path(self.root, k) for k in range(self.index["num_shards"])],
                     checksum=(verify or ("full" if preload else "size")) == "full")
        from safetensors import safe_open

        self.labels = torch.cat([self._read(k, lambda p: safe_open(p, "pt").get_tensor("labels"))
                                 for k in range(self.index["num_shards"])])
        self._mem, self.project = None, project
        if preload:
            from safetensors.torch import load_file

            shards = [self._read(k, load_file) for k in range(self.index["num_shards"])]
            self._mem = {key: torch.cat([s[key] for s in shards])
                         for key in (("latents", "latents_flip") if self.flip else ("latents",))}
        self._open: dict[int, object] = {}

    def _verify(self, paths: list[Path], checksum: bool) -> None:
        records = self.index.get("shards") or [None] * len(paths)
        for path, rec in zip(paths, records):
            bad = S.problem(path, rec, checksum=checksum) if rec is not None else (
                None if path.is_file() else "missing")  # a cache from before records: existence only
            if bad is not None:
                raise DataError(f"latent shard {path} is damaged ({bad}); re-run cache_latents.py with the "
                                f"same arguments to re-make it")

    def _read(self, k: int, fn):
        """``fn(str(shard k))``; a shard safetensors cannot parse is one :class:`DataError` naming it."""
        path = shard_path(self.root, k)
        try:
            return fn(str(path))
        except Exception as e:  # noqa: BLE001 - safetensors' header / buffer errors of a damaged file
            raise DataError(f"latent shard {path} is unreadable ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}); re-run cache_latents.py with the "
                            f"same arguments to re-make it") from None

    @property
    def num_classes(self) -> int:
        return int(self.index.get("num_classes") or int(self.labels.max()) + 1)

    def __len__(self) -> int:
        return self.n

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open": {}}  # mmap handles are per process

    def _get(self, key: str, i: int) -> torch.Tensor:
        if self._mem is not None:
            return self._mem[key][i]
        k, r = divmod(i, self.shard_size)
        if k not in self._open:
            from safetensors import safe_open

            self._open[k] = safe_open(str(shard_path(self.root, k)), "pt")
        return self._open[k].get_slice(key)[r:r + 1][0]

    def __getitem__(self, key) -> dict:
        epoch, i = _split_key(key)
        name = "latents"
        if self.flip and random.Random(mix_seed(self.seed, epoch, i, 3)).random() < 0.5:
            name = "latents_flip"
        z = self._get(name, i)
        return {"latent": self.sphere.projx(z.float()) if self.project else z, "label": int(self.labels[i])}


def collate_latents(samples: list[dict]) -> dict:
    """Stack ``latent`` ``[B, N, C]`` and ``label`` ``[B]``."""
    return {"latent": torch.stack([s["latent"] for s in samples]),
            "label": torch.tensor([s["label"] for s in samples], dtype=torch.long), "bad": []}


def build_parser() -> OneLineParser:
    p = OneLineParser(prog="cache_latents.py", description="Encode a dataset once into safetensors shards of "
                      "spherical latents (resumable: finished shards are skipped; DDP: torchrun).")
    a = p.add_argument
    a("--out", required=True, help="output folder of the shards and index.json")
    a("--data", help="ImageNet-style folder: DIR/train/<class>/<image> (centre crops); omitted: embedded photos")
    a("--ae-ckpt", help="in1k_ae.py run folder or checkpoint (default for the embedded photos: "
      "runs/ae-cpu-embedded-s1, else a random-init cpu AE)")
    a("--num-images", type=int, default=2048, help="embedded photos: number of fixed random crops")
    a("--image-size", type=int, help="image side (default: the autoencoder's)")
    a("--shard-size", type=int, default=1024, help="images per shard")
    a("--batch-size", type=int, default=64, help="images per encoder batch per process")
    a("--flip", action="store_true", help="also store latents of the horizontally flipped images")
    a("--dtype", choices=tuple(_DTYPES), default="float16", help="storage dtype (tokens are re-projected onto "
      "the sphere in float32 when read; rounding: float16 ~2e-4 rad, bfloat16 ~1.7e-3 rad per token)")
    a("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16 autocast of the encoder (CUDA)")
    a("--seed", type=int, default=0, help="seed of the embedded crops / random-init AE")
    a("--num-workers", type=int, help="data-loader workers decoding images, per process (default: min(8, CPUs) "
      "with --data, 0 for the embedded photos)")
    a("--device", default="auto", help="auto | cpu | cuda")
    return p


def open_source(data: str | None, image_size: int, num_images: int, seed: int, *, info=None
                ) -> tuple[Dataset, dict]:
    """The dataset to encode and its identity (``source``, ``classes``, ``num_classes``); with a distributed
    ``info`` the ``--data`` tree is scanned by rank 0 only and broadcast."""
    if data is None:
        ds = EmbeddedPhotos("train", image_size, length=num_images, seed=seed)
        return ds, {"source": f"embedded:{num_images}:{seed}", "classes": ds.classes,
                    "num_classes": len(ds.classes)}
    ds = ImageFolderDataset(Path(data) / "train", image_size, train=False, info=info)
    return ds, {"source": str(Path(data).resolve()), "classes": ds.classes, "num_classes": len(ds.classes)}


def _main(argv: Sequence[str] | None = None) -> int:
    from experiments.common.dit_io import default_autoencoder, load_autoencoder

    args = build_parser().parse_args(argv)
    from experiments.common.cli_common import validate_args

    validate_args(args)  # ranges, --device
    if args.num_workers is None:
        args.num_workers = 0 if args.data is None else min(8, os.cpu_count() or 1)
    if args.data is not None and args.ae_ckpt is None:
        raise UserError("--data needs --ae-ckpt (an in1k_ae.py run folder or checkpoint)")
    info = D.setup(args.device)
    try:
        path, note = default_autoencoder(args.ae_ckpt, args.out, args.seed, is_main=info.is_main)
        if note and info.is_main:
            print(f"cache_latents: {note}", flush=True)
        ae = load_autoencoder(path, info.device)
        size = args.image_size or ae.image_size
        ds, meta = open_source(args.data, size, args.num_images, args.seed, info=info)
        res = cache_latents(ae, ds, args.out, meta=dict(meta, ae_ckpt=str(path), image_size=size),
                            shard_size=args.shard_size, batch_size=args.batch_size, flip=args.flip,
                            dtype=args.dtype, precision=args.precision, num_workers=args.num_workers, info=info,
                            log=print if info.is_main else (lambda *_: None))
        if info.is_main:
            print(f"cache_latents: {res['written']} shards written, {res['skipped']} already there -> "
                  f"{args.out}", flush=True)
        return 0
    finally:
        D.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 2 user error)."""
    return run_cli(_main, argv, prog="cache_latents.py", one_line=(DataError,))


if __name__ == "__main__":
    script_exit(main())
