"""experiments: the runnable scripts (top level) and their shared plumbing (:mod:`experiments.common`).

Scripts (run from the repository root, with or without ``torchrun``):
  * ``in1k_ae.py``       - autoencoder training (stage 1 / 2); no ``--data`` = embedded photos demo.
  * ``in1k_dit.py``      - LightningDiT with Riemannian flow matching on the autoencoder's latents.
  * ``cache_latents.py`` - encode a dataset once into a latent cache for ``in1k_dit.py --latents``.
  * ``sample.py``        - class-conditional samples (PNG grid / ADM ``.npz``) from a DiT checkpoint.
  * ``eval_ae.py``       - PSNR / SSIM / LPIPS / rFID (or FD_dino) of an autoencoder checkpoint.
  * ``eval_gen.py``      - FID, sFID, IS, precision, recall of a sample ``.npz`` against a reference batch.
  * ``plot_run.py``      - loss and PSNR curves of a run folder.
  * ``toy_rfm_vs_fm.py`` - Riemannian vs Euclidean flow matching on a toy product of spheres.

Plumbing in :mod:`experiments.common` (every script reuses it):
  * :mod:`experiments.common.data` - ``ImageFolderDataset`` (corrupt files skipped + reported), ``EmbeddedPhotos``,
    ``ResumableBatchSampler`` (``(epoch, index)`` keys; resumable; world-size independent), ``collate``.
  * :mod:`experiments.common.checkpoint` - ``save_atomic``, ``CheckpointDir``, ``capture_rng``/``restore_rng``,
    ``restore_training``, ``in_run``, ``StopSignals`` (SIGTERM/SIGINT → checkpoint, then exit).
  * :mod:`experiments.common.distributed` - ``setup`` (torchrun env → NCCL/gloo), ``wrap_ddp``, ``all_reduce_*``,
    ``spawn_local`` (K local gloo processes without torchrun).
  * :mod:`experiments.common.logging_utils` - ``MetricsLogger`` (metrics.jsonl [+ TensorBoard]), ``Progress``.
  * :mod:`experiments.common.ema` - ``EMA`` of trainable parameters (fp32 shadow, optional warm-up),
    ``load_ema_weights`` (a checkpoint's EMA shadow onto a rebuilt model).
  * :mod:`experiments.common.trainer` - ``UserError``/``OneLineParser``/``run_cli`` (one-line failures),
    ``NonFiniteGuard``, ``StepBookkeeper``, ``training_session``, ``check_resume_args``, ``lr_lambda``,
    ``build_adamw``, ``autocast``.
  * :mod:`experiments.common.cli_common` - the ``optimisation`` / ``run`` option groups of the training CLIs,
    ``validate_args`` (the one argument validator of every CLI), ``require_finite``.
  * :mod:`experiments.common.rundir` - one run per folder: ``RunLock``, ``clean_tmp``, ``set_aside``, ``run_folder``.
  * :mod:`experiments.common.metrics` - float64 ``FrechetStats`` / ``frechet_distance``, PSNR/SSIM, grids.
  * :func:`experiments.common.dit_io.load_autoencoder` - rebuild a trained autoencoder from a checkpoint.
"""
