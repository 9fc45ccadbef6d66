"""Runs that never hang, never mix, never return garbage silently (issue 14): the run-folder lock and
fresh-start rules, loader workers under errors and SIGTERM, damaged checkpoints, full / read-only disks,
one shared argument validator, non-finite samples, 16-bit PNGs."""
from __future__ import annotations

import errno
import json
import math
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments import eval_gen, in1k_ae, in1k_dit, sample
from experiments.common import checkpoint, data, rundir
from experiments.common.trainer import UserError
from test_exp_support import final_state, records, tiny_argv

ROOT = Path(__file__).resolve().parents[1]


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def _notes_and_error(err: str) -> str:
    """stderr of a failing run: optional ``note:`` lines, then exactly one error line, no traceback."""
    assert "Traceback" not in err, err
    errors = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(errors) == 1, err
    return errors[0]


# ---------------------------------------------------------------------------------------------- run folder

_HOLDER = r"""
import fcntl, json, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
os.write(fd, json.dumps({"pid": os.getpid(), "host": sys.argv[2], "started": "t0", "argv": ["holder"]}).encode())
print("locked", flush=True)
time.sleep(60)
"""


def test_second_run_on_a_locked_folder_refuses_naming_the_holder(tmp_path, capsys):
    import socket

    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out / rundir.LOCK_NAME), socket.gethostname()],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert in1k_ae.main(tiny_argv(out, steps=1)) == 2
        line = _one_line(capsys.readouterr().err)
        assert f"in use by another run (pid {holder.pid} on host {socket.gethostname()}" in line
        assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()  # nothing touched
    finally:
        holder.kill()
        holder.wait()
    # Its process is gone: the kernel dropped the lock; the record left behind is taken over with a note.
    assert in1k_ae.main(tiny_argv(out, steps=1)) == 0
    err = capsys.readouterr().err
    assert f"taking over the lock of a run that ended without releasing it (pid {holder.pid}" in err
    assert "its process is gone" in err
    assert (out / rundir.LOCK_NAME).read_text() == ""  # released: emptied, not deleted


def test_lock_is_exclusive_within_a_process_and_released_on_exit(tmp_path):
    with rundir.RunLock(tmp_path / "a", prog="t") as lock:
        rec = json.loads((tmp_path / "a" / rundir.LOCK_NAME).read_text())
        assert rec["pid"] == os.getpid() and rec["argv"] == sys.argv and lock.took_over is None
        with pytest.raises(rundir.RunFolderError, match=f"in use by another run in this process \\(pid {os.getpid()}"):
            rundir.RunLock(tmp_path / "a" / ".." / "a").acquire()  # another spelling of the same folder
        with rundir.RunLock(tmp_path / "b"):  # another folder is independent
            pass
    with rundir.RunLock(tmp_path / "a") as again:  # free again, and a clean release leaves no stale record
        assert again.took_over is None


def test_fresh_start_sets_the_old_log_aside_and_removes_killed_writes(tmp_path, capsys):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    tmp = out / "checkpoints" / ".last.pt.k1ll3d.tmp"       # a kill -9 during a checkpoint write
    tmp.write_bytes(b"\0" * 4096)
    old_log = [{"event": "start", "step": 0}, {"event": "train", "step": 1, "loss": 9.0}]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old_log))  # killed before a ckpt
    assert in1k_ae.main(tiny_argv(out, steps=2)) == 0
    err = capsys.readouterr().err
    assert not tmp.exists() and "removed 1 temporary file(s)" in err
    assert [r["step"] for r in records(out, "train")] == [1, 2] and len(records(out, "start")) == 1
    prev = list(out.glob("previous-*"))
    assert len(prev) == 1 and [json.loads(x) for x in (prev[0] / "metrics.jsonl").read_text().splitlines()] == old_log


