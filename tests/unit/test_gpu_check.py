"""benchmarks/gpu_check.py's record keeping (the GPU runs themselves only run on a GPU machine)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

if TYPE_CHECKING:  # mypy names the script from the root; at run time benchmarks/ is on sys.path
    from benchmarks import gpu_check
    from quant_fixtures.report.schema import EvaluationDocument
else:
    import gpu_check


def _run(
    wall: float,
    pairs: Iterable[dict[str, Any]] = (),
    failures: Iterable[str] = (),
    errors: Iterable[str] = (),
) -> dict[str, Any]:
    return {
        "wall_s": wall,
        "busy_pct": {"0": 50.0},
        "pairs": list(pairs),
        "unexpected_failures": list(failures),
        "tests": {"failures": [], "errors": list(errors)},
    }


def test_steps_of_the_same_commit_are_kept_and_others_dropped(tmp_path: Path) -> None:
    path = tmp_path / "record.json"
    h100 = [{"name": "NVIDIA H100 80GB HBM3", "memory_gib": 79.2}]
    earlier = {"commit": "abc", "cards": h100, "host": "vm", "measured_at": "T1"}
    path.write_text(json.dumps(earlier | {"cap_15gib": {"passed": True}, "matrix": None}))
    where = {"cards": h100, "host": "vm", "measured_at": "T1"}
    assert gpu_check.earlier_steps(path, "abc") == {"cap_15gib": where | {"passed": True}}
    # a step that says where it ran keeps that, whatever the record's latest call was
    h200 = [{"name": "NVIDIA H200", "memory_gib": 139.8}]
    step = {"passed": True, "cards": h200, "host": "other", "measured_at": "T0"}
    path.write_text(json.dumps(earlier | {"cap_15gib": step}))
    assert gpu_check.earlier_steps(path, "abc") == {"cap_15gib": step}
    assert gpu_check.earlier_steps(path, "def") == {}
    assert gpu_check.earlier_steps(tmp_path / "missing.json", "abc") == {}
    path.write_text("{not json")
    assert gpu_check.earlier_steps(path, "abc") == {}


def test_a_record_is_complete_only_with_the_cap_and_the_matrix() -> None:
    pair = {"model": "mistral7b", "variant": "int8", "stages": {"start-up": 5.0, "perplexity": 30.0}, "peak_gb": 9.0}
    nf4 = {**pair, "variant": "nf4", "stages": {"perplexity": 10.0}}
    cap = {**_run(200.0, [pair]), "passed": True}
    assert "targets" not in gpu_check.finish({"cap_15gib": cap}, two_gpus_possible=False)
    record = gpu_check.finish({"cap_15gib": cap, "matrix": _run(120.0, [pair, nf4])}, two_gpus_possible=False)
    assert record["complete"] is True
    targets = record["targets"]
    assert targets["matrix_cold_wall_s"] == {"goal": "<= 90.0", "measured": 120.0, "met": False}
    assert targets["mistral_int8_over_nf4"]["measured"] == 3.0 and not targets["mistral_int8_over_nf4"]["met"]
    assert targets["cap_15gib"]["met"] is True and targets["two_gpus_over_one"]["met"] is None
    assert "targets" not in gpu_check.finish({"cap_15gib": cap, "matrix": _run(1.0)}, two_gpus_possible=True)
    assert targets["matrix_warm_wall_s"]["measured"] is None and "did not run" in targets["matrix_warm_wall_s"]["why"]
    warm = gpu_check.finish(
        {"cap_15gib": cap, "matrix": _run(120.0, [pair, nf4]), "matrix_warm": _run(61.0)}, two_gpus_possible=False
    )["targets"]["matrix_warm_wall_s"]
    assert warm == {"goal": "<= 60.0", "measured": 61.0, "met": False}
    assert targets["no_unexpected_failure"]["met"] is True
    failing = gpu_check.finish(
        {
            "cap_15gib": cap,
            "matrix": _run(120.0),
            "matrix_warm": _run(50.0, failures=["t::a"]) | {"tests": {"failures": [], "errors": [{"test": "t::b"}]}},
        },
        two_gpus_possible=False,
    )["targets"]["no_unexpected_failure"]
    assert failing["measured"] == ["t::a", "t::b"] and failing["met"] is False


def test_the_warm_matrix_reruns_over_the_matrix_steps_cache_and_baselines(monkeypatch: Any, tmp_path: Path) -> None:
    """The warm step is a user's second run: the matrix step's cache and baselines, fresh results; without
    that cache in --work it stops with what to run instead of timing a cold run as warm."""
    import pytest

    seen: list[list[str]] = []

    def fake_measure(_suite: str, results: Path, args: list[str]) -> dict[str, Any]:
        seen.append([str(results), *args])
        (tmp_path / "matrix" / "cache" / "refs").mkdir(parents=True, exist_ok=True)  # a cold run fills its cache
        return {"pytest_exit": 0, "tests": {"failures": [], "errors": []}, "gpu": {"busy_pct": {"0": 70.0}}}

    monkeypatch.setattr(gpu_check, "measure", fake_measure)
    with pytest.raises(SystemExit, match="--steps matrix,matrix_warm"):
        gpu_check.run(tmp_path / "suite.toml", tmp_path, "matrix_warm", [], warm_from="matrix")
    assert seen == []
    gpu_check.run(tmp_path / "suite.toml", tmp_path, "matrix", [])
    gpu_check.run(tmp_path / "suite.toml", tmp_path, "matrix_warm", [], warm_from="matrix")
    cold, warm = seen
    assert cold[0] == str(tmp_path / "matrix" / "results") and warm[0] == str(tmp_path / "matrix_warm" / "results")
    assert (
        f"--cache-dir={tmp_path / 'matrix' / 'cache'}" in cold
        and f"--cache-dir={tmp_path / 'matrix' / 'cache'}" in warm
    )
    assert f"--baselines-dir={tmp_path / 'matrix' / 'baselines'}" in warm


def test_quality_gates_and_missing_snapshots_are_expected_on_random_weights() -> None:
    expected = gpu_check.expected_on_random_weights
    assert expected({"test": "t::test_within_limit[m-nf4-kl_mean]", "message": "gate FAIL: m nf4: kl_mean = 0.9"})
    assert expected({"test": "t::test_harm_summary_matches_snapshot[m]", "message": "Failed: no snapshot for these"})
    assert not expected({"test": "t::test_within_limit[m-int8-memory_reduction_pct]", "message": "gate FAIL: x"})
    assert not expected({"test": "t::test_perplexity_is_measured[m-fp16]", "message": "RuntimeError: out of memory"})
    undecided = "Failed: gate UNDECIDED (undecided = 'fail'): m int8: retrieval_flip_rate = 0"
    assert expected({"test": "t::test_within_limit[m-int8-retrieval_flip_rate]", "message": undecided})


def test_the_long_context_record_says_how_the_stage_read_its_sequences() -> None:
    """The record keeps the chunk length and the prefill reads (sequences per pass, chunked LLM.int8
    prefills) beside the stage's seconds, so a slow stage can be read from the record alone."""
    from types import SimpleNamespace

    if TYPE_CHECKING:
        from benchmarks import matrix
    else:
        import matrix

    reads = {
        "sequences_per_pass": 3,
        "max_reads": 1,
        "chunked_sequences": [],
        "chunked_prefill_chunks": [],
        "unsettled_sequences": [],
    }
    deepest = {"lo": 1024, "hi": 2048, "delta_ppl_pct": 1.5, "kl_mean": 0.02}
    long = SimpleNamespace(
        length=2048,
        stretches=1,
        chunk_tokens=512,
        prefill_reads=reads,
        seconds=4.25,
        peak_gb=None,
        deepest=deepest,
        retrieval={"probes": 9, "flips": 1},
    )
    record = matrix.long_context_record(cast("EvaluationDocument", SimpleNamespace(long_context=long)))
    assert record is not None
    assert (record["chunk_tokens"], record["prefill_reads"], record["probes"]) == (512, reads, 9)
    assert (record["deepest_bucket"], record["retrieval_flips"]) == ("1024-2048", 1)
    assert matrix.long_context_record(cast("EvaluationDocument", SimpleNamespace(long_context=None))) is None


