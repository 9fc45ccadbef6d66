"""The mutation script's own plumbing on a two-file toy repository: a real bug is killed, a no-op survives, a
snippet that is not in the file is an error, and the original tree is never modified."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("mutation_check", ROOT / "benchmarks" / "mutation_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("mutation_check", mod)  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_mutation_script_kills_a_bug_keeps_a_no_op_and_reports_a_missing_snippet(tmp_path):
    mc = _module()
    # module names no other test uses: the children are forked from this pytest process (sys.modules included)
    (tmp_path / "mc_toy_mod.py").write_text("def f():\n    return 1\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_mc_toy_mod.py").write_text("from mc_toy_mod import f\n\n\ndef test_f():\n"
                                                           "    assert f() == 1\n")
    muts = [mc.Mutation("bug", "mc_toy_mod.py", "return 1", "return 2", ("tests/test_mc_toy_mod.py",)),
            mc.Mutation("noop", "mc_toy_mod.py", "return 1", "return (1)", ("tests/test_mc_toy_mod.py",)),
            mc.Mutation("missing", "mc_toy_mod.py", "return 3", "return 4", ("tests/test_mc_toy_mod.py",))]
    results = mc.run_all(muts, root=tmp_path, jobs=2, timeout=60, parts=("mc_toy_mod.py", "tests"), extra=(),
                         log=lambda m: None, preload=False)
    assert [(r.id, r.status) for r in results] == [("bug", "killed"), ("noop", "survived"), ("missing", "error")]
    s = mc.summary(results)
    assert s["kill_ratio"] == 0.5 and s["survivors"] == ["noop"] and s["errors"] == ["missing"]
    assert (tmp_path / "mc_toy_mod.py").read_text() == "def f():\n    return 1\n"


def test_every_catalogued_snippet_occurs_exactly_once():
    mc = _module()
    assert len(mc.MUTATIONS) >= 46 and len({m.id for m in mc.MUTATIONS}) == len(mc.MUTATIONS)
    for m in mc.MUTATIONS:
        assert (ROOT / m.file).read_text().count(m.original) == 1, m.id
        assert m.original != m.mutated and all((ROOT / t.split("::")[0]).is_file() for t in m.tests), m.id
