"""Shared plumbing of the ``experiments`` scripts: data, checkpoints, distributed set-up, logging, EMA,
metrics, the CLI helpers (``cli_common``, ``ae_cli``, ``dit_cli``) and the per-model step code
(``ae_steps``, ``dit_io``). Nothing here is meant to be run directly; see :mod:`experiments`.
"""