def test_no_resume_moves_the_old_run_aside_so_it_is_never_resumed(tmp_path, capsys):
    out = tmp_path / "run"
    assert in1k_ae.main(tiny_argv(out, steps=2)) == 0
    old = final_state(out)
    # --no-resume, and the new run dies before its first checkpoint (non-finite stop at step 1) ...
    assert in1k_ae.main(tiny_argv(out, "--no-resume", "--inject-nan-steps", "1", "--max-nonfinite", "1",
                                  steps=2)) == 3
    assert not (out / "checkpoints" / "last.pt").exists()
    prev = list(out.glob("previous-*"))
    assert len(prev) == 1 and torch.load(prev[0] / "checkpoints" / "last.pt", weights_only=False)["step"] == 2
    # ... so the next plain run starts over instead of resuming the run the user discarded.
    capsys.readouterr()
    assert in1k_ae.main(tiny_argv(out, steps=3)) == 0
    assert "resuming" not in capsys.readouterr().out
    assert [r["step"] for r in records(out, "train")] == [1, 2, 3] and len(records(out, "start")) == 1
    assert final_state(out)["step"] == 3 and old["step"] == 2


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", "truncated"])
def test_damaged_last_pt_is_one_line_naming_it_and_no_resume_starts_over(tmp_path, capsys, content):
    out = tmp_path / "run"
    last = out / "checkpoints" / "last.pt"
    if content == "truncated":
        assert in1k_ae.main(tiny_argv(out, steps=1)) == 0
        content = last.read_bytes()[:2000]
        capsys.readouterr()
    last.parent.mkdir(parents=True, exist_ok=True)
    last.write_bytes(content)
    assert in1k_ae.main(tiny_argv(out, steps=1)) == 2
    line = _one_line(capsys.readouterr().err)
    assert str(last) in line and "not a readable checkpoint" in line and "--no-resume" in line
    assert in1k_ae.main(tiny_argv(out, "--no-resume", steps=1)) == 0 and final_state(out)["step"] == 1


def test_full_disk_during_a_checkpoint_is_one_line_and_releases_the_folder(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"

    def full(obj, path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(checkpoint, "save_atomic", full)
    assert in1k_ae.main(tiny_argv(out, steps=2)) == 1
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("in1k_ae.py: error: no space left on device writing ") and "last.pt" in line
    monkeypatch.undo()
    assert in1k_ae.main(tiny_argv(out, steps=2)) == 0  # the lock was released; same command runs


def test_read_only_output_folder_is_one_line(tmp_path, capsys, monkeypatch):
    real_open = os.open

    def ro_open(path, *a, **k):
        if str(path).endswith(rundir.LOCK_NAME):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(rundir.os, "open", ro_open)
    assert in1k_ae.main(tiny_argv(tmp_path / "ro", steps=1)) == 2
    line = _one_line(capsys.readouterr().err)
    assert "cannot write the run folder" in line and "read-only file system" in line and "--out" in line


# ------------------------------------------------------------------------------------------ loader workers

def test_all_unreadable_data_with_workers_exits_fast_with_one_line(tmp_path):
    """The issue's hang: every training file unreadable, 2 loader workers. The script must end by itself,
    non-zero, with one error line, and leave no process behind in its process group."""
    from PIL import Image

    for split in ("train", "val"):
        (tmp_path / "d" / split / "a").mkdir(parents=True)
    for i in range(8):
        (tmp_path / "d" / "train" / "a" / f"x{i}.png").write_bytes(b"not an image")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "d" / "val" / "a" / "v.png")
    cmd = [sys.executable, "experiments/in1k_ae.py", "--data", str(tmp_path / "d"), "--random-encoder",
           "--batch-size", "4", "--max-steps", "6", "--image-size", "32", "--eval-every", "0", "--num-workers",
           "2", "--no-progress", "--out", str(tmp_path / "o")]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT)), start_new_session=True)
    try:
        _, err = p.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        pytest.fail("in1k_ae.py hung after a data-loader error")
    assert p.returncode == 2
    line = _notes_and_error(err)
    assert line.startswith("in1k_ae.py: error: 17 unreadable image files in a row near ") and "x" in line
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):  # no orphaned worker left in the run's process group
        os.killpg(p.pid, 0)


def _sleeping_worker(grace: int, ready) -> None:
    data.WORKER_TERM_GRACE_S = grace
    data.worker_init(0)
    ready.set()
    time.sleep(30)


def test_loader_workers_do_not_ignore_sigterm():
    """A worker with a live main process exits within the grace period after SIGTERM (SIGALRM); SIGINT
    (Ctrl-C to the process group) is left to the main process."""
    ctx = mp.get_context("fork")
    ready = ctx.Event()
    w = ctx.Process(target=_sleeping_worker, args=(1, ready), daemon=True)
    w.start()
    try:
        assert ready.wait(10)
        os.kill(w.pid, signal.SIGINT)
        time.sleep(0.2)
        assert w.is_alive()
        t0 = time.monotonic()
        os.kill(w.pid, signal.SIGTERM)
        w.join(timeout=10)
        assert not w.is_alive() and w.exitcode == -signal.SIGALRM
        assert 0.5 < time.monotonic() - t0 < 5.0
    finally:
        if w.is_alive():
            w.kill()


