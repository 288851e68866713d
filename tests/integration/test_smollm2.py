"""The real embedded model: GGUF conversion, its cache, and perplexity against a plain computation."""

from __future__ import annotations

import json
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from integration_support import SMOLLM2_GGUF, SMOLLM2_PACKAGE, load_variant, plain_window_nll

import quant_fixtures.models.gguf as gguf
from quant_fixtures.compute.scoring import score_windows
from quant_fixtures.metrics.perplexity import nonoverlapping_windows
from quant_fixtures.store.stale import StaleStoreWarning


def test_converted_directory_is_a_plain_float16_hf_model(smollm2_converted: Any) -> None:
    import transformers
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    directory = smollm2_converted.directory
    manifest = json.loads((directory / gguf.MANIFEST).read_text())
    gguf_sha = gguf.sha256_file(gguf.package_file(SMOLLM2_PACKAGE, SMOLLM2_GGUF))
    assert manifest["source"] == {
        "gguf_sha256": gguf_sha,
        "gguf_file": SMOLLM2_GGUF,
        "transformers": transformers.__version__,
        "converter_version": gguf.CONVERTER_VERSION,
    }
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(manifest["files"])
    # what the GGUF stores, read at conversion so that a reuse never parses the file again
    stored = gguf.GGUFTensors.of_file(gguf.package_file(SMOLLM2_PACKAGE, SMOLLM2_GGUF))
    assert manifest["tensors"] == {"stored_bytes": stored.stored_bytes, "types": stored.types}
    assert smollm2_converted.tensors == stored and stored.types["Q4_1"] == 210
    for name, size in manifest["files"].items():
        assert (directory / name).stat().st_size == size, name
    assert smollm2_converted.identity == (
        f"gguf:{gguf_sha}:transformers-{transformers.__version__}:v{gguf.CONVERTER_VERSION}"
    )

    config = json.loads((directory / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["model_type"] == "llama" and config["vocab_size"] == 49152
    with safe_open(str(directory / "model.safetensors"), framework="pt") as fh:
        assert {fh.get_slice(name).get_dtype() for name in fh.keys()} == {"F16"}

    model = AutoModelForCausalLM.from_pretrained(directory)
    assert getattr(model, "hf_quantizer", None) is None and not getattr(model, "is_quantized", False)
    assert model.dtype == torch.float16
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied, stored once
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6


def test_second_conversion_reuses_the_cache(
    smollm2_converted: Any, gguf_cache_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = smollm2_converted.directory / gguf.MANIFEST
    before = manifest.stat().st_mtime_ns

    def no_conversion(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached conversion should have been reused")

    monkeypatch.setattr(gguf, "_write_hf_directory", no_conversion)
    start = time.perf_counter()
    again = gguf.convert_gguf_package(SMOLLM2_PACKAGE, SMOLLM2_GGUF, gguf_cache_root)
    assert time.perf_counter() - start < 10  # hashing the GGUF only; converting takes ~20 s
    assert again == smollm2_converted
    assert manifest.stat().st_mtime_ns == before
    assert _entries(gguf_cache_root) == [smollm2_converted.directory.name]


def _entries(root: Path) -> list[str]:
    """What a cache root holds, less the lock files that serialise conversions (filelock keeps them)."""
    return sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock"))


def _truncate_weights(directory: Path) -> None:
    weights = directory / "model.safetensors"
    with weights.open("r+b") as fh:
        fh.truncate(weights.stat().st_size // 2)


def _drop_manifest(directory: Path) -> None:
    (directory / gguf.MANIFEST).unlink()


def _manifest_from_other_transformers(directory: Path) -> None:
    path = directory / gguf.MANIFEST
    manifest = json.loads(path.read_text())
    manifest["source"]["transformers"] = "0.0.0"
    path.write_text(json.dumps(manifest))


def _manifest_without_tensors(directory: Path) -> None:  # written by an earlier version
    path = directory / gguf.MANIFEST
    manifest = json.loads(path.read_text())
    del manifest["tensors"]
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "damage",
    [None, _truncate_weights, _drop_manifest, _manifest_from_other_transformers, _manifest_without_tensors],
    ids=["intact", "truncated-weights", "no-manifest", "stale-manifest", "manifest-without-tensors"],
)
def test_damaged_conversion_is_redone_not_reused(
    smollm2_converted: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: Callable[[Path], None] | None
) -> None:
    """A copy of the real converted directory in a fresh cache root, damaged; the converter's writer is
    replaced by a recorder (a real reconversion costs ~20 s and is what the session fixture did)."""
    root = tmp_path / "gguf"
    copy = root / smollm2_converted.directory.name
    shutil.copytree(smollm2_converted.directory, copy)
    if damage is not None:
        damage(copy)
    calls = []

    def recording_writer(gguf_path: Path, out: Path) -> gguf.GGUFTensors:
        calls.append((gguf_path.name, out))
        (out / "model.safetensors").write_bytes(b"reconverted")
        (out / "config.json").write_text("{}")
        return gguf.GGUFTensors(1, {"Q4_1": 1})

    monkeypatch.setattr(gguf, "_write_hf_directory", recording_writer)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        result = gguf.convert_gguf_package(SMOLLM2_PACKAGE, SMOLLM2_GGUF, root)
    # A damaged copy is converted again and the run says which directory and why; an intact one says nothing.
    named = [str(w.message).split(": recomputed, not used: ")[0] for w in said if w.category is StaleStoreWarning]
    assert named == ([] if damage is None else [str(copy)])
    assert result.directory == copy and result.identity == smollm2_converted.identity
    if damage is None:
        assert calls == []
        assert (copy / "model.safetensors").stat().st_size == (
            smollm2_converted.directory / "model.safetensors"
        ).stat().st_size
    else:
        assert len(calls) == 1 and calls[0][0] == SMOLLM2_GGUF
        assert calls[0][1] != copy  # written beside the target, renamed into place when complete
        assert (copy / "model.safetensors").read_bytes() == b"reconverted"
        assert not (copy / "tokenizer.json").exists()  # the damaged directory was removed, not patched
        manifest = json.loads((copy / gguf.MANIFEST).read_text())
        assert manifest["files"] == {"model.safetensors": 11, "config.json": 2}
    assert _entries(root) == [copy.name]  # no temporary directory left


@pytest.fixture(params=["fp16", "nf4"])
def smollm2(
    request: pytest.FixtureRequest, smollm2_fp16: Any, smollm2_converted: Any, digest_cache: Path
) -> Iterator[tuple[str, Any]]:
    if request.param == "fp16":
        yield request.param, smollm2_fp16
        return
    loaded = load_variant(smollm2_converted.directory, request.param, digest_cache, key="smollm2-135m")
    yield request.param, loaded
    loaded.model = None


def test_perplexity_matches_plain_computation(smollm2: tuple[str, Any], wikitext_ids: torch.Tensor) -> None:
    variant, loaded = smollm2
    assert loaded.compute_dtype == "float32"
    plan = nonoverlapping_windows(len(wikitext_ids), 512, 1024)
    assert [(w.begin, w.end, w.first_target) for w in plan] == [(0, 512, 1), (512, 1024, 513)]
    scores = score_windows(loaded.model, wikitext_ids, plan, batch_size=1)
    plain = [plain_window_nll(loaded.model, wikitext_ids, w) for w in plan]
    assert scores.window_tokens == [count for _, count in plain] == [511, 511]
    for i, (ours, (reference, _)) in enumerate(zip(scores.window_nll, plain)):
        rel = abs(ours - reference) / reference
        assert rel < 1e-3, f"{variant} window {i}: {ours!r} vs plain {reference!r}"
        # In fact much tighter: only float32 (ours) vs float64 (plain) log-softmax differ.
        assert rel < 2e-5, f"{variant} window {i}: {ours!r} vs plain {reference!r} ({rel:.2e})"
    reference_ppl = torch.tensor(sum(n for n, _ in plain) / sum(c for _, c in plain), dtype=torch.float64).exp()
    assert abs(scores.ppl / reference_ppl.item() - 1) < 2e-5
    assert 10 < scores.ppl < 80, f"implausible SmolLM2 perplexity {scores.ppl} ({variant})"
