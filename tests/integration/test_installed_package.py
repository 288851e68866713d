"""The package as users install it (a wheel, not this checkout): its default configuration, prompt
suite and WikiText-2 copy ship inside it, and a run from an unrelated directory works with them.

The wheel is installed with ``pip install --no-deps --target`` into a temporary directory that goes
first on PYTHONPATH (the dependencies are this environment's); the run happens in a directory
that holds nothing but one test file, so nothing can come from the checkout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from integration_support import suite_cache_holding

REPO = Path(__file__).resolve().parents[2]

USER_TEST = """
import json
import os
from pathlib import Path

import quant_fixtures

SITE = Path(os.environ["QUANT_INSTALLED_SITE"]).resolve()


def test_the_shipped_inputs_come_from_the_installed_package(quant_session):
    assert Path(quant_fixtures.__file__).resolve().is_relative_to(SITE)
    assert quant_session.suite.path.resolve().is_relative_to(SITE)
    assert quant_session.settings.prompts.path.resolve().is_relative_to(SITE)
    assert len(quant_session.prompt_suite.prompts()) >= 8
    assert quant_session.corpus_text.text().source == "vendored"


def test_perplexity_is_measured(variant_eval):
    assert variant_eval.perplexity.ppl > 1.0 and variant_eval.kl_divergence.prompts == 8
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(REPO),
        ],
        check=True,
        cwd=build,
    )
    return site


def test_installed_package_runs_from_another_directory(installed: Path, tmp_path: Path, smollm2_converted: Any) -> None:
    # What this test is about is where the inputs come from, not converting the GGUF once more.
    cache = suite_cache_holding(smollm2_converted, tmp_path / "cache")
    shipped = installed / "quant_fixtures" / "inputs"
    for name in ("quant_suite.toml", "prompt_suite.jsonl", "data/wikitext-2-raw-v1-test.parquet"):
        assert (shipped / name).is_file(), name
    project = tmp_path / "elsewhere"
    project.mkdir()
    (project / "test_user.py").write_text(USER_TEST)
    env = {
        **os.environ,
        "PYTHONPATH": str(installed),
        "QUANT_INSTALLED_SITE": str(installed),
        "HF_HUB_OFFLINE": "1",
        "QUANT_FIXTURES_CACHE": str(cache),
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--suite-config",
            "default",
            "--models",
            "smollm2-135m",
            "--variants",
            "fp16",
            "--ppl-max-tokens",
            "512",
            "--ctx",
            "256",
            "--categories",
            "code_generation",
            "--max-new-tokens",
            "4",
            "--skip-long-context",
            "test_user.py",
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "2 passed" in result.stdout
    written = json.loads((project / "results" / "fp16_quantized_smollm2-135m_evaluation.json").read_text())
    assert written["perplexity"]["ctx"] == 256 and written["kl_divergence"]["prompts"] == 8