# ------------------------------------------------------------------------------------- argument validation

@pytest.mark.parametrize("script, argv, flag", [
    (in1k_ae, ["--ckpt-every", "0"], "--ckpt-every must be an integer >= 1, got 0"),
    (in1k_ae, ["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    (in1k_ae, ["--lr", "-1"], "--lr must be a finite number > 0, got -1.0"),
    (in1k_ae, ["--threads", "-3"], "--threads must be an integer >= 1, got -3"),
    (in1k_ae, ["--device", "bogus"], "--device 'bogus': expected auto, cpu, cuda, cuda:N or mps"),
    (in1k_ae, ["--image-size", "100000"], "--image-size must be an integer in [1, 4096], got 100000"),
    (in1k_ae, ["--epochs", "-1"], "--epochs must be a finite number > 0, got -1.0"),
    (in1k_ae, ["--beta2", "1"], "--beta2 must be a number in [0.0, 1.0), got 1.0"),
    (in1k_dit, ["--max-steps", "-1"], "--steps must be an integer >= 0, got -1"),
    (in1k_dit, ["--lr", "inf"], "--lr must be a finite number > 0, got inf"),
    (in1k_dit, ["--ckpt-every", "0"], "--ckpt-every must be an integer >= 1, got 0"),
])
def test_bad_training_flags_are_one_line_exit_2(script, argv, flag, tmp_path, capsys):
    assert script.main(argv + ["--out", str(tmp_path / "o")]) == 2
    assert _one_line(capsys.readouterr().err).endswith(flag)
    assert not (tmp_path / "o").exists()


def test_the_other_clis_share_the_validator(tmp_path, capsys):
    from experiments import cache_latents, eval_ae

    assert cache_latents.main(["--out", str(tmp_path / "lat"), "--shard-size", "0"]) == 2
    assert _one_line(capsys.readouterr().err).endswith("--shard-size must be an integer >= 1, got 0")
    assert eval_gen.main(["--samples", "a.npz", "--ref", "b.npz", "--splits", "0"]) == 2
    assert _one_line(capsys.readouterr().err).endswith("--splits must be an integer >= 1, got 0")
    assert eval_ae.main(["--ckpt", str(tmp_path), "--batch-size", "-2"]) == 2
    assert _one_line(capsys.readouterr().err).endswith("--batch-size must be an integer >= 1, got -2")
    assert not (tmp_path / "lat").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_device_cuda_without_gpu_is_one_line(tmp_path, capsys):
    for script in (in1k_ae, in1k_dit, sample):
        assert script.main(["--device", "cuda", "--out", str(tmp_path / "o.png" if script is sample else
                                                               tmp_path / "o")]) == 2
        assert "no CUDA GPU is visible" in _one_line(capsys.readouterr().err)


@pytest.mark.parametrize("argv, needle", [
    (["--steps", "0"], "--steps must be an integer >= 1, got 0"),
    (["--decode-norm", "0"], "--decode-norm must be a finite number > 0, got 0.0"),
    (["--grid", "0"], "--grid must be an integer >= 1, got 0"),
    (["--nrow", "0"], "--nrow must be an integer >= 1, got 0"),
    (["--method", "odeint:bogus"], "unknown torchdiffeq solver 'bogus'"),
    (["--alpha", "0"], "--alpha must be a finite number > 0, got 0.0"),
    (["--cfg", "nan"], "--cfg must be a finite number, got nan"),
    (["--cfg", "inf"], "--cfg must be a finite number, got inf"),
    (["--cfg-interval", "0.7", "0.2"], "0 <= LO <= HI <= 1"),
])
def test_bad_sample_flags_are_one_line_exit_2(argv, needle, capsys):
    assert sample.main(argv + ["--ckpt", "/nonexistent"]) == 2  # checked before anything is loaded
    assert needle in _one_line(capsys.readouterr().err)


# ------------------------------------------------------------------------------------------ sampling output

N, C, K = 4, 32, 3


@pytest.fixture(scope="module")
def dit_run(tmp_path_factory) -> Path:
    from models import build_autoencoder
    from models.dit import DiTConfig, LightningDiT

    from experiments.common.dit_io import save_autoencoder

    d = tmp_path_factory.mktemp("dit_run")
    torch.manual_seed(0)
    ae = build_autoencoder("tiny", image_size=32)
    save_autoencoder(ae, d / "ae.pt", "tiny", latent_norm=6.0)
    m = LightningDiT(replace(DiTConfig(), in_channels=C, num_tokens=N, num_classes=K, depth=1, hidden_size=32,
                             num_heads=2))
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.1)
    latent = dict(num_tokens=N, channels=C, radius=float(ae.radius), alpha=0.5, num_classes=K,
                  ae_ckpt=str(d / "ae.pt"), classes=None, image_size=32)
    checkpoint.save_atomic({"step": 1, "model": m.state_dict(), "ema": None, "dit_config": asdict(m.config),
                            "latent": latent, "args": {}}, d / "checkpoints" / "last.pt")
    return d


def test_non_finite_samples_stop_with_one_line_and_write_nothing(dit_run, tmp_path, capsys):
    """--cfg 1e38 is a finite flag, but v_u + w (v_c - v_u) overflows: the latents leaving the sampler
    are not finite. Before: all-black PNG, all-zero .npz, exit 0."""
    npz, png = tmp_path / "s.npz", tmp_path / "s.png"
    argv = ["--ckpt", str(dit_run), "--num-samples", "4", "--steps", "2", "--npz", str(npz), "--out", str(png),
            "--device", "cpu"]
    assert sample.main(argv + ["--cfg", "1e38"]) == 3
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("sample.py: error: non-finite latents") and "samples 0..3" in line
    assert not npz.exists() and not png.exists()
    assert sample.main(argv + ["--cfg", "1.5"]) == 0  # a sane scale still samples
    with np.load(npz) as f:
        assert f["arr_0"].shape == (4, 32, 32, 3) and f["arr_0"].std() > 0


def test_ae_ckpt_pointing_at_a_dit_run_is_one_line(dit_run, capsys):
    assert sample.main(["--ckpt", str(dit_run), "--ae-ckpt", str(dit_run), "--num-samples", "1",
                        "--steps", "1", "--device", "cpu"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "is an in1k_dit.py (DiT) checkpoint, not an autoencoder" in line and "--ae-ckpt" in line


@pytest.mark.parametrize("content", [b"garbage", b"", b"PK\x03\x04broken zip", b"\x93NUMPY\x01\x00xx"])
def test_eval_gen_on_a_garbage_npz_is_one_line(tmp_path, capsys, content):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(content)
    with pytest.raises(UserError, match="is not a readable .npz"):
        list(eval_gen.iter_images(bad, 4))
    ok = tmp_path / "ok.npz"
    np.savez(ok, arr_0=np.zeros((2, 8, 8, 3), np.uint8))

    class Stub(torch.nn.Module):
        def forward(self, x):
            return x.float().mean((2, 3)), x.float().mean((2, 3))

    from experiments.common.trainer import run_cli

    rc = run_cli(lambda _: eval_gen.run(eval_gen.build_parser().parse_args(
        ["--samples", str(bad), "--ref", str(ok), "--out", str(tmp_path / "r.json")]), extractor=Stub()),
        prog="eval_gen.py")
    assert rc == 2 and f"{bad} is not a readable .npz" in _one_line(capsys.readouterr().err)


# ----------------------------------------------------------------------------------------------- 16-bit PNGs

@pytest.mark.parametrize("mode, ext", [("I;16", ".png"), ("I;16B", ".tif"), ("I", ".tif")])
def test_16_bit_images_are_scaled_not_white(tmp_path, mode, ext):
    from PIL import Image

    v = (np.arange(64 * 48, dtype=np.int64).reshape(48, 64) * 21) % 65536  # 0 .. 65535, known content
    if mode == "I":
        im = Image.fromarray(v.astype(np.int32), mode="I")
    else:
        im = Image.frombytes(mode, (64, 48), v.astype(">u2" if mode == "I;16B" else "<u2").tobytes())
    path = tmp_path / f"g{ext}"
    im.save(path)
    with Image.open(path) as back:
        assert back.mode in ("I;16", "I;16B", "I;16L", "I")  # still a wide mode on disk
    rgb = data.load_rgb(path)
    want = np.rint(v * 255.0 / 65535.0).astype(np.uint8)
    assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8
    assert all(np.array_equal(rgb[..., c], want) for c in range(3))
    assert (rgb == 255).mean() < 0.01 and math.isclose(rgb.mean(), want.mean())
