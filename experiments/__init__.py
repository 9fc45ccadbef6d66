"""experiments: runnable scripts and the plumbing they share.

Scripts (run from the repository root, with or without ``torchrun``):
  * ``in1k_ae.py``  - autoencoder training (stage 1 / 2); no ``--data`` = embedded photos demo.
  * ``eval_ae.py``  - PSNR / SSIM / LPIPS / rFID (or FD_dino) of a checkpoint.
  * ``plot_run.py`` - loss and PSNR curves of a run folder.

Plumbing for any training script (the DiT trainer reuses it):
  * :mod:`experiments.data` - ``ImageFolderDataset`` (corrupt files skipped + reported), ``EmbeddedPhotos``,
    ``ResumableBatchSampler`` (``(epoch, index)`` keys; resumable; world-size independent), ``collate``.
  * :mod:`experiments.checkpoint` - ``save_atomic``, ``CheckpointDir``, ``capture_rng``/``restore_rng``,
    ``restore_training``, ``in_run``, ``StopSignals`` (SIGTERM/SIGINT → checkpoint, then exit).
  * :mod:`experiments.distributed` - ``setup`` (torchrun env → NCCL/gloo), ``wrap_ddp``, ``all_reduce_*``,
    ``spawn_local`` (K local gloo processes without torchrun).
  * :mod:`experiments.logging_utils` - ``MetricsLogger`` (metrics.jsonl [+ TensorBoard]), ``Progress``.
  * :mod:`experiments.ema` - ``EMA`` of trainable parameters (fp32 shadow, optional warm-up),
    ``load_ema_weights`` (a checkpoint's EMA shadow onto a rebuilt model).
  * :mod:`experiments.trainer` - ``UserError``/``OneLineParser``/``run_cli`` (one-line failures),
    ``NonFiniteGuard``, ``StepBookkeeper``, ``training_session``, ``check_resume_args``, ``lr_lambda``,
    ``build_adamw``, ``autocast``.
  * :mod:`experiments.cli_common` - the ``optimisation`` / ``run`` option groups of the training CLIs.
  * :mod:`experiments.metrics` - float64 ``FrechetStats`` / ``frechet_distance``, PSNR/SSIM, grids.
  * :func:`experiments.eval_ae.load_autoencoder` - rebuild a trained autoencoder from a checkpoint.
"""
