"""Load one (model, variant) pair: resolve the weights, quantize on load, measure the footprint."""

from __future__ import annotations

import gc
import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quant_fixtures.store.atomic import write_text_atomic
from quant_fixtures.config import ModelSpec
from quant_fixtures.models.gguf import convert_gguf_package
from quant_fixtures.store.digests import sha256_file
from quant_fixtures.variants import Variant, VariantOptions, torch_dtype

SAFE_WEIGHTS = ("*.safetensors",)
PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth")  # torch pickles: loading one can run arbitrary code
HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "tokenizer*"]
# Files besides the weights that change what the model computes or generates.
IDENTITY_FILES = ("config.json", "generation_config.json")


class ModelUnavailableError(RuntimeError):
    """The weights are neither reachable nor cached; the message names the remedy in one line."""


@dataclass(frozen=True)
class ResolvedModel:
    """A local directory holding the model, and a string identifying its exact weights."""

    directory: Path
    identity: str


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    footprint_bytes: int
    weight_dtype: str
    compute_dtype: str
    device: str
    load_seconds: float
    quantization_config: dict[str, Any] | None
    quant_state_bytes: int = 0  # bitsandbytes scales kept outside the parameters (not in the footprint)


def _file_digest(path: Path, cache_dir: Path) -> str:
    """sha256 of a file, memoised by (path, size, mtime) so large weights are hashed once."""
    stat = path.stat()
    memo_key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
    memo = cache_dir / "digests" / memo_key
    try:
        memoised = memo.read_text().strip()
    except OSError:
        memoised = ""
    if re.fullmatch(r"[0-9a-f]{64}", memoised):  # anything else (empty, edited) is recomputed
        return memoised
    digest = sha256_file(path)
    write_text_atomic(memo, digest)
    return digest


def weight_files(directory: Path, allow_pickle: bool = False, key: str = "model") -> list[Path]:
    """The directory's weight files: safetensors, plus pickles only when the model opts in."""
    files = sorted({p for pat in SAFE_WEIGHTS for p in directory.glob(pat)})
    pickles = sorted({p for pat in PICKLE_WEIGHTS for p in directory.glob(pat)})
    if allow_pickle:
        files = sorted(set(files) | set(pickles))
    if files:
        return files
    if pickles:
        raise ModelUnavailableError(
            f"model {key!r}: {directory} holds only pickle weights ({', '.join(p.name for p in pickles[:3])}); "
            "loading a pickle can run arbitrary code, so they are refused unless the model's entry says "
            "allow_pickle = true (only for a source you trust), or convert them to safetensors")
    raise ModelUnavailableError(f"{directory}: no weight files ({', '.join(SAFE_WEIGHTS)}) in this directory")


def directory_identity(directory: Path, cache_dir: Path, allow_pickle: bool = False, key: str = "model") -> str:
    """sha256 over the names and contents of a directory's weight, config and generation-config files
    (the tokenizer has its own digest in every key)."""
    files = weight_files(directory, allow_pickle, key)
    summary = hashlib.sha256()
    for p in files + [directory / name for name in IDENTITY_FILES]:
        if p.is_file():
            summary.update(f"{p.name}:{_file_digest(p, cache_dir)}\n".encode())
    return "sha256:" + summary.hexdigest()


def _resolve_hub(spec: ModelSpec) -> ResolvedModel:
    from huggingface_hub import snapshot_download

    revision = spec.revision or "main"
    try:
        patterns = HUB_PATTERNS + (list(PICKLE_WEIGHTS) if spec.allow_pickle else [])
        directory = Path(snapshot_download(spec.hub_id, revision=revision, allow_patterns=patterns))
    except Exception as exc:  # offline, unknown repo, gated repo: all end in the same remedy
        raise ModelUnavailableError(
            f"model {spec.key!r} ({spec.hub_id}@{revision}) is not in the local Hugging Face cache and the Hub "
            f"could not serve it ({type(exc).__name__}); remedy: download it where the Hub is reachable "
            f"(`hf download {spec.hub_id} --revision {revision}`) and point HF_HOME at that cache, or set "
            f"`path = \"/local/dir\"` for {spec.key} in quant_suite.toml"
        ) from None
    weight_files(directory, spec.allow_pickle, spec.key)  # safetensors, or pickles only by opt-in
    # Snapshot directories are named by the commit hash, which pins the weights exactly.
    return ResolvedModel(directory, f"hub:{spec.hub_id}@{directory.name}")


