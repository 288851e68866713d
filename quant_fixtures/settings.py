"""A run's settings, parsed once at the edge (plugin/cli.py) into a few frozen groups.

Each group is what one part of the suite needs: where files go (:class:`Paths`), how perplexity is
measured (:class:`PerplexityProtocol`), how the prompt suite is run (:class:`PromptProtocol`), how
models are loaded (:class:`LoadSettings`) and how verdicts are reached (:class:`GatePolicy`).
Defaults that depend on the device (CPU budgets are smaller) are resolved here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    results_dir: Path
    baselines_dir: Path
    cache_dir: Path


@dataclass(frozen=True)
class PerplexityProtocol:
    ctx: int | None  # requested window (None: the protocol's own default); each model gets min(ctx, its maximum)
    max_tokens: int | None  # None: the whole test split
    stride: int | None  # the strided protocol's stride
    batch_size: int  # windows per forward pass (batch-invariant variants)
    dataset_source: str = "vendored"
    protocol: str = "nonoverlapping"  # inputs/corpus_protocols.PROTOCOLS


@dataclass(frozen=True)
class PromptProtocol:
    path: Path
    categories: tuple[str, ...] | None = None
    use_chat_template: bool = True
    max_new_tokens_cap: int | None = None  # None: each prompt's own max_new_tokens
    top_k: int = 256
    gen_batch_size: int = 96
    score_batch_size: int = 16
    skip: bool = False  # --skip-prompts: perplexity and memory only


# Position buckets of the long-context measurement, in tokens of context before the predicted token
# (the 0-512, 512-2K, 2K-8K, 8K-32K, continued by fours for longer models).
LONG_BUCKET_EDGES = (0, 512, 2048, 8192, 32768, 131072, 524288)
PROBE_DEPTHS = (0.1, 0.5, 0.9)  # where the key sits in the filler, as a share of it
SHORTEST_DEFAULT_PROBE = 256  # default probe lengths are at least this long


@dataclass(frozen=True)
class LongContextProtocol:
    """How harm far into the context is measured (session/long_context_stage.py)."""

    max_length: int  # tokens per WikiText-2 stretch asked for; each model gets min(this, its maximum)
    stretches: int  # stretches scored (consecutive, from the start of the joined test split)
    chunk_tokens: int  # positions per forward pass; earlier ones come from the KV cache
    probe_lengths: tuple[int, ...] | None = None  # None: default_probe_lengths(the model's length)
    probe_depths: tuple[float, ...] = PROBE_DEPTHS
    probe_keys: int = 1  # probes (keys) per length and depth
    bucket_edges: tuple[int, ...] = LONG_BUCKET_EDGES
    skip: bool = False  # --skip-long-context


def default_probe_lengths(length: int) -> tuple[int, ...]:
    """The model's length and a quarter, a sixteenth and a 64th of it, each at least SHORTEST_DEFAULT_PROBE tokens."""
    lengths = (length // 64, length // 16, length // 4, length)
    return tuple(sorted({n for n in lengths if n >= SHORTEST_DEFAULT_PROBE})) or (length,)


@dataclass(frozen=True)
class LoadSettings:
    device: str  # "cpu" or "cuda:N"
    weight_dtype: str = "float16"
    nf4_compute_dtype: str | None = None
    nf4_double_quant: bool = False
    max_gpu_memory: int | None = None  # bytes a process may hold on its GPU (--max-gpu-memory); None: the card
    may_spread: bool = False  # a model too big for the GPU may use the host's others (serial runs, not xdist workers)

    @property
    def device_type(self) -> str:
        return self.device.split(":")[0]

    @property
    def compute_dtype(self) -> str:
        """Activations run in the weight dtype on CUDA, in float32 on the CPU (fp16 matmuls are slow there)."""
        return self.weight_dtype if self.device_type == "cuda" else "float32"


@dataclass(frozen=True)
class GatePolicy:
    mode: str = "enforce"  # "enforce" fails gate tests; "report" records verdicts, failures xfail
    undecided: str = "fail"  # what an UNDECIDED gate does to the exit code: "fail", "warn" or "pass"
    alpha: float = 0.05  # a gate PASSes at confidence 1 - alpha; the run's FAILs hold a family-wise alpha
    frozen_baselines: bool = False  # a missing or stale FP16 reference is an error, not recomputed


@dataclass(frozen=True)
class RunSettings:
    models: tuple[str, ...]
    variants: tuple[str, ...]
    paths: Paths
    perplexity: PerplexityProtocol
    prompts: PromptProtocol
    load: LoadSettings
    gates: GatePolicy
    long_context: LongContextProtocol = LongContextProtocol(max_length=2048, stretches=1, chunk_tokens=1024, skip=True)
    run_id: str = "local"  # shared by all xdist workers of one run


@dataclass(frozen=True)
class Defaults:
    """The suite config's [defaults] table (config.py parses it)."""

    ctx: int = 2048
    cpu_ppl_max_tokens: int = 8192
    batch_size_cuda: int = 8
    batch_size_cpu: int = 1
    cpu_max_new_tokens: int = 24
    gen_batch_size_cuda: int = 96
    gen_batch_size_cpu: int = 32
    top_k: int = 256
    long_ctx: int = 32768
    cpu_long_ctx: int = 2048
    long_stretches_cuda: int = 2
    long_stretches_cpu: int = 1
    long_chunk_cuda: int = 1024
    long_chunk_cpu: int = 2048
    probe_keys_cuda: int = 3
    probe_keys_cpu: int = 1


@dataclass(frozen=True)
class DeviceDefaults:
    """What a run uses where the command line is silent, for its device."""

    ppl_max_tokens: int | None
    batch_size: int
    max_new_tokens_cap: int | None
    gen_batch_size: int
    long_ctx: int
    long_stretches: int
    long_chunk: int
    probe_keys: int


def device_defaults(defaults: Defaults, device: str) -> DeviceDefaults:
    """``defaults`` is the config's [defaults] table: CUDA scores the whole split and each prompt's
    own length; the CPU uses the smaller budgets it names."""
    on_cuda = device.startswith("cuda")
    return DeviceDefaults(
        ppl_max_tokens=None if on_cuda else defaults.cpu_ppl_max_tokens,
        batch_size=defaults.batch_size_cuda if on_cuda else defaults.batch_size_cpu,
        max_new_tokens_cap=None if on_cuda else defaults.cpu_max_new_tokens,
        gen_batch_size=defaults.gen_batch_size_cuda if on_cuda else defaults.gen_batch_size_cpu,
        long_ctx=defaults.long_ctx if on_cuda else defaults.cpu_long_ctx,
        long_stretches=defaults.long_stretches_cuda if on_cuda else defaults.long_stretches_cpu,
        long_chunk=defaults.long_chunk_cuda if on_cuda else defaults.long_chunk_cpu,
        probe_keys=defaults.probe_keys_cuda if on_cuda else defaults.probe_keys_cpu,
    )


@dataclass(frozen=True)
class BenchSettings:
    windows: int
    ctx: int
    prompts: int
    new_tokens: int
    rounds: int


BENCH_DEFAULTS = {
    "windows": (8, 1),
    "ctx": (2048, 512),
    "prompts": (96, 8),
    "new_tokens": (64, 8),
    "rounds": (5, 2),
}  # (CUDA, CPU)


def bench_settings(device: str, given: dict[str, int | None]) -> BenchSettings:
    cuda = device.startswith("cuda")
    return BenchSettings(**{k: given.get(k) or (v[0] if cuda else v[1]) for k, v in BENCH_DEFAULTS.items()})
