"""The code passes ruff's lint and is as ruff would format it (the rules are in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
CHECKED = ["nbtrain", "tests", "bench", "testkit"]


def ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args, *CHECKED], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )


COMMANDS = {"lint": ("check", "--output-format", "concise"), "format": ("format", "--check")}


@pytest.mark.parametrize("args", COMMANDS.values(), ids=COMMANDS.keys())
def test_ruff_finds_nothing_to_change(args):
    result = ruff(*args)
    fix = "ruff check --fix" if args[0] == "check" else "ruff format"
    assert result.returncode == 0, (
        f"`ruff {' '.join(args)}` found problems (run `{fix} {' '.join(CHECKED)}`, "
        f"then fix the rest by hand):\n{result.stdout}\n{result.stderr}"
    )
