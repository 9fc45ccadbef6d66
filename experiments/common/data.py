"""Datasets and samplers shared by the training scripts (autoencoder and DiT).

Design: every random choice of the input pipeline (crop position, flip, shuffling) is a pure function of
``(seed, epoch, index)``. Datasets are indexed by ``(epoch, index)`` keys produced by
:class:`ResumableBatchSampler`, so a run that is stopped and resumed sees exactly the same batches as an
uninterrupted one, whatever the number of loader workers or processes.

Samples are dicts ``{"image": [3, S, S] float in [-1, 1], "label": int, "bad": [paths]}``; ``bad`` lists
files that could not be decoded and were replaced by the next readable file (never fatal).
:func:`collate` stacks them and concatenates ``bad``.
"""
from __future__ import annotations

import functools
import math
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".gif")

#: Photos bundled with scikit-image / scikit-learn. Eval photos are never used for training.
EMBEDDED_TRAIN_PHOTOS = ("astronaut", "coffee", "rocket", "hubble_deep_field", "retina",
                         "immunohistochemistry", "stereo_motorcycle", "china")
EMBEDDED_EVAL_PHOTOS = ("chelsea", "flower")
#: crops per epoch of in1k_dit.py's embedded training set (and the size of its cached pool)
EMBEDDED_TRAIN_LEN = 4096


from experiments.common.errors import DataError  # noqa: E402,F401 (re-export; images.py raises it too)


def mix_seed(*parts: int) -> int:
    """Deterministic 63-bit seed from integers (stable across processes, unlike ``hash``)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


def _split_key(key) -> tuple[int, int]:
    if isinstance(key, (tuple, list)):
        return int(key[0]), int(key[1])
    return 0, int(key)


def to_model_range(img_u8: np.ndarray) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` → float ``[3, H, W]`` in [-1, 1]."""
    t = torch.from_numpy(np.array(img_u8, dtype=np.uint8, copy=True)).permute(2, 0, 1).float()
    return t / 127.5 - 1.0


