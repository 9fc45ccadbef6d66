"""Saved-activation accounting of a training forward (used by ``--grad-accum auto`` and
``benchmarks/memory_plan.py``).

:class:`SavedBytes` records every tensor autograd keeps for backward through
``torch.autograd.graph.saved_tensors_hooks``: each storage is counted once (views deduplicated),
parameters and buffers excluded. :func:`maybe_fake` runs the forward on fake tensors (``FakeTensorMode``:
shapes and dtypes through the same ops and autograd graph, no arithmetic, no memory), so a full-size model
is accounted in about a second on a CPU; ``benchmarks/memory_plan.py --check-real`` asserts that the fake
and the real byte counts agree. :func:`peak_bytes` turns the per-sample figure into a planned peak.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable

import torch
from torch.multiprocessing.reductions import StorageWeakRef

GIB = 2**30
HEADROOM = 0.90        # a plan must fit this fraction of the GPU
RUNTIME_GIB = 2.5      # CUDA context (~0.5), cuBLAS/cuDNN workspaces, NCCL buffers, allocator slack


class SavedBytes:
    """Context: bytes of the storages autograd saves for backward (``modules``' parameters and buffers are
    not counted). ``attn_total``: the part in attention matrices ``[..., N, N]`` with N in ``tokens``."""

    def __init__(self, modules: Iterable[torch.nn.Module], tokens: Iterable[int] = ()):
        state = [t for m in modules for t in list(m.parameters()) + list(m.buffers())]
        self.exclude = {StorageWeakRef(t.untyped_storage()) for t in state}
        self.tokens = set(tokens)
        self.seen: dict = {}
        self.attn: dict = {}
        self.keep: list = []  # hold the tensors: a freed storage's address could be reused

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        ref = StorageWeakRef(t.untyped_storage())
        if ref not in self.exclude and ref not in self.seen:
            self.seen[ref] = t.untyped_storage().nbytes()
            self.keep.append(t)
            if t.dim() >= 3 and t.shape[-1] == t.shape[-2] and t.shape[-1] in self.tokens:
                self.attn[ref] = self.seen[ref]
        return t

    def __enter__(self) -> "SavedBytes":
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._ctx.__exit__(*exc)

    @property
    def total(self) -> int:
        return sum(self.seen.values())

    @property
    def attn_total(self) -> int:
        return sum(self.attn.values())


@contextlib.contextmanager
def maybe_fake(modules: list[torch.nn.Module], fake: bool = True):
    """Inside: ``modules`` run on fake copies of their parameters and buffers under a ``FakeTensorMode``
    (``fake``), or as they are; the modules are unchanged afterwards."""
    if not fake:
        yield
        return
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.nn.utils.stateless import _reparametrize_module

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    bundle = torch.nn.ModuleList(modules)
    state = {n: mode.from_tensor(t) for n, t in list(bundle.named_parameters()) + list(bundle.named_buffers())}
    with mode, _reparametrize_module(bundle, state):
        yield


def autocast_cpu(precision: str):
    """bf16 CPU autocast for the accounting (``fp32``/``tf32``: none)."""
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def training_state_bytes(n_params: int, n_trained: int, n_ema: int, world: int) -> int:
    """fp32 weights (all), gradients + AdamW's two moments (trained), fp32 EMA, DDP buckets (world > 1)."""
    return 4 * n_params + 12 * n_trained + 4 * n_ema + (4 * n_trained if world > 1 else 0)


def linear_fit(measure: Callable[[int], int], batches=(1, 2)) -> tuple[float, float]:
    """``(per_sample, batch_independent)`` bytes from ``measure(b)`` at two batch sizes."""
    b1, b2 = batches[0], batches[-1]
    m1, m2 = measure(b1), measure(b2)
    slope = (m2 - m1) / (b2 - b1)
    return slope, m1 - slope * b1


def peak_bytes(state: float, per_sample: float, fixed_act: float, block: float, micro: int) -> float:
    """Planned peak of one process: training state + runtime allowance + activations of ``micro`` samples +
    one block's activations per sample (the block being back-propagated, or recomputed under checkpointing)."""
    return state + RUNTIME_GIB * GIB + fixed_act + micro * (per_sample + block)


def random_lpips() -> torch.nn.Module:
    """LPIPS(VGG16) with a random trunk: the real module's shapes and cost without its weights file."""
    import tempfile
    from pathlib import Path

    import torchvision

    from models.losses import LPIPSLoss

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vgg16-random.pth"
        torch.save({f"features.{k}": v for k, v in torchvision.models.vgg16().features.state_dict().items()}, path)
        return LPIPSLoss(path)


