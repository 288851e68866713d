"""docs/OWN_PROJECT.md ("Checks in your own project"), run as a user runs it: examples/own_project (its
quant_suite.toml and test_my_model.py) copied to a directory outside this repository, and pytest
started there in a subprocess with the model given on the command line (``--model=DIR``: the tiny
random Llama of conftest.py, so nothing comes from the Hub). Only the package comes from this
checkout (PYTHONPATH). Budget: 4 windows of 64 tokens, 8 prompts x 4 new tokens.

The run is in report mode: the tiny model's embedding and output head are 99 % of its bytes and
stay 16-bit, so the example's memory limits (set for real models) fail on it, as they should; every
other test of the example passes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "own_project"
BUDGET = (
    *("--ctx", "64", "--ppl-max-tokens", "256", "--categories", "question_answering", "--max-new-tokens", "4"),
    *("--long-ctx", "256", "--probe-lengths", "128", "--probe-depths", "0.5"),
)
VARIANTS = ("fp16", "int8", "nf4")
# The example's tests for one model: 3 perplexity checks, the gates (int8: 3 required; nf4: 3 and the
# optional flip-rate gate of its config), 2 footprint checks, 1 int8-only check, 1 across variants.
EXPECTED_TESTS = 3 + 7 + 2 + 1 + 1
MEMORY_GATES = [f"test_my_model.py::test_within_limit[tiny-llama-{v}-memory_reduction_pct]" for v in ("int8", "nf4")]
# The flip-rate gate over this budget's 8 prompts: no flip in 8 cannot show a rate below 0.25 (the
# exact bound needs 11), so it is UNDECIDED, an xfail in report mode.
UNDECIDED_GATE = "test_my_model.py::test_within_limit[tiny-llama-nf4-flip_rate]"


def test_the_example_runs_in_a_project_outside_the_repository(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    project = tmp_path / "my-project"
    shutil.copytree(EXAMPLE, project)
    assert not project.resolve().is_relative_to(REPO)
    model = tiny_models["llama"]  # a directory named tiny-llama: the model key tiny-llama
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(tmp_path / "datasets"),
        "QUANT_FIXTURES_CACHE": str(tmp_path / "cache"),
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-ra",
            f"--rootdir={project}",
            f"--model={model}",
            "--gate-mode",
            "report",
            *BUDGET,
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = result.stdout
    assert result.returncode == 0, out[-4000:] + result.stderr[-2000:]
    assert re.search(rf"\b{EXPECTED_TESTS - 3} passed, 3 xfailed\b", out), out[-3000:]
    assert sorted(re.findall(r"^XFAIL (\S+)", out, re.M)) == sorted([*MEMORY_GATES, UNDECIDED_GATE]), out[-3000:]
    # The key, before the run and in the summary; the configured model of the example was not run.
    assert (
        f"quant-fixtures: --model {model}: model 'tiny-llama' from {model}; default variants fp16,int8,nf4, "
        f"limits from [gates] of {project / 'quant_suite.toml'}"
    ) in out
    assert f"--model {model}: model 'tiny-llama'" in out and "smollm2-135m-instruct" not in out

    results = project / "results"
    assert (results / "REPORT.md").is_file() and (results / "tiny-llama_quantization_comparison.json").is_file()
    for variant in VARIANTS:
        document = json.loads((results / f"{variant}_quantized_tiny-llama_evaluation.json").read_text())
        assert document["model"]["key"] == "tiny-llama" and document["model"]["source"] == str(model)
        assert document["perplexity"]["windows"] == 4 and document["kl_divergence"]["prompts"] == 8
    nf4 = json.loads((results / "nf4_quantized_tiny-llama_evaluation.json").read_text())
    # The limits are the example config's [gates], the optional flip-rate gate included.
    assert {g["metric"]: g["limit"] for g in nf4["gates"]} == {
        "delta_ppl_pct": 35.0,
        "memory_reduction_pct": 55.0,
        "kl_mean": 0.5,
        "flip_rate": 0.25,
    }
