"""Where a model's weights come from (Hub snapshot, local directory, packaged GGUF) and the
identity of those exact weights, which every stored result is keyed by."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from quant_fixtures.config import CheckpointSpec, ModelSpec
from quant_fixtures.models.gguf import (
    convert_gguf_file,
    convert_gguf_package,
    package_file,
    reference_note,
)
from quant_fixtures.models.gguf_quantize import requantized_gguf
from quant_fixtures.store.atomic import write_text_atomic
from quant_fixtures.store.digests import sha256_blocks
from quant_fixtures.store.stale import warn_recomputed

SAFE_WEIGHTS = ("*.safetensors",)
PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth")  # torch pickles: loading one can run arbitrary code
HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "tokenizer*"]
# Files besides the weights that change what the model computes or generates.
IDENTITY_FILES = ("config.json", "generation_config.json")


class ModelUnavailableError(RuntimeError):
    """The weights are neither reachable nor cached; the message names the remedy in one line."""


class UnusableModelError(ModelUnavailableError):
    """The model's files are there but cannot be used as they are (no weights, pickle weights not
    opted in, a config.json transformers cannot read): no retry or download changes that, so the
    up-front checks refuse it before any model loads."""


class PickleWeightsRefused(UnusableModelError):
    """Only pickle weights, and no opt-in. ``problem`` says so without a remedy: the remedy depends
    on where the model came from (a TOML entry can opt in, --model cannot), which the caller knows."""

    def __init__(self, where: str, directory: Path, pickles: list[Path]) -> None:
        self.problem = (
            f"{where}: {directory} holds only pickle weights ({', '.join(p.name for p in pickles[:3])}); "
            "loading a pickle can run arbitrary code, so they are refused"
        )
        super().__init__(
            f"{self.problem} unless the model's entry says allow_pickle = true (only for a source you "
            "trust), or convert them to safetensors"
        )


@dataclass(frozen=True)
class ResolvedModel:
    """A local directory holding the model, and a string identifying its exact weights."""

    directory: Path
    identity: str
    # A GGUF variant runs dequantized; its footprint is the file's quantized tensor bytes.
    gguf_tensor_bytes: int | None = None
    # A model whose weights come from a GGUF: what its FP16 reference really is (every report says it).
    reference_note: str | None = None


def _file_digest(path: Path, cache_dir: Path) -> str:
    """Block-wise sha256 of a file (:func:`sha256_blocks`), memoised by (path, size, mtime) so large
    weights are hashed once."""
    stat = path.stat()
    memo_key = hashlib.sha256(f"blocks|{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
    memo = cache_dir / "digests" / memo_key
    try:
        memoised = memo.read_text().strip()
    except OSError:
        memoised = ""
    if re.fullmatch(r"[0-9a-f]{64}", memoised):  # anything else (empty, edited) is recomputed
        return memoised
    warn_recomputed(memo, f"the memoised digest of {path.name} is not a sha256")
    digest = sha256_blocks(path)
    write_text_atomic(memo, digest)
    return digest


def weight_files(directory: Path, allow_pickle: bool = False, where: str = "the model") -> list[Path]:
    """The directory's weight files: safetensors, plus pickles only when the model opts in.
    ``where`` names the model in errors (``model 'x'``, ``model 'x' variant 'v'``)."""
    files = sorted({p for pat in SAFE_WEIGHTS for p in directory.glob(pat)})
    pickles = sorted({p for pat in PICKLE_WEIGHTS for p in directory.glob(pat)})
    if allow_pickle:
        files = sorted(set(files) | set(pickles))
    if files:
        return files
    if pickles:
        raise PickleWeightsRefused(where, directory, pickles)
    raise UnusableModelError(
        f"{where}: {directory} holds no weight files ({', '.join(SAFE_WEIGHTS)}): give the directory "
        "the checkpoint's weights are in"
    )


def weight_bytes(directory: Path, allow_pickle: bool = False, where: str = "the model") -> int:
    """Bytes of the directory's weight files (those :func:`weight_files` accepts)."""
    return sum(p.stat().st_size for p in weight_files(directory, allow_pickle, where))