def test_the_attribution_step_records_the_commands_time_and_findings(monkeypatch: Any, tmp_path: Path) -> None:
    """The step reads what the command wrote; a failed command is recorded with its error, not parsed."""
    import subprocess

    def fake(command: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        out = Path(next(a.split("=", 1)[1] for a in command if a.startswith("--results-dir=")))
        out.mkdir(parents=True)
        document = {
            "layers": [{}] * 32,
            "budget": {"windows": 4, "ctx": 256, "scored_positions": 1020},
            "whole": {"mean": 0.9},
            "additivity": 1.1,
            "ranked": [3, 1, 2, 0, 5, 4],
            "recommendation": {"limit": 0.5, "keep_layers": [3, 1], "predicted_kl": 0.4, "within": True},
        }
        (out / "attribution_mistral7b_nf4.json").write_text(json.dumps(document))
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(gpu_check.subprocess, "run", fake)
    step = gpu_check.attribution(tmp_path / "suite.toml", tmp_path)
    assert "--device=cuda:0" in step["command"] and step["exit"] == 0 and step["reads"] == 66
    assert step["ranked_first"] == [3, 1, 2, 0, 5] and step["recommendation"]["keep_layers"] == [3, 1]

    def failing(command: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(command, 1, "", "CUDA error: out of memory")

    monkeypatch.setattr(gpu_check.subprocess, "run", failing)
    step = gpu_check.attribution(tmp_path / "suite.toml", tmp_path / "again")
    assert step["exit"] == 1 and "out of memory" in step["stderr_tail"] and "whole_kl" not in step


def test_steps_run_in_the_order_asked_and_each_says_where_it_ran(monkeypatch: Any, tmp_path: Path) -> None:
    """A call cut to fit a machine's command limit runs the steps it names, in that order, once each;
    the record keeps an earlier call's step for the same commit with that call's card."""
    import torch

    ran: list[str] = []

    def step(name: str, result: dict[str, Any]) -> Any:
        def fake(*_: Any) -> dict[str, Any]:
            ran.append(name)
            return dict(result)

        return fake

    card = [{"name": "NVIDIA H200", "memory_gib": 139.8}]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(gpu_check, "environment", lambda: {"cards": card, "versions": {}, "host": "here"})
    monkeypatch.setattr(gpu_check, "capped", step("cap_15gib", _run(450.0) | {"passed": True}))
    monkeypatch.setattr(gpu_check, "attribution", step("attribution", {"exit": 0}))
    monkeypatch.setattr(gpu_check, "run", lambda _s, _w, name, _a: step(name, _run(100.0))())
    monkeypatch.setenv("GPU_CHECK_COMMIT", "abc")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "suite.toml").write_text("")
    record = tmp_path / "record.json"
    h100 = [{"name": "NVIDIA H100 80GB HBM3", "memory_gib": 79.2}]
    earlier = {"commit": "abc", "cards": h100, "host": "vm", "measured_at": "T0", "matrix": _run(400.0)}
    record.write_text(json.dumps(earlier))
    argv = ["gpu_check.py", f"--record={record}", f"--models-dir={tmp_path / 'models'}", f"--work={tmp_path}"]
    monkeypatch.setattr(sys, "argv", [*argv, "--steps=attribution,cap_15gib,attribution"])
    assert gpu_check.main() == 0
    assert ran == ["attribution", "cap_15gib"]
    written = json.loads(record.read_text())
    assert written["complete"] is True  # the cap now, the matrix from the earlier call
    assert written["matrix"]["cards"] == h100 and written["matrix"]["wall_s"] == 400.0
    assert written["cap_15gib"]["cards"] == card and written["attribution"]["host"] == "here"
