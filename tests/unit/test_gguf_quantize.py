"""The GGUF types the suite writes, checked against plain transcriptions of llama.cpp's reference
quantizers (ggml-quants.c, quantize_row_q8_0_ref and quantize_row_q4_0_ref), and which tensors
the writer quantizes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from quant_fixtures.models import gguf_quantize  # noqa: E402
from quant_fixtures.models.gguf_quantize import quantized_tensor  # noqa: E402
from quant_fixtures.store.stale import StaleStoreWarning  # noqa: E402

BLOCK = 32


def plain_q8_0(values: np.ndarray) -> np.ndarray:
    """Per block of 32: d = max|x| / 127 stored as float16, q = round-half-away(x / d); x' = q * d."""
    out = np.empty_like(values, dtype=np.float32)
    for row in range(values.shape[0]):
        for start in range(0, values.shape[1], BLOCK):
            x = values[row, start : start + BLOCK].astype(np.float32)
            d = np.float32(np.abs(x).max() / np.float32(127))
            inv = np.float32(1) / d if d else np.float32(0)
            q = np.sign(x * inv) * np.floor(np.abs(x * inv) + np.float32(0.5))
            out[row, start : start + BLOCK] = q * np.float32(np.float16(d))
    return out


def plain_q4_0(values: np.ndarray) -> np.ndarray:
    """Per block of 32: m = the value of largest magnitude, d = m / -8 stored as float16,
    q = min(15, trunc(x / d + 8.5)); x' = (q - 8) * d."""
    out = np.empty_like(values, dtype=np.float32)
    for row in range(values.shape[0]):
        for start in range(0, values.shape[1], BLOCK):
            x = values[row, start : start + BLOCK].astype(np.float32)
            m = x[np.argmax(np.abs(x))]
            d = np.float32(m / np.float32(-8))
            inv = np.float32(1) / d if d else np.float32(0)
            q = np.minimum(np.float32(15), np.trunc(x * inv + np.float32(8.5)))
            out[row, start : start + BLOCK] = (q - 8) * np.float32(np.float16(d))
    return out


