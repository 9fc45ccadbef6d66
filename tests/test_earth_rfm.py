"""Sanity laws of the earth density benchmark: likelihood plumbing, vMF baseline, RFM training, CLI."""
from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch

from experiments.common.earth_eval import LOG_4PI, fit_vmf_s2, nll, summarise, write_table
from experiments.earth_rfm import batch_loss, main
from models.sphere_mlp import SphereVelocityMLP
from spherical import Hypersphere
from spherical.distributions import VonMisesFisher

S2 = Hypersphere(1.0)


def _points(n: int, seed: int) -> torch.Tensor:
    return S2.random_uniform(n, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_zero_velocity_and_rotation_give_the_uniform_nll():
    """A model that learned nothing (v = 0) is the uniform density: NLL = log 4π = 2.531 at every point.
    A rigid rotation v = ω × x is divergence-free and maps the uniform to itself: the same value."""
    x = _points(64, 0)
    assert LOG_4PI == pytest.approx(2.5310242, abs=1e-7)
    assert nll(lambda y, t: torch.zeros_like(y), x, steps=2) == pytest.approx(LOG_4PI, abs=1e-10)
    omega = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    rot = lambda y, t: torch.linalg.cross(omega.expand_as(y), y)  # noqa: E731
    assert nll(rot, x, steps=8) == pytest.approx(LOG_4PI, abs=1e-8)


def test_vmf_fitted_by_maximum_likelihood_has_test_nll_near_the_entropy():
    """Fit a vMF to 4000 samples of vMF(μ, κ = 8); on 4000 fresh samples its NLL (a cross-entropy) is
    within 0.05 of the true distribution's entropy, and κ̂ within 10 %."""
    torch.manual_seed(0)
    mu = torch.nn.functional.normalize(torch.tensor([0.2, -0.5, 0.8], dtype=torch.float64), dim=0)
    kappa = torch.tensor(8.0, dtype=torch.float64)
    true = VonMisesFisher(mu, kappa)
    train, test = true.sample((4000,)), true.sample((4000,))
    loc, k = fit_vmf_s2(train)
    assert float(k) == pytest.approx(8.0, rel=0.1) and float(loc @ mu) > 0.99
    fitted = VonMisesFisher(loc, k)
    test_nll = -float(fitted.log_prob(test).mean())
    assert abs(test_nll - float(true.entropy())) < 0.05
    # closed form on S²: H = 1 − κ coth κ + log(4π sinh κ / κ)
    assert float(true.entropy()) == pytest.approx(1 - 8 / math.tanh(8) + math.log(4 * math.pi * math.sinh(8) / 8),
                                                  abs=1e-6)


def test_rfm_on_a_two_mode_vmf_mixture_beats_the_uniform():
    """300 RFM steps of a small MLP on a mixture of two vMF (κ = 12, modes 90° apart) lower the test NLL
    below the uniform's log 4π = 2.531 by more than 1.2 nats, to within 0.1 of the true mixture's NLL on the
    same points, and not below it by more than 0.1 (a likelihood that beat the truth would be a bug).
    Measured: model 1.120, truth 1.098 (margin to the uniform 1.41 nats)."""
    torch.manual_seed(1)
    modes = [VonMisesFisher(torch.tensor(m, dtype=torch.float64), torch.tensor(12.0, dtype=torch.float64))
             for m in ([0.0, 0.0, 1.0], [1.0, 0.0, 0.0])]
    data = torch.cat([d.sample((1500,)) for d in modes]).float()
    data = data[torch.randperm(len(data))]
    train, test = data[:2744], data[2744:]
    model = SphereVelocityMLP(width=64, depth=3, x_features=8, x_scale=2.0)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        opt.zero_grad()
        batch_loss(model, train, 256, gen).total.backward()
        opt.step()
    model_nll = nll(model, test, steps=8)
    true_nll = -float(torch.logsumexp(torch.stack([d.log_prob(test.double()) for d in modes]), 0).sub(math.log(2))
                      .mean())
    assert model_nll < LOG_4PI - 1.2
    assert true_nll - 0.1 < model_nll < true_nll + 0.1


def test_summary_means_std_and_beaten_rows():
    runs = {"fire": [{"seed": 0, "test_nll": -1.5, "test_nll_coarse": -1.49, "wall_s": 10.0, "best_step": 5},
                     {"seed": 1, "test_nll": -1.4, "test_nll_coarse": -1.42, "wall_s": 12.0, "best_step": 6}]}
    s = summarise(runs)["fire"]
    assert s["mean"] == pytest.approx(-1.45) and s["std"] == pytest.approx(0.1 / math.sqrt(2))
    assert s["solver_gap"] == pytest.approx(0.02)
    assert s["beats"] == pytest.approx({"Mixture of Kent": 0.27, "Riemannian CNF": 0.65, "Moser Flow": 0.17,
                                        "Stereographic score-based": 0.17, "Riemannian score-based (RSGM)": 0.12,
                                        "Riemannian diffusion models": 0.07})


def test_table_files(tmp_path):
    runs = {"volcano": [], "fire": [{"seed": 0, "test_nll": -1.5, "test_nll_coarse": -1.5, "wall_s": 10.0,
                                     "best_step": 5, "test_logp": [1.5, 1.5]}]}
    write_table(runs, {"preset": "x"}, tmp_path / "t.json", tmp_path / "t.md")
    md = (tmp_path / "t.md").read_text()
    assert "| **ours: RFM, MLP (earth_rfm.py)** | not run | not run | not run | −1.50 (n=1) |" in md
    assert "| Mixture of Kent | −0.80 ± 0.47 | 0.33 ± 0.05 | 0.73 ± 0.07 | −1.18 ± 0.06 |" in md
    assert "| Riemannian flow matching (reported) | −7.93 ± 1.67 | −0.28 ± 0.08 | 0.42 | −1.86 ± 0.11 |" in md
    assert "| Generalised Flow Maps (second-hand) | — | −1.08 | −0.88 | −2.48 |" in md
    assert "| ours: margin over Riemannian flow matching (reported) (> 0: ours lower) | — | — | — | -0.36 |" in md
    doc = json.loads((tmp_path / "t.json").read_text())
    assert doc["summary"]["fire"]["mean"] == -1.5
    assert "test_logp" not in doc["runs"]["fire"][0] and doc["runs"]["fire"][0]["best_step"] == 5  # records keep them


def test_cli_resumes_exactly_and_plots(tmp_path):
    """Stopped at step 30 and re-run, the tiny preset ends with the same test NLL as an uninterrupted run."""
    common = ["--preset", "tiny", "--dataset", "volcano", "--no-progress"]
    assert main(common + ["--out", str(tmp_path / "a"), "--results", str(tmp_path / "ra"), "--no-plot"]) == 0
    b_args = common + ["--out", str(tmp_path / "b"), "--results", str(tmp_path / "rb")]
    assert main(b_args + ["--stop-after", "30"]) == 0
    run_b = tmp_path / "b" / "volcano" / "seed0"
    assert (run_b / "checkpoints" / "last.pt").is_file() and not (run_b / "result.json").exists()
    assert not (tmp_path / "rb" / "earth_runs" / "volcano" / "seed0.json").exists()
    assert main(b_args) == 0
    a = json.loads((tmp_path / "a" / "volcano" / "seed0" / "result.json").read_text())
    b = json.loads((run_b / "result.json").read_text())
    assert b["test_nll"] == pytest.approx(a["test_nll"], abs=1e-6) and b["best_step"] == a["best_step"]
    assert a["test_nll"] < LOG_4PI and abs(a["test_nll"] - a["test_nll_coarse"]) < 0.05
    assert a["test_solver"] == "dopri5 float64 rtol=atol=0.0001" and (a["n_train"], a["n_test"]) == (663, 82)
    record = json.loads((tmp_path / "rb" / "earth_runs" / "volcano" / "seed0.json").read_text())
    assert record["test_nll"] == b["test_nll"] and "out" not in record["args"]
    assert (run_b / "density.png").read_bytes()[:4] == b"\x89PNG" and abs(b["grid_mass"] - 1) < 0.1
    events = [json.loads(line)["event"] for line in (run_b / "metrics.jsonl").read_text().splitlines()]
    assert events.count("start") == 1 and events[-1] == "test" and "stopped" in events


def test_cli_errors_are_one_line(capsys):
    assert main(["--preset", "tiny", "--steps", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["earth_rfm.py: error: --steps must be at least 1, got 0"]
    with pytest.raises(SystemExit) as e:
        main(["--dataset", "moon"])
    assert e.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


def test_all_datasets_write_the_table_and_rerun_is_a_no_op(tmp_path):
    """``--dataset all`` over a small stand-in data folder (one CSV per dataset name, comments + header):
    every dataset is trained, the table lists each (n=1), the density PNGs are copied; a second
    run finds every result and rewrites the same table."""
    from experiments.common.earth import FILES

    data = _stand_in_data(tmp_path)
    argv = ["--preset", "tiny", "--dataset", "all", "--seeds", "3", "--steps", "20", "--eval-every", "10",
            "--data-dir", str(data), "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "res"),
            "--no-progress"]
    assert main(argv) == 0
    table = json.loads((tmp_path / "res" / "earth_nll.json").read_text())
    assert sorted(table["summary"]) == sorted(FILES)
    assert all(s["seeds"] == [3] and len(s["test_nll"]) == 1 for s in table["summary"].values())
    assert all((tmp_path / "res" / f"earth_density_{d}.png").read_bytes()
               == (tmp_path / "runs" / d / "seed3" / "density.png").read_bytes() for d in FILES)
    md = (tmp_path / "res" / "earth_nll.md").read_text()
    assert md.count("(n=1)") == 4
    assert main(argv) == 0
    assert json.loads((tmp_path / "res" / "earth_nll.json").read_text())["summary"] == table["summary"]
    # the same table from two child processes at a time (the tiny preset trains on one thread either way)
    par = [a for a in argv if a not in (str(tmp_path / "runs"), str(tmp_path / "res"))]
    par = [a for a in par if a not in ("--out", "--results")]
    par += ["--out", str(tmp_path / "par"), "--results", str(tmp_path / "rpar"), "--jobs", "2"]
    assert main(par) == 0
    untimed = lambda summary: {d: {k: v for k, v in s.items() if k != "wall_s"} for d, s in summary.items()}  # noqa: E731
    assert untimed(json.loads((tmp_path / "rpar" / "earth_nll.json").read_text())["summary"]) \
        == untimed(table["summary"])
    assert all("test NLL" in (tmp_path / "par" / d / "seed3" / "log.txt").read_text() for d in FILES)


def test_jobs_children_get_the_given_options_only():
    """A ``--jobs`` child repeats what was given (so per-dataset overrides still apply to unset options), for
    its one dataset and seed."""
    import argparse

    from experiments.earth_rfm import build_parser, child_argv

    parser = build_parser()
    given = parser.parse_args(["--dataset", "all", "--seeds", "0", "1", "--lr", "0.001", "--no-plot",
                               "--jobs", "2", "--out", "/tmp/x"])
    argv = child_argv(parser, given, "flood", 1, 1)
    child = parser.parse_args(argv)
    assert (child.dataset, child.seeds, child.threads, child.jobs) == ("flood", [1], 1, 1)
    assert child.lr == 0.001 and child.no_plot and child.no_progress and child.out == "/tmp/x"
    assert child.data_noise is None and child.steps is None  # left to the preset and DATASET_OVERRIDES
    assert isinstance(given, argparse.Namespace) and given.seeds == [0, 1]


def test_solver_check_reloads_the_best_ema_weights_of_a_run(tmp_path):
    """benchmarks/earth_solver_check.py re-evaluates the weights result.json was computed with: at the run's
    own K it reproduces the reported test NLL, and a finer K stays close on the tiny preset."""
    from benchmarks.earth_solver_check import main as check

    assert main(["--preset", "tiny", "--dataset", "volcano", "--no-progress", "--no-plot",
                 "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "res")]) == 0
    res = json.loads((tmp_path / "runs" / "volcano" / "seed0" / "result.json").read_text())
    out = tmp_path / "check.json"
    assert check(["--runs", str(tmp_path / "runs"), "--dataset", "volcano", "--seeds", "0", "--steps",
                  str(res["coarse_steps"]), "16", "--tols", "1e-4", "--out", str(out)]) == 0
    row = json.loads(out.read_text())["volcano/seed0"]
    assert row[f"test_K{res['coarse_steps']}"] == pytest.approx(res["test_nll_coarse"], abs=1e-9)
    assert row["test_dopri5_0.0001"] == pytest.approx(res["test_nll"], abs=1e-9)
    assert abs(row["test_K16"] - res["test_nll"]) < 0.05
    assert check(["--runs", str(tmp_path / "none"), "--dataset", "fire", "--out", str(out)]) == 2


def test_a_matching_record_counts_as_done_and_a_changed_setting_does_not(tmp_path, capsys):
    """The table can be built over several machines: a run whose record (in ``--records``) has the same
    settings is not trained again, even in an empty ``--out``; a record with other settings is ignored."""
    common = ["--preset", "tiny", "--dataset", "volcano", "--no-progress", "--no-plot",
              "--records", str(tmp_path / "rec")]
    assert main(common + ["--out", str(tmp_path / "a")]) == 0
    rec = json.loads((tmp_path / "rec" / "volcano" / "seed0.json").read_text())
    capsys.readouterr()
    assert main(common + ["--out", str(tmp_path / "b")]) == 0
    assert "done before" in capsys.readouterr().out and not (tmp_path / "b" / "volcano").exists()
    assert main(common + ["--out", str(tmp_path / "c"), "--weight-decay", "0.01"]) == 0
    assert (tmp_path / "c" / "volcano" / "seed0" / "result.json").is_file()
    assert json.loads((tmp_path / "rec" / "volcano" / "seed0.json").read_text())["args"]["weight_decay"] == 0.01
    assert rec["args"]["weight_decay"] == 0.0


def test_dataset_all_defaults_to_the_five_published_seeds():
    from experiments.earth_rfm import build_parser, resolve

    assert resolve(build_parser().parse_args(["--dataset", "all"])).seeds == [0, 1, 2, 3, 4]
    assert resolve(build_parser().parse_args(["--dataset", "fire"])).seeds == [0]
    assert resolve(build_parser().parse_args(["--dataset", "all", "--seeds", "2", "2"])).seeds == [2]


def test_dataset_overrides_apply_per_dataset_unless_given_explicitly():
    from experiments.earth_rfm import DATASET_OVERRIDES, build_parser, for_dataset, resolve

    args = resolve(build_parser().parse_args(["--dataset", "all"]))
    assert DATASET_OVERRIDES["default"]["flood"] == {"data_noise": 0.01}
    assert DATASET_OVERRIDES["default"]["fire"] == {"eval_every": 2000}
    assert for_dataset(args, "flood").data_noise == 0.01 and for_dataset(args, "fire").data_noise == 0.0
    assert for_dataset(args, "fire").eval_every == 2000 and for_dataset(args, "flood").eval_every == 1000
    assert args.data_noise == 0.0  # the shared namespace is not changed
    explicit = resolve(build_parser().parse_args(["--dataset", "all", "--data-noise", "0.002"]))
    assert for_dataset(explicit, "flood").data_noise == 0.002
    tiny = resolve(build_parser().parse_args(["--dataset", "flood", "--preset", "tiny"]))
    assert for_dataset(tiny, "flood").data_noise == 0.0


def _stand_in_data(tmp_path):
    """A small data folder: one 40-row CSV per dataset name (comments + header)."""
    from experiments.common.earth import FILES

    data = tmp_path / "data"
    data.mkdir()
    gen = torch.Generator().manual_seed(0)
    for i, f in enumerate(FILES.values()):
        lat = (torch.rand(40, generator=gen) * 40 - 20 + 10 * i).tolist()
        lon = (torch.rand(40, generator=gen) * 60 - 30 * i).tolist()
        (data / f).write_text("# stand-in\nlat,lon\n" + "".join(f"{a:.3f},{b:.3f}\n" for a, b in zip(lat, lon)))
    return data


def test_table_only_collects_finished_runs_and_trains_nothing(tmp_path, capsys):
    data = _stand_in_data(tmp_path)
    common = ["--preset", "tiny", "--steps", "20", "--eval-every", "10", "--data-dir", str(data), "--no-progress",
              "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "res")]
    assert main(common + ["--dataset", "fire", "--seeds", "1"]) == 0
    capsys.readouterr()
    assert main(common + ["--dataset", "all", "--seeds", "1", "2", "--table-only"]) == 0
    out = capsys.readouterr().out
    assert "fire seed 2: not run yet" in out and "volcano seed 1: not run yet" in out
    table = json.loads((tmp_path / "res" / "earth_nll.json").read_text())
    assert list(table["summary"]) == ["fire"] and table["summary"]["fire"]["seeds"] == [1]
    assert not (tmp_path / "runs" / "volcano").exists() and not (tmp_path / "runs" / "fire" / "seed2").exists()
    assert main(common + ["--dataset", "fire", "--table-only"]) == 2


def test_a_larger_patience_continues_an_early_stopped_run_exactly(tmp_path, capsys):
    """A run stopped early by --patience 1, re-run with --patience 50, ends where an uninterrupted
    --patience 50 run ends (same best step, same test NLL); a smaller patience is refused."""
    common = ["--preset", "tiny", "--dataset", "volcano", "--no-progress", "--no-plot", "--steps", "200",
              "--eval-every", "10"]
    a = common + ["--out", str(tmp_path / "a"), "--records", str(tmp_path / "rec_a")]
    assert main(a + ["--patience", "1"]) == 0
    early = json.loads((tmp_path / "a" / "volcano" / "seed0" / "result.json").read_text())
    assert early["stopped_early"] and early["steps_run"] < 200  # the case under test
    assert main(a + ["--patience", "50"]) == 0
    assert main(common + ["--out", str(tmp_path / "b"), "--records", str(tmp_path / "rec_b"), "--patience", "50"]) == 0
    cont, ref = (json.loads((tmp_path / r / "volcano" / "seed0" / "result.json").read_text()) for r in "ab")
    assert (cont["best_step"], cont["steps_run"]) == (ref["best_step"], ref["steps_run"])
    assert cont["test_nll"] == pytest.approx(ref["test_nll"], abs=1e-9)
    assert cont["steps_run"] > early["steps_run"]
    capsys.readouterr()
    assert main(common + ["--out", str(tmp_path / "c"), "--records", str(tmp_path / "rec_b"), "--patience", "60"]) == 0
    assert "done before" in capsys.readouterr().out  # b ran to the end: it stands for a larger patience too
    assert not ref["stopped_early"]
    capsys.readouterr()
    (tmp_path / "a" / "volcano" / "seed0" / "result.json").unlink()
    assert main(a + ["--patience", "1"]) == 2
    assert "use --patience >= 50" in capsys.readouterr().err


@settings(deadline=None)
@given(st.integers(1, 5), st.integers(1, 30), st.floats(0.0, 30.0), st.integers(0, 2**31 - 1))
def test_mixture_nll_bounds(m, n, spread, seed):
    """For log p = logsumexp_m log p_m − log M: NLL(mixture) ≤ the members' mean NLL (Jensen),
    ≤ min_m NLL_m + log M (each p ≥ p_m / M), and ≥ the NLL of the pointwise best member (p ≤ max_m p_m);
    equal members give their own NLL."""
    from benchmarks.earth_mixture import mixture_nll

    lp = torch.randn(m, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * spread - 3.0
    mix = mixture_nll(lp)
    assert mix <= float(-lp.mean()) + 1e-9
    assert mix <= float(-lp.mean(1).max()) + math.log(m) + 1e-9
    assert mix >= float(-lp.max(0).values.mean()) - 1e-9
    assert mixture_nll(lp[:1].expand(m, n)) == pytest.approx(float(-lp[0].mean()), abs=1e-12)
    with pytest.raises(ValueError, match=r"expected log-densities \[M >= 1, N\]"):
        mixture_nll(lp[0])


def test_train_seed_members_and_their_mixture(tmp_path, capsys):
    """--train-seed trains another member on the same split (own run folder and record). Each record carries
    the per-point test log-densities and the test set's SHA-256; earth_mixture.py mixes them without solving
    again, gets the same member NLLs when it re-evaluates the run folders instead (no records), refuses a
    record of another test set, and the mixture of two is below the members' mean."""
    from benchmarks.earth_mixture import main as mixture
    from experiments.common.earth import load_earth, points_sha256, split

    common = ["--preset", "tiny", "--dataset", "volcano", "--no-progress", "--no-plot", "--out", str(tmp_path / "r"),
              "--records", str(tmp_path / "rec")]
    assert main(common) == 0 and main(common + ["--train-seed", "7"]) == 0
    a, b = (json.loads((tmp_path / "r" / "volcano" / n / "result.json").read_text()) for n in ("seed0", "seed0-train7"))
    rec_b = tmp_path / "rec" / "volcano" / "seed0-train7.json"
    assert rec_b.is_file()
    assert (a["n_train"], a["n_test"]) == (b["n_train"], b["n_test"]) and a["test_nll"] != b["test_nll"]
    for r in (a, b):
        assert len(r["test_logp"]) == r["n_test"]
        assert -math.fsum(r["test_logp"]) / r["n_test"] == pytest.approx(r["test_nll"], abs=1e-12)
        assert r["test_sha256"] == points_sha256(split(load_earth("volcano"), 0).test)
    mix = ["--dataset", "volcano", "--seed", "0", "--train-seeds", "0", "7", "--tol", "1e-4"]
    docs = {}
    for src, rec in (("record", tmp_path / "rec"), ("run", tmp_path / "norec")):
        out = tmp_path / f"mix_{src}.json"
        assert mixture(["--runs", str(tmp_path / "r"), "--records", str(rec), "--out", str(out)] + mix) == 0
        docs[src] = doc = json.loads(out.read_text())["volcano/seed0"]
        assert [m["source"] for m in doc["members"]] == [src, src]
        for mem, res in zip(doc["members"], (a, b)):
            assert mem["test_nll"] == pytest.approx(res["test_nll"], abs=1e-6 if src == "run" else 1e-12)
        two = doc["mixtures"][1]
        assert two["members"] == 2 and two["test_nll"] <= two["members_mean_nll"]
        assert doc["mixtures"][0]["test_nll"] == pytest.approx(a["test_nll"], abs=1e-6)
    assert docs["record"]["mixtures"][1]["test_nll"] == pytest.approx(docs["run"]["mixtures"][1]["test_nll"], abs=1e-6)
    capsys.readouterr()
    assert mixture(["--runs", str(tmp_path / "r"), "--records", str(tmp_path / "rec"), "--dataset", "volcano",
                    "--seed", "0", "--train-seeds", "3", "--out", str(tmp_path / "m.json")]) == 2
    assert "--seeds 0 --train-seed 3" in capsys.readouterr().err
    tampered = json.loads(rec_b.read_text())
    tampered["test_sha256"] = points_sha256(split(load_earth("volcano"), 1).test)  # another split's test set
    rec_b.write_text(json.dumps(tampered))
    assert mixture(["--runs", str(tmp_path / "r"), "--records", str(tmp_path / "rec"), "--out",
                    str(tmp_path / "m.json")] + mix) == 2
    assert "is not of this split's test set" in capsys.readouterr().err


def test_mixture_over_splits_summary(tmp_path, capsys):
    """--members M over several splits takes train seeds k, 100 + k per split k from the records and writes
    the mean ± sample std over splits of the M-member mixture beside the anchor's published figure."""
    from benchmarks.earth_mixture import main as mixture, member_train_seeds

    assert member_train_seeds(3, 3) == [3, 103, 203]
    with pytest.raises(ValueError, match="--members must be >= 1"):
        member_train_seeds(0, 0)
    common = ["--preset", "tiny", "--dataset", "volcano", "--no-progress", "--no-plot", "--out", str(tmp_path / "r"),
              "--records", str(tmp_path / "rec"), "--steps", "20"]
    assert main(common + ["--seeds", "0", "1"]) == 0
    assert main(common + ["--seeds", "0", "1", "--member", "1"]) == 0  # train seeds 100, 101
    assert sorted(f.name for f in (tmp_path / "rec" / "volcano").iterdir()) == [
        "seed0-train100.json", "seed0.json", "seed1-train101.json", "seed1.json"]
    for bad in (["--member", "0"], ["--member", "1", "--train-seed", "5"]):
        assert main(common + bad) == 2
    assert "expected --member >= 1 and no --train-seed" in capsys.readouterr().err
    res = tmp_path / "res"  # members are not the table: --dataset all leaves earth_nll.json alone
    assert main(common[:2] + ["--dataset", "all", "--table-only", "--member", "1", "--results", str(res),
                              "--records", str(tmp_path / "rec"), "--out", str(tmp_path / "r")]) == 0
    assert not (res / "earth_nll.json").exists() and "not the table's runs" in capsys.readouterr().out
    out = tmp_path / "mix.json"
    capsys.readouterr()
    assert mixture(["--runs", str(tmp_path / "nothing"), "--records", str(tmp_path / "rec"), "--dataset", "volcano",
                    "--seeds", "0", "1", "--members", "2", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    per = [doc[f"volcano/seed{k}"]["mixtures"][1]["test_nll"] for k in (0, 1)]
    assert [m["run"] for m in doc["volcano/seed1"]["members"]] == ["seed1", "seed1-train101"]
    summ = doc["volcano/mixture2"]
    assert summ["test_nll"] == per and summ["mean"] == pytest.approx(sum(per) / 2, abs=1e-12)
    assert summ["std"] == pytest.approx(abs(per[0] - per[1]) / math.sqrt(2), abs=1e-12)
    assert summ["anchor_nll"] == -7.93 and "mixture of 2 over seeds [0, 1]" in capsys.readouterr().out
    cell = f"{summ['mean']:.3f} ± {summ['std']:.3f} (n=2)".replace("-", "−")
    assert f"| ours: mixture of 2 per split (earth_mixture.py) | {cell} | — | — | — |" in out.with_suffix(".md").read_text()
    with pytest.raises(SystemExit):
        mixture(["--dataset", "volcano", "--seeds", "0", "1", "--train-seeds", "0", "7"])


def test_points_sha256_names_a_test_set_by_content():
    """The hash ignores dtype (float32 → float64 is exact) and changes when one coordinate moves by one ulp."""
    from experiments.common.earth import points_sha256

    x = torch.nn.functional.normalize(torch.randn(50, 3, dtype=torch.float64), dim=-1).float()
    assert points_sha256(x) == points_sha256(x.double())
    y = x.clone()
    y[17, 1] = torch.nextafter(y[17, 1], torch.tensor(2.0))
    assert points_sha256(y) != points_sha256(x)