"""Lint and types, enforced: `ruff check .` and mypy with the settings in pyproject.toml.

The Pulumi program, the product package, its tooling and the tests are one mypy run; the policy
pack and the StackReference consumer are Pulumi programs of their own (each runs as `__main__`,
the pack imports its sibling `rules`), so each is checked from its own folder.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.pulumi_harness import ROOT

PYPROJECT = ROOT / "pyproject.toml"


def run(*args: str, cwd: Path = ROOT, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, input=stdin, capture_output=True, text=True,
                          timeout=280)


def test_ruff_finds_nothing():
    result = run("ruff", "check", "--no-cache", "--output-format", "concise", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_enforces_the_complexity_bound():
    """The configuration is the one in force: a function with 13 branches is refused."""
    branches = "".join(f"    if x == {i}:\n        return {i}\n" for i in range(12))
    result = run("ruff", "check", "--no-cache", "--config", str(PYPROJECT), "--stdin-filename", "probe.py", "-",
                 stdin=f"def probe(x: int) -> int:\n{branches}    return -1\n")
    assert result.returncode == 1
    assert "C901 `probe` is too complex (13 > 12)" in result.stdout


@pytest.mark.parametrize(
    ("folder", "files"),
    [
        (".", ()),  # the `files` of [tool.mypy]
        ("policy", ("__main__.py", "rules.py")),
        ("examples/consumer", ("__main__.py",)),
    ],
    ids=["program-and-package", "policy-pack", "consumer-example"],
)
def test_mypy_finds_nothing(folder: str, files: tuple[str, ...]):
    # One cache for the three runs: pulumi and pulumi_aws are analysed once, not per folder.
    result = run("mypy", "--config-file", str(PYPROJECT), "--cache-dir", str(ROOT / ".mypy_cache"), *files,
                 cwd=ROOT / folder)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found" in result.stdout
