"""Whole-matrix benchmark: run the GPU suite once, as a user would, and print per model x variant
the stage table, peak memory and batching, then the wall time and how busy the GPUs were.

    python benchmarks/random_models.py /tmp/rand          # full-size seed architectures, random weights
    python benchmarks/matrix.py --suite-config /tmp/rand/suite.toml --results-dir /tmp/matrix [-- PYTEST ARGS]

Anything after ``--`` goes to pytest (``-n 2 --dist loadgroup``, ``--max-gpu-memory=15GiB``...).
The GPUs are sampled with ``nvidia-smi`` every 200 ms; busy = mean utilization ("percent of time
a kernel was running" per sample) over the run. Writes RESULTS_DIR/matrix_benchmark.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, TypedDict

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quant_fixtures.report.schema import EvaluationDocument, SchemaError, read_document  # noqa: E402
from quant_fixtures.session.context import STAGE_ROWS  # noqa: E402


class GpuSummary(TypedDict):
    """What the sampler saw: per GPU index its mean utilization (%) and most memory used (GiB)."""

    gpus: list[int]
    samples: int
    busy_pct: dict[int, float]
    max_used_gib: dict[int, float]


class GpuSampler:
    """Utilization and memory of every visible GPU, sampled in a thread with nvidia-smi."""

    def __init__(self, period_ms: int = 200) -> None:
        self.samples: list[tuple[float, int, float, float]] = []  # (t, gpu, util %, MiB used)
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        self.ids = [int(x) for x in visible.split(",")] if visible else None
        self.cmd = [
            "nvidia-smi",
            "--query-gpu=index,utilization.gpu,memory.used",
            "--format=csv,noheader,nounits",
            f"-lms={period_ms}",
        ]
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> GpuSampler:
        try:
            self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, text=True)
        except OSError:
            return self
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                index, util, mem = (float(x) for x in line.split(","))
            except ValueError:
                continue
            if self.ids is None or int(index) in self.ids:
                self.samples.append((time.perf_counter(), int(index), util, mem))

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()

    def summary(self) -> GpuSummary:
        gpus = sorted({s[1] for s in self.samples})
        per_gpu = {g: [s for s in self.samples if s[1] == g] for g in gpus}
        return {
            "gpus": gpus,
            "samples": len(self.samples),
            "busy_pct": {g: sum(s[2] for s in v) / len(v) for g, v in per_gpu.items() if v},
            "max_used_gib": {g: max(s[3] for s in v) / 1024 for g, v in per_gpu.items() if v},
        }


def table(documents: list[EvaluationDocument]) -> str:
    rows = list(STAGE_ROWS)
    head = f"{'model':<14}{'variant':<8}" + "".join(f"{r[:10]:>11}" for r in rows) + f"{'total':>9}{'peak GB':>9}"
    lines = [head]
    for doc in documents:
        stages = doc.timing.stages
        total = sum(stages.values())
        peak = doc.memory.peak_gb
        lines.append(
            f"{doc.model.key:<14}{doc.variant.key:<8}"
            + "".join(f"{stages.get(r, 0.0):>11.1f}" for r in rows)
            + f"{total:>9.1f}{(f'{peak:.2f}' if peak is not None else '-'):>9}"
        )
    return "\n".join(lines)


def measure(suite_config: str, results_dir: Path, pytest_args: list[str], echo: bool = True) -> dict[str, Any]:
    """Run ``pytest -m gpu`` once (a JUnit file in ``results_dir``) and return what it measured: wall
    time, pytest's exit code, GPU samples, and per pair its stage table, peak memory and batching."""
    results_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pytest",
        *plugin_args(),
        "-m",
        "gpu",
        f"--suite-config={suite_config}",
        f"--results-dir={results_dir}",
        f"--junitxml={results_dir / 'junit.xml'}",
        "-p",
        "no:cacheprovider",
        "-q",
        *pytest_args,
    ]
    print("running:", " ".join(command), flush=True)
    start = time.perf_counter()
    with GpuSampler() as sampler:
        rc = subprocess.call(command, stdout=None if echo else subprocess.DEVNULL)
    wall = time.perf_counter() - start
    documents = []
    for path in sorted(results_dir.glob("*_evaluation.json")):
        try:
            documents.append(read_document(EvaluationDocument, path))
        except SchemaError as exc:
            print(f"skipped {path}: {exc}")
    print(table(documents))
    for doc in documents:
        b = doc.batching
        print(
            f"{doc.model.key} {doc.variant.key}: batches ppl {b.perplexity_windows_per_pass} / scoring "
            f"{b.prompt_scoring_per_pass} / generation {b.generation_batch}; decode: {b.generation_method}; "
            + ("; ".join(b.notes) if b.notes else "no memory adjustments")
        )
    gpu = sampler.summary()
    print(
        f"wall {wall:.1f} s (pytest exit {rc}); GPU busy %: "
        + ", ".join(f"gpu{g} {v:.0f}" for g, v in gpu["busy_pct"].items())
        + "; max used GiB: "
        + ", ".join(f"gpu{g} {v:.1f}" for g, v in gpu["max_used_gib"].items()),
        flush=True,
    )
    return {
        "command": command,
        "wall_s": wall,
        "pytest_exit": rc,
        "gpu": gpu,
        "tests": junit_outcomes(results_dir / "junit.xml"),
        "pairs": [
            {
                "model": d.model.key,
                "variant": d.variant.key,
                "stages": d.timing.stages,
                "peak_gb": d.memory.peak_gb,
                "batching": d.batching.__dict__,
                "long_context": long_context_record(d),
            }
            for d in documents
        ],
    }