def _as_rgb_u8(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.shape[-1] == 4:
        arr = arr[..., :3]
    if arr.dtype != np.uint8:
        arr = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    return arr


from experiments.common.images import load_rgb  # noqa: E402,F401 (re-export: decoding lives there)


def resize_short_side(img: np.ndarray, size: int) -> np.ndarray:
    """ADM-style resize: box-downsample by 2 while large, then bicubic so the short side is ``size``."""
    from PIL import Image

    im = Image.fromarray(img)
    while min(im.size) >= 2 * size:
        im = im.resize(tuple(x // 2 for x in im.size), resample=Image.BOX)
    scale = size / min(im.size)
    im = im.resize(tuple(max(size, round(x * scale)) for x in im.size), resample=Image.BICUBIC)
    return np.asarray(im)


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """Resize short side to ``size`` and take the central ``size × size`` crop (ImageNet-val style)."""
    img = resize_short_side(img, size)
    h, w = img.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return img[top:top + size, left:left + size]


def random_crop_flip(img: np.ndarray, size: int, rng: random.Random) -> np.ndarray:
    """Resize short side to ``size``, random ``size × size`` crop, random horizontal flip."""
    img = resize_short_side(img, size)
    h, w = img.shape[:2]
    top, left = rng.randint(0, h - size), rng.randint(0, w - size)
    img = img[top:top + size, left:left + size]
    return img[:, ::-1] if rng.random() < 0.5 else img


def _scan(root: Path) -> tuple[list[str], list[tuple[str, int]]] | str:
    if not root.is_dir():
        return f"dataset folder not found: {root}"
    folders = sorted(d.name for d in root.iterdir() if d.is_dir())
    found = {cls: [os.path.join(dirpath, f) for dirpath, _, files in sorted(os.walk(root / cls))
                   for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)] for cls in folders}
    # class folders without image files are not classes (a label no image has): named in one warning
    empty = [c for c in folders if not found[c]]
    classes = [c for c in folders if found[c]]
    samples = [(path, label) for label, cls in enumerate(classes) for path in found[cls]]
    if not samples:
        return f"no images found under {root} (expected {root}/<class>/<image>)"
    if empty and os.environ.get("RANK", "0") == "0":
        print(f"warning: {len(empty)} empty class folder(s) under {root} ignored (no image files; they are not "
              f"classes): {', '.join(map(repr, empty[:5]))}{' ...' if len(empty) > 5 else ''}",
              file=sys.stderr, flush=True)
    return classes, samples


def scan_image_folder(root: str | os.PathLike, info=None) -> tuple[list[str], list[tuple[str, int]]]:
    """``(classes, [(path, label)])`` of an ImageNet-style ``root/<class>/<image>`` tree, sorted.

    With a distributed ``info`` (:class:`experiments.common.distributed.DistInfo`) the tree is walked once,
    by rank 0, and the list is broadcast (ImageNet's train split is 1.28 M files: one walk of a shared file
    system instead of one per process). Raises :class:`DataError` (on every rank) when ``root`` is missing
    or holds no images.
    """
    root = Path(root)
    if info is None or not info.enabled:
        res = _scan(root)
    else:
        from experiments.common import distributed as D

        res = D.broadcast_object(_scan(root) if info.is_main else None)
    if isinstance(res, str):
        raise DataError(res)
    return res


class ImageFolderDataset(Dataset):
    """``root/<class>/<image>`` folder (ImageNet layout), corrupt files skipped and reported.

    Args:
        root: folder with one sub-folder per class.
        image_size: output side S.
        train: augment (seeded by ``(seed, epoch, index)``) as ``augment`` says if True, else centre crop.
        seed: base seed of the augmentation.
        max_retries: how many following files to try when a file cannot be decoded.
        augment: with ``train``: ``"crop_flip"`` random crop + random flip (the autoencoder's),
            ``"flip"`` centre crop + random flip, ``"none"`` centre crop (the DiT's on-the-fly path, the
            crop policy of its latent cache).
        info: the run's ``DistInfo``: the tree is then scanned by rank 0 only (:func:`scan_image_folder`).
    """

    def __init__(self, root: str | os.PathLike, image_size: int, *, train: bool, seed: int = 0,
                 max_retries: int = 16, augment: str = "crop_flip", info=None):
        if augment not in ("crop_flip", "flip", "none"):
            raise ValueError(f"augment must be crop_flip, flip or none, got {augment!r}")
        self.augment = augment
        self.root = Path(root)
        self.classes, self.samples = scan_image_folder(self.root, info)
        self.image_size, self.train, self.seed, self.max_retries = image_size, train, seed, max_retries

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key) -> dict:
        epoch, idx = _split_key(key)
        bad: list[str] = []
        for attempt in range(self.max_retries + 1):
            path, label = self.samples[(idx + attempt) % len(self.samples)]
            try:
                img = load_rgb(path)
                break
            except Exception as e:  # noqa: BLE001 - any decode failure is a skipped file
                bad.append(path)
                err = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        else:
            raise DataError(f"{self.max_retries + 1} unreadable image files in a row near {path} "
                            f"(last error: {err}); check that {self.root} holds readable images")
        rng = random.Random(mix_seed(self.seed, epoch, idx))
        if self.train and self.augment == "crop_flip":
            img = random_crop_flip(img, self.image_size, rng)
        else:
            img = center_crop(img, self.image_size)
            if self.train and self.augment == "flip" and rng.random() < 0.5:
                img = img[:, ::-1]
        return {"image": to_model_range(img), "label": label, "bad": bad}


@functools.lru_cache(maxsize=None)
def _embedded_tensor(name: str, work_side: int) -> torch.Tensor:
    return to_model_range(resize_short_side(load_embedded_photo(name), work_side))


def load_embedded_photo(name: str) -> np.ndarray:
    """One of the photos bundled with scikit-image / scikit-learn as uint8 RGB."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return _as_rgb_u8(load_sample_image(f"{name}.jpg"))
    from skimage import data as skdata

    arr = getattr(skdata, name)()
    if isinstance(arr, tuple):  # stereo_motorcycle -> (left, right, disparity)
        arr = arr[0]
    return _as_rgb_u8(arr)


class EmbeddedPhotos(Dataset):
    """Random (train) or fixed (eval) crops of the photos bundled with scikit-image and scikit-learn.

    Each crop takes a square of side ``U(scale) × short side`` of one photo (photo chosen round-robin),
    resized to ``image_size`` with antialiasing, flipped at random in training. Crop ``i`` of epoch ``e``
    is a pure function of ``(seed, e, i)``; eval crops ignore the epoch.

    Args:
        split: ``"train"`` (photos :data:`EMBEDDED_TRAIN_PHOTOS`) or ``"eval"`` (held-out
            :data:`EMBEDDED_EVAL_PHOTOS`).
        length: number of crops per epoch.
        work_side: photos are first resized to this short side (speed).
    """

    def __init__(self, split: str, image_size: int, *, length: int, seed: int = 0,
                 scale: tuple[float, float] = (0.2, 0.6), work_side: int = 256,
                 photos: Sequence[str] | None = None):
        names = photos or (EMBEDDED_TRAIN_PHOTOS if split == "train" else EMBEDDED_EVAL_PHOTOS)
        self.names = list(names)
        self.photos = [_embedded_tensor(n, work_side) for n in self.names]
        self.split, self.image_size, self.length = split, image_size, length
        self.seed, self.scale = seed, scale
        self.classes = self.names

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key) -> dict:
        epoch, idx = _split_key(key)
        train = self.split == "train"
        rng = random.Random(mix_seed(self.seed, epoch if train else -1, idx, 1 if train else 2))
        label = idx % len(self.photos)
        photo = self.photos[label]
        _, h, w = photo.shape
        side = max(self.image_size // 2, int(rng.uniform(*self.scale) * min(h, w)))
        top, left = rng.randint(0, h - side), rng.randint(0, w - side)
        crop = photo[:, top:top + side, left:left + side].unsqueeze(0)
        crop = F.interpolate(crop, size=(self.image_size,) * 2, mode="bilinear", antialias=True,
                             align_corners=False)[0].clamp(-1, 1)
        if train and rng.random() < 0.5:
            crop = crop.flip(-1)
        return {"image": crop.contiguous(), "label": label, "bad": []}


#: Seconds a data-loader worker keeps serving after a SIGTERM while its main process lives (time for the
#: main process, which got the same signal from a scheduler, to finish its step and shut the workers down).
WORKER_TERM_GRACE_S = 10


def _worker_sigterm(signum, frame):  # noqa: ARG001
    """Worker SIGTERM: exit at once when the main process is gone; else exit ``WORKER_TERM_GRACE_S`` later
    (SIGALRM's default action) unless the main process shuts the worker down first."""
    if os.getppid() != _PARENT_PID[0]:
        os._exit(128 + signum)
    import signal

    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(WORKER_TERM_GRACE_S)


_PARENT_PID = [0]


def worker_init(worker_id: int) -> None:  # noqa: ARG001
    """DataLoader ``worker_init_fn`` for training loaders.

    * SIGINT (Ctrl-C reaches the whole foreground process group) is ignored: the main process decides when
      to stop, writes a checkpoint first and shuts the workers down itself.
    * SIGTERM is honoured, never ignored: a worker whose main process is gone exits at once; otherwise it
      exits within :data:`WORKER_TERM_GRACE_S` seconds (a scheduler's SIGTERM to every process of the job
      leaves the main process that long to finish its step).
    * On Linux the worker asks for SIGTERM when its parent dies (``PR_SET_PDEATHSIG``), so a ``kill -9`` of
      the main process leaves no orphans.
    """
    import signal

    _PARENT_PID[0] = os.getppid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _worker_sigterm)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != _PARENT_PID[0]:  # the parent died before prctl took effect
        os._exit(128 + signal.SIGTERM)


def close_loader(it) -> None:
    """Shut a DataLoader iterator's workers down now (idempotent; no-op without workers).

    torch's own shutdown (done event, then join, then SIGTERM); any worker still alive after that is
    killed, so the caller never waits for a stuck worker. Call it in a ``finally`` around the training loop
    and before the final checkpoint of a stopped run.
    """
    shutdown = getattr(it, "_shutdown_workers", None)
    if shutdown is None:
        return
    try:
        shutdown()
    finally:
        for w in getattr(it, "_workers", ()):
            if w.is_alive():
                w.kill()
                w.join(timeout=2.0)


def collate(samples: list[dict]) -> dict:
    """Stack images/labels, concatenate the lists of skipped files."""
    return {"image": torch.stack([s["image"] for s in samples]),
            "label": torch.tensor([s["label"] for s in samples], dtype=torch.long),
            "bad": [p for s in samples for p in s["bad"]]}


@dataclass
class DataPosition:
    """How far a training run has read: ``chunk`` global micro-batches since the start."""

    chunk: int = 0


class ResumableBatchSampler(Sampler):
    """Infinite, resumable, world-size-independent batch sampler of ``(epoch, index)`` keys.

    Each epoch is a permutation of ``range(n)`` seeded by ``(seed, epoch)``, cut into *global chunks* of
    ``chunk_size`` samples (one global micro-batch; a global batch is ``grad_accum`` chunks). Rank ``r`` of
    ``world`` reads the ``r``-th contiguous slice of every chunk, so the union over ranks of a step's
    samples - hence the averaged gradient - does not depend on the number of processes. The incomplete
    tail of an epoch (``n mod global_batch``) is dropped.

    Args:
        n: dataset length.
        chunk_size: global micro-batch size (divisible by ``world``).
        chunks_per_step: gradient-accumulation steps; epochs end on optimizer-step boundaries.
        start_chunk: data position to resume from (number of chunks already read).
    """

    def __init__(self, n: int, chunk_size: int, *, rank: int = 0, world: int = 1, seed: int = 0,
                 shuffle: bool = True, chunks_per_step: int = 1, start_chunk: int = 0):
        if chunk_size % world:
            raise ValueError(f"micro-batch {chunk_size} not divisible by world size {world}")
        self.steps_per_epoch = n // (chunk_size * chunks_per_step)
        if self.steps_per_epoch < 1:
            raise DataError(f"dataset of {n} images is smaller than one global batch "
                            f"({chunk_size * chunks_per_step})")
        self.n, self.chunk_size, self.rank, self.world = n, chunk_size, rank, world
        self.seed, self.shuffle, self.chunks_per_step = seed, shuffle, chunks_per_step
        self.start_chunk = start_chunk

    @property
    def chunks_per_epoch(self) -> int:
        return self.steps_per_epoch * self.chunks_per_step

    def epoch_of_chunk(self, chunk: int) -> float:
        """Fractional epoch at a data position."""
        return chunk / self.chunks_per_epoch

    def _perm(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
        return torch.randperm(self.n, generator=g)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        chunk = self.start_chunk
        local = self.chunk_size // self.world
        while True:
            epoch, pos = divmod(chunk, self.chunks_per_epoch)
            perm = self._perm(epoch)
            while pos < self.chunks_per_epoch:
                lo = pos * self.chunk_size + self.rank * local
                yield [(epoch, int(i)) for i in perm[lo:lo + local]]
                pos += 1
                chunk += 1


class ShardedEvalSampler(Sampler):
    """Deterministic batches over ``range(n)`` for rank ``r`` of ``world`` (indices ``r::world``)."""

    def __init__(self, n: int, batch_size: int, *, rank: int = 0, world: int = 1):
        self.idx = list(range(rank, n, world))
        self.batch_size = batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.idx) / self.batch_size)

    def __iter__(self):
        for i in range(0, len(self.idx), self.batch_size):
            yield self.idx[i:i + self.batch_size]
