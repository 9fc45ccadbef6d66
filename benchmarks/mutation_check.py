"""Mutation check of `spherical` and the run plumbing: do the tests catch small, plausible bugs?

Each entry of :data:`MUTATIONS` names a file, a snippet that must occur in it exactly once, the
mutated snippet, and the tests that should catch it. The script copies the repository to a temporary
folder once per worker, applies one mutation at a time there (never in the working tree), runs the listed
tests with ``pytest -x`` (in a child forked from a parent that imported torch & co. once; hypothesis runs the
ci profile's examples without shrinking) and restores the file. A mutation is *killed* when pytest fails (or times out:
reported separately), *survives* when the tests pass, and is an *error* when the snippet is missing or
no test ran. The kill ratio is killed / (killed + survived).

Usage::

    nice -n 10 python benchmarks/mutation_check.py                  # all, 2 workers; JSON under results/
    python benchmarks/mutation_check.py --only adaptive.rms_norm     # one (ids: --list)
    python benchmarks/mutation_check.py --jobs 1 --timeout 120

The catalogue follows the kinds an outside mutation review used (issue 23): the adaptive controller,
Bessel functions, densities, samplers, likelihoods, normal-coordinate stages, the run lock and checkpoints.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
COPY = ("spherical", "models", "experiments", "tests", "pyproject.toml")


@dataclass(frozen=True)
class Mutation:
    id: str
    file: str
    original: str
    mutated: str
    tests: Tuple[str, ...]


def M(id: str, file: str, original: str, mutated: str, *tests: str) -> Mutation:  # noqa: A002
    return Mutation(id, file, original, mutated, tests)


AD, NRM, INT, LIK = "spherical/adaptive.py", "spherical/_normal.py", "spherical/integrate.py", "spherical/likelihood.py"
HS, SER, FLOW, BES = "spherical/hypersphere.py", "spherical/_series.py", "spherical/flow.py", "spherical/_bessel.py"
DIST, DIR, KER = "spherical/distributions.py", "spherical/_directional.py", "spherical/_kernels.py"
RUN, CKPT = "experiments/common/rundir.py", "experiments/common/checkpoint.py"
T_CTRL, T_ADA, T_NAN = "tests/test_adaptive_control.py", "tests/test_adaptive.py", "tests/test_nonfinite_and_edges.py"
T_LIK, T_INT, T_HS = "tests/test_likelihood.py", "tests/test_integrate.py", "tests/test_hypersphere.py"
T_HS_EXPLOG = (T_HS + "::test_exp_of_log_is_identity", T_HS + "::test_log_of_exp_is_identity")
T_SERIES = T_NAN + "::test_series_branches_are_accurate_to_round_off_below_the_threshold"
T_LIK_CAP = T_LIK + "::test_cap_flow_matches_closed_form"
T_LIK_TOK = T_LIK + "::test_tokens_sum_for_independent_tokens_and_coupled_exact_trace"
T_LIK_HUT = T_LIK + "::test_hutchinson_agrees_with_exact_within_its_standard_error"
T_ACC, T_FUNC, T_FLOW = "tests/test_accuracy.py", "tests/test_func.py", "tests/test_flow.py"
T_BES, T_DIST, T_EDGE = "tests/test_bessel.py", "tests/test_distributions.py", "tests/test_client_edges.py"
T_PIN, T_INP = "tests/test_plumbing_pins.py", "tests/test_inputs.py"
T_REL_LOCK = "tests/test_reliability.py::test_lock_is_exclusive_within_a_process_and_released_on_exit"

MUTATIONS: List[Mutation] = [
    # --- the adaptive controller -------------------------------------------------------------------------
    M("adaptive.exponent", AD, "expo = 1.0 / (tab.error_order + 1)", "expo = 1.0 / tab.error_order", T_CTRL),
    M("adaptive.rms_norm", AD, "return v.square().mean().sqrt()", "return v.abs().max()", T_CTRL),
    M("adaptive.aux_scale", AD, "ref = torch.maximum(a0.abs(), a1.abs()) if a1 is not None else a0.abs()",
      "ref = a0.abs()", T_CTRL),
    M("adaptive.growth_after_reject", AD, "grow = min(grow, 1.0)", "grow = grow", T_CTRL),
    M("adaptive.grid_landing", AD, "h_abs = max(h_abs, new) if last else new", "h_abs = new", T_CTRL),
    M("adaptive.first_step_exponent", AD, "(0.01 / dm) ** (1.0 / (q + 1))", "(0.01 / dm) ** (1.0 / q)", T_CTRL),
    M("adaptive.first_step_h0", AD, "0.01 * d0 / d1", "0.1 * d0 / d1", T_CTRL),
    M("adaptive.first_step_d0", AD, "d0 = scale(x, aux, aux)", "d0 = scale(x)", T_CTRL),
    M("adaptive.pi_beta", AD, "* err_prev ** beta", "* 1.0", T_CTRL),
    M("adaptive.reject_safety", AD, "max(min_factor, safety * err ** -expo)", "max(min_factor, 0.5 * err ** -expo)",
      T_CTRL),
    M("adaptive.fsal", AD, "x, aux, fk = x1, aux1, out", "x, aux, fk = x1, aux1, f(x1, at(tk))", T_CTRL, T_ADA),
    M("adaptive.nan_stop", AD, "if not math.isfinite(err):", "if False:", T_NAN),
    M("normal.dexp_inv_sinc", NRM, "return par + (wb - par) / sinc(nxi / r)", "return par + (wb - par)", T_ADA),
    # --- fixed-grid integration and likelihoods ------------------------------------------------------------
    M("integrate.nan_stop", INT, '_check_finite(x, "integrate", t, k)', "pass", T_NAN),
    M("integrate.rk4_weights", INT, "(1 / 6, 1 / 3, 1 / 3, 1 / 6)", "(1 / 6, 1 / 3, 1 / 6, 1 / 3)",
      T_INT + "::test_observed_order"),
    M("likelihood.sign", LIK, "return (lp.to(x.dtype) + a1).detach()", "return (lp.to(x.dtype) - a1).detach()",
      T_LIK_CAP),
    M("likelihood.base_sum", LIK, "lp.reshape(x.shape[0], -1).sum(-1)", "lp.reshape(x.shape[0], -1).mean(-1)",
      T_LIK_TOK),
    M("likelihood.probe_mean", LIK, ".sum(-1).mean(0)", ".sum(-1).sum(0)", T_LIK_HUT),
    M("likelihood.rademacher", LIK, "(2 * torch.randint(0, 2, shape, generator=generator, device=dev) - 1)",
      "torch.randint(0, 2, shape, generator=generator, device=dev)", T_LIK_HUT),
    # --- the sphere's formulas ---------------------------------------------------------------------------
    M("hypersphere.expmap_theta", HS, "cos_sinc_sq(s / (r * r))", "cos_sinc_sq(s / r)", *T_HS_EXPLOG),
    M("hypersphere.log_antipode", HS, "g = torch.where(f.antipodal, r * f.theta, 0.0)",
      "g = torch.where(f.antipodal, 0.0 * f.theta, 0.0)",
      T_HS + "::test_antipodal_log_is_deterministic_and_exp_lands_on_minus_x"),
    M("hypersphere.transp_sign", HS, "xc = -qa * f.c - q / (f.ynorm * r)", "xc = -qa * f.c + q / (f.ynorm * r)",
      T_HS + "::test_transport_is_isometry_onto_tangent_space_and_reversible"),
    M("hypersphere.radius_grad", HS, "radius if radius.requires_grad else radius.detach().clone()",
      "radius.detach().clone()", T_NAN),
    M("hypersphere.radius_type", HS, "if isinstance(radius, bool) or not isinstance(radius, numbers.Real):",
      "if False:", T_NAN),
    M("series.second_derivative", SER, "small = s < _SERIES_THRESHOLD**2",
      "small = s < 0.0", T_NAN),
    M("kernels.norm_double_backward", KER, "if eager_mode() and torch.is_grad_enabled() and a.requires_grad:",
      "if False:", T_NAN),
    M("series.sinc_term", SER, "_SINC = (1.0, -1.0 / 6.0, 1.0 / 120.0, -1.0 / 5040.0,",
      "_SINC = (1.0, -1.0 / 6.0, 1.0 / 120.0, 0.0,", T_SERIES, T_ACC),
    M("series.threshold", SER, "_SERIES_THRESHOLD = 0.1", "_SERIES_THRESHOLD = 0.6", T_SERIES, T_ACC, *T_HS_EXPLOG),
    M("flow.lambda_rad_check", FLOW, "if isinstance(lambda_rad, bool) or not isinstance(lambda_rad, numbers.Real)",
      "if False and (lambda_rad)", T_NAN),
    M("flow.radial_weight", FLOW, "RFMLoss(tangent + lambda_rad * radial, tangent, radial)",
      "RFMLoss(tangent + radial, tangent, radial)",
      T_FLOW + "::test_loss_zero_at_target_and_grows_with_radial_error"),
    # --- Bessel functions ---------------------------------------------------------------------------------
    M("bessel.debye_terms", BES, "DEBYE_TERMS = 9 ", "DEBYE_TERMS = 8 ", T_BES),
    M("bessel.debye_switch", BES, "N_DEBYE = 30 ", "N_DEBYE = 15 ", T_BES),
    M("bessel.recurrence", BES, "q = 2.0 * n + x2 / q", "q = 2.0 * n - 1.0 + x2 / q", T_BES),
    # --- densities and samplers ---------------------------------------------------------------------------
    M("density.vmf_radius_term", DIST, "return const - self.concentration * half_sq - self._log_radius_term()",
      "return const - self.concentration * half_sq + self._log_radius_term()", T_DIST),
    M("density.ps_power", DIST, "k * log_half)", "(k + 1) * log_half)", T_DIST),
    M("density.sphere_area", DIST, "- math.lgamma(0.5 * c) + (c - 1) * torch.log(r)",
      "- math.lgamma(0.5 * c) + c * torch.log(r)", T_DIST),
    M("density.vmf_entropy", DIST, "-self._log_normaliser64() + self.concentration.to(torch.float64) *",
      "-self._log_normaliser64() - self.concentration.to(torch.float64) *", T_DIST),
    M("density.ps_resultant", DIST, "return k / (k + self.channels - 1)", "return k / (k + self.channels)", T_DIST),
    M("sampler.householder_sign", DIR, "sign = torch.where(loc[..., :1] >= 0, 1.0, -1.0)",
      "sign = torch.where(loc[..., :1] >= 0, 1.0, 1.0)", T_EDGE),
    M("sampler.orthogonal_draw", DIR, "v[..., 0] = 0.0 ", "v[..., 0] = v[..., 0] ", T_EDGE),
    M("sampler.wood_accept", DIR, "accept = ~done & (log_accept >= torch.log(",
      "accept = ~done | (log_accept >= torch.log(", T_DIST),
    M("sampler.generator", DIST, "return place_on_sphere(w, r, self.loc, self.radius, generator)",
      "return place_on_sphere(w, r, self.loc, self.radius)", T_EDGE),
    M("sampler.beta_pair", DIR, "return (x / s).clamp_min(tiny), (y / s).clamp_min(tiny)",
      "return (y / s).clamp_min(tiny), (x / s).clamp_min(tiny)", T_EDGE, T_DIST),
    # --- the run lock -------------------------------------------------------------------------------------
    M("runlock.shared", RUN, "fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)",
      "fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)", T_PIN),
    M("runlock.stale_pid_check", RUN, "if same_host and not pid_alive(int(old.get(\"pid\", -1) or -1))",
      "if same_host", T_PIN),
    M("runlock.same_process", RUN, "if held is not None:", "if False:", T_REL_LOCK),
    M("runlock.release_empties", RUN, "os.ftruncate(self.fd, 0)  # empty = no run", "pass  # empty = no run", T_PIN),
    M("runlock.set_aside_names", RUN, "while dest.exists():", "if dest.exists():", T_PIN),
    # --- checkpoints --------------------------------------------------------------------------------------
    M("checkpoint.fsync", CKPT, "os.fsync(f.fileno())", "pass", T_PIN),
    M("checkpoint.same_folder", CKPT, 'suffix=".tmp", dir=path.parent)', 'suffix=".tmp")', T_PIN),
    M("checkpoint.non_dict", CKPT, "if isinstance(state, BaseException) or not isinstance(state, dict):",
      "if isinstance(state, BaseException):", T_PIN),
    M("checkpoint.rank_rng", CKPT, "restore_rng(rng[rank] if len(rng) == world_size else rng[0])",
      "restore_rng(rng[0])", T_PIN),
    M("checkpoint.world_size", CKPT, "restore_rng(rng[rank] if len(rng) == world_size else rng[0])",
      "restore_rng(rng[min(rank, len(rng) - 1)])", T_PIN),
]


@dataclass
class Result:
    id: str
    status: str  # killed | survived | timeout | error
    seconds: float
    detail: str = ""


def _copy_tree(src: Path, dst: Path, parts: Sequence[str]) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".hypothesis", "results", "data")
    for name in parts:
        p = src / name
        if p.is_dir():
            shutil.copytree(p, dst / name, ignore=ignore)
        elif p.exists():
            shutil.copy2(p, dst / name)


def _child(work: Path, tests: Sequence[str], extra: Sequence[str], log: Path) -> None:
    """In a forked child: run pytest in-process on the copy ``work`` and exit with its status."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.chdir(work)
    sys.path.insert(0, str(work))
    os.environ["PYTHONPATH"] = str(work)  # for the tests' own subprocesses
    import pytest
    from hypothesis import HealthCheck, Phase, settings

    # The ci profile's examples, but a failing example is not shrunk (shrinking a killed mutant only costs time).
    settings.register_profile("mutation", max_examples=60, derandomize=True, deadline=None, database=None,
                              phases=(Phase.explicit, Phase.reuse, Phase.generate),
                              suppress_health_check=list(HealthCheck))
    code = pytest.main(["-x", "-q", "-p", "no:cacheprovider", *extra, *tests])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(code))


