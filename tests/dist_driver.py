"""Run several training scripts one after another in the same processes (for torchrun in the tests: one
launch, one set of imports). Usage: ``torchrun ... tests/dist_driver.py JSON`` where JSON is a list of
``[module, [argv...]]``, e.g. ``[["experiments.in1k_ae", ["--preset", "tiny", ...]], ...]``. Exits with the
first non-zero exit code."""
from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    import torch

    from experiments.common import distributed as D

    torch.set_num_threads(1)
    # One process group for all the scripts: torchrun's agent store does not take a second
    # init_process_group after destroy_process_group (it hangs), so the scripts' clean-up waits until the end.
    cleanup, D.cleanup = D.cleanup, lambda: None
    try:
        for module, argv in json.loads(sys.argv[1]):
            rc = importlib.import_module(module).main(argv)
            if rc:
                return rc
        return 0
    finally:
        cleanup()


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # the scripts' files are written and fsynced; interpreter teardown cost ~5 s per launch