def check_config_json(directory: Path, where: str) -> None:
    """The directory's config.json is a JSON object. Checked here because transformers' own error
    for a broken one is a long traceback that does not say where the file is broken."""
    path = directory / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UnusableModelError(f"{where}: {path} cannot be read ({exc.strerror or exc})") from None
    except ValueError as exc:  # not JSON (json.JSONDecodeError), not UTF-8 (UnicodeDecodeError)
        raise UnusableModelError(f"{where}: {path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise UnusableModelError(f"{where}: {path} is not a JSON object (a model's config is one)")


def directory_identity(directory: Path, cache_dir: Path, allow_pickle: bool = False, where: str = "the model") -> str:
    """sha256 over the names and block-wise digests of a directory's weight, config and
    generation-config files (the tokenizer has its own digest in every key)."""
    files = weight_files(directory, allow_pickle, where)
    summary = hashlib.sha256()
    for p in files + [directory / name for name in IDENTITY_FILES]:
        if p.is_file():
            summary.update(f"{p.name}:{_file_digest(p, cache_dir)}\n".encode())
    return "sha256-blocks:" + summary.hexdigest()


def _resolve_hub(spec: ModelSpec | CheckpointSpec, where: str) -> ResolvedModel:
    from huggingface_hub import snapshot_download

    if not spec.hub_id:
        raise ModelUnavailableError(f"{where}: no Hub id to download")
    revision = spec.revision or "main"
    try:
        patterns = HUB_PATTERNS + (list(PICKLE_WEIGHTS) if spec.allow_pickle else [])
        directory = Path(snapshot_download(spec.hub_id, revision=revision, allow_patterns=patterns))
    except Exception as exc:  # offline, unknown repo, gated repo: all end in the same remedy
        raise ModelUnavailableError(
            f"{where} ({spec.hub_id}@{revision}) is not in the local Hugging Face cache and the Hub "
            f"could not serve it ({type(exc).__name__}); remedy: download it where the Hub is reachable "
            f"(`hf download {spec.hub_id} --revision {revision}`) and point HF_HOME at that cache, or set "
            f'`path = "/local/dir"` for it in quant_suite.toml (or give --model=/local/dir)'
        ) from None
    weight_files(directory, spec.allow_pickle, where)  # safetensors, or pickles only by opt-in
    # Snapshot directories are named by the commit hash, which pins the weights exactly.
    return ResolvedModel(directory, f"hub:{spec.hub_id}@{directory.name}")


def _local_directory(path: str, where: str, cache_dir: Path, allow_pickle: bool) -> ResolvedModel:
    directory = Path(path).expanduser()
    if not (directory / "config.json").is_file():
        raise UnusableModelError(f"{where}: {directory} is not a Hugging Face model directory (no config.json)")
    check_config_json(directory, where)
    return ResolvedModel(directory, directory_identity(directory, cache_dir, allow_pickle, where))


def _gguf(gguf_path: Path, cache_dir: Path) -> ResolvedModel:
    converted = convert_gguf_file(gguf_path, cache_dir / "gguf")
    return ResolvedModel(converted.directory, converted.identity, converted.tensors.stored_bytes)


def resolve_checkpoint(spec: CheckpointSpec, base: ModelSpec, cache_dir: Path) -> ResolvedModel:
    """A local Hugging Face directory for a model's own variant, and the identity of its weights."""
    key = f"model {base.key!r} variant {spec.key!r}"
    if spec.hub_id:
        return _resolve_hub(spec, key)
    if spec.path:
        return _local_directory(spec.path, key, cache_dir, spec.allow_pickle)
    if spec.gguf_file:
        return _gguf(Path(spec.gguf_file).expanduser(), cache_dir)
    if not spec.gguf_type:
        raise ModelUnavailableError(f"{key}: no source (hub_id, path, gguf_file or gguf_type)")
    source = package_file(*_gguf_package(base))
    return _gguf(requantized_gguf(source, spec.gguf_type, cache_dir / "gguf-quantized"), cache_dir)


def _gguf_package(spec: ModelSpec) -> tuple[str, str]:
    """(package, file) of a model whose weights are a GGUF shipped in a Python package."""
    if not (spec.gguf_package and spec.gguf_file):
        raise ModelUnavailableError(f"model {spec.key!r}: no source (hub_id, path, or gguf_package and gguf_file)")
    return spec.gguf_package, spec.gguf_file


def resolve_model(spec: ModelSpec, cache_dir: Path) -> ResolvedModel:
    """Find (or make) a local Hugging Face directory for the spec and identify its weights."""
    if spec.hub_id:  # source_kind "hub"
        return _resolve_hub(spec, f"model {spec.key!r}")
    if spec.path:  # source_kind "local"
        return _local_directory(spec.path, f"model {spec.key!r}", cache_dir, spec.allow_pickle)
    package, filename = _gguf_package(spec)
    converted = convert_gguf_package(package, filename, cache_dir / "gguf")
    return ResolvedModel(
        converted.directory,
        converted.identity,
        reference_note=reference_note(filename, converted.tensors),
    )
