"""Write a GGUF file of a model re-quantized to another GGML type, with the gguf package's own
quantization functions (gguf.quants.quantize), as llama-quantize would with ``--pure``.

The source is a GGUF file; its tensors are dequantized and rounded to float16 (the precision the
suite's FP16 reference of that model holds), then every 2-D tensor whose rows are whole blocks of
the type is quantized to it; 1-D tensors (norms) stay float32 and other 2-D ones float16, as
llama.cpp keeps them. Metadata (architecture, tokenizer, chat template) is copied; only
``general.file_type`` changes. Files are cached by the source's sha256, the type and this
writer's version, written to a temporary name and renamed when complete, and checked against
their recorded sha256 on every reuse.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from quant_fixtures.store.atomic import atomic_path, file_lock, write_text_atomic
from quant_fixtures.store.digests import sha256_file
from quant_fixtures.store.stale import warn_recomputed

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter

WRITER_VERSION = 1
# llama.cpp's LLAMA_FTYPE_MOSTLY_* of each type (general.file_type).
FILE_TYPES = {"Q8_0": 7, "Q5_1": 9, "Q5_0": 8, "Q4_1": 3, "Q4_0": 2}


def _copy_metadata(reader: GGUFReader, writer: GGUFWriter, file_type: int) -> None:
    import gguf

    for field in reader.fields.values():
        # GGUF.* are the reader's virtual fields; the writer writes the architecture itself.
        if field.name.startswith("GGUF.") or field.name == gguf.Keys.General.ARCHITECTURE:
            continue
        if field.name == gguf.Keys.General.FILE_TYPE:
            writer.add_file_type(file_type)
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), value_type, sub_type=sub_type)


def quantized_tensor(values: npt.ArrayLike, qtype: GGMLQuantizationType) -> tuple[np.ndarray, GGMLQuantizationType]:
    """(data, GGML type) of one float32 tensor in the requantized file."""
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

    values = np.asarray(values, dtype=np.float32).astype(np.float16)  # the FP16 reference's precision
    block = GGML_QUANT_SIZES[qtype][0]
    if values.ndim >= 2 and values.shape[-1] % block == 0:
        return quants.quantize(values.astype(np.float32), qtype), qtype
    if values.ndim == 1:
        return values.astype(np.float32), GGMLQuantizationType.F32
    return values, GGMLQuantizationType.F16


def write_requantized(source: Path, type_name: str, out: Path) -> None:
    import gguf
    import numpy as np

    qtype = gguf.GGMLQuantizationType[type_name]
    reader = gguf.GGUFReader(source)
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(out, arch)
    _copy_metadata(reader, writer, FILE_TYPES[type_name])
    for tensor in reader.tensors:
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        data, kind = quantized_tensor(values, qtype)
        # Quantized data is (rows, bytes per row): the writer derives the element shape from it.
        writer.add_tensor(tensor.name, np.ascontiguousarray(data), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def requantized_gguf(source: Path, type_name: str, cache_root: Path) -> Path:
    """The cached re-quantized copy of ``source`` (written on first use, validated on reuse)."""
    if type_name not in FILE_TYPES:
        raise ValueError(f"GGUF type {type_name!r}: the suite writes {', '.join(FILE_TYPES)}")
    import gguf

    source_sha = sha256_file(source)
    key = {
        "source_sha256": source_sha,
        "type": type_name,
        "writer": WRITER_VERSION,
        "gguf": getattr(gguf, "__version__", None) or _package_version("gguf"),
    }
    tag = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    target = cache_root / f"{source.stem.split('.')[0]}.{type_name}-{tag}.gguf"
    manifest = target.with_suffix(".json")
    with file_lock(cache_root / f".{target.name}.lock"):
        if target.is_file() and _recorded_sha(manifest) == sha256_file(target):
            return target
        warn_recomputed(target, f"its sha256 is not the one {manifest.name} records (truncated or edited)")
        with atomic_path(target) as tmp:
            write_requantized(source, type_name, tmp)
        write_text_atomic(manifest, json.dumps({"source": key, "sha256": sha256_file(target)}, indent=2))
    return target


def _recorded_sha(manifest: Path) -> str | None:
    try:
        recorded: str | None = json.loads(manifest.read_text()).get("sha256")
        return recorded
    except (OSError, ValueError, AttributeError):
        return None


def _package_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)
