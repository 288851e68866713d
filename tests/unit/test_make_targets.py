"""What the Makefile's commands write where, read from `make -n` (a dry run: nothing is executed)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def harm_command(target: str) -> list[str]:
    """The arguments of the pytest run over tests/harm that ``make <target>`` would start."""
    dry = subprocess.run(["make", "-n", target], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for line in dry.replace("\\\n", " ").splitlines():
        words = shlex.split(line)
        if "-m" in words and "pytest" in words and any(w.startswith("tests") for w in words):
            return words
    raise AssertionError(f"make -n {target} starts no pytest run over the tests:\n{dry}")


def baselines_dir(words: list[str]) -> Path:
    """The --baselines-dir a command gives (relative to the checkout), else the plugin's default."""
    given = [w.split("=", 1)[1] for w in words if w.startswith("--baselines-dir=")]
    return (REPO / given[-1]).resolve() if given else REPO / "baselines"


def test_make_eval_writes_its_baselines_where_git_ignores_them() -> None:
    """The first `make eval` must leave `git status` clean: its budget is not CI's, so its FP16
    baselines are new files, and they go to the ignored results/, not the committed baselines/."""
    directory = baselines_dir(harm_command("eval"))
    assert directory != REPO / "baselines"
    ignored = subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", str(directory / "m-0123456789ab.json")])
    assert ignored.returncode == 0, f"{directory} is not ignored by git"


def test_make_test_still_reads_the_committed_baselines() -> None:
    assert baselines_dir(harm_command("test")) == REPO / "baselines"
