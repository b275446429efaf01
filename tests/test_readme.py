"""README.md works as written: its commands run (or, where running takes too long or needs a
server, their ``--help`` does), its links resolve, and it stays a short front page.

Rules for each command of a ```bash block (commands split on ``&&``):
- ``pip install ...``: skipped (the test runs in an installed checkout);
- ``python app.py``: app.py parses (the app itself would start a server);
- ``python -m pytest ...``: pytest runs (``--version``; the suite is what runs this test);
- ``python train_style.py ...`` / ``accelerate launch ... train_style.py ...``: its ``--help``;
- ``shira generate ...`` on ``toy-sd`` with bundled styles only: its ``--help``, or, with
  ``SHIRA_README_GENERATE=1`` in the environment, run as written in a temporary folder (30-50 s
  each on a shared 2-core CPU, too slow for every test run);
- any other ``shira SUBCOMMAND [ACTION] ...``: ``python -m shira_diffusion.cli SUBCOMMAND
  [ACTION] --help`` exits 0.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAX_LINES = 200
# shira subcommands whose first positional argument is an action (shira bench switch, ...)
GROUPED = {"bench", "eval", "styles"}
# the bases and styles a fresh clone carries, small enough to generate with in this test
FAST_BASES = {"toy-sd"}
RUN_GENERATE = os.environ.get("SHIRA_README_GENERATE") == "1"
BUNDLED_STYLES = {p.parent.name for p in (ROOT / "styles").glob("*/style.json")}
TEST_COMMAND = 'pip install torch==2.13.0 -e ".[test]" && python -m pytest -q'


def readme_text() -> str:
    return README.read_text(encoding="utf-8")


def bash_commands(text: str) -> list[list[str]]:
    """Every command of the README's ```bash blocks, as argv lists (comments dropped, && split)."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            tokens = shlex.split(line, comments=True)
            current: list[str] = []
            for token in tokens + ["&&"]:
                if token == "&&":
                    if current:
                        commands.append(current)
                    current = []
                else:
                    current.append(token)
    return commands


def _styles(argv: list[str]) -> list[str]:
    return [argv[i + 1].split("=")[0] for i, a in enumerate(argv[:-1]) if a == "--style"]


def _option(argv: list[str], name: str) -> str | None:
    return next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == name), None)


def check_for(argv: list[str]) -> tuple[str, list[str] | None]:
    """(kind, argv to run) for one README command; argv None where nothing is run."""
    if argv[:2] == ["pip", "install"]:
        return "skip", None
    if argv == ["python", "app.py"]:
        return "parse-app", None
    if argv[:3] == ["python", "-m", "pytest"]:
        return "run", [sys.executable, "-m", "pytest", "--version"]
    if "train_style.py" in argv and argv[0] in ("python", "accelerate"):
        return "help", [sys.executable, "train_style.py", "--help"]
    if argv[0] == "shira" and len(argv) > 1:
        sub = argv[1:3] if argv[1] in GROUPED and len(argv) > 2 and not argv[2].startswith("-") else argv[1:2]
        if (RUN_GENERATE and argv[1] == "generate" and _option(argv, "--base") in FAST_BASES
                and all(s in BUNDLED_STYLES for s in _styles(argv))):
            return "generate", [sys.executable, "-m", "shira_diffusion.cli", *argv[1:]]
        return "help", [sys.executable, "-m", "shira_diffusion.cli", *sub, "--help"]
    raise AssertionError(f"README command with no rule in tests/test_readme.py: {shlex.join(argv)}")


def _checks() -> list[tuple[str, str, list[str] | None]]:
    seen, checks = set(), []
    for argv in bash_commands(readme_text()):
        kind, run = check_for(argv)
        key = (kind, tuple(run) if run else shlex.join(argv))
        if kind == "skip" or key in seen:
            continue
        seen.add(key)
        checks.append((shlex.join(argv), kind, run))
    return checks


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["SHIRA_HOME"] = str(home)  # a fresh user: no styles of their own, nothing written to ~
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def test_readme_is_short():
    lines = readme_text().splitlines()
    assert len(lines) <= MAX_LINES, f"README.md has {len(lines)} lines (at most {MAX_LINES}): move details to docs/"


def test_readme_keeps_the_ci_test_command():
    lines = [line.split("#")[0].strip() for line in readme_text().splitlines()]
    assert TEST_COMMAND in lines, "CI runs the README's test command: keep it on a line of its own"


def test_readme_links_resolve():
    text = readme_text()
    targets = re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text) + re.findall(r'src="([^"]+)"', text)
    relative = [t for t in targets if not re.match(r"[a-z]+:|#", t)]
    assert relative, "README.md links to nothing"
    missing = [t for t in relative if not (ROOT / t.split("#")[0]).exists()]
    assert not missing, f"README.md links to missing files: {missing}"
    assert any(t.startswith("docs/") for t in relative) and any(t.startswith("assets/") for t in relative)


def test_readme_has_commands():
    kinds = {kind for _, kind, _ in _checks()}
    assert {"parse-app", "help"} <= kinds, kinds


@pytest.mark.parametrize("command,kind,run", _checks(), ids=[c[0][:60] for c in _checks()])
def test_readme_command(command, kind, run, tmp_path):
    if kind == "parse-app":
        ast.parse((ROOT / "app.py").read_text(encoding="utf-8"), "app.py")
        return
    cwd = tmp_path if kind == "generate" else ROOT
    done = subprocess.run(run, cwd=cwd, env=_env(tmp_path / "shira-home"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (
        f"README: `{command}` ({kind}: {shlex.join(run)}) exited {done.returncode}\n"
        f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    )
    if kind == "generate":
        out = _option(run, "--out")
        assert out and (tmp_path / out).exists(), f"README: `{command}` wrote no {out}"
