"""A model's own variants end to end on the real SmolLM2-135M: the embedded GGUF re-quantized to
Q8_0 by the suite (gguf_type), a Q4_0 GGUF file (gguf_file), a pre-quantized bitsandbytes NF4
checkpoint (path), beside the registry's NF4, all against the same FP16 reference; a variant whose
package is missing skips with the install command; a checkpoint with another tokenizer is a usage
error before anything loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from integration_support import HARM_TESTS, SMOLLM2_GGUF, SMOLLM2_PACKAGE, suite_cache_holding

from quant_fixtures.models.gguf import package_file
from quant_fixtures.models.gguf_quantize import requantized_gguf

pytest_plugins = ["pytester"]
gguf = pytest.importorskip("gguf")

MODEL = "smol"
VARIANTS = ("fp16", "nf4", "gguf_q8_0", "gguf_q4_0", "nf4_checkpoint")
LOOSE = {"max_delta_ppl_pct": 500.0, "min_memory_reduction_pct": 1.0, "max_kl_mean": 5.0}


def _toml(variants: dict[str, dict[str, object]]) -> str:
    lines = ["[models.smol]", f'gguf_package = "{SMOLLM2_PACKAGE}"', f'gguf_file = "{SMOLLM2_GGUF}"', ""]
    for key, table in variants.items():
        lines.append(f"[models.smol.variants.{key}]")
        lines += [f"{name} = {json.dumps(value)}" for name, value in table.items()]
        lines.append("")
    for key in ["nf4", *variants]:
        lines.append(f"[models.smol.gates.{key}]")
        lines += [f"{name} = {value}" for name, value in LOOSE.items()]
        lines.append("")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory, smollm2_converted: Any) -> SimpleNamespace:
    """The files the variants point at, and a suite cache that reuses the session's conversion."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    root = tmp_path_factory.mktemp("own-variants")
    cache = suite_cache_holding(smollm2_converted, root / "cache")
    q4_file = requantized_gguf(package_file(SMOLLM2_PACKAGE, SMOLLM2_GGUF), "Q4_0", root / "files")
    checkpoint = root / "smollm2-nf4"
    model = AutoModelForCausalLM.from_pretrained(
        smollm2_converted.directory,
        dtype=torch.float16,
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4"),
    )
    model.save_pretrained(checkpoint)
    AutoTokenizer.from_pretrained(smollm2_converted.directory).save_pretrained(checkpoint)
    return SimpleNamespace(root=root, cache=cache, q4_file=q4_file, checkpoint=checkpoint)


def _run(
    pytester: pytest.Pytester, own: SimpleNamespace, variants_toml: dict[str, dict[str, object]], *args: str
) -> tuple[pytest.RunResult, Path]:
    (pytester.path / "suite.toml").write_text(_toml(variants_toml))
    shutil.copy(HARM_TESTS, pytester.path / "test_release_gates.py")
    results = pytester.path / "results"
    run = pytester.runpytest_subprocess(
        "test_release_gates.py",
        "-p",
        "no:cacheprovider",
        "-ra",
        f"--suite-config={pytester.path / 'suite.toml'}",
        "--models",
        MODEL,
        "--ctx",
        "128",
        "--ppl-max-tokens",
        "256",
        "--categories",
        "question_answering",
        "--max-new-tokens",
        "4",
        "--skip-long-context",
        f"--results-dir={results}",
        f"--baselines-dir={pytester.path / 'baselines'}",
        f"--cache-dir={own.cache}",
        "--dataset-source",
        "vendored",
        *args,
        timeout=600,
    )
    return run, results


def _expected_gguf_bytes(path: Path) -> int:
    """Hand count: Q8_0 stores 34 bytes per block of 32 weights, Q4_0 18, float32 4 per value."""
    reader = gguf.GGUFReader(path)
    per_block = {gguf.GGMLQuantizationType.Q8_0: 34, gguf.GGMLQuantizationType.Q4_0: 18}
    total = 0
    for t in reader.tensors:
        n = int(t.n_elements)
        total += n // 32 * per_block[t.tensor_type] if t.tensor_type in per_block else n * 4
    return total