def _preload() -> None:
    """Import the heavy third-party modules once in the parent, so every forked child starts warm (the
    project's own packages are imported only in the children, from the mutated copy)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import geoopt  # noqa: F401
        import hypothesis  # noqa: F401
        import numpy  # noqa: F401
        import pytest  # noqa: F401
        import torch  # noqa: F401
        import torchdiffeq  # noqa: F401
        for name in ("scipy.special", "mpmath"):
            try:
                __import__(name)
            except ImportError:
                pass


def _verdict(m: Mutation, code: Optional[int], secs: float, log: Path, timeout: float) -> Result:
    out = log.read_text(errors="replace") if log.exists() else ""
    tail = [ln for ln in out.strip().splitlines() if ln.strip()][-1:] or [""]
    if code is None:
        return Result(m.id, "timeout", secs, f"no verdict in {timeout:.0f} s (counted as killed)")
    if code == 0:
        return Result(m.id, "survived", secs, tail[0])
    if code == 1:
        return Result(m.id, "killed", secs, tail[0])
    return Result(m.id, "error", secs, f"pytest exit {code}: {tail[0]}")


def run_all(mutations: Sequence[Mutation], *, root: Path = ROOT, jobs: int = 2, timeout: float = 180.0,
            parts: Sequence[str] = COPY, extra: Sequence[str] = ("--hypothesis-profile=mutation",),
            log=print, preload: bool = True) -> List[Result]:
    """Runs ``mutations`` on ``jobs`` private copies of ``root`` (never touching ``root`` itself).

    One forked child per mutation (the parent preloads torch & co. once), at most ``jobs`` at a time, each
    on its own copy; the parent applies the mutation before the fork and restores the file after the child
    ends (also when it is killed at ``timeout``).
    """
    if preload:
        _preload()
    jobs = max(1, min(jobs, len(mutations)))
    results: List[Result] = []
    with tempfile.TemporaryDirectory(prefix="mutation-") as tmp:
        free = []
        for j in range(jobs):
            w = Path(tmp) / f"w{j}"
            w.mkdir()
            _copy_tree(root, w, parts)
            free.append(w)
        pending = list(mutations)
        running: dict = {}  # pid -> (mutation, work, original text, start, log)
        while pending or running:
            while pending and free:
                m, w = pending.pop(0), free.pop()
                path = w / m.file
                text = path.read_text()
                count = text.count(m.original)
                if count != 1:
                    results.append(Result(m.id, "error", 0.0, f"original snippet found {count} times in {m.file}"))
                    free.append(w)
                    continue
                path.write_text(text.replace(m.original, m.mutated))
                lg = Path(tmp) / f"{m.id}.log"
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    try:
                        _child(w, m.tests, extra, lg)
                    finally:
                        os._exit(3)
                running[pid] = (m, w, text, time.perf_counter(), lg)
            time.sleep(0.05)
            for pid, (m, w, text, t0, lg) in list(running.items()):
                done, status = os.waitpid(pid, os.WNOHANG)
                secs = time.perf_counter() - t0
                code: Optional[int] = None
                if done:
                    code = os.waitstatus_to_exitcode(status)
                elif secs > timeout:
                    os.kill(pid, 9)
                    os.waitpid(pid, 0)
                else:
                    continue
                del running[pid]
                (w / m.file).write_text(text)
                r = _verdict(m, code, secs, lg, timeout)
                log(f"{r.status:8s} {r.seconds:6.1f} s  {r.id}  {r.detail}")
                results.append(r)
                free.append(w)
    order = {m.id: i for i, m in enumerate(mutations)}
    return sorted(results, key=lambda r: order[r.id])


def summary(results: Sequence[Result]) -> dict:
    killed = sum(r.status in ("killed", "timeout") for r in results)
    survived = sum(r.status == "survived" for r in results)
    errors = [r.id for r in results if r.status == "error"]
    return {"mutations": len(results), "killed": killed, "survived": survived, "errors": errors,
            "kill_ratio": killed / max(1, killed + survived),
            "survivors": [r.id for r in results if r.status == "survived"]}


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", help="mutation ids to run (default: all)")
    ap.add_argument("--list", action="store_true", help="print the ids and exit")
    ap.add_argument("--jobs", type=int, default=2, help="parallel workers, each on its own copy (default 2)")
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds per mutation (default 180)")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "mutation_check.json"))
    args = ap.parse_args(argv)
    if args.list:
        print("\n".join(f"{m.id:32s} {m.file}" for m in MUTATIONS))
        return 0
    chosen = [m for m in MUTATIONS if not args.only or m.id in args.only]
    unknown = set(args.only or ()) - {m.id for m in MUTATIONS}
    if unknown or not chosen:
        print(f"mutation_check: unknown ids {sorted(unknown)}; see --list", file=sys.stderr)
        return 2
    start = time.perf_counter()
    results = run_all(chosen, jobs=args.jobs, timeout=args.timeout)
    s = summary(results)
    s["wall_seconds"] = round(time.perf_counter() - start, 1)
    s["jobs"] = args.jobs
    s["results"] = [asdict(r) for r in results]
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(s, indent=1))
    print(f"killed {s['killed']}/{s['killed'] + s['survived']} = {100 * s['kill_ratio']:.1f} % "
          f"({len(s['errors'])} errors{': ' + ', '.join(s['errors']) if s['errors'] else ''}); "
          f"survivors: {', '.join(s['survivors']) or 'none'}; wall {s['wall_seconds']} s with {args.jobs} jobs")
    return 0 if not s["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