def resolve_model(spec: ModelSpec, cache_dir: Path) -> ResolvedModel:
    """Find (or make) a local Hugging Face directory for the spec and identify its weights."""
    if spec.source_kind == "hub":
        return _resolve_hub(spec)
    if spec.source_kind == "local":
        directory = Path(spec.path).expanduser()
        if not (directory / "config.json").is_file():
            raise ModelUnavailableError(f"model {spec.key!r}: {directory} is not a Hugging Face model directory (no config.json)")
        return ResolvedModel(directory, directory_identity(directory, cache_dir, spec.allow_pickle, spec.key))
    converted = convert_gguf_package(spec.gguf_package, spec.gguf_file, cache_dir / "gguf")
    return ResolvedModel(converted.directory, converted.identity)


def upcast_unquantized(model: Any, dtype: Any) -> None:
    """Cast float parameters and buffers that are not quantized storage to ``dtype``.

    Used on CPU after the footprint is taken: weights stay as stored (16-bit or quantized) for
    the footprint, activations run in float32 for speed and accuracy. ``model.to(dtype)`` cannot
    be used because transformers forbids it on quantized models.
    """
    import torch

    quantized_types: tuple[type, ...] = ()
    try:
        import bitsandbytes as bnb

        quantized_types = (bnb.nn.Int8Params, bnb.nn.Params4bit)
    except ImportError:
        pass
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if param.is_floating_point() and param.dtype != dtype and not isinstance(param, quantized_types):
                param.data = param.data.to(dtype)
        for name, buffer in module.named_buffers(recurse=False):
            # Rotary inverse frequencies are kept in float32 by the models themselves.
            if buffer.is_floating_point() and buffer.dtype not in (dtype, torch.float32):
                module.register_buffer(name, buffer.to(dtype), persistent=name not in module._non_persistent_buffers_set)
        if hasattr(module, "compute_dtype") and module.compute_dtype is not None:  # bnb Linear4bit
            module.compute_dtype = dtype
            # On CPUs with AVX512-BF16, bitsandbytes repacks NF4 weights on the first call and then
            # computes in bfloat16 whatever compute_dtype says; keep the float32 path we report.
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False


def quantization_state_bytes(model: Any) -> int:
    """Bytes of quantization state that ``get_memory_footprint`` does not count, because bitsandbytes
    keeps it as attributes of the weights: LLM.int8 row scales (SCB) and the NF4 block absmax and
    code book (with double quantization, the second-level state too)."""
    total = 0
    for param in model.parameters():
        scb = getattr(param, "SCB", None)
        if scb is not None:
            total += scb.numel() * scb.element_size()
        state = getattr(param, "quant_state", None)
        while state is not None:
            total += sum(t.numel() * t.element_size() for t in (state.absmax, state.code) if t is not None)
            state = getattr(state, "state2", None)
    return total


def load_model(spec: ModelSpec, resolved: ResolvedModel, variant: Variant, options: VariantOptions,
               device: str) -> LoadedModel:
    """Load the pair on ``device`` ("cuda:N" or "cpu"), quantizing on load when the variant says so."""
    import sys

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not sys.stderr.isatty():  # loading bars only on an interactive terminal (not CI, not xdist workers)
        hf_logging.disable_progress_bar()
    start = time.perf_counter()
    kwargs = variant.load_kwargs(options)
    tokenizer = AutoTokenizer.from_pretrained(resolved.directory, trust_remote_code=spec.trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        resolved.directory,
        dtype=torch_dtype(options.weight_dtype),
        device_map={"": device},
        trust_remote_code=spec.trust_remote_code,
        use_safetensors=None if spec.allow_pickle else True,  # never unpickle weights without the opt-in
        **kwargs,
    )
    model.eval()
    footprint = int(model.get_memory_footprint())
    state_bytes = quantization_state_bytes(model)
    if options.compute_dtype != options.weight_dtype:
        upcast_unquantized(model, torch_dtype(options.compute_dtype))
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)
    qconfig = kwargs.get("quantization_config")
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        footprint_bytes=footprint,
        weight_dtype=options.weight_dtype,
        compute_dtype=options.compute_dtype,
        device=device,
        load_seconds=time.perf_counter() - start,
        # use_diff=False: every effective setting, not only those that differ from the defaults
        quantization_config=json.loads(qconfig.to_json_string(use_diff=False)) if qconfig is not None else None,
        quant_state_bytes=state_bytes,
    )


def release(loaded: LoadedModel | None) -> None:
    """Drop the model and return its memory before the next one loads."""
    if loaded is None:
        return
    device = loaded.device
    loaded.model = None
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
