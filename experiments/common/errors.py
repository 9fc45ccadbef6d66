"""Error types shared by the data modules (kept apart so :mod:`experiments.common.images` and
:mod:`experiments.common.data` need not import each other)."""
from __future__ import annotations


class DataError(ValueError):
    """A dataset path or layout problem the user must fix (reported as one line)."""