@pytest.mark.parametrize("name, plain", [("Q8_0", plain_q8_0), ("Q4_0", plain_q4_0)])
def test_quantized_values_match_llama_cpp_reference(name: str, plain: Callable[[np.ndarray], np.ndarray]) -> None:
    rng = np.random.default_rng(0)
    values = (rng.standard_normal((6, 128)) * rng.uniform(0.01, 3, (6, 1))).astype(np.float16).astype(np.float32)
    values[2, :32] = 0.0  # an all-zero block: scale 0, values 0
    qtype = gguf.GGMLQuantizationType[name]
    data, kind = quantized_tensor(values, qtype)
    assert kind == qtype
    assert data.dtype == np.uint8 and data.shape == (6, 128 // BLOCK * gguf.GGML_QUANT_SIZES[qtype][1])
    restored = gguf.quants.dequantize(data, qtype)
    expected = plain(values)
    step = np.abs(values).max() / (127 if name == "Q8_0" else 8)
    assert np.abs(restored - expected).max() <= step  # a rounding tie may land one step apart
    assert (restored == expected).mean() > 0.99
    assert np.all(restored[2, :32] == 0)


def test_which_tensors_are_quantized() -> None:
    qtype = gguf.GGMLQuantizationType.Q8_0
    norm, kind = quantized_tensor(np.ones(64, dtype=np.float32), qtype)
    assert kind == gguf.GGMLQuantizationType.F32 and norm.dtype == np.float32  # 1-D stays float32
    odd, kind = quantized_tensor(np.ones((4, 48), dtype=np.float32), qtype)
    assert kind == gguf.GGMLQuantizationType.F16 and odd.dtype == np.float16  # rows not whole blocks
    rounded, _ = quantized_tensor(np.array([1 + 2**-12], dtype=np.float32), qtype)
    assert rounded[0] == 1.0  # values are first rounded to float16, the FP16 reference's precision


def _gguf_with(path: Path, tensors: dict[str, tuple[np.ndarray, Any]]) -> Path:
    writer = gguf.GGUFWriter(str(path), "llama")
    for name, (array, raw_type) in tensors.items():
        writer.add_tensor(name, array, raw_dtype=raw_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_the_reference_note_names_the_files_quantization(tmp_path: Path) -> None:
    """A model whose weights come from a GGUF is compared against that GGUF dequantized: every
    report says so, naming the file's quantized types (most common first)."""
    from quant_fixtures.models.gguf import GGUFTensors, reference_note

    weights = np.random.default_rng(0).standard_normal((4, 32)).astype(np.float32)
    q8 = quantized_tensor(weights, gguf.GGMLQuantizationType.Q8_0)
    path = _gguf_with(tmp_path / "m.Q8_0.gguf", {"a.weight": q8, "b.weight": q8, "norm.weight": (weights[0], None)})
    note = reference_note(path.name, GGUFTensors.of_file(path))
    assert note.startswith("the FP16 reference is m.Q8_0.gguf dequantized to float16 (its tensors: Q8_0 x2, F32 x1)")
    assert "carries the file's Q8_0 quantization" in note and "not against the original float16 model" in note
    plain = _gguf_with(tmp_path / "m.F32.gguf", {"norm.weight": (weights[0], None)})
    assert (
        reference_note(plain.name, GGUFTensors.of_file(plain))
        == "the FP16 reference is m.F32.gguf (F32 x1) converted to float16"
    )


def test_a_damaged_requantized_file_is_written_again_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer is replaced by one that records its calls (the real one is checked above)."""
    source = tmp_path / "model.Q4_1.gguf"
    source.write_bytes(b"source")
    written: list[str] = []

    def writer(source_path: Path, type_name: str, out: Path) -> None:
        written.append(type_name)
        out.write_bytes(b"requantized")

    monkeypatch.setattr(gguf_quantize, "write_requantized", writer)
    target = gguf_quantize.requantized_gguf(source, "Q8_0", tmp_path / "cache")
    assert gguf_quantize.requantized_gguf(source, "Q8_0", tmp_path / "cache") == target and written == ["Q8_0"]
    target.write_bytes(b"requant")  # truncated
    with pytest.warns(StaleStoreWarning, match="recomputed, not used: its sha256 is not the one") as caught:
        gguf_quantize.requantized_gguf(source, "Q8_0", tmp_path / "cache")
    assert str(caught[0].message).startswith(f"{target}: ")
    assert written == ["Q8_0", "Q8_0"] and target.read_bytes() == b"requantized"


def test_while_converting_each_gguf_file_is_parsed_once(tmp_path: Path) -> None:
    """transformers opens a GGUF for its config, tokenizer and weights; the conversion hands it one
    parse of each file (a parse of a real vocabulary takes seconds)."""
    from quant_fixtures.models.gguf import one_reader_per_file

    weights = np.random.default_rng(1).standard_normal((4, 32)).astype(np.float32)
    first = _gguf_with(tmp_path / "a.gguf", {"a.weight": (weights, None)})
    second = _gguf_with(tmp_path / "b.gguf", {"b.weight": (weights, None)})
    with one_reader_per_file():
        assert gguf.GGUFReader(first) is gguf.GGUFReader(str(first))
        assert gguf.GGUFReader(second) is not gguf.GGUFReader(first)
    assert gguf.GGUFReader(first) is not gguf.GGUFReader(first)  # outside: the library's own class again
    assert isinstance(gguf.GGUFReader(first), gguf.GGUFReader)


def test_while_converting_each_name_map_is_built_once() -> None:
    """transformers builds the GGUF name map for every module it loads; during a conversion one map
    per (architecture, blocks) serves them all, and the same names come out of it."""
    from quant_fixtures.models.gguf import one_reader_per_file

    original = gguf.get_tensor_name_map
    arch = gguf.MODEL_ARCH.LLAMA
    with one_reader_per_file():
        assert gguf.get_tensor_name_map(arch, 30) is gguf.get_tensor_name_map(arch, 30)
        assert gguf.get_tensor_name_map(arch, 2) is not gguf.get_tensor_name_map(arch, 30)
        shared = gguf.get_tensor_name_map(arch, 30)
        assert shared.get_name("model.layers.3.mlp.up_proj") == original(arch, 30).get_name(
            "model.layers.3.mlp.up_proj"
        )
    assert gguf.get_tensor_name_map is original