def long_context_record(doc: EvaluationDocument) -> dict[str, Any] | None:
    """What the long-context stage took: its length, stretches and probes, chunk length and sequences per
    pass (why they differ from what was asked: the pair's batching notes), seconds, its own GPU peak,
    and (a quantized variant) the deepest bucket's ΔPPL and KL and the retrieval flips."""
    long = doc.long_context
    if long is None:
        return None
    deepest = long.deepest
    retrieval = long.retrieval
    return {
        "length": long.length,
        "stretches": long.stretches,
        "probes": retrieval["probes"],
        "chunk_tokens": long.chunk_tokens,
        "prefill_reads": long.prefill_reads,  # sequences per pass, reads, chunked LLM.int8 prefills
        "seconds": long.seconds,
        "peak_gb": long.peak_gb,
        "deepest_bucket": None if deepest is None else f"{deepest['lo']}-{deepest['hi']}",
        "deepest_delta_ppl_pct": None if deepest is None else deepest["delta_ppl_pct"],
        "deepest_kl_mean": None if deepest is None else deepest["kl_mean"],
        "retrieval_flips": retrieval.get("flips"),
    }


def plugin_args() -> list[str]:
    """``-p quant_fixtures.plugin.hooks`` where the package is not installed (a GPU box running the
    checkout as it is): the plugin is otherwise loaded through its pytest11 entry point."""
    from importlib.metadata import entry_points

    installed = any(e.value.startswith("quant_fixtures.") for e in entry_points(group="pytest11"))
    return [] if installed else ["-p", "quant_fixtures.plugin.hooks"]


def junit_outcomes(path: Path) -> dict[str, Any]:
    """Counts, and every failed or erroring test by name with the first line of its message."""
    import xml.etree.ElementTree as ET

    if not path.exists():
        return {"counts": {}, "failures": [], "errors": []}
    counts = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    failures, errors = [], []
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
        if outcome is None:
            counts["passed"] += 1
            continue
        message = (outcome.get("message") or outcome.text or "").strip().splitlines()
        entry = {"test": name, "message": message[0][:300] if message else ""}
        if outcome.tag == "skipped":
            counts["skipped"] += 1
        elif outcome.tag == "failure":
            counts["failed"] += 1
            failures.append(entry)
        else:
            counts["error"] += 1
            errors.append(entry)
    return {"counts": counts, "failures": failures, "errors": errors}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--suite-config", required=True)
    parser.add_argument("--results-dir", required=True, type=Path)
    parser.add_argument("pytest_args", nargs="*", help="after --: passed to pytest")
    args = parser.parse_args()
    summary = measure(args.suite_config, args.results_dir, args.pytest_args)
    (args.results_dir / "matrix_benchmark.json").write_text(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
