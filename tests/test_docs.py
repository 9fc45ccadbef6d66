"""The documentation cannot drift: the site builds with warnings as errors, every ```python block of README and
docs/ runs (the blocks of one page share a namespace, in order), and every command in a ```bash block names a
script that exists and only flags that script's ``--help`` lists."""
from __future__ import annotations

import contextlib
import inspect
import io
import os
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_sample import run_dir  # noqa: F401  (a tiny in1k_dit.py run folder: the fixture of DiT blocks)

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted(p for p in (ROOT / "docs").rglob("*.md") if "results" not in p.relative_to(ROOT / "docs").parts)
PAGES = [ROOT / "README.md", *DOCS]
_FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.S | re.M)


def _blocks(page: Path, lang: str) -> list[str]:
    return [body for kind, body in _FENCE.findall(page.read_text()) if kind == lang]


def _rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


def test_site_builds_with_warnings_as_errors(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(tmp_path / "site")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"mkdocs build --strict failed:\n{r.stdout}\n{r.stderr}"
    for page in ("index.html", "geometry/index.html", "api/spherical/index.html", "api/models/index.html"):
        assert (tmp_path / "site" / page).is_file(), page
    # the API pages are generated from the docstrings, not empty shells
    api = (tmp_path / "site" / "api" / "spherical" / "index.html").read_text()
    assert "geodesic_flow" in api and "log_likelihood" in api and "Hypersphere" in api


def test_every_page_is_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text()
    missing = [str(p.relative_to(ROOT / "docs")) for p in DOCS if f" {p.relative_to(ROOT / 'docs')}" not in nav]
    assert not missing, f"docs pages missing from mkdocs.yml's nav: {missing}"


@pytest.mark.parametrize("page", [p for p in PAGES if _blocks(p, "python")], ids=_rel)
def test_python_blocks_run(page, run_dir, monkeypatch, tmp_path):  # noqa: F811
    import experiments.common.dit_io as dit_io

    monkeypatch.setattr(dit_io, "DEFAULT_DIT_RUN", str(run_dir))
    monkeypatch.chdir(tmp_path)  # a block that writes files writes them here
    torch.manual_seed(0)
    ns: dict = {"__name__": f"docs:{page.name}"}
    for i, block in enumerate(_blocks(page, "python")):
        exec(compile(block, f"{_rel(page)} [python block {i + 1}]", "exec"), ns)


def _commands(page: Path) -> list[list[str]]:
    """The commands of a page's ```bash blocks, tokenised; continuation lines joined, comments dropped."""
    out = []
    for block in _blocks(page, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            cmd: list[str] = []
            for w in words + ["&&"]:
                if w in ("&&", "||", ";", "|"):
                    if cmd:
                        out.append(cmd)
                    cmd = []
                else:
                    cmd.append(w)
    return out


def _help(script: Path) -> str:
    """``script --help`` run in this process (the scripts are importable; their main parses argv first)."""
    ns = runpy.run_path(str(script), run_name="docs_help")
    main, buf = ns["main"], io.StringIO()
    argv = sys.argv
    try:
        sys.argv = [str(script), "--help"]
        with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
            main(["--help"]) if inspect.signature(main).parameters else main()
    finally:
        sys.argv = argv
    return buf.getvalue()


_SCRIPTS = sorted({w for p in PAGES for c in _commands(p) for w in c if w.endswith(".py")})


def test_commands_in_the_docs_name_scripts_that_exist():
    assert _SCRIPTS, "no script commands found in README/docs"
    missing = [s for s in _SCRIPTS if not (ROOT / s).is_file()]
    assert not missing, f"README/docs run scripts that do not exist: {missing}"


@pytest.mark.parametrize("script", [s for s in _SCRIPTS if (ROOT / s).is_file()])
def test_commands_in_the_docs_use_only_flags_the_script_has(script):
    text = _help(ROOT / script)
    used = {}
    for page in PAGES:
        for cmd in _commands(page):
            if script in cmd:
                for w in cmd[cmd.index(script) + 1:]:
                    if w.startswith("--"):
                        used.setdefault(w.split("=")[0], _rel(page))
    unknown = {flag: where for flag, where in used.items() if not re.search(re.escape(flag) + r"\b", text)}
    assert not unknown, f"{script} --help does not list {unknown}"