def test_own_variants_end_to_end(pytester: pytest.Pytester, own: SimpleNamespace) -> None:
    variants: dict[str, dict[str, object]] = {
        "gguf_q8_0": {"gguf_type": "Q8_0", "description": "Q8_0 written by the suite"},
        "gguf_q4_0": {"gguf_file": str(own.q4_file)},
        "nf4_checkpoint": {"path": str(own.checkpoint)},
        "needs_missing": {"path": str(own.checkpoint), "packages": ["no_such_quant_module"]},
    }
    run, results = _run(pytester, own, variants, "--variants", ",".join([*VARIANTS, "needs_missing"]))
    assert run.ret == 0, run.stdout.str()[-3000:]
    run.stdout.fnmatch_lines(
        ["*SKIPPED*variant needs_missing needs no_such_quant_module: pip install no_such_quant_module*"]
    )
    docs = {v: json.loads((results / f"{v}_quantized_{MODEL}_evaluation.json").read_text()) for v in VARIANTS}
    assert not (results / f"needs_missing_quantized_{MODEL}_evaluation.json").exists()
    for key in ("gguf_q8_0", "gguf_q4_0"):
        doc = docs[key]
        written = next((own.cache / "gguf-quantized").glob("*.Q8_0-*.gguf")) if key == "gguf_q8_0" else own.q4_file
        assert doc["memory"]["footprint_gb"] == pytest.approx(_expected_gguf_bytes(written) / 1e9, rel=1e-12)
        assert "GGUF file's tensor data" in doc["memory"]["footprint_method"]
        assert doc["variant"]["weights_identity"].startswith("gguf:")
        assert doc["reference_keys"] == docs["nf4"]["reference_keys"]  # the same FP16 reference
    assert docs["gguf_q8_0"]["variant"]["method"] == "gguf-Q8_0"
    assert docs["gguf_q4_0"]["variant"]["source"] == str(own.q4_file)
    # 8 bits lose less than 4 bits, on perplexity and on KL.
    q8, q4 = docs["gguf_q8_0"], docs["gguf_q4_0"]
    assert abs(q8["perplexity"]["delta_ppl_pct"]) < q4["perplexity"]["delta_ppl_pct"]
    assert q8["kl_divergence"]["mean"] < q4["kl_divergence"]["mean"]
    # The pre-quantized NF4 checkpoint holds the very weights the registry's NF4 makes on load.
    checkpoint, nf4 = docs["nf4_checkpoint"], docs["nf4"]
    assert checkpoint["variant"]["quantization_config"]["quant_method"] == "bitsandbytes"
    assert checkpoint["variant"]["quantization_config"]["load_in_4bit"] is True
    assert checkpoint["variant"]["source"] == str(own.checkpoint)
    assert checkpoint["perplexity"]["ppl"] == pytest.approx(nf4["perplexity"]["ppl"], rel=1e-9)
    assert checkpoint["kl_divergence"]["mean"] == pytest.approx(nf4["kl_divergence"]["mean"], rel=1e-9)
    assert checkpoint["memory"]["footprint_gb"] == nf4["memory"]["footprint_gb"]
    # One comparison over every variant; the best trade-off is chosen among all of them.
    comparison = json.loads((results / f"{MODEL}_quantization_comparison.json").read_text())
    # registry order, then the model's own variants by name
    assert list(comparison["variants"]) == ["fp16", "nf4", "gguf_q4_0", "gguf_q8_0", "nf4_checkpoint"]
    passing = {
        v: d["memory"]["footprint_gb"]
        for v, d in docs.items()
        if v != "fp16" and all(g["verdict"] == "PASS" for g in d["gates"])
    }
    assert comparison["findings"]["best_tradeoff"]["footprint_gb"] == min(passing.values())
    report = (results / "REPORT.md").read_text()
    assert all(f"| {v} |" in report or f"| {v} " in report for v in VARIANTS)


def test_checkpoint_with_another_tokenizer_is_a_usage_error(pytester: pytest.Pytester, own: SimpleNamespace) -> None:
    from transformers import AutoTokenizer

    other = own.root / "other-tokenizer"
    if not other.exists():
        shutil.copytree(own.checkpoint, other)
        tokenizer = AutoTokenizer.from_pretrained(other)
        tokenizer.add_tokens(["<not-in-the-base>"])
        tokenizer.save_pretrained(other)
    run, results = _run(pytester, own, {"retokenized": {"path": str(other)}}, "--variants", "fp16,retokenized")
    assert run.ret == pytest.ExitCode.USAGE_ERROR
    run.stderr.fnmatch_lines(
        [
            "*model 'smol' variant 'retokenized': its tokenizer does not match the base model's "
            "(49153 tokens against the base's 49152*"
        ]
    )
    assert not results.exists() or not any(results.glob("*.json"))  # nothing was scored