def ae_step_saved(ae, stage: int, lpips, disc, b: int, precision: str, *, fake: bool = True,
                  size: int | None = None) -> tuple[int, int]:
    """(saved bytes, attention-matrix bytes) of ``in1k_ae.py``'s step at micro-batch ``b``: stage 1 = the
    stage net + cos + L1 + LPIPS; stage 2 = max(G pass: decoder + L1 + LPIPS + hinge G through ``disc``,
    D pass: ``disc`` on real and detached fakes), the two are never alive together (G's backward runs first)."""
    from experiments.common import ae_steps
    from models.losses import STAGE_LOSS_WEIGHTS

    w = STAGE_LOSS_WEIGHTS[stage]
    if lpips is None:
        import dataclasses

        w = dataclasses.replace(w, lpips=0.0)
    mods = [m for m in (ae, lpips, disc) if m is not None]
    tokens = [ae.num_tokens + ae.backbone.num_prefix_tokens]  # ViT sequence lengths (attention [.., N, N])
    if disc is not None:
        side = disc.config.input_size // disc.backbone.patch_size
        tokens.append(side * side + disc.backbone.num_prefix_tokens)
    size = size or ae.image_size
    net = ae_steps.Stage1Net(ae) if stage == 1 else ae_steps.Stage2Net(ae)
    with maybe_fake(mods, fake):
        x = torch.rand(b, 3, size, size) * 2 - 1
        with SavedBytes(mods, tokens) as rec_g, autocast_cpu(precision):
            if stage == 1:
                recon, z, zt = net(x)
                ae_steps.stage1_losses(x, recon, z, zt, lpips, w)
            else:
                recon = net(x, 1.0)
                ae_steps.stage2_g_losses(x, recon, lpips, disc, w, adversarial=disc is not None)
        if stage == 1 or disc is None:
            return rec_g.total, rec_g.attn_total
        with SavedBytes(mods, tokens) as rec_d, autocast_cpu(precision):
            ae_steps.stage2_d_loss(x, recon.detach(), disc)
    return max((rec_g.total, rec_g.attn_total), (rec_d.total, rec_d.attn_total))


def _say(info):
    return (lambda msg: print(msg, flush=True)) if info.is_main else (lambda msg: None)


def _fit_and_pick(args, info, saved: Callable[[int], int], state: int, depth: int, what: str) -> int:
    from experiments.common.microbatch import auto_grad_accum

    from experiments.common import distributed as D
    from experiments.common.trainer import UserError

    per, fixed_act = linear_fit(saved)
    block = per / max(1, depth) if args.grad_checkpointing else 0.0
    try:
        k, err = auto_grad_accum(args.batch_size // info.world_size, info.device,
                                 lambda m: peak_bytes(state, per, fixed_act, block, m), headroom=HEADROOM,
                                 log=_say(info), what=what), ""
    except ValueError as e:
        k, err = 0, str(e)
    # every process must use the same K: the largest any of them needs (the GPU with the least free memory)
    gathered = D.all_gather_object((k, err))
    errors = [e for _, e in gathered if e]
    if errors:
        raise UserError(errors[0])
    k = max(k for k, _ in gathered)
    if info.world_size > 1:
        _say(info)(f"{what}--grad-accum {k} on every process (the largest any process needs)")
    return k


def dit_auto_grad_accum(args, info) -> int:
    """``in1k_dit.py --grad-accum auto``: the DiT's activations measured now on fake tensors at batches 1 and
    2 (the memory plan's method), then the smallest K whose micro-batch fits the free GPU memory."""
    from experiments.common.dit_io import dit_registry
    from experiments.common.microbatch import auto_grad_accum

    if info.device.type != "cuda":
        return auto_grad_accum(1, info.device, lambda m: 0.0, log=_say(info), what="in1k_dit: ")
    model = dit_registry()[args.model](ddt_head=args.ddt_head, qk_norm=args.qk_norm)
    model.set_grad_checkpointing(args.grad_checkpointing)
    n, c = model.config.num_tokens, model.config.in_channels

    def saved(b: int) -> int:
        with maybe_fake([model]), SavedBytes([model]) as rec, autocast_cpu(args.precision):
            model(torch.randn(b, n, c), torch.rand(b), torch.zeros(b, dtype=torch.long)).float().square().mean()
        return rec.total

    n_par = sum(p.numel() for p in model.parameters())
    state = training_state_bytes(n_par, n_par, n_par, info.world_size)
    return _fit_and_pick(args, info, saved, state, model.config.depth, "in1k_dit: ")


def ae_auto_grad_accum(args, info, ae) -> int:
    """``in1k_ae.py --grad-accum auto``: this stage's step (LPIPS-shaped VGG16 when LPIPS is on, the
    discriminator in stage 2) measured now on fake tensors, then the smallest K that fits the free GPU memory."""
    from experiments.common.microbatch import auto_grad_accum

    if info.device.type != "cuda":
        return auto_grad_accum(1, info.device, lambda m: 0.0, log=_say(info), what="in1k_ae: ")
    from models.discriminator import build_discriminator

    lpips = random_lpips() if args.lpips_weight > 0 else None
    disc = None
    if args.stage == 2 and args.gan_weight > 0:
        disc = build_discriminator("tiny" if args.preset in ("tiny", "cpu") else "paper", random_init=True)
    trained = ae.set_stage(args.stage)
    was = ae.decoder.grad_checkpointing
    ae.set_grad_checkpointing(args.grad_checkpointing)
    try:
        def saved(b: int) -> int:
            return ae_step_saved(ae, args.stage, lpips, disc, b, args.precision)[0]

        n_all = sum(p.numel() for m in (ae, lpips, disc) if m is not None for p in m.parameters())
        n_t = sum(p.numel() for p in trained)
        n_d = sum(p.numel() for p in disc.parameters() if p.requires_grad) if disc is not None else 0
        state = training_state_bytes(n_all, n_t + n_d, n_t, info.world_size)
        return _fit_and_pick(args, info, saved, state, 5, "in1k_ae: ")
    finally:
        ae.set_grad_checkpointing(was)
