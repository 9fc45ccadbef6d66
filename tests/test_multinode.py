"""Multi-node, simulated on localhost: two ``torchrun --nnodes 2 --nproc-per-node 2`` launches (gloo, c10d
rendezvous) train both scripts, the run is stopped, and resumed on 2 processes; its loss trajectory equals a
1-process uninterrupted run's (global batch fixed). Ranks that do not share ``--out`` stop with one line."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from contextlib import redirect_stderr
from pathlib import Path

import torch

from experiments.common import distributed as D
from test_exp_support import final_state, records, tiny_argv, train_losses

ROOT = Path(__file__).resolve().parents[1]
STEPS, STOP = 4, 2


def _ae_argv(out: Path, *extra: str) -> list[str]:
    return tiny_argv(out, "--device", "cpu", "--threads", "1", *extra, steps=STEPS)


def _dit_argv(out: Path, ae: Path, *extra: str) -> list[str]:
    return ["--ae-ckpt", str(ae), "--out", str(out), "--steps", str(STEPS), "--batch-size", "8", "--log-every", "1",
            "--ckpt-every", "100", "--sample-steps", "1", "--no-progress", "--device", "cpu", *extra]


def _torchrun_two_nodes(jobs: list, logs: Path, timeout: float = 240.0) -> None:
    """Two torchrun agents (node 0 and node 1, 2 workers each) on localhost running ``tests/dist_driver.py``."""
    port = D.free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "2",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "test",
           "--monitor-interval", "0.1", str(ROOT / "tests" / "dist_driver.py"), json.dumps(jobs)]
    procs = [subprocess.Popen(cmd[:3] + ["--node-rank", str(r)] + cmd[3:], cwd=ROOT, env=env, stdout=f,
                              stderr=subprocess.STDOUT, start_new_session=True)
             for r, f in ((r, open(logs / f"node{r}.log", "w")) for r in (0, 1))]
    try:
        codes = [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    assert codes == [0, 0], (codes, (logs / "node0.log").read_text()[-3000:])


def _resume_worker(module: str, argv: list[str]) -> None:
    import importlib

    rc = importlib.import_module(module).main(argv)
    if rc:
        sys.exit(rc)


def _same_trajectory(ref: Path, run: Path, rtol: float = 1e-5) -> None:
    a, b = train_losses(ref), train_losses(run)
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1)), (a, b)
    for s in a:
        assert abs(a[s] - b[s]) <= rtol * max(1.0, abs(a[s])), (s, a[s], b[s])
    sa, sb = final_state(ref), final_state(run)
    for k, v in sa["model"].items():
        if v.is_floating_point():
            assert torch.allclose(v, sb["model"][k], atol=2e-5, rtol=1e-4), k


def test_two_nodes_then_resume_on_two_processes_follows_the_single_process_run(tmp_path, ae_ckpt):
    from experiments import in1k_ae, in1k_dit

    ref_ae, ref_dit, ae, dit = (tmp_path / n for n in ("ref_ae", "ref_dit", "ae", "dit"))
    assert in1k_ae.main(_ae_argv(ref_ae)) == 0
    assert in1k_dit.main(_dit_argv(ref_dit, ae_ckpt, "--threads", "1")) == 0
    # 4 processes on 2 "nodes", stopped after step 2 (the SIGTERM path), ...
    _torchrun_two_nodes([["experiments.in1k_ae", _ae_argv(ae, "--stop-after", str(STOP))],
                         ["experiments.in1k_dit", _dit_argv(dit, ae_ckpt, "--stop-after", str(STOP))]], tmp_path)
    for run in (ae, dit):
        assert records(run, "start")[0]["world_size"] == 4 and max(train_losses(run)) == STOP
        state = final_state(run)
        assert state["world_size"] == 4 and len(state["rng"]) == 4 and state["step"] == STOP
        assert not list(run.glob(".shared-check-*"))  # the shared-folder probe leaves nothing behind
    # ... resumed on 2 processes (per-rank batch doubles, the global batch stays).
    D.spawn_local(_resume_worker, 2, ("experiments.in1k_ae", _ae_argv(ae)), start_method="spawn")  # fresh interpreters: a fork after the suite's threads can deadlock
    D.spawn_local(_resume_worker, 2, ("experiments.in1k_dit", _dit_argv(dit, ae_ckpt)), start_method="spawn")  # fresh interpreters: a fork after the suite's threads can deadlock
    for ref, run in ((ref_ae, ae), (ref_dit, dit)):
        assert final_state(run)["world_size"] == 2
        _same_trajectory(ref, run)


def _unshared_worker(tmp: str) -> None:
    from experiments import in1k_ae

    rank = int(os.environ["RANK"])
    err = io.StringIO()
    with redirect_stderr(err):
        rc = in1k_ae.main(_ae_argv(Path(tmp) / f"node{rank}"))  # each "node" has its own folder
    Path(tmp, f"rank{rank}.json").write_text(json.dumps({"rc": rc, "stderr": err.getvalue()}))


def test_ranks_that_do_not_share_the_run_folder_stop_with_one_line(tmp_path):
    D.spawn_local(_unshared_worker, 2, (str(tmp_path),), start_method="fork")
    for rank in (0, 1):
        res = json.loads((tmp_path / f"rank{rank}.json").read_text())
        lines = res["stderr"].strip().splitlines()
        assert res["rc"] == 2 and len(lines) == 1, res
        assert "is not shared by every process: rank(s) 1" in lines[0] and "file system" in lines[0]
    assert not (tmp_path / "node0" / "checkpoints").exists()  # nothing trained
    assert not list((tmp_path / "node0").glob(".shared-check-*"))


def test_step_draws_do_not_depend_on_the_number_of_processes():
    """The union over ranks of a step's noise, times and label dropout is the 1-process draw, bit for bit."""
    from experiments.common.flows import step_draws

    kw = dict(alpha=2.0, loc=0.0, scale=1.0, drop_prob=0.3)
    for flow in ("riemannian", "euclidean"):
        full = step_draws(flow, 3, 7, 0, 8, 8, (4, 16), 2.0, **kw)
        assert full[0].shape == (8, 4, 16) and full[1].shape == full[2].shape == (8,)
        for w in (2, 4):
            parts = [step_draws(flow, 3, 7, r * 8 // w, 8 // w, 8, (4, 16), 2.0, **kw) for r in range(w)]
            for i in range(3):
                assert torch.equal(torch.cat([p[i] for p in parts]), full[i]), (flow, w, i)
        nxt = step_draws(flow, 3, 8, 0, 8, 8, (4, 16), 2.0, **kw)
        assert not torch.equal(nxt[0], full[0]) and not torch.equal(nxt[1], full[1])  # a new step, new draws
    torch.testing.assert_close(full[0].norm(dim=-1).mean(), torch.tensor(2.0), rtol=0.2, atol=0)
